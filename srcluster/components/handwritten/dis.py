"""DIS (Direct Image Supersampling), as traiNNer-redux builds it (`head`, `body`, `fusion`, `upsampler`, `tail`, so its
state dicts load strictly)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.errors import ConfigError


def _conv3(channels_in: int, channels_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


class _PlainResidualBlock(nn.Module):
    """conv, PReLU, conv (no biases), plus the input: the default body block."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3(channels, channels, bias=False)
        self.conv2 = _conv3(channels, channels, bias=False)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class _SeparableConv(nn.Module):
    """A per-channel 3x3 convolution followed by a 1x1 mix, both without bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _SeparableResidualBlock(nn.Module):
    """The `use_depthwise` body block: the input plus PReLU of a separable convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.dw_conv = _SeparableConv(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.dw_conv(x))


class _ShuffleStage(nn.Module):
    """One upscaling step: a convolution to factor**2 times the channels, pixel shuffle, PReLU."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.conv = _conv3(channels, channels * factor**2)
        self.pixel_shuffle = nn.PixelShuffle(factor)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pixel_shuffle(self.conv(x)))


def _upsampler(channels: int, scale: int) -> nn.Module:
    # x4 is two x2 steps (a Sequential, so its keys are `upsampler.0.*`, `upsampler.1.*`); x2 and x3 a single step
    if scale == 4:
        return nn.Sequential(_ShuffleStage(channels, 2), _ShuffleStage(channels, 2))
    if scale in (2, 3):
        return _ShuffleStage(channels, scale)
    if scale == 1:
        return nn.Identity()
    raise ConfigError(f"scale: DIS upscales by 1, 2, 3 or 4, not {scale}")


class DIS(nn.Module):
    """DIS: a small all-convolution network at LR resolution (PReLU activations, no normalisation), upscaled by pixel
    shuffle and added to the bilinear upscale of the input."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_features: int = 32,
        num_blocks: int = 4,
        scale: int = 4,
        use_depthwise: bool = False,
    ):
        super().__init__()
        self.scale = scale
        block = _SeparableResidualBlock if use_depthwise else _PlainResidualBlock
        self.head = _conv3(in_channels, num_features)
        self.head_act = nn.PReLU(num_features)
        self.body = nn.Sequential(*[block(num_features) for _ in range(num_blocks)])
        self.fusion = _conv3(num_features, num_features)
        self.upsampler = _upsampler(num_features, scale)
        self.tail = _conv3(num_features, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        features = self.head_act(self.head(x))
        features = self.fusion(self.body(features)) + features
        return self.tail(self.upsampler(features)) + base


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "dis_balanced": ("DIS", {"num_blocks": 12}),
    "dis_fast": ("DIS", {"num_blocks": 8}),
}
