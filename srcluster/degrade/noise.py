"""Gaussian and Poisson noise (BasicSR's `*_noise_pt`), colour or gray, per sample, into a canvas of images.

Each sample's random numbers come from its own torch.Generator, seeded by its plan and drawn at the sample's own size,
so its noise does not depend on which batch it is in, or where. That draw is the only per-sample step; scaling, the
gray/colour choice, Poisson's level counting and sampling are batched. (A counter-based generator in torch ops would
remove that loop too, but on CPU it measured ~10x slower than torch's own generator.)

With `otf_draws: per_batch` (traiNNer-redux's draws) the samples of a batch share their size, and the noise step has one
stream for the whole batch (`Noise.batch_seed`): one draw of the batch's shape, as redux draws it, and no loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from srcluster.degrade.host import to_device
from srcluster.degrade.poisson import poisson_from_uniform

NONE, GAUSSIAN, POISSON = 0, 1, 2


@dataclass
class Noise:
    """One noise step: per sample its kind, sigma (0..255 units) or Poisson scale, gray or colour, stream seed."""

    kind: np.ndarray  # int8: NONE, GAUSSIAN, POISSON
    strength: np.ndarray
    gray: np.ndarray
    seed: np.ndarray
    batch_seed: int | None = None  # one stream for the whole batch (per_batch draws) instead of one per sample

    def describe(self, i: int) -> str | None:
        gray = "gray " if self.gray[i] else ""
        if self.kind[i] == GAUSSIAN:
            return f"{gray}gaussian noise sigma {self.strength[i]:.1f}"
        if self.kind[i] == POISSON:
            return f"{gray}poisson noise scale {self.strength[i]:.2f}"
        return None


def _draws(
    noise: Noise, rows: np.ndarray, sizes: np.ndarray, offset: int, canvas: torch.Tensor, kind: str, fields: int = 1
) -> torch.Tensor:
    """(fields, n, 3, H, W) standard normals or uniforms, each sample's drawn from its own stream at its own size
    (one channel if its noise is gray) and placed at [offset, offset + size) of the canvas."""
    n, (h, w) = len(rows), canvas.shape[-2:]
    draw = torch.randn if kind == "normal" else torch.rand
    if noise.batch_seed is not None:
        return _batch_draw(noise, rows, sizes, offset, (fields, n, 3, h, w), draw, canvas.device)
    out = torch.zeros(fields, n, 3, h, w, device=canvas.device)
    for j, b in enumerate(rows):  # the one per-sample step: each sample's own stream (see the module docstring)
        s, channels = int(sizes[b]), 1 if noise.gray[b] else 3
        generator = torch.Generator(device=canvas.device).manual_seed(int(noise.seed[b]))
        values = draw((fields, channels, s, s), generator=generator, device=canvas.device)
        out[:, j, :channels, offset : offset + s, offset : offset + s] = values
    return out


def _batch_draw(
    noise: Noise, rows: np.ndarray, sizes: np.ndarray, offset: int, shape: tuple, draw, device: torch.device
) -> torch.Tensor:
    """`_draws` from the batch's one stream: every sample of `rows` has the same size (per_batch draws), the canvas is
    filled in one call, and a gray sample's three channels take its first one."""
    s = {int(sizes[b]) for b in rows}
    if len(s) != 1 or offset or shape[-1] != next(iter(s)) or shape[-2] != shape[-1]:
        raise ValueError(f"a batch noise stream needs samples of one size filling the canvas, got sizes {sorted(s)}")
    generator = torch.Generator(device=device).manual_seed(int(noise.batch_seed or 0))
    values = draw(shape, generator=generator, device=device)
    gray = to_device(noise.gray[rows], device).view(1, -1, 1, 1, 1)
    return torch.where(gray, values[:, :, :1].expand_as(values), values)


def _valid(sizes: np.ndarray, offset: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(n, 1, H, W) bool: where each sample's image is in the canvas."""
    h, w = shape
    size = to_device(sizes, device).view(-1, 1, 1, 1)
    ys = torch.arange(h, device=device).view(1, 1, -1, 1) - offset
    xs = torch.arange(w, device=device).view(1, 1, 1, -1) - offset
    return (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)


def add_noise(x: torch.Tensor, noise: Noise, rows: np.ndarray, sizes: np.ndarray, offset: int = 0) -> torch.Tensor:
    """x (n, 3, H, W): a canvas holding samples `rows` (ids into the noise plan and `sizes`), sample rows[j]'s image at
    [offset, offset + sizes[rows[j]]) of x[j]. Adds each sample's noise and clips to [0, 1], in place."""
    for kind, fn in ((GAUSSIAN, _gaussian), (POISSON, _poisson)):
        local = np.flatnonzero(noise.kind[rows] == kind)
        if len(local):
            index = to_device(local, x.device)
            x[index] = fn(x[index], noise, rows[local], sizes, offset)
    return x


def _gray_select(noise: Noise, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_device(noise.gray[rows], device).view(-1, 1, 1, 1)


def _gaussian(x: torch.Tensor, noise: Noise, rows: np.ndarray, sizes: np.ndarray, offset: int) -> torch.Tensor:
    if noise.batch_seed is not None:  # the whole batch from one stream: one draw, one multiply-add
        z = _draws(noise, rows, sizes, offset, x, "normal")[0]
        sigma = to_device(noise.strength[rows], x.device, x.dtype).view(-1, 1, 1, 1) / 255
        return x.add_(z.mul_(sigma)).clamp_(0, 1)
    for j, b in enumerate(rows):  # each sample's own stream, added straight into its own image (no canvas-size pass)
        s, channels = int(sizes[b]), 1 if noise.gray[b] else 3  # gray: one field for the three channels
        generator = torch.Generator(device=x.device).manual_seed(int(noise.seed[b]))
        z = torch.randn((channels, s, s), generator=generator, device=x.device)
        x[j, :, offset : offset + s, offset : offset + s].add_(z, alpha=float(noise.strength[b]) / 255)
    return x.clamp_(0, 1)


def _poisson(x: torch.Tensor, noise: Noise, rows: np.ndarray, sizes: np.ndarray, offset: int) -> torch.Tensor:
    """BasicSR's Poisson noise: counts ~ Poisson(img * vals) / vals, where img is rounded to 8 bits and vals is the
    number of its distinct levels rounded up to a power of two (few levels: coarser, stronger shot noise)."""
    gray = noise.gray[rows]
    source = x
    if gray.any():
        luma = (x * x.new_tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # rgb_to_grayscale
        source = torch.where(_gray_select(noise, rows, x.device), luma.expand_as(x), x)
    valid = _valid(sizes[rows], offset, (x.shape[-2], x.shape[-1]), x.device)
    # levels outside each image are 0: rate 0 draws 0, so the noise there is exactly 0 without another mask
    levels = torch.where(valid, source.clamp(0, 1).mul(255).round_(), 0)
    # distinct levels per sample over its own pixels: a histogram, less the zeros standing for the rest of the canvas
    ones = torch.ones(1, device=x.device).expand(len(rows), levels[0].numel())
    counts = torch.zeros(len(rows), 256, device=x.device).scatter_add_(1, levels.long().flatten(1), ones)
    outside = to_device(3 * (x.shape[-2] * x.shape[-1] - sizes[rows].astype(np.int64) ** 2), x.device, torch.float32)
    counts[:, 0] -= outside
    distinct = (counts > 0).sum(1).clamp_(min=1)
    vals = torch.exp2(torch.ceil(torch.log2(distinct.float()))).view(-1, 1, 1, 1)
    uv = _draws(noise, rows, sizes, offset, x, "uniform", fields=2)
    if gray.any():
        uv = torch.where(_gray_select(noise, rows, x.device), uv[:, :, :1].expand_as(uv), uv)  # one count, 3 channels
    drawn = poisson_from_uniform(levels, vals, uv[0], uv[1])
    scale = to_device(noise.strength[rows], x.device, x.dtype).view(-1, 1, 1, 1)
    return x.add_(drawn.div_(vals).sub_(levels.div_(255)).mul_(scale)).clamp_(0, 1)
