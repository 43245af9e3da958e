"""Colour and gradient helpers shared by several losses: luma, YCbCr, CIELAB lightness, Sobel."""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Luma of each colour space traiNNer-redux offers for `color_space`, on [0, 1] RGB: (weights, offset).
LUMA: dict[str, tuple[tuple[float, float, float], float]] = {
    "yiq": ((0.299, 0.587, 0.114), 0.0),
    "ycbcr": ((65.481 / 255, 128.553 / 255, 24.966 / 255), 16 / 255),  # BT.601 studio swing
    "lhm": ((0.2989, 0.587, 0.114), 0.0),
}


def luma(x: torch.Tensor, color_space: str) -> torch.Tensor:
    weights, offset = LUMA[color_space]
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) + offset


# BT.601 studio-swing YCbCr of [0, 1] RGB, in [0, 1]: rows are Y, Cb, Cr (traiNNer-redux's rgb2ycbcr_pt)
_YCBCR = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))
_YCBCR_OFFSET = (16.0, 128.0, 128.0)


def ycbcr(x: torch.Tensor) -> torch.Tensor:
    matrix = torch.tensor(_YCBCR, dtype=x.dtype, device=x.device)
    offset = torch.tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (torch.einsum("ij,bjhw->bihw", matrix, x) + offset) / 255


def cielab_lightness(x: torch.Tensor) -> torch.Tensor:
    """traiNNer-redux's `rgb_to_luma`: CIELAB L* / 100 of the sRGB image's luminance, (B, 1, H, W). Its dark branch
    is y * y * 24389/27 rather than the standard y * 24389/27; kept, so that the loss is redux's."""
    linear = x.clamp(1e-12, 1)
    linear = torch.where(linear <= 0.04045, linear / 12.92, ((linear + 0.055) / 1.055) ** 2.4)
    weights = torch.tensor((0.2126, 0.7152, 0.0722), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = (linear * weights).sum(dim=1, keepdim=True)
    lightness = torch.where(y <= 216 / 24389, y * (y * (24389 / 27)), y ** (1 / 3) * 116 - 16)
    return (lightness / 100).clamp(0, 1)


def sobel(gray: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2, H, W): the horizontal and vertical Sobel responses, zero padding."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=gray.dtype, device=gray.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    return F.conv2d(gray, kernels, padding=1)
