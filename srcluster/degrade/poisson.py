"""Exact Poisson sampling for BasicSR's shot noise by alias tables: two gathers a pixel instead of a rejection loop.

BasicSR draws counts ~ Poisson(level / 255 * vals) with `level` the 8-bit pixel value (0..255) and `vals` a power of
two from 1 to 256, so there are only 9 x 256 distinct rates. For each we build Walker's alias table once (Vose's
method) over 0..K-1 with K = vals + 10 sqrt(vals) + 15, beyond which the Poisson tail mass is below 1e-20, and sample
with one uniform: j = floor(u K), keep j if frac(u K) < prob[j], else take alias[j]. On CPU this measured several
times faster than torch.poisson or numpy's sampler, and being a pure function of u it needs no per-sample state.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
import torch

VALS_LOG2 = range(9)  # vals = 1, 2, 4, ..., 256
LEVELS = 256


def _width(vals: float) -> int:
    """Columns of the alias tables for rates up to vals: the Poisson tail beyond has mass below 1e-20."""
    return math.floor(vals + 10 * math.sqrt(vals) + 15)


def _pmf(rate: float, width: int) -> np.ndarray:
    if rate == 0:
        out = np.zeros(width)
        out[0] = 1
        return out
    k = torch.arange(width, dtype=torch.float64)
    p = torch.exp(k * math.log(rate) - rate - torch.lgamma(k + 1)).numpy()
    return p / p.sum()


def _vose(p: np.ndarray) -> tuple[list[float], list[int]]:
    """Walker's alias table for pmf p: accept column j with probability prob[j], else go to alias[j]."""
    width = len(p)
    scaled = (p * width).tolist()
    prob, alias = [1.0] * width, list(range(width))
    small = [i for i in range(width) if scaled[i] < 1]
    large = [i for i in range(width) if scaled[i] >= 1]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] += scaled[s] - 1
        (small if scaled[g] < 1 else large).append(g)
    return prob, alias  # leftovers keep prob 1 (rounding residue only)


@lru_cache(maxsize=1)
def _tables_cpu() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flat alias tables for the 9 x 256 rates, row (vals_log2 * 256 + level) of `full` columns, of which the first
    _width(vals) are used (zero-probability columns included, which Vose handles): (prob, alias, full), float32.
    Built once per process (about a second)."""
    full = _width(2 ** VALS_LOG2[-1])
    prob = np.ones((len(VALS_LOG2) * LEVELS, full), dtype=np.float32)
    alias = np.zeros((len(VALS_LOG2) * LEVELS, full), dtype=np.float32)
    for e in VALS_LOG2:
        width = _width(2**e)
        for level in range(LEVELS):
            row = e * LEVELS + level
            prob[row, :width], alias[row, :width] = _vose(_pmf(level / 255 * 2**e, width))
    return torch.from_numpy(prob).flatten(), torch.from_numpy(alias).flatten(), full


@cache
def _widths(device: torch.device) -> torch.Tensor:
    return torch.tensor([float(_width(2**e)) for e in VALS_LOG2], device=device)


_device_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, int]] = {}


def _tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    if device not in _device_tables:
        prob, alias, full = _tables_cpu()
        _device_tables[device] = (prob.to(device), alias.to(device), full)
    return _device_tables[device]


def poisson_from_uniform(levels: torch.Tensor, vals: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Poisson(levels / 255 * vals) counts (float32), from two independent uniforms u, v in [0, 1) per count.

    levels: float32 whole numbers 0..255, (n, ...); vals: float32 powers of two 1..256, (n, 1, ...) per sample.
    Index arithmetic stays in float32 (exact below 2^24), which is several times faster than int64 on CPU.
    """
    prob, alias, full = _tables(levels.device)
    e = torch.log2(vals).round_()
    width = _widths(levels.device).take(e.long())  # per sample
    column = (u * width).floor_()
    flat = levels.mul(full).add_(column).add_(e * (LEVELS * full)).long()
    return torch.where(v < prob.take(flat), column, alias.take(flat))
