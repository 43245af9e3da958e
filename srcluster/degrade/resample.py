"""Resizing a batch whose samples each have their own size, scale and kernel, as gathers plus weighted sums.

The math per sample is MATLAB's `imresize` (srcluster.degrade.resize: antialiased when downscaling), with traiNNer's
mode names mapped onto its kernels. Samples live in a common *canvas*: sample b's image occupies the top-left
[offset, offset + size_b) of each axis, and every other canvas position holds the mirrored image (position p shows
pixel reflect(p - offset)), so the canvas doubles as the padding a following blur needs. Tables (which input pixels
and weights make each canvas pixel) are built on the host from sizes the plan already holds: no device syncs.

Each output pixel adds its taps in MATLAB's order; a sample with fewer taps than the widest in its batch gets
zero-weight taps at the end, which leave the sum bit for bit unchanged, so a sample's pixels do not depend on its
batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from srcluster.degrade.filters import reflect_index
from srcluster.degrade.host import to_device
from srcluster.degrade.resize import contributions

# traiNNer-redux's resize modes -> srcluster.degrade.resize kernels. "lanczos" is Lanczos-3, which traiNNer
# approximates by a Lanczos pre-filter plus bicubic; "nearest-exact" is MATLAB's nearest (pixel-centre aligned).
MODE_KERNELS = {"area": "area", "bicubic": "bicubic", "bilinear": "bilinear", "lanczos": "lanczos3",
                "nearest-exact": "nearest"}


def axis_tables(in_lens: Sequence[int], out_lens: Sequence[int], modes: Sequence[str], canvas: int,
                out_offset: int = 0, in_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, P, canvas) int64, weights (B, P, canvas) float32) for one axis of a batch resample.

    Sample b reads its input at [in_offset, in_offset + in_lens[b]) of the input canvas and writes output pixel
    reflect(p - out_offset) of size out_lens[b] at canvas position p.
    """
    per_sample = []
    for n_in, n_out, mode in zip(in_lens, out_lens, modes):
        w, idx = contributions(int(n_in), int(n_out), MODE_KERNELS[mode])
        rows = reflect_index(canvas, int(n_out), out_offset)
        per_sample.append((idx[rows].T + in_offset, w[rows].T))
    taps = max(w.shape[0] for _, w in per_sample)
    indices = np.full((len(per_sample), taps, canvas), in_offset, dtype=np.int64)
    weights = np.zeros((len(per_sample), taps, canvas), dtype=np.float32)
    for b, (idx, w) in enumerate(per_sample):
        indices[b, : idx.shape[0]] = idx
        weights[b, : w.shape[0]] = w
    return torch.from_numpy(indices), torch.from_numpy(weights)


def _pass(rows: torch.Tensor, n: int, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One axis: `rows` (B * n, F) holds each sample's n lines of F values; returns (B, L, F), line l of sample b
    being sum_k weights[b, k, l] * line indices[b, k, l]. Whole lines are copied (index_select), which is far
    faster than element gathers, into one reused buffer."""
    b, taps, length = indices.shape
    lines = indices + (torch.arange(b, device=indices.device) * n).view(b, 1, 1)
    out = rows.new_zeros(b, length, rows.shape[1])
    buffer = rows.new_empty(b * length, rows.shape[1])
    for k in range(taps):  # one copy + multiply-add per tap (a few to a few dozen), in MATLAB's order
        torch.index_select(rows, 0, lines[:, k].reshape(-1), out=buffer)
        out.addcmul_(buffer.view(b, length, -1), weights[:, k, :, None])
    return out


def resample(x: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
             cols: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Resize each sample of (B, C, H, W) by its own tables (from `axis_tables`, on any device): rows, then columns."""
    b, c, h, w = x.shape
    device = x.device
    ri, rw = to_device(rows[0], device), to_device(rows[1], device, x.dtype)
    ci, cw = to_device(cols[0], device), to_device(cols[1], device, x.dtype)
    out_h, out_w = ri.shape[-1], ci.shape[-1]
    y = _pass(x.permute(0, 2, 1, 3).reshape(b * h, c * w), h, ri, rw)  # (B, out_h, C * W): lines are rows
    y = y.view(b, out_h, c, w).permute(0, 3, 1, 2).reshape(b * w, out_h * c)  # lines are columns now
    z = _pass(y, w, ci, cw)  # (B, out_w, out_h * C)
    return z.view(b, out_w, out_h, c).permute(0, 3, 2, 1).contiguous()


def dense_matrices(in_lens: Sequence[int], out_lens: Sequence[int], modes: Sequence[str], canvas: int,
                   in_canvas: int, out_offset: int = 0, in_offset: int = 0) -> np.ndarray:
    """(B, canvas, in_canvas) float32 resampling matrices for one axis: row p of sample b holds the weights that make
    its canvas position p (as in `axis_tables`). Built on the host, summing taps that mirror onto the same pixel."""
    out = np.zeros((len(in_lens), canvas, in_canvas), dtype=np.float32)
    lines = np.arange(canvas)[:, None]
    for b, (n_in, n_out, mode) in enumerate(zip(in_lens, out_lens, modes)):
        w, idx = contributions(int(n_in), int(n_out), MODE_KERNELS[mode])
        rows = reflect_index(canvas, int(n_out), out_offset)
        np.add.at(out[b], (lines, idx[rows] + in_offset), w[rows])
    return out


@contextlib.contextmanager
def _ieee_fp32(device: torch.device):
    """Matmuls in full fp32 on CUDA even if the training code allows TF32 (10-bit mantissas would cost ~0.1 level)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def resample_dense(x: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
    """Resize each square sample of (B, C, N, N) to (B, C, M, M) by its (M, N) matrix (rows, then columns), as two
    batched matmuls: BLAS beats per-tap gathers several times on CPU. Every sample of a call must have the same
    N and M (callers group samples by canvas size), which keeps each sample's arithmetic independent of its batch."""
    b, c, n, _ = x.shape
    a = to_device(matrices, x.device, x.dtype)
    m = a.shape[1]
    with _ieee_fp32(x.device):
        y = torch.bmm(a, x.permute(0, 2, 1, 3).reshape(b, n, c * n))  # (B, M, C * N): rows resized
        y = y.view(b, m, c, n).permute(0, 2, 1, 3).reshape(b, c * m, n)
        y = torch.bmm(y, a.transpose(1, 2))  # (B, C * M, M): columns resized
    return y.view(b, c, m, m)
