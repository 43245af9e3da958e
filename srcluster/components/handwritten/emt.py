"""EMT (Efficient Mixed Transformer), as traiNNer-redux builds it (`sub_mean`, `head`, `body.<block>.sa_list` /
`mlp_list`, `tail`, `add_mean`, so its state dicts load strictly).

Each block alternates token mixers and MLPs, each added to its input: the first `n_GTLs` mixers are window
self-attention (the channels split into one group per window shape, odd layers shifted), the rest a parameter-free
pixel shift minus the input, batch-normalised. The fixed shift masks and mean-shift convolutions are frozen parameters
(`requires_grad=False`) because redux stores them in its state dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import DF2K_MEAN, MeanShift
from srcluster.errors import ConfigError

Window = tuple[int, int]


def _one_hot_kernels(channels: int, taps: Sequence[tuple[int, int]], size: int) -> torch.Tensor:
    """A depthwise kernel per channel with a single 1 at the tap of the channel's group (`channels` split into
    len(taps) consecutive groups, the last taking the remainder)."""
    kernels = torch.zeros(channels, 1, size, size)
    group = channels // len(taps)
    for index, (row, col) in enumerate(taps):
        end = channels if index == len(taps) - 1 else (index + 1) * group
        kernels[index * group : end, 0, row, col] = 1.0
    return kernels


class _ShiftedPointwise(nn.Conv2d):
    """A 1x1 convolution whose input is first shifted by one pixel (right, left, down, up, or not at all for each fifth
    of the channels, zero-filled at the border); the shift is the frozen depthwise kernel `mask`."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(channels_in, channels_out, kernel_size=1)
        # taps in a 3x3 kernel: (1, 2) reads the right neighbour, (1, 0) the left, (2, 1) below, (0, 1) above
        taps = [(1, 2), (1, 0), (2, 1), (0, 1), (1, 1)]
        self.mask = nn.Parameter(_one_hot_kernels(channels_in, taps, 3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = F.conv2d(x, self.mask, padding=1, groups=self.in_channels)
        return F.conv2d(shifted, self.weight, self.bias)


class _PixelShiftKernel(nn.Module):
    """Shifts channel c by one pixel in the direction picked by c mod 5 (wrapping around the image edges)."""

    def __init__(self, channels: int):
        super().__init__()
        mask = torch.zeros(channels, 1, 3, 3)
        # channels interleaved by c mod 5: right neighbour, left, below, above, itself
        for offset, (row, col) in enumerate([(1, 2), (1, 0), (2, 1), (0, 1), (1, 1)]):
            mask[offset::5, 0, row, col] = 1.0
        self.mask = nn.Parameter(mask, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), self.mask, groups=x.shape[1])


class _ShiftMixer(nn.Module):
    """The cheap token mixer: batch norm of (pixel-shifted features minus the features)."""

    def __init__(self, dim: int):
        super().__init__()
        self.token_mixer = _PixelShiftKernel(dim)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.token_mixer(x) - x)


class _WindowAttention(nn.Module):
    """Window self-attention where the query also serves as key: a 1x1 convolution and batch norm make (query, value)
    channels, split evenly into one group per window shape; each group attends within its windows (softmax of q·qᵀ,
    unscaled), optionally after rolling the image by its shift, and the groups are concatenated and projected."""

    def __init__(self, dim: int, num_heads: int, windows: list[Window], shifts: list[Window] | None):
        super().__init__()
        self.num_heads = num_heads
        self.windows = windows
        self.shifts = shifts or [(0, 0)] * len(windows)
        self.attn = nn.Sequential(nn.Conv2d(dim, dim * 2, 1), nn.BatchNorm2d(dim * 2))
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 1))

    def _attend(self, group: torch.Tensor, window: Window, shift: Window) -> torch.Tensor:
        height, width = group.shape[-2:]
        # reflect-pad up to whole windows (redux does the same; the padding is cropped off again below)
        pad_h, pad_w = -height % window[0], -width % window[1]
        group = F.pad(group, (0, pad_w, 0, pad_h), mode="reflect")
        if shift != (0, 0):
            group = torch.roll(group, shifts=shift, dims=(2, 3))
        rows, cols = group.shape[-2] // window[0], group.shape[-1] // window[1]
        query, value = rearrange(
            group, "b (qv head c) (nh wh) (nw ww) -> qv (b head nh nw) (wh ww) c",
            qv=2, head=self.num_heads, wh=window[0], ww=window[1],
        )  # fmt: skip
        out = F.scaled_dot_product_attention(query, query, value, scale=1.0)
        out = rearrange(
            out, "(b head nh nw) (wh ww) c -> b (head c) (nh wh) (nw ww)",
            head=self.num_heads, nh=rows, nw=cols, wh=window[0], ww=window[1],
        )  # fmt: skip
        if shift != (0, 0):
            out = torch.roll(out, shifts=(-shift[0], -shift[1]), dims=(2, 3))
        return out[:, :, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.attn(x).chunk(len(self.windows), dim=1)
        outs = [self._attend(g, w, s) for g, w, s in zip(groups, self.windows, self.shifts, strict=True)]
        return self.proj(torch.cat(outs, dim=1))


class _ShiftMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = _ShiftedPointwise(dim, hidden)
        self.act = nn.SiLU()  # redux's hand-written Swish: the same function
        self.fc2 = _ShiftedPointwise(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _MixedBlock(nn.Module):
    """`n_layers` (mixer, MLP) pairs, each added to its input; the first `n_GTLs` mixers attend, every second of
    those with shifted windows."""

    def __init__(
        self, dim: int, n_layers: int, num_heads: int, n_GTLs: int, mlp_ratio: int,
        windows: list[Window], shifts: list[Window],
    ):  # fmt: skip
        super().__init__()
        mixers: list[nn.Module] = [
            _WindowAttention(dim, num_heads, windows, shifts if layer % 2 == 1 else None)
            if layer < n_GTLs
            else _ShiftMixer(dim)
            for layer in range(n_layers)
        ]
        self.sa_list = nn.ModuleList(mixers)
        self.mlp_list = nn.ModuleList(_ShiftMLP(dim, dim * mlp_ratio) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mixer, mlp in zip(self.sa_list, self.mlp_list, strict=True):
            x = x + mixer(x)
            x = x + mlp(x)
        return x


def _conv3x3(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1)


def _upsampler(scale: int, dim: int, num_out_ch: int, upsampler: str) -> nn.Sequential:
    """redux's tail: `pixelshuffle` = (conv to 4x channels, shuffle by 2) per factor of 2, or one x3 step, then a conv
    to the colours; `pixelshuffledirect` = one conv and one shuffle by the scale."""
    if upsampler == "pixelshuffledirect":
        return nn.Sequential(_conv3x3(dim, num_out_ch * scale**2), nn.PixelShuffle(scale))
    if upsampler != "pixelshuffle":
        raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of pixelshuffle, pixelshuffledirect")
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [_conv3x3(dim, 4 * dim), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [_conv3x3(dim, 9 * dim), nn.PixelShuffle(3)]
    else:
        raise ConfigError(
            f"scale: EMT's pixelshuffle upsampler takes 3 or a power of 2, not {scale} "
            "(network_g.upsampler: pixelshuffledirect takes any scale)"
        )
    return nn.Sequential(*layers, _conv3x3(dim, num_out_ch))


def _pairs(key: str, values: Sequence[Sequence[int]]) -> list[Window]:
    pairs = [tuple(int(v) for v in value) for value in values]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"network_g.{key}: expected a list of [height, width] pairs, got {values!r}")
    return [(pair[0], pair[1]) for pair in pairs]


def _check_channels(dim: int, num_heads: int, mlp_ratio: int, groups: int) -> None:
    if dim % 5 or (dim * mlp_ratio) % 5:
        raise ConfigError(f"network_g.dim: EMT shifts channels in fifths, so dim (and dim * mlp_ratio) must be a "
                          f"multiple of 5, got {dim}")  # fmt: skip
    if (2 * dim) % (groups * 2 * num_heads):
        raise ConfigError(
            f"network_g.num_heads: dim {dim} does not split into {groups} window groups of {num_heads} "
            "heads each (dim must be a multiple of num_heads * the number of windows)"
        )


class EMT(nn.Module):
    """EMT: mean-shifted input, a 3x3 head, `n_blocks` mixed-transformer blocks with a long skip, and an upsampler."""

    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        upsampler: Literal["pixelshuffle", "pixelshuffledirect"] = "pixelshuffle",
        dim: int = 60,
        n_blocks: int = 6,
        n_layers: int = 6,
        num_heads: int = 3,
        mlp_ratio: int = 2,
        n_GTLs: int = 2,  # redux's option name
        window_list: Sequence[Sequence[int]] = ((32, 8), (8, 32)),
        shift_list: Sequence[Sequence[int]] = ((16, 4), (4, 16)),
    ):
        super().__init__()
        windows, shifts = _pairs("window_list", window_list), _pairs("shift_list", shift_list)
        if len(shifts) != len(windows):
            raise ConfigError(f"network_g.shift_list: needs one shift per window ({len(windows)}), got {len(shifts)}")
        _check_channels(dim, num_heads, mlp_ratio, len(windows))
        self.sub_mean = MeanShift(DF2K_MEAN, 255, -1)
        self.add_mean = MeanShift(DF2K_MEAN, 255, 1)
        self.head = _conv3x3(num_in_ch, dim)
        self.body = nn.Sequential(
            *(_MixedBlock(dim, n_layers, num_heads, n_GTLs, mlp_ratio, windows, shifts) for _ in range(n_blocks))
        )
        self.tail = _upsampler(scale, dim, num_out_ch, upsampler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(features) + features))


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "emt": ("EMT", {}),
}
