"""Batched filters: per-sample blur kernels, unsharp masking by two 1-D passes, and traiNNer's thick lines.

Every filter pads by reflection (the edge pixel is not repeated), as BasicSR's `filter2D` does. Blurs are direct
grouped convolutions (oneDNN; on CPU faster than FFT convolution for these sizes, and than cv2.filter2D per image),
few and large: oneDNN builds a convolution for each new shape, which costs more than the taps a per-kernel-size split
saves, so callers keep shapes few and recurring (`blur(..., full=True)`). A sample's result depends only on that
sample, never on the rest of its batch (a grouped convolution computes each channel alone; zero-padded taps add
exact zeros), so the same seed gives the same pixels however batches are cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from srcluster.degrade.host import to_device


def reflect_index(count: int, length: int, offset: int = 0) -> np.ndarray:
    """Source index, in a signal of `length`, of positions 0..count-1 of a canvas whose position `offset` is sample 0:
    mirrored without repeating the edge (F.pad's "reflect"), periodically, so any padding width works."""
    pos = np.arange(count) - offset
    if length == 1:
        return np.zeros(count, dtype=np.int64)
    period = 2 * (length - 1)
    pos = np.mod(pos, period)
    return np.where(pos >= length, period - pos, pos).astype(np.int64)


def depthwise(canvas: torch.Tensor, kernels: torch.Tensor, separable: bool = False) -> torch.Tensor:
    """Each sample's channels correlated with its own (k, k) kernel, no padding: (n, C, H, W) -> (n, C, H-k+1, W-k+1).
    Kernels here are point-symmetric, so this is also a convolution. One grouped conv for the whole group; a
    `separable` (outer-product) kernel runs as its two 1-D factors, 2k instead of k^2 multiply-adds a pixel."""
    n, c, h, w = canvas.shape
    k = kernels.shape[-1]
    kernels = kernels.to(canvas.dtype)
    flat = canvas.reshape(1, n * c, h, w)
    if separable:
        taps = kernels.sum(1).repeat_interleave(c, dim=0)  # K = g g^T with sum(g) = 1: its column sums are g
        flat = F.conv2d(flat, taps.view(n * c, 1, 1, k), groups=n * c)
        out = F.conv2d(flat, taps.view(n * c, 1, k, 1), groups=n * c)
    else:
        out = F.conv2d(flat, kernels.repeat_interleave(c, dim=0).unsqueeze(1), groups=n * c)
    return out.view(n, c, h - k + 1, w - k + 1)


def crop_kernels(kernels: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size of (n, K, K) kernels that are zero outside it."""
    start = (kernels.shape[-1] - size) // 2
    return kernels[:, start : start + size, start : start + size]


def kernel_groups(
    sizes: np.ndarray, separable: np.ndarray, full: int | None = None
) -> list[tuple[int, bool, np.ndarray]]:
    """(kernel size, separable, positions). With `full`, one 2-D convolution at that size for every sample: its
    shape depends only on the batch, so it is built once (oneDNN builds a convolution for every new shape, which on
    CPU costs more than the taps a finer split saves). Otherwise one convolution for the separable kernels (isotropic
    Gaussians: two 1-D passes) and one for the rest, each at the largest size among them; smaller kernels are
    zero-padded, which leaves their sums unchanged."""
    if full is not None:
        return [(full, False, np.arange(len(sizes)))]
    out = []
    for sep in (True, False):
        rows = np.flatnonzero(separable == sep)
        if len(rows):
            out.append((int(sizes[rows].max()), sep, rows))
    return out


def blur(
    x: torch.Tensor, kernels: torch.Tensor, sizes: np.ndarray, separable: np.ndarray, full: bool = False
) -> torch.Tensor:
    """BasicSR's `filter2D` (reflect padding, per-sample kernel) for equal-size images; `kernels` (n, K, K) hold each
    sample's size-`sizes[i]` kernel zero-padded to K. `full`: the whole batch in one K x K convolution."""
    groups = kernel_groups(sizes, separable, kernels.shape[-1] if full else None)
    if len(groups) == 1:  # one kernel size for the whole batch: filtered in place of a gather and scatter
        k, sep, rows = groups[0]
        return depthwise(reflect_pad(x, k // 2), to_device(crop_kernels(kernels[rows], k), x.device), sep)
    out = torch.empty_like(x)
    for k, sep, rows in groups:
        index = to_device(rows, x.device)
        padded = reflect_pad(x[index], k // 2)
        out[index] = depthwise(padded, to_device(crop_kernels(kernels[rows], k), x.device), sep)
    return out


# --- unsharp masking ----------------------------------------------------------------------------------------------

_SMALL_GAUSSIANS = {  # OpenCV's fixed kernels for ksize <= 7 and sigma <= 0 (getGaussianKernel)
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel1d(size: int, sigma: float = 0.0) -> np.ndarray:
    """cv2.getGaussianKernel(size, sigma): sigma <= 0 means 0.3 * ((size - 1) * 0.5 - 1) + 0.8."""
    if sigma <= 0 and size in _SMALL_GAUSSIANS:
        return np.asarray(_SMALL_GAUSSIANS[size])
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _odd(radius: int) -> int:
    return radius + 1 if radius % 2 == 0 else radius  # BasicSR's USMSharp rounds an even radius up


def _reflect_pad(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
    if p < x.shape[dim]:
        pad = (p, p, 0, 0) if dim == 3 else (0, 0, p, p)
        return F.pad(x, pad, mode="reflect")
    index = torch.from_numpy(reflect_index(x.shape[dim] + 2 * p, x.shape[dim], p)).to(x.device)
    return x.index_select(dim, index)


def reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Mirror p pixels around both spatial axes without repeating the edge (F.pad's "reflect", any p)."""
    if p < min(x.shape[-2:]):
        return F.pad(x, (p, p, p, p), mode="reflect")
    return _reflect_pad(_reflect_pad(x, p, 2), p, 3)


def separable(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Filter each sample with the outer product of its own odd 1-D kernel `taps[b]` (B, L): two 1-D passes, L + L
    multiply-adds a pixel instead of L * L, with reflect padding like the 2-D filter it replaces."""
    b, c, h, w = x.shape
    length = taps.shape[1]
    weight = taps.to(x.dtype).repeat_interleave(c, dim=0)  # (B*C, L): one group per channel
    y = _reflect_pad(x, length // 2, 3).reshape(1, b * c, h, w + length - 1)
    y = F.conv2d(y, weight.view(b * c, 1, 1, length), groups=b * c).view(b, c, h, w)
    y = _reflect_pad(y, length // 2, 2).reshape(1, b * c, h + length - 1, w)
    return F.conv2d(y, weight.view(b * c, 1, length, 1), groups=b * c).view(b, c, h, w)


def usm_taps(radii: Sequence[int] | np.ndarray, length: int | None = None) -> torch.Tensor:
    """(B, L) Gaussian taps for each radius (made odd), zero-padded to `length` (default: the longest) so that a
    sample's result does not depend on the other radii of its batch when `length` is fixed by the config."""
    radii = [_odd(int(r)) for r in radii]
    length = _odd(length if length is not None else max(radii))
    out = np.zeros((len(radii), length))
    for i, r in enumerate(radii):
        start = (length - r) // 2
        out[i, start : start + r] = gaussian_kernel1d(r)
    return torch.from_numpy(out).float()


def usm_sharpen(
    x: torch.Tensor,
    radius: int | Sequence[int] | torch.Tensor = 50,
    weight: float = 0.5,
    threshold: float = 10,
    length: int | None = None,
) -> torch.Tensor:
    """Real-ESRGAN's unsharp mask (USMSharp) on (B, 3, H, W) in [0, 1].

    Sharpen by `weight` times the high-pass residual, only where the residual exceeds `threshold`/255 (a soft mask,
    blurred by the same Gaussian, so edges sharpen and flat noise does not). `radius` is one int for the batch (the
    GT: Real-ESRGAN uses 50, i.e. a 51 x 51 Gaussian) or one per sample (traiNNer's `lq_usm`), or ready taps (B, L).
    The Gaussian is separable, so it runs as two 1-D passes (several times faster on CPU than the 2-D kernel).
    """
    if isinstance(radius, torch.Tensor):
        taps = radius
    else:
        radii = [radius] * x.shape[0] if isinstance(radius, int) else list(radius)
        taps = usm_taps(radii, length)
    taps = to_device(taps, x.device)
    residual = x - separable(x, taps)
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = separable(mask, taps)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x


def thicklines(x: torch.Tensor) -> torch.Tensor:
    """traiNNer-redux's ThickLines: mix a quarter of the 3 x 3 minimum in, which thickens dark lines (line art)."""
    darkest = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x * 0.75 + darkest * 0.25
