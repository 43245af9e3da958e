"""CascadedGaze (CGNet), the NAFNet-style restoration U-Net, as traiNNer-redux builds it (`intro`, `encoders`, `downs`,
`middle_blks`, `ups`, `decoders`, `ending`, so its state dicts load strictly). It keeps the resolution: scale 1 only."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import ChannelLayerNorm
from srcluster.errors import ConfigError


def _simple_gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's activation: the first half of the channels times the second half."""
    first, second = x.chunk(2, dim=1)
    return first * second


def _pointwise(channels_in: int, channels_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 1, bias=bias)


def _depthwise3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels)


def _channel_attention(channels: int) -> nn.Sequential:
    """NAFNet's simplified channel attention: global average, then a 1x1 conv (the caller multiplies)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), _pointwise(channels, channels))


class _SeparableConv(nn.Module):
    """A strided, unpadded depthwise conv then a 1x1 conv, both without bias."""

    def __init__(self, channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.pointwise = _pointwise(channels, channels, bias=False)
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, stride=stride, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _GlobalContext(nn.Module):
    """Cascaded strided separable convs (each followed by GELU), each one reading the previous one's output: context
    at ever coarser ranges. Returns every stage's output."""

    def __init__(self, channels: int, kernel_sizes: list[int], strides: list[int]):
        super().__init__()
        stages = zip(kernel_sizes, strides, strict=True)
        self.depthwise_separable_convs = nn.ModuleList(_SeparableConv(channels, k, stride) for k, stride in stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        for conv in self.depthwise_separable_convs:
            x = F.gelu(conv(x))
            stages.append(x)
        return stages


# GCE_Conv -> the context extractor's (kernel sizes, strides)
_CONTEXT_STAGES = {3: ([3, 3, 5], [2, 3, 4]), 2: ([3, 3], [2, 3])}


class _GazeBlock(nn.Module):
    """CascadedGaze's encoder block: a NAFNet block whose spatial half also gazes at coarser context. The expanded
    features' two halves are summed and fed to the context cascade; its stages, nearest-upscaled back, are concatenated
    to the features, reweighted by channel attention and projected back. Then NAFNet's gated 1x1 feed-forward. Both
    halves are residual with learned per-channel scales (`beta`, `gamma`, zero at init)."""

    def __init__(self, channels: int, context_stages: int):
        super().__init__()
        expanded = channels * 2
        kernel_sizes, strides = _CONTEXT_STAGES[context_stages]
        gathered = expanded + channels * len(kernel_sizes)  # the features plus one `channels`-wide map per stage
        self.conv1 = _pointwise(channels, expanded)
        self.conv2 = _depthwise3x3(expanded)
        self.GCE = _GlobalContext(channels, kernel_sizes, strides)
        self.project_out = _pointwise(gathered, channels)
        self.sca = _channel_attention(gathered)
        self.conv4 = _pointwise(channels, channels * 2)
        self.conv5 = _pointwise(channels, channels)
        self.norm1 = ChannelLayerNorm(channels)
        self.norm2 = ChannelLayerNorm(channels)
        self.beta = nn.Parameter(torch.zeros((1, channels, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, channels, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = F.gelu(self.conv2(self.conv1(self.norm1(x))))
        first, second = features.chunk(2, dim=1)
        context = [F.interpolate(stage, size=size, mode="nearest") for stage in self.GCE(first + second)]
        gathered = torch.cat([features, *context], dim=1)
        y = x + self.project_out(self.sca(gathered) * gathered) * self.beta
        return y + self.conv5(_simple_gate(self.conv4(self.norm2(y)))) * self.gamma


class _NAFBlock(nn.Module):
    """NAFNet's block: norm, 1x1 expand, depthwise 3x3, simple gate, channel attention, 1x1; then norm, gated 1x1
    feed-forward; both residual with learned per-channel scales (zero at init)."""

    def __init__(self, channels: int):
        super().__init__()
        expanded = channels * 2
        self.conv1 = _pointwise(channels, expanded)
        self.conv2 = _depthwise3x3(expanded)
        self.conv3 = _pointwise(expanded // 2, channels)
        self.sca = _channel_attention(expanded // 2)
        self.conv4 = _pointwise(channels, channels * 2)
        self.conv5 = _pointwise(channels, channels)
        self.norm1 = ChannelLayerNorm(channels)
        self.norm2 = ChannelLayerNorm(channels)
        self.beta = nn.Parameter(torch.zeros((1, channels, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, channels, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = _simple_gate(self.conv2(self.conv1(self.norm1(x))))
        y = x + self.conv3(gated * self.sca(gated)) * self.beta
        return y + self.conv5(_simple_gate(self.conv4(self.norm2(y)))) * self.gamma


class CascadedGaze(nn.Module):
    """CascadedGaze: a U-Net of `len(enc_blk_nums)` levels (channels doubling at each stride-2 conv down, halving at
    each 1x1 conv + pixel shuffle up, encoder features added back), gaze blocks in the encoder (`GCE_CONVS_nums`: 3 or
    2 context stages per level), NAFNet blocks in the middle and decoder, and a global residual. The input is
    zero-padded to a multiple of 2**levels and the output cropped back."""

    def __init__(
        self,
        scale: int = 1,
        img_channel: int = 3,
        width: int = 60,
        middle_blk_num: int = 10,
        enc_blk_nums: list[int] | None = None,
        dec_blk_nums: list[int] | None = None,
        GCE_CONVS_nums: list[int] | None = None,  # redux's option name
    ):
        super().__init__()
        enc_blk_nums = [2, 2, 4, 6] if enc_blk_nums is None else list(enc_blk_nums)
        dec_blk_nums = [2, 2, 2, 2] if dec_blk_nums is None else list(dec_blk_nums)
        context_stages = [3, 3, 2, 2] if GCE_CONVS_nums is None else list(GCE_CONVS_nums)
        _check_options(scale, enc_blk_nums, dec_blk_nums, context_stages)
        context_stages = context_stages[: len(enc_blk_nums)]

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = width
        for blocks, stages in zip(enc_blk_nums, context_stages, strict=True):
            self.encoders.append(nn.Sequential(*(_GazeBlock(channels, stages) for _ in range(blocks))))
            self.downs.append(nn.Conv2d(channels, channels * 2, 2, 2))
            channels *= 2
        self.middle_blks = nn.Sequential(*(_NAFBlock(channels) for _ in range(middle_blk_num)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for blocks in dec_blk_nums:
            self.ups.append(nn.Sequential(_pointwise(channels, channels * 2, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*(_NAFBlock(channels) for _ in range(blocks))))
        self.pad_multiple = 2 ** len(enc_blk_nums)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, (-width) % self.pad_multiple, 0, (-height) % self.pad_multiple))
        features = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.middle_blks(features)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            features = decoder(up(features) + skip)
        return (self.ending(features) + padded)[:, :, :height, :width]


def _check_options(scale: int, enc_blk_nums: list[int], dec_blk_nums: list[int], context_stages: list[int]) -> None:
    if scale != 1:
        raise ConfigError(f"scale: cascadedgaze restores at scale 1 only (it has no upsampler), not {scale}")
    if len(dec_blk_nums) != len(enc_blk_nums):
        raise ConfigError(
            f"network_g.dec_blk_nums: needs one entry per encoder level ({len(enc_blk_nums)}), got {dec_blk_nums}"
        )
    used = context_stages[: len(enc_blk_nums)]  # redux reads one per level and ignores the rest
    if len(used) < len(enc_blk_nums) or any(n not in _CONTEXT_STAGES for n in used):
        raise ConfigError(
            f"network_g.GCE_CONVS_nums: needs 2 or 3 for each of the {len(enc_blk_nums)} encoder levels, "
            f"got {context_stages}"
        )


# redux registers the class itself under this name: its defaults are the preset
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"cascadedgaze": ("CascadedGaze", {})}
