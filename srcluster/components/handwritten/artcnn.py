"""ArtCNN, as traiNNer-redux builds it (`conv0`, `res_block`, `depth_to_space.upscale`, so its state dicts load
strictly)."""

from __future__ import annotations

import torch
from torch import nn


def _same_conv(channels_in: int, channels_out: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel_size, 1, padding="same")


class _ArtCNNBlock(nn.Module):
    """conv-ReLU, conv-ReLU, conv, plus the input."""

    def __init__(self, filters: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Sequential(_same_conv(filters, filters, kernel_size), nn.ReLU()),
            nn.Sequential(_same_conv(filters, filters, kernel_size), nn.ReLU()),
            _same_conv(filters, filters, kernel_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class _DepthToSpace(nn.Module):
    def __init__(self, filters: int, out_ch: int, kernel_size: int, scale: int):
        super().__init__()
        self.upscale = nn.Sequential(_same_conv(filters, out_ch * scale**2, kernel_size), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upscale(x)


class ArtCNN(nn.Module):
    """ArtCNN: a plain residual CNN at LR resolution (`n_block` blocks of three convolutions, then one more, with a
    long skip), upscaled by one convolution and a pixel shuffle."""

    def __init__(self, in_ch: int = 3, scale: int = 4, filters: int = 96, n_block: int = 16, kernel_size: int = 3):
        super().__init__()
        self.conv0 = _same_conv(in_ch, filters, kernel_size)
        blocks: list[nn.Module] = [_ArtCNNBlock(filters, kernel_size) for _ in range(n_block)]
        self.res_block = nn.Sequential(*blocks, _same_conv(filters, filters, kernel_size))
        self.depth_to_space = _DepthToSpace(filters, in_ch, kernel_size, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv0(x)
        return self.depth_to_space(self.res_block(features) + features)


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    f"artcnn_r{blocks}f{filters}": ("ArtCNN", {"n_block": blocks, "filters": filters})
    for blocks, filters in ((16, 96), (8, 64), (8, 48), (5, 48), (8, 24), (3, 24))
}
