"""HiT-SRF, as traiNNer-redux builds it (`hit_srf`): HiT-SR whose blocks' feed-forward has a depthwise 5x5
convolution, and which pads windows larger than the image by reflecting twice. The network is in `hit_common.py`;
module names are redux's, so its state dicts load strictly."""

from __future__ import annotations

from srcluster.components.handwritten.hit_common import ReduxHiT


class HiTSRF(ReduxHiT):
    """HiT-SRF with redux's `hit_srf` options and defaults (`ReduxHiT`)."""

    VARIANT = "srf"


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"hit_srf": ("HiTSRF", {})}
