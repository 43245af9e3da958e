"""PSNR and SSIM computed the way SR papers report them (BasicSR's ``calculate_psnr`` / ``calculate_ssim``).

Conventions, all from BasicSR (which follows the MATLAB evaluation scripts of the original papers):

* Images are on the 0..255 scale. uint8 tensors are used as they are; floating tensors are read as [0, 1] and
  multiplied by 255 *without* rounding. A model's output should go through :func:`quantize` first to get
  the numbers papers print (they evaluate saved 8-bit images).
* ``crop_border`` pixels are removed from every side before anything else (papers crop ``scale`` pixels).
* ``test_y_channel`` evaluates only Y of YCbCr, ITU-R BT.601 "studio swing" (16..235) as MATLAB's
  ``rgb2ycbcr`` computes it for double input, i.e. not rounded.
* SSIM: 11x11 Gaussian window (sigma 1.5), 'valid' filtering (no padding), C1 = (0.01*255)^2,
  C2 = (0.03*255)^2, mean over the SSIM map and then over channels.
* Everything is computed in float64 on the input's device; results are one value per image, shape (B,).
  Identical images give PSNR = inf (no cap), as in BasicSR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "quantize", "rgb_to_y", "ssim"]

# BT.601 luma on 0..255 input: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255. The weights add up to 219,
# so Y spans 16..235.
_Y_WEIGHTS = (65.481, 128.553, 24.966)

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 the way BasicSR's ``tensor2img`` saves images: clamp, scale, round."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _to_255(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (C, H, W) uint8/float -> (B, C, H, W) float64 on the 0..255 scale."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) or (C, H, W) image tensor, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.to(torch.float64)
    if not x.is_floating_point():
        raise TypeError(f"expected a uint8 or floating image tensor, got {x.dtype}")
    return x.to(torch.float64) * 255.0


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Y channel (BT.601, 16..235) of RGB images on the 0..255 scale: (B, 3, H, W) -> (B, 1, H, W).

    A one-channel image is treated as gray RGB (R = G = B), so Y = 16 + 219 * L / 255: the same value the
    image gets if it is stored as RGB, as Set14's ``man.png`` is while ``bridge.png`` is stored as L.
    """
    if x.shape[-3] == 1:
        return 16.0 + x * (sum(_Y_WEIGHTS) / 255.0)
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs 1 or 3 channels, got {x.shape[-3]}")
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1) / 255.0
    return 16.0 + (x * w).sum(dim=-3, keepdim=True)


def _prepare(a: torch.Tensor, b: torch.Tensor, crop_border: int, test_y_channel: bool) -> tuple[torch.Tensor, ...]:
    a, b = _to_255(a), _to_255(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        c = crop_border
        if min(a.shape[-2:]) <= 2 * c:
            raise ValueError(f"crop_border={c} leaves nothing of a {a.shape[-2]}x{a.shape[-1]} image")
        a, b = a[..., c:-c, c:-c], b[..., c:-c, c:-c]
    if test_y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def psnr(a: torch.Tensor, b: torch.Tensor, crop_border: int = 0, test_y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB with peak 255, shape (B,); inf where the images are identical."""
    a, b = _prepare(a, b, crop_border, test_y_channel)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    # 10 log10(255^2 / 0) is +inf in IEEE arithmetic, which is BasicSR's answer for identical images.
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_1d(device: torch.device) -> torch.Tensor:
    # cv2.getGaussianKernel(11, 1.5): sampled at integer offsets and normalised to sum 1.
    r = (_SSIM_WINDOW - 1) // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(t**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gaussian filter of every channel, 'valid' mode (BasicSR filters with cv2 and then drops 5 pixels a side).

    The 11x11 window is the outer product of ``g`` with itself, so two 1-D passes give the same result.
    """
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(y, g.view(1, 1, -1, 1))
    y = F.conv2d(y, g.view(1, 1, 1, -1))
    return y.view(b, c, y.shape[-2], y.shape[-1])


def ssim(a: torch.Tensor, b: torch.Tensor, crop_border: int = 0, test_y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM, shape (B,): mean of the SSIM map of each channel, then mean over channels."""
    a, b = _prepare(a, b, crop_border, test_y_channel)
    if min(a.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} after cropping, "
            f"got {a.shape[-2]}x{a.shape[-1]}"
        )
    g = _gaussian_1d(a.device)
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    # Population (biased) variances via E[x^2] - E[x]^2, as BasicSR does.
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return (num / den).mean(dim=(2, 3)).mean(dim=1)
