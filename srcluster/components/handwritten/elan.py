"""ELAN (efficient long-range attention network), as traiNNer-redux builds it (`head`, `body.N.modules_lfe`,
`body.N.modules_gmsa`, `tail`, so its state dicts load strictly)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import DIV2K_MEAN, MeanShift


def _shift_kernels(channels: int) -> torch.Tensor:
    """Depthwise 3x3 kernels with a single 1 each: five channel groups taken from the right, left, below, above and the
    centre pixel (the last group also takes the remainder of the division by five)."""
    group = channels // 5
    kernels = torch.zeros(channels, 1, 3, 3)
    taps = ((1, 2), (1, 0), (2, 1), (0, 1))
    for index, (row, col) in enumerate(taps):
        kernels[index * group : (index + 1) * group, 0, row, col] = 1.0
    kernels[4 * group :, 0, 1, 1] = 1.0
    return kernels


class _ShiftThenMix(nn.Module):
    """Shift channel groups by one pixel (a fixed depthwise convolution, saved in the state dict but not trained), then
    mix them with a 1x1 convolution."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.weight = nn.Parameter(_shift_kernels(channels_in), requires_grad=False)
        self.conv1x1 = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = F.conv2d(x, self.weight, padding=1, groups=x.shape[1])
        return self.conv1x1(shifted)


class _ShiftConv(nn.Module):
    """Holder that gives the shift convolution redux's key prefix (`conv0.shift_conv.*`)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.shift_conv = _ShiftThenMix(channels_in, channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_conv(x)


class _LocalFeatures(nn.Module):
    """ELAN's LFE: shift-conv to `expand` times the channels, ReLU, shift-conv back."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.conv0 = _ShiftConv(channels, channels * expand)
        self.conv1 = _ShiftConv(channels * expand, channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.act(self.conv0(x)))


def _to_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    return rearrange(x, "b c (h dh) (w dw) -> (b h w) (dh dw) c", dh=size, dw=size)


def _from_windows(windows: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    return rearrange(windows, "(b h w) (dh dw) c -> b c (h dh) (w dw)", h=height // size, w=width // size, dh=size)


class _GroupedWindowAttention(nn.Module):
    """ELAN's GMSA: the channels split into one group per window size, each attending within its windows.

    The first module of a block computes the attention (queries doubling as keys, no scaling) from the first half of its
    group's channels and applies it to the second half; the shared ones after it reuse those attention maps on their
    own projections, so they project to half as many channels."""

    def __init__(self, channels: int, shifted: bool, window_sizes: Sequence[int], computes_attention: bool):
        super().__init__()
        self.shifted = shifted
        self.window_sizes = list(window_sizes)
        projected = channels * 2 if computes_attention else channels
        self.group_channels = [projected // 3] * 3
        self.project_inp = nn.Sequential(nn.Conv2d(channels, projected, 1), nn.BatchNorm2d(projected))
        self.project_out = nn.Conv2d(channels, channels, 1)

    def forward(
        self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        height, width = x.shape[2:]
        groups = torch.split(self.project_inp(x), self.group_channels, dim=1)
        outputs: list[torch.Tensor] = []
        computed: list[torch.Tensor] = []
        for index, projected in enumerate(groups):
            size = self.window_sizes[index]
            # rolled back by size // 2 below; `(-size) // 2` differs from that for odd sizes, as in redux
            group = torch.roll(projected, shifts=(-size // 2, -size // 2), dims=(2, 3)) if self.shifted else projected
            if attentions is None:
                queries, values = (_to_windows(half, size) for half in group.chunk(2, dim=1))
                attention = (queries @ queries.transpose(-2, -1)).softmax(dim=-1)
                computed.append(attention)
            else:
                values, attention = _to_windows(group, size), attentions[index]
            out = _from_windows(attention @ values, size, height, width)
            if self.shifted:
                out = torch.roll(out, shifts=(size // 2, size // 2), dims=(2, 3))
            outputs.append(out)
        return self.project_out(torch.cat(outputs, dim=1)), computed if attentions is None else attentions


class _LongRangeBlock(nn.Module):
    """ELAN's ELAB: 1 + `shared` rounds of (local features + x, attention + x); the later rounds reuse the first
    round's attention maps."""

    def __init__(self, channels: int, expand: int, shifted: bool, window_sizes: Sequence[int], shared: int):
        super().__init__()
        self.modules_lfe = nn.ModuleDict({f"lfe_{i}": _LocalFeatures(channels, expand) for i in range(1 + shared)})
        self.modules_gmsa = nn.ModuleDict(
            {f"gmsa_{i}": _GroupedWindowAttention(channels, shifted, window_sizes, i == 0) for i in range(1 + shared)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attentions: list[torch.Tensor] | None = None
        for local, attend in zip(self.modules_lfe.values(), self.modules_gmsa.values(), strict=True):
            x = local(x) + x
            y, attentions = attend(x, attentions)
            x = y + x
        return x


class ELAN(nn.Module):
    """ELAN: `m_elan // (1 + n_share)` attention blocks of `c_elan` channels (every second one with shifted windows)
    and a pixel-shuffle tail. The input is reflect-padded to a multiple of every window size and the output cropped."""

    def __init__(
        self,
        scale: int = 4,
        colors: int = 3,
        rgb_range: int = 255,
        norm: bool = False,
        window_sizes: Sequence[int] | None = None,
        m_elan: int = 36,
        c_elan: int = 180,
        n_share: int = 0,
        r_expand: int = 2,
    ):
        super().__init__()
        self.scale = scale
        self.window_sizes = list(window_sizes) if window_sizes is not None else [4, 8, 16]
        self.sub_mean: nn.Module = MeanShift(DIV2K_MEAN, rgb_range, -1) if norm else nn.Identity()
        self.add_mean: nn.Module = MeanShift(DIV2K_MEAN, rgb_range, 1) if norm else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(colors, c_elan, 3, padding=1))
        self.body = nn.Sequential(
            *[
                _LongRangeBlock(c_elan, r_expand, index % 2 == 1, self.window_sizes, n_share)
                for index in range(m_elan // (1 + n_share))
            ]
        )
        self.tail = nn.Sequential(nn.Conv2d(c_elan, colors * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        multiple = math.lcm(*self.window_sizes)
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple), "reflect")
        features = self.head(self.sub_mean(x))
        out = self.add_mean(self.tail(self.body(features) + features))
        return out[:, :, : height * self.scale, : width * self.scale]


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "elan": ("ELAN", {}),
    "elan_light": ("ELAN", {"m_elan": 24, "c_elan": 60, "n_share": 1}),
}
