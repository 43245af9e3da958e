"""HiT-SRF, as traiNNer-redux builds it (`hit_srf`): HiT-SR whose blocks' feed-forward has a depthwise 5x5
convolution, and which pads windows larger than the image by reflecting twice. The network is in `hit_common.py`;
module names are redux's, so its state dicts load strictly."""

from __future__ import annotations

from collections.abc import Sequence

from srcluster.components.handwritten.hit_common import HiTNetwork


class HiTSRF(HiTNetwork):
    """HiT-SRF with redux's `hit_srf` options and defaults. `expansion_factor` is accepted and, as in redux, unused
    (the MLP ratio stays 2); `img_size` is likewise unused (any input size works)."""

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        img_size: int = 64,
        base_win_size: Sequence[int] = (8, 8),
        img_range: float = 1.0,
        depths: Sequence[int] = (6, 6, 6, 6),
        embed_dim: int = 60,
        num_heads: Sequence[int] = (6, 6, 6, 6),
        expansion_factor: int = 2,
        resi_connection: str = "1conv",
        hier_win_ratios: Sequence[float] = (0.5, 1, 2, 4, 6, 8),
        upsampler: str | None = "pixelshuffledirect",
    ):
        super().__init__(
            variant="srf",
            scale=scale,
            in_chans=in_chans,
            base_win_size=base_win_size,
            img_range=img_range,
            depths=depths,
            embed_dim=embed_dim,
            num_heads=num_heads,
            resi_connection=resi_connection,
            hier_win_ratios=hier_win_ratios,
            upsampler=upsampler,
        )


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"hit_srf": ("HiTSRF", {})}
