"""Sebica, as traiNNer-redux builds it (`head`, `body`, `tail`, so its state dicts load strictly)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _SpatialChannelAttention(nn.Module):
    """Sebica's CSA: a 7x7 spatial gate from the channel mean and max, times a per-image gate from the mean over all
    channels, read by two 1-D convolutions (forward and flipped) and averaged."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.spatial_attention = nn.Sequential(nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False), nn.Sigmoid())
        self.channel_attention_forward = self._channel_gate(kernel_size)
        self.channel_attention_backward = self._channel_gate(kernel_size)

    @staticmethod
    def _channel_gate(kernel_size: int) -> nn.Sequential:
        conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), conv, nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_attention(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1))
        # (B, 1, C): redux pools this 3-D tensor as one unbatched image of B channels, so each gate sees the mean
        # over all channels of its image (a gate per image, not per channel)
        pooled = x.mean(dim=(2, 3), keepdim=True).squeeze(-1).transpose(-1, -2)
        forward = self.channel_attention_forward(pooled).transpose(-1, -2).unsqueeze(-1)
        backward = self.channel_attention_backward(pooled.flip(dims=[1])).transpose(-1, -2).unsqueeze(-1)
        channel = ((forward + backward.flip(dims=[1])) / 2).expand_as(x)
        return x * spatial * channel


class _SebicaConv(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(n, n * 2, 1), nn.BatchNorm2d(n * 2), nn.ReLU(inplace=True),
            nn.Conv2d(n * 2, n, 3, padding=1), nn.BatchNorm2d(n), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SebicaFFN(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Conv2d(n, n * 2, 1), nn.BatchNorm2d(n * 2), nn.GELU(), nn.Conv2d(n * 2, n, 1), nn.BatchNorm2d(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x) + x


class _SebicaBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.pre_mixer = _SebicaConv(n)
        self.post_mixer = _SebicaFFN(n)
        self.attn = _SpatialChannelAttention()
        self.norm1 = nn.BatchNorm2d(n)
        self.norm2 = nn.BatchNorm2d(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.norm1(self.pre_mixer(x)))
        return self.norm2(self.post_mixer(out)) + x


class Sebica(nn.Module):
    """Sebica: six attention blocks of `N` channels and a pixel-shuffle tail, added to the bilinear upscale."""

    def __init__(self, scale: int = 4, N: int = 16):  # redux's option name
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(3, N, 3, padding=1), nn.BatchNorm2d(N), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*[_SebicaBlock(N) for _ in range(6)])
        self.tail = nn.Sequential(nn.Conv2d(N, 3 * scale * scale, 1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.tail(self.body(self.head(x))) + base


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "sebica": ("Sebica", {}),
    "sebica_mini": ("Sebica", {"N": 8}),
}
