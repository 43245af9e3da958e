"""LKFMixer (large-kernel feature mixer), as traiNNer-redux builds it (`conv_first`, `layers.layers.N.{FDB,SFMB,FSB}`,
`conv`, `upsampler.upsampleOneStep`, so its state dicts load strictly)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The input is reflect-padded to a multiple of this: the spatial modulation max-pools 8x8 cells
_PAD_MULTIPLE = 8


def _pointwise(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 1)


def _depthwise3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels)


class _PartialLargeKernel(nn.Module):
    """PLKB: the first `split_factor` of the channels go through a 1xK then a Kx1 depthwise convolution, the rest pass
    unchanged; then a 1x1 mix and GELU."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.split = int(channels * split_factor)
        self.rest = channels - self.split
        half = large_kernel // 2
        self.DWConv_Kx1 = nn.Conv2d(
            self.split, self.split, (large_kernel, 1), padding=(half, 0), groups=self.split
        )  # redux's name
        self.DWConv_1xK = nn.Conv2d(
            self.split, self.split, (1, large_kernel), padding=(0, half), groups=self.split
        )  # redux's name
        self.conv1 = _pointwise(channels, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide, passed = torch.split(x, [self.split, self.rest], dim=1)
        wide = self.DWConv_Kx1(self.DWConv_1xK(wide))
        return self.act(self.conv1(torch.cat((wide, passed), dim=1)))


class _FusionBlock(nn.Module):
    """FFB: GELU of a 1x1 mix of (3x3 depthwise + large-kernel branch)."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.PLKB = _PartialLargeKernel(channels, large_kernel, split_factor)
        self.DWConv3 = _depthwise3(channels)
        self.conv1 = _pointwise(channels, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(self.DWConv3(x) + self.PLKB(x)))


class _DistillationBlock(nn.Module):
    """FDB: three refinement steps, each also distilled to half the channels by a 1x1 conv; the three distilled
    features and a half-width projection of the last step are concatenated and fused back by a 1x1 conv."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        half = channels // 2
        self.c1_d = _pointwise(channels, half)
        self.c1_r = _FusionBlock(channels, large_kernel, split_factor)
        self.c2_d = _pointwise(channels, half)
        self.c2_r = _FusionBlock(channels, large_kernel, split_factor)
        self.c3_d = _pointwise(channels, half)
        self.c3_r = _FusionBlock(channels, large_kernel, split_factor)
        self.c4 = _pointwise(channels, half)
        self.act = nn.GELU()
        self.c5 = _pointwise(channels * 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled = []
        for distill, refine in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            distilled.append(self.act(distill(x)))
            x = refine(x)
        distilled.append(self.act(self.c4(x)))
        return self.c5(torch.cat(distilled, dim=1))


class _SpatialModulation(nn.Module):
    """SFMB: the large-kernel branch plus a coarse gate: 8x8 max-pooled features (depthwise 3x3, 1x1, GELU) upsampled
    bilinearly and scaled per channel by the sigmoid of the global mean; then a 1x1 mix and GELU."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.PLKB = _PartialLargeKernel(channels, large_kernel, split_factor)
        self.DWConv_3 = _depthwise3(channels)
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv1_1 = _pointwise(channels, channels)
        self.conv1_2 = _pointwise(channels, channels)
        self.sigmoid = nn.Sigmoid()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = self.sigmoid(self.AdaptiveAvgPool(x))
        coarse = F.max_pool2d(x, kernel_size=_PAD_MULTIPLE, stride=_PAD_MULTIPLE)
        coarse = self.act(self.conv1_1(self.DWConv_3(coarse)))
        coarse = F.interpolate(coarse, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.act(self.conv1_2(self.PLKB(x) + channel_gate * coarse))


class _SelectiveBlock(nn.Module):
    """FSB: a per-pixel sigmoid weight (from both branches) blends the large-kernel and the 3x3 depthwise branches."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.PLKB = _PartialLargeKernel(channels, large_kernel, split_factor)
        self.DWConv_3 = _depthwise3(channels)
        self.conv1_1 = _pointwise(channels * 2, channels)
        self.sigmoid = nn.Sigmoid()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide, local = self.PLKB(x), self.DWConv_3(x)
        weight = self.sigmoid(self.act(self.conv1_1(torch.cat((wide, local), dim=1))))
        return wide * weight + local * (1 - weight)


class _MixerBlock(nn.Module):
    """FMB: distillation, spatial modulation, selection, plus the input."""

    def __init__(self, channels: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.FDB = _DistillationBlock(channels, large_kernel, split_factor)
        self.SFMB = _SpatialModulation(channels, large_kernel, split_factor)
        self.FSB = _SelectiveBlock(channels, large_kernel, split_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.FSB(self.SFMB(self.FDB(x))) + x


class _Body(nn.Module):
    """Holder that gives the blocks redux's key prefix (`layers.layers.N`)."""

    def __init__(self, channels: int, num_block: int, large_kernel: int, split_factor: float):
        super().__init__()
        self.layers = nn.Sequential(*[_MixerBlock(channels, large_kernel, split_factor) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _OneStepUpsampler(nn.Module):
    """One 3x3 convolution and a pixel shuffle, under redux's key prefix (`upsampler.upsampleOneStep.0`)."""

    def __init__(self, channels: int, out_channels: int, scale: int):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(
            nn.Conv2d(channels, out_channels * scale**2, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampleOneStep(x)


class LKFMixer(nn.Module):
    """LKFMixer: `num_block` mixer blocks of `channels` channels, a depthwise 3x3 with GELU, a long skip and a one-step
    pixel-shuffle upsampler. The input is reflect-padded to a multiple of 8 and the output cropped."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 40,
        out_channels: int = 3,
        scale: int = 4,
        num_block: int = 6,
        large_kernel: int = 31,
        split_factor: float = 0.25,
    ):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.layers = _Body(channels, num_block, large_kernel, split_factor)
        self.conv = _depthwise3(channels)
        self.upsampler = _OneStepUpsampler(channels, out_channels, scale)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        x = F.pad(x, (0, -width % _PAD_MULTIPLE, 0, -height % _PAD_MULTIPLE), "reflect")
        features = self.conv_first(x)
        out = self.act(self.conv(self.layers(features)))
        return self.upsampler(out + features)[:, :, : height * self.scale, : width * self.scale]


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "lkfmixer_t": ("LKFMixer", {}),
    "lkfmixer_b": ("LKFMixer", {"channels": 48, "num_block": 8}),
    "lkfmixer_l": ("LKFMixer", {"channels": 64, "num_block": 12}),
}
