"""LMLT (low-to-high multi-level transformer), as traiNNer-redux builds it (`to_feat`, `feats.<i>.lhsb.mfr.<level>`,
`to_img`, so its state dicts load strictly)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import ChannelLayerNorm
from srcluster.errors import ConfigError

_WINDOW = 8  # attention window side, at every level
_LEVELS = 4  # channel groups; group i is max-pooled by 2**i before its attention
# each level halves the side, and the coarsest (/8) must still tile into whole windows
_PAD_MULTIPLE = _WINDOW * 2 ** (_LEVELS - 1)


class _WindowAttention(nn.Module):
    """One level's attention: single-head self-attention inside each 8x8 window, plus a locally-enhanced positional
    term (a depthwise 3x3 over the values, zero-padded at each window's border). redux's `DownsampleViT`."""

    def __init__(self, channels: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.qkv = nn.Linear(channels, channels * 3)
        self.proj = nn.Linear(channels, channels)
        self.get_v = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.scale = channels**-0.5  # the head is all channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2] // _WINDOW, x.shape[3] // _WINDOW
        tokens = rearrange(x, "b c (nh wh) (nw ww) -> (b nh nw) (wh ww) c", wh=_WINDOW, ww=_WINDOW)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        v_image = rearrange(v, "n (wh ww) c -> n c wh ww", wh=_WINDOW)
        positional = rearrange(self.get_v(v_image), "n c wh ww -> n (wh ww) c")
        dropout = self.attn_drop if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale) + positional
        out = self.proj_drop(self.proj(attended))
        return rearrange(out, "(b nh nw) (wh ww) c -> b c (nh wh) (nw ww)", nh=rows, nw=cols, wh=_WINDOW)


class _LowToHighMixer(nn.Module):
    """redux's LHSB: the channels split into four groups, group i pooled to 1/2**i of the side. Attention runs from
    the coarsest level up, each level's result (nearest-upscaled x2) added to the next finer level's input; all four
    results, nearest-upscaled to full size, are fused by a 1x1 conv whose GELU gates the block's input."""

    def __init__(self, dim: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.mfr = nn.ModuleList(_WindowAttention(dim // _LEVELS, attn_drop, proj_drop) for _ in range(_LEVELS))
        self.aggr = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        groups = x.chunk(_LEVELS, dim=1)
        inputs = [groups[0]] + [
            F.adaptive_max_pool2d(groups[level], (height // 2**level, width // 2**level)) for level in range(1, _LEVELS)
        ]
        results = []  # coarsest first: the order the fusing conv's input channels expect
        for level in reversed(range(_LEVELS)):
            result = self.mfr[level](inputs[level])
            if level > 0:
                doubled = (result.shape[2] * 2, result.shape[3] * 2)
                inputs[level - 1] = inputs[level - 1] + F.interpolate(result, size=doubled, mode="nearest")
            results.append(F.interpolate(result, size=(height, width), mode="nearest"))
        return self.act(self.aggr(torch.cat(results, dim=1))) * x


class _ConvMixer(nn.Module):
    """redux's CCM: 3x3 conv widening by `growth`, GELU, 1x1 conv back."""

    def __init__(self, dim: int, growth: float):
        super().__init__()
        hidden = int(dim * growth)
        self.ccm = nn.Sequential(nn.Conv2d(dim, hidden, 3, 1, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class _LMLTBlock(nn.Module):
    def __init__(self, dim: int, ffn_scale: float, drop: float, attn_drop: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.norm2 = ChannelLayerNorm(dim)
        self.lhsb = _LowToHighMixer(dim, attn_drop, drop)
        self.ccm = _ConvMixer(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lhsb(self.norm1(x)) + x
        return self.ccm(self.norm2(x)) + x


class LMLT(nn.Module):
    """LMLT: `n_blocks` multi-level attention blocks of `dim` channels with a long skip, then a 3x3 conv and a pixel
    shuffle. The input is reflect-padded to a multiple of 64 (whole windows at the coarsest level) and the features
    cropped back before upscaling, as redux does (so, as there, a side under 33 cannot be reflect-padded).

    `drop_path_rate` is accepted and, as in redux, has no effect (its blocks have no stochastic depth); `drop_rate`
    drops the attention output projections and `attn_drop_rate` the attention weights, while training."""

    def __init__(
        self,
        dim: int,
        n_blocks: int = 8,
        ffn_scale: float = 2.0,
        scale: int = 4,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if dim % _LEVELS:
            raise ConfigError(f"network_g.dim: LMLT splits its channels into {_LEVELS} levels; {dim} is not a multiple")
        self.to_feat = nn.Conv2d(3, dim, 3, 1, 1)
        self.feats = nn.Sequential(*(_LMLTBlock(dim, ffn_scale, drop_rate, attn_drop_rate) for _ in range(n_blocks)))
        self.to_img = nn.Sequential(nn.Conv2d(dim, 3 * scale**2, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % _PAD_MULTIPLE, (-width) % _PAD_MULTIPLE
        features = self.to_feat(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        features = self.feats(features) + features
        return self.to_img(features[:, :, :height, :width])


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "lmlt_tiny": ("LMLT", {"dim": 36}),
    "lmlt_base": ("LMLT", {"dim": 60}),
    "lmlt_large": ("LMLT", {"dim": 84}),
}
