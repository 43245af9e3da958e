"""MATLAB-compatible ``imresize`` as batched torch ops, and traiNNer-redux's OTF resize (``otf_resize``, at the end).

SR benchmarks (Set5, Set14, DIV2K ...) make their LR inputs with MATLAB's ``imresize(hr, 1/s, 'bicubic')``,
and the published "bicubic" baselines upscale with the same function. torch's ``F.interpolate`` differs from
it (different cubic coefficient, no antialiasing by default, different border handling), so an LR set made
with it is not the LR set papers use. This module reproduces MATLAB's algorithm (``imresize.m``):

* ``contributions()`` gives, for every output pixel of one dimension, the input indices that contribute and
  their normalised kernel weights. Out-of-range indices are mirrored ("symmetric" padding, the edge pixel is
  repeated), and when downscaling with antialiasing the kernel is stretched by ``1/scale``.
* The image is resized one dimension at a time, the dimension with the smaller scale first (MATLAB's
  ``dimensionResizeOrder``; ties go to rows first).
* Every pass is ``out[i] = sum_k w[i, k] * in[idx[i, k]]``. We apply it as gathers plus weighted sums
  (one per kernel tap) instead of a dense matmul: it does the same arithmetic in the same order as MATLAB's
  ``imresizemex``, and it cannot be silently degraded by TF32 matmuls, which training code often switches on
  for CUDA.
* For uint8 input MATLAB keeps the class between passes: each pass rounds (half away from zero) and
  saturates to 0..255. We do the same, which is what makes :func:`bicubic_downscale` match MATLAB's LR sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["KERNELS", "OTF_MODES", "ResizeKernel", "bicubic_downscale", "contributions", "imresize", "otf_resize"]

KernelFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ResizeKernel:
    """A resampling kernel as MATLAB's ``imresize`` defines it: the function, its support width, and whether
    it is stretched (antialiased) when downscaling."""

    fn: KernelFn
    width: float
    antialias: bool = True


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution with a = -0.5, exactly MATLAB's cubic().
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _box(x: np.ndarray) -> np.ndarray:
    # Half-open on the right like MATLAB's box(), so a tie picks exactly one neighbour.
    return ((x >= -0.5) & (x < 0.5)).astype(np.float64)


def _triangle(x: np.ndarray) -> np.ndarray:
    return (x + 1) * ((x >= -1) & (x < 0)) + (1 - x) * ((x >= 0) & (x <= 1))


def _lanczos(a: int) -> KernelFn:
    # MATLAB adds eps to numerator and denominator so that x = 0 gives 1 without a special case.
    eps = np.finfo(np.float64).eps

    def fn(x: np.ndarray) -> np.ndarray:
        f = (np.sin(np.pi * x) * np.sin(np.pi * x / a) + eps) / (np.pi**2 * x**2 / a + eps)
        return f * (np.abs(x) < a)

    return fn


# Name -> kernel. Aliases share an entry; "nearest" is MATLAB's box of width 1 that is never antialiased.
KERNELS: dict[str, ResizeKernel] = {
    "bicubic": ResizeKernel(_cubic, 4.0),
    "bilinear": ResizeKernel(_triangle, 2.0),
    "triangle": ResizeKernel(_triangle, 2.0),
    "box": ResizeKernel(_box, 1.0),
    "area": ResizeKernel(_box, 1.0),
    "nearest": ResizeKernel(_box, 1.0, antialias=False),
    "lanczos2": ResizeKernel(_lanczos(2), 4.0),
    "lanczos3": ResizeKernel(_lanczos(3), 6.0),
}


def _get_kernel(name: str) -> ResizeKernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown resize kernel {name!r}; allowed: {', '.join(sorted(KERNELS))}") from None


def _contributions(
    in_len: int, out_len: int, scale: float, kernel: ResizeKernel, antialias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions()``: (weights, indices), both (out_len, P), indices 0-based into ``in_len``."""
    width, h = kernel.width, kernel.fn
    if scale < 1 and antialias and kernel.antialias:
        # Stretch the kernel by 1/scale so it low-passes before decimating.
        def stretched(t: np.ndarray) -> np.ndarray:
            return scale * kernel.fn(scale * t)

        width, h = width / scale, stretched

    x = np.arange(1, out_len + 1, dtype=np.float64)  # 1-based output coordinates, as in MATLAB
    u = x / scale + 0.5 * (1 - 1 / scale)  # input-space centre of each output pixel (1-based)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2  # MATLAB takes two spare taps; the all-zero ones are removed below
    ind = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u[:, None] - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Symmetric padding: index sequence 1..n, n..1 repeated, i.e. the border pixel is mirrored including itself.
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = aux[np.mod(ind.astype(np.int64) - 1, aux.size)]

    keep = np.any(weights != 0, axis=0)  # MATLAB drops tap columns that are zero for every output pixel
    return weights[:, keep], indices[:, keep]


@lru_cache(maxsize=64)
def _weights(
    in_len: int,
    out_len: int,
    scale: float,
    kernel: str,
    antialias: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached (weights, indices), both (P, out_len) so that tap k is one contiguous row; do not modify them."""
    w, idx = _contributions(in_len, out_len, scale, _get_kernel(kernel), antialias)
    return (
        torch.from_numpy(np.ascontiguousarray(w.T)).to(device=device, dtype=dtype),
        torch.from_numpy(np.ascontiguousarray(idx.T)).to(device=device),
    )


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, kernel: str, antialias: bool) -> torch.Tensor:
    """Resize dim 2 (rows) or 3 (columns) of a (B, C, H, W) floating tensor.

    One gather and multiply-add per kernel tap (P is at most a few dozen), over the whole batch at once. Taps
    are added in order k = 1..P like MATLAB's loop, and memory stays at one output-sized buffer.
    """
    w, idx = _weights(x.shape[dim], out_len, scale, kernel, antialias, x.device, x.dtype)
    shape = (-1, 1) if dim == 2 else (-1,)  # broadcast each tap's weights along the other dimension
    out = x.index_select(dim, idx[0]).mul_(w[0].view(shape))
    for k in range(1, w.shape[0]):
        out.add_(x.index_select(dim, idx[k]).mul_(w[k].view(shape)))
    return out


def _round_uint8(x: torch.Tensor) -> torch.Tensor:
    # MATLAB converts to uint8 by rounding half away from zero and saturating; values here are >= 0 after the
    # clamp, so floor(x + 0.5) is that rounding (torch.round would round half to even).
    return torch.floor(x.clamp(0, 255) + 0.5)


def _out_len(in_len: int, scale: float) -> int:
    # ceil(in * scale) like MATLAB, but rounded to 8 decimals first so that float noise does not add a pixel:
    # 50 * 1.1 is 55.00000000000001 in binary and should give 55 rows, not 56.
    return math.ceil(round(in_len * scale, 8))


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize like MATLAB's ``imresize``.

    Args:
        x: (B, C, H, W) or (C, H, W). Floating input (float32/float64, expected in [0, 1]) is resized without
            clamping, so cubic and Lanczos kernels may overshoot [0, 1]. uint8 input behaves like MATLAB on a
            uint8 image: computed in float64, rounded and saturated to 0..255 after each dimension, returned
            as uint8.
        scale: one factor for both dimensions; output size is ``ceil(H * scale) x ceil(W * scale)``.
        size: output (height, width) instead of ``scale``; each dimension then uses its own factor out/in.
        kernel: one of :data:`KERNELS` ("bicubic" is MATLAB's default).
        antialias: when downscaling, widen the kernel by 1/scale (MATLAB's default; ignored by "nearest").
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    _get_kernel(kernel)  # fail early with the list of allowed names
    if x.dim() not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    in_h, in_w = x.shape[-2:]

    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        out_h, out_w = _out_len(in_h, scale), _out_len(in_w, scale)
        scales = (float(scale), float(scale))
    else:
        out_h, out_w = (int(s) for s in size)  # type: ignore[union-attr]
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scales = (out_h / in_h, out_w / in_w)

    is_uint8 = x.dtype == torch.uint8
    if is_uint8:
        y = x.to(torch.float64)
    elif x.is_floating_point():
        y = x
    else:
        raise TypeError(f"imresize expects a floating or uint8 tensor, got {x.dtype}")

    # MATLAB resizes the dimension with the smaller scale first (less work); stable order, so rows win ties.
    passes = [(2, out_h, scales[0]), (3, out_w, scales[1])]
    if scales[1] < scales[0]:
        passes.reverse()
    for dim, out_len, s in passes:
        y = _resize_dim(y, dim, out_len, s, kernel, antialias)
        if is_uint8:
            y = _round_uint8(y)

    if is_uint8:
        y = y.to(torch.uint8)
    return y.squeeze(0) if unbatched else y


def bicubic_downscale(x_uint8: torch.Tensor, scale: int) -> torch.Tensor:
    """``imresize(hr, 1/scale, 'bicubic')`` on a uint8 image, as SR benchmark LR sets are made.

    ``x_uint8`` is (B, C, H, W) or (C, H, W) uint8; the result is uint8 of size ceil(H/scale) x ceil(W/scale)
    (mod-crop H and W to multiples of ``scale`` first to get the usual floor(H/scale) LR size).
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"bicubic_downscale expects a uint8 tensor, got {x_uint8.dtype}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return imresize(x_uint8, 1 / scale, kernel="bicubic")


@lru_cache(maxsize=1024)
def contributions(
    in_len: int, out_len: int, kernel: str = "bicubic", antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's weights and 0-based input indices, both (out_len, P), for resizing one dimension from in_len to
    out_len (factor out_len / in_len, as ``imresize(..., size=...)`` uses). For resamplers that need per-sample
    tables, such as the degradation pipeline's; read-only (cached)."""
    weights, indices = _contributions(in_len, out_len, out_len / in_len, _get_kernel(kernel), antialias)
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


# --- traiNNer-redux's OTF resize (its `resize_pt`) ------------------------------------------------------------------

OTF_MODES = ("area", "bicubic", "bilinear", "lanczos", "nearest-exact")


def _redux_lanczos_taps(ratio: float, a: int = 3) -> torch.Tensor:
    """traiNNer-redux's Lanczos low-pass for a shrink by `ratio` (out / in): Lanczos-a sampled every `ratio` input
    pixels (positions summed step by step in float64 and stored as float32, as its `_ramp` does), ends dropped,
    normalised to sum 1."""
    n = math.ceil(a / ratio + 1)
    steps = np.concatenate([[0.0], np.cumsum(np.full(n - 1, ratio))]).astype(np.float32)
    x = torch.from_numpy(np.concatenate([-steps[1:][::-1], steps])[1:-1].copy())

    def sinc(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t != 0, torch.sin(math.pi * t) / (math.pi * t), torch.ones_like(t))

    taps = torch.where((x > -a) & (x < a), sinc(x) * sinc(x / a), torch.zeros_like(x))
    return taps / taps.sum()


def _redux_lanczos(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Lanczos-3 as traiNNer-redux resamples: each shrinking axis low-passed by `_redux_lanczos_taps` (mirrored
    borders), then bicubic interpolation (a = -0.75, not antialiased) to the size."""
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    for axis, (out_len, in_len) in enumerate(zip(size, (h, w), strict=True)):
        if out_len >= in_len:
            continue
        taps = _redux_lanczos_taps(out_len / in_len).to(x.device, x.dtype)
        pad = (taps.shape[0] - 1) // 2
        if axis == 0:
            y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), taps.view(1, 1, -1, 1))
        else:
            y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    return F.interpolate(y.view(n, c, h, w), size, mode="bicubic", align_corners=False)


def otf_resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """One resize of traiNNer-redux's OTF pipeline (its `resize_pt`), clipped to [0, 1] as it clips.

    bilinear and bicubic are F.interpolate antialiased in both directions (PIL's filters: bicubic a = -0.5),
    area and nearest-exact plain F.interpolate, lanczos redux's own Lanczos-3 low-pass + bicubic. (The fidelity
    stages' bicubic LR is MATLAB's `imresize` above; redux's paired data is made with it too.)"""
    if mode == "lanczos":
        out = _redux_lanczos(x, size)
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(x, size=size, mode=mode, antialias=True)
    elif mode in ("area", "nearest-exact"):
        out = F.interpolate(x, size=size, mode=mode)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; allowed: {', '.join(OTF_MODES)}")
    return out.clamp(0, 1)
