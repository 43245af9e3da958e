"""MAN (Multi-scale Attention Network), as traiNNer-redux builds it (`sub_mean`, `head`, `body.<group>.body.<block>`
with `LKA` and `LFE`, `body.<group>.body_t`, `tail`, `add_mean`, so its state dicts load strictly).

Everything is convolutional at the input's resolution (no windows, so any input size works as is). The mean-shift
convolutions are frozen parameters (`requires_grad=False`) because redux stores them in its state dicts.
"""

from __future__ import annotations

import torch
from torch import nn

from srcluster.components.handwritten._layers import DIV2K_MEAN, ChannelLayerNorm, MeanShift
from srcluster.errors import ConfigError


def _depthwise(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """A 'same'-size depthwise convolution."""
    padding = (kernel_size // 2) * dilation
    return nn.Conv2d(channels, channels, kernel_size, padding=padding, groups=channels, dilation=dilation)


def _pointwise(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 1)


def _large_kernel(channels: int, kernel_size: int, dilated_size: int, dilation: int) -> nn.Sequential:
    """A large receptive field cheaply: a depthwise conv, a dilated depthwise conv, then a pointwise conv."""
    return nn.Sequential(
        _depthwise(channels, kernel_size), _depthwise(channels, dilated_size, dilation), _pointwise(channels, channels)
    )


class _MultiScaleAttention(nn.Module):
    """MAN's multi-scale large-kernel attention (redux's GroupGLKA): the normalised input is projected to a gate half
    and a value half; the gate's three channel thirds each get a large-kernel branch times a plain depthwise branch
    (3/5/7-pixel kernels), and the gated value is projected back and added, scaled per channel, to the input."""

    def __init__(self, n_feats: int):
        super().__init__()
        third = n_feats // 3
        self.norm = ChannelLayerNorm(n_feats)
        self.scale = nn.Parameter(torch.zeros(1, n_feats, 1, 1))
        self.LKA7 = _large_kernel(third, 7, 9, 4)
        self.LKA5 = _large_kernel(third, 5, 7, 3)
        self.LKA3 = _large_kernel(third, 3, 5, 2)
        self.X3 = _depthwise(third, 3)
        self.X5 = _depthwise(third, 5)
        self.X7 = _depthwise(third, 7)
        self.proj_first = nn.Sequential(_pointwise(n_feats, 2 * n_feats))
        self.proj_last = nn.Sequential(_pointwise(n_feats, n_feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.proj_first(self.norm(x)).chunk(2, dim=1)
        small, medium, large = gate.chunk(3, dim=1)
        gate = torch.cat(
            [self.LKA3(small) * self.X3(small), self.LKA5(medium) * self.X5(medium), self.LKA7(large) * self.X7(large)],
            dim=1,
        )
        return self.proj_last(value * gate) * self.scale + x


class _GatedFeedForward(nn.Module):
    """Redux's SGAB: the normalised input is projected to two halves; one, through a 7x7 depthwise conv, gates the
    other; projected back and added, scaled per channel, to the input."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.Conv1 = _pointwise(n_feats, 2 * n_feats)
        self.DWConv1 = _depthwise(n_feats, 7)
        self.Conv2 = _pointwise(n_feats, n_feats)
        self.norm = ChannelLayerNorm(n_feats)
        self.scale = nn.Parameter(torch.zeros(1, n_feats, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.Conv1(self.norm(x)).chunk(2, dim=1)
        return self.Conv2(value * self.DWConv1(gate)) * self.scale + x


class _AttentionBlock(nn.Module):
    """Redux's MAB: multi-scale attention, then the gated feed-forward."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.LKA = _MultiScaleAttention(n_feats)
        self.LFE = _GatedFeedForward(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFE(self.LKA(x))


class _GroupTail(nn.Module):
    """Redux's LKAT: pointwise conv + GELU, gated by a 7x7 / dilated 9x9 large-kernel attention, then pointwise."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv0 = nn.Sequential(_pointwise(n_feats, n_feats), nn.GELU())
        self.att = _large_kernel(n_feats, 7, 9, 3)
        self.conv1 = _pointwise(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        return self.conv1(x * self.att(x))


class _ResidualGroup(nn.Module):
    def __init__(self, n_resblocks: int, n_feats: int):
        super().__init__()
        self.body = nn.ModuleList(_AttentionBlock(n_feats) for _ in range(n_resblocks))
        self.body_t = _GroupTail(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x
        for block in self.body:
            features = block(features)
        return self.body_t(features) + x


class MAN(nn.Module):
    """MAN: mean-shifted input, a 3x3 head, `n_resgroups` residual groups of `n_resblocks` attention blocks (with a
    3x3 conv and a long skip when there are several groups), and a conv + pixel-shuffle tail."""

    def __init__(
        self, n_resblocks: int = 36, n_resgroups: int = 1, n_colors: int = 3, n_feats: int = 180, scale: int = 2
    ):
        super().__init__()
        if n_feats % 3:
            raise ConfigError(f"network_g.n_feats: MAN splits its attention into channel thirds, so n_feats must be a "
                              f"multiple of 3, got {n_feats}")  # fmt: skip
        self.sub_mean = MeanShift(DIV2K_MEAN, 1, -1)
        self.head = nn.Conv2d(n_colors, n_feats, 3, padding=1)
        self.body = nn.ModuleList(_ResidualGroup(n_resblocks, n_feats) for _ in range(n_resgroups))
        # redux adds this conv and the long skip only with several groups (one group has its own skip)
        self.body_t = nn.Conv2d(n_feats, n_feats, 3, padding=1) if n_resgroups > 1 else None
        self.tail = nn.Sequential(nn.Conv2d(n_feats, n_colors * scale**2, 3, padding=1), nn.PixelShuffle(scale))
        self.add_mean = MeanShift(DIV2K_MEAN, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.sub_mean(x))
        out = features
        for group in self.body:
            out = group(out)
        if self.body_t is not None:
            out = self.body_t(out) + features
        return self.add_mean(self.tail(out))


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "man": ("MAN", {}),
    "man_light": ("MAN", {"n_resblocks": 24, "n_feats": 60}),
    "man_tiny": ("MAN", {"n_resblocks": 5, "n_feats": 48}),
}
