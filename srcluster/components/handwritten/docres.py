"""DocRes (a Restormer-style U-Net for document restoration), as traiNNer-redux builds it (`patch_embed`,
`encoder_level1..3`, `down*`, `latent`, `up*`, `reduce_chan_level*`, `decoder_level1..3`, `refinement`, `output`, so
its state dicts load strictly). It keeps the resolution: scale 1 only."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from srcluster.errors import ConfigError

LEVELS = 4  # three downsamplings: the input is padded to a multiple of 2**3
NORM_EPS = 1e-5


class _LastDimNorm(nn.Module):
    """Layer norm over the last dimension. The bias-free kind divides by the standard deviation but does not subtract
    the mean (Restormer's variant), so it is not `nn.LayerNorm` without a bias."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, NORM_EPS)
        variance = x.var(-1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(variance + NORM_EPS) * self.weight


class _ChannelNorm(nn.Module):
    """Normalises each pixel's channel vector of a (B, C, H, W) map."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.body = _LastDimNorm(dim, with_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _GatedFeedForward(nn.Module):
    """1x1 expand to two halves, a depthwise 3x3, GELU of one half gating the other, 1x1 back."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class _TransposedAttention(nn.Module):
    """Attention across channels rather than pixels (Restormer's MDTA): per head, a (C/heads)x(C/heads) map from
    L2-normalised queries and keys over all pixels, sharpened by a learned per-head `temperature`. Its cost grows
    linearly with the image size, so no windows are needed."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = (
            rearrange(part, "b (head c) h w -> b head c (h w)", head=self.heads)
            for part in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        )
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        weights = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = rearrange(weights @ v, "b head c (h w) -> b (head c) h w", h=height, w=width)
        return self.project_out(out)


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm_with_bias: bool):
        super().__init__()
        self.norm1 = _ChannelNorm(dim, norm_with_bias)
        self.attn = _TransposedAttention(dim, heads, bias)
        self.norm2 = _ChannelNorm(dim, norm_with_bias)
        self.ffn = _GatedFeedForward(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)  # no bias whatever `bias` says (as redux)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Resample(nn.Module):
    """Halves the resolution and doubles the channels (conv to C/2, pixel unshuffle) or the reverse (conv to 2C,
    pixel shuffle)."""

    def __init__(self, dim: int, down: bool):
        super().__init__()
        conv = nn.Conv2d(dim, dim // 2 if down else dim * 2, 3, padding=1, bias=False)
        self.body = nn.Sequential(conv, nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _coordinate_planes(like: torch.Tensor) -> torch.Tensor:
    """Two planes running from -1 to 1 across the (padded) image: x along the width, then y along the height."""
    batch, _, height, width = like.shape
    ys = torch.linspace(-1, 1, height, device=like.device)
    xs = torch.linspace(-1, 1, width, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # made in float32 (as redux) and then cast, so a half-precision input stays half
    return torch.stack((grid_x, grid_y))[None].expand(batch, -1, -1, -1).to(like.dtype)


class DocRes(nn.Module):
    """A four-level U-Net of transposed-attention blocks (`num_blocks` per level, the decoder reusing the encoder's
    counts), a `refinement` stage and an output conv. With 3 input channels it appends two coordinate planes to the
    image before embedding. The input is reflect-padded to a multiple of 8 and the output cropped back."""

    def __init__(
        self,
        scale: int = 1,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: list[int] | None = None,
        num_refinement_blocks: int = 4,
        heads: list[int] | None = None,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # redux's option names
        dual_pixel_task: bool = True,  # redux takes it and ignores it; so do we
    ):
        super().__init__()
        num_blocks = [2, 3, 3, 4] if num_blocks is None else list(num_blocks)
        heads = [1, 2, 4, 8] if heads is None else list(heads)
        _check_options(scale, dim, num_blocks, heads, LayerNorm_type)
        self.dual_pixel_task = dual_pixel_task
        self.adds_coordinates = inp_channels == 3
        widths = [dim * 2**level for level in range(LEVELS)]

        def stage(level: int, count: int) -> nn.Sequential:
            block_args = (widths[level], heads[level], ffn_expansion_factor, bias, LayerNorm_type != "BiasFree")
            return nn.Sequential(*(_TransformerBlock(*block_args) for _ in range(count)))

        self.patch_embed = _PatchEmbed(inp_channels + 2 if self.adds_coordinates else inp_channels, dim)
        self.encoder_level1 = stage(0, num_blocks[0])
        self.down1_2 = _Resample(widths[0], down=True)
        self.encoder_level2 = stage(1, num_blocks[1])
        self.down2_3 = _Resample(widths[1], down=True)
        self.encoder_level3 = stage(2, num_blocks[2])
        self.down3_4 = _Resample(widths[2], down=True)
        self.latent = stage(3, num_blocks[3])
        self.up4_3 = _Resample(widths[3], down=False)
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], 1, bias=bias)
        self.decoder_level3 = stage(2, num_blocks[2])
        self.up3_2 = _Resample(widths[2], down=False)
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], 1, bias=bias)
        self.decoder_level2 = stage(1, num_blocks[1])
        self.up2_1 = _Resample(widths[1], down=False)
        self.reduce_chan_level1 = nn.Conv2d(widths[1], widths[0], 1, bias=bias)
        self.decoder_level1 = stage(0, num_blocks[0])
        self.refinement = stage(0, num_refinement_blocks)
        self.output = nn.Conv2d(widths[0], out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2 ** (LEVELS - 1)
        pad_bottom, pad_right = (-height) % multiple, (-width) % multiple
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="reflect")
        if self.adds_coordinates:  # after padding, so the planes span the padded image (as redux)
            x = torch.cat([x, _coordinate_planes(x)], dim=1)

        level1 = self.encoder_level1(self.patch_embed(x))
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        features = self.latent(self.down3_4(level3))
        features = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(features), level3], dim=1)))
        features = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(features), level2], dim=1)))
        features = self.decoder_level1(self.reduce_chan_level1(torch.cat([self.up2_1(features), level1], dim=1)))
        return self.output(self.refinement(features))[:, :, :height, :width]


def _check_options(scale: int, dim: int, num_blocks: list[int], heads: list[int], norm_type: str) -> None:
    if scale != 1:
        raise ConfigError(f"scale: docres restores at scale 1 only (it has no upsampler), not {scale}")
    if len(num_blocks) != LEVELS:
        raise ConfigError(f"network_g.num_blocks: needs {LEVELS} entries (one per U-Net level), got {num_blocks}")
    if len(heads) != LEVELS:
        raise ConfigError(f"network_g.heads: needs {LEVELS} entries (one per U-Net level), got {heads}")
    if dim < 2 or dim % 2:
        # the first downsampling convolves to dim // 2 channels and unshuffles them to 4x: only even widths round-trip
        raise ConfigError(f"network_g.dim: must be even, got {dim}")
    for level, count in enumerate(heads):
        width = dim * 2**level
        if count < 1 or width % count:
            raise ConfigError(f"network_g.heads: {count} heads cannot split the {width} channels of level {level + 1}")
    if norm_type not in ("WithBias", "BiasFree"):
        raise ConfigError(f"network_g.LayerNorm_type: must be WithBias or BiasFree, got {norm_type!r}")


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "docres": ("DocRes", {}),  # redux registers the class itself too
    "docres_base": ("DocRes", {}),
    "docres_large": (
        "DocRes",
        {"dim": 64, "num_blocks": [3, 4, 4, 6], "num_refinement_blocks": 6, "heads": [2, 4, 8, 16]},
    ),
}
