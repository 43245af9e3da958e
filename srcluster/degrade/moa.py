"""Mixture of augmentations (MoA), traiNNer-redux's batch augmentation of training pairs (`train.use_moa`).

For every training batch one augmentation is drawn from `moa_augs` with weights `moa_probs` and applied to the whole
(GT, LQ) pair, on the batch's device:

- ``none``: the pair as it is.
- ``mixup``: each pair blended with another pair of the batch, GT and LQ with the same ratio in [0.4, 0.6].
- ``cutmix``: one box, the same for all samples, replaced by the box of another pair (GT and LQ alike).
- ``resizemix``: one box of each pair replaced by a whole other pair shrunk into it.
- ``cutblur``: one box of the LQ replaced by the GT's box shrunk to LQ resolution.
- ``downup``: the LQ shrunk by a factor in [0.5, 0.9] and brought back to its size (the GT kept).
- ``up``: one central box of both cut out and enlarged back to the full size (a zoom).

The parameters are drawn on the host from a numpy generator and only the pixels are touched on the device, so a step
never waits for the device. The ranges, the order of the choices and the arithmetic for given choices are redux's
(`traiNNer/ops/batchaug.py`); redux draws from three generators (Python's, numpy's and torch's), this draws everything
from one seeded numpy stream, in redux's order. Where redux would stop with an error (an empty box on a tiny crop, a
zero-sized downscale) this leaves the pair as it is or keeps one pixel.

This module takes plain values (the job schema lives above the degrade layer); `train/batch.py` builds a `Mixer` from
the job's `train.moa_*` options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srcluster.degrade.host import to_device

__all__ = [
    "AUGMENTATIONS",
    "RESAMPLERS",
    "Box",
    "CutBlur",
    "CutMix",
    "DownUp",
    "Mixer",
    "Mixup",
    "ResizeMix",
    "Up",
    "choice_problem",
    "draw",
]

# the names `moa_augs` may hold, as traiNNer-redux spells them
AUGMENTATIONS = ("none", "mixup", "cutmix", "resizemix", "cutblur", "downup", "up")

# (F.interpolate mode, antialias): redux's three resamplers for `downup` and `up`; nearest is never antialiased
RESAMPLERS: tuple[tuple[str, bool], ...] = (("bicubic", True), ("bilinear", True), ("nearest-exact", False))
NEAREST = 2

# redux's parameter ranges
MIXUP_RATIO = (0.4, 0.6)  # the weight of a pair itself; its partner gets the rest
CUTMIX_MAX_MIX = 0.9  # mix drawn in [0, 0.9]; the box side is sqrt(1 - mix) of the image side
RESIZEMIX_SIDE = (0.5, 0.9)  # the box side, as a fraction of the image side
CUTBLUR_SIDE = (0.2, 0.7)
DOWNUP_FACTOR = (0.5, 0.9)
UP_SIDE = (0.5, 0.9)


@dataclass(frozen=True)
class Box:
    """Rows [top, bottom) and columns [left, right) at LQ resolution; `scale` times each at GT resolution."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def empty(self) -> bool:
        return self.bottom <= self.top or self.right <= self.left

    def lq(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def gt(self, scale: int) -> tuple[slice, slice]:
        return slice(self.top * scale, self.bottom * scale), slice(self.left * scale, self.right * scale)

    def lq_size(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


def _span(centre: int, side: int, limit: int) -> tuple[int, int]:
    """redux's box edges along one axis: `side // 2` either side of `centre`, clipped to [0, limit]."""
    half = side // 2
    return int(np.clip(centre - half, 0, limit)), int(np.clip(centre + half, 0, limit))


def _clipped_box(
    rng: np.random.Generator, rows: int, cols: int, row_side: int, col_side: int, *, cols_first: bool = False
) -> Box:
    """A box centred anywhere on the LQ grid (centres uniform over all pixels, the box clipped at the borders)."""
    if cols_first:  # resizemix draws its column centre first
        col_centre, row_centre = int(rng.integers(cols)), int(rng.integers(rows))
    else:
        row_centre, col_centre = int(rng.integers(rows)), int(rng.integers(cols))
    top, bottom = _span(row_centre, row_side, rows)
    left, right = _span(col_centre, col_side, cols)
    return Box(top, left, bottom, right)


def _order(rng: np.random.Generator, n: int) -> np.ndarray:
    """Which pair of the batch each pair is mixed with (a random permutation; a pair may draw itself)."""
    return rng.permutation(n)


def _partners(x: torch.Tensor, order: np.ndarray) -> torch.Tensor:
    return x[to_device(order, x.device, torch.long)]


def _check_sizes(gt: torch.Tensor, lq: torch.Tensor, scale: int, name: str) -> None:
    if gt.shape[-2] != lq.shape[-2] * scale or gt.shape[-1] != lq.shape[-1] * scale:
        raise ValueError(f"moa {name}: GT {tuple(gt.shape[-2:])} is not {scale}x LQ {tuple(lq.shape[-2:])}")


@dataclass(frozen=True)
class Mixup:
    ratio: float
    order: np.ndarray

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the same expression as redux (not lerp), so the float32 rounding is the same too
        mixed_gt = self.ratio * gt + (1 - self.ratio) * _partners(gt, self.order)
        mixed_lq = self.ratio * lq + (1 - self.ratio) * _partners(lq, self.order)
        return mixed_gt, mixed_lq


@dataclass(frozen=True)
class CutMix:
    box: Box
    order: np.ndarray

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_sizes(gt, lq, scale, "cutmix")
        index = to_device(self.order, gt.device, torch.long)
        gt, lq = gt.clone(), lq.clone()
        rows, cols = self.box.gt(scale)
        gt[:, :, rows, cols] = gt[index, :, rows, cols]  # the right side is read before the box is written
        rows, cols = self.box.lq()
        lq[:, :, rows, cols] = lq[index, :, rows, cols]
        return gt, lq


@dataclass(frozen=True)
class ResizeMix:
    box: Box
    order: np.ndarray

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_sizes(gt, lq, scale, "resizemix")
        if self.box.empty:  # redux cannot shrink to nothing; nothing to paste
            return gt, lq
        height, width = self.box.lq_size()
        small_gt = _shrink(_partners(gt, self.order), (height * scale, width * scale))
        small_lq = _shrink(_partners(lq, self.order), (height, width))
        gt, lq = gt.clone(), lq.clone()
        gt[(slice(None), slice(None), *self.box.gt(scale))] = small_gt
        lq[(slice(None), slice(None), *self.box.lq())] = small_lq
        return gt, lq


def _shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size, mode="bicubic", antialias=True).clamp(0, 1)


@dataclass(frozen=True)
class CutBlur:
    box: Box

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_sizes(gt, lq, scale, "cutblur")
        if self.box.empty:
            return gt, lq
        patch = gt[(slice(None), slice(None), *self.box.gt(scale))]
        # scale_factor (not size) as redux, so the antialiasing kernel's scale is the very same number; unclamped
        small = F.interpolate(patch, scale_factor=1 / scale, mode="bicubic", antialias=True)
        lq = lq.clone()
        lq[(slice(None), slice(None), *self.box.lq())] = small
        return gt, lq


@dataclass(frozen=True)
class DownUp:
    size: tuple[int, int]  # the LQ's size in between
    down: int  # indices into RESAMPLERS
    up: int

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        full = tuple(lq.shape[-2:])
        mode, antialias = RESAMPLERS[self.down]
        small = F.interpolate(lq, self.size, mode=mode, antialias=antialias)
        mode, antialias = RESAMPLERS[self.up]
        return gt, F.interpolate(small, full, mode=mode, antialias=antialias)


@dataclass(frozen=True)
class Up:
    box: Box
    lq_resampler: int  # index into RESAMPLERS; the GT is always enlarged with antialiased bicubic

    def apply(self, gt: torch.Tensor, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.box.empty:
            return gt, lq
        gt_size, lq_size = tuple(gt.shape[-2:]), tuple(lq.shape[-2:])
        gt_crop = gt[(slice(None), slice(None), *self.box.gt(scale))]
        lq_crop = lq[(slice(None), slice(None), *self.box.lq())]
        mode, antialias = RESAMPLERS[self.lq_resampler]
        return (
            F.interpolate(gt_crop, gt_size, mode="bicubic", antialias=True),
            F.interpolate(lq_crop, lq_size, mode=mode, antialias=antialias),
        )


Augmentation = Mixup | CutMix | ResizeMix | CutBlur | DownUp | Up


# What each augmentation draws, in redux's order, for a batch of `n` pairs whose LQ is rows x cols.
def _draw_mixup(rng: np.random.Generator, n: int, rows: int, cols: int) -> Mixup:
    ratio = float(rng.uniform(*MIXUP_RATIO))
    return Mixup(ratio, _order(rng, n))


def _draw_cutmix(rng: np.random.Generator, n: int, rows: int, cols: int) -> CutMix:
    mix = float(rng.uniform(0, CUTMIX_MAX_MIX))
    order = _order(rng, n)
    keep = np.sqrt(1.0 - mix)
    return CutMix(_clipped_box(rng, rows, cols, int(rows * keep), int(cols * keep)), order)


def _draw_resizemix(rng: np.random.Generator, n: int, rows: int, cols: int) -> ResizeMix:
    order = _order(rng, n)
    side = float(rng.uniform(*RESIZEMIX_SIDE))
    # redux names its axes the other way round here than in cutmix: its first centre is the box's column (for the
    # square crops it can handle). Each axis here takes its own length, which for square crops is the same thing.
    box = _clipped_box(rng, rows, cols, int(rows * side), int(cols * side), cols_first=True)
    return ResizeMix(box, order)


def _draw_cutblur(rng: np.random.Generator, n: int, rows: int, cols: int) -> CutBlur:
    side = float(rng.uniform(*CUTBLUR_SIDE))
    return CutBlur(_clipped_box(rng, rows, cols, int(rows * side), int(cols * side)))


def _draw_downup(rng: np.random.Generator, n: int, rows: int, cols: int) -> DownUp:
    down, up = int(rng.integers(len(RESAMPLERS))), int(rng.integers(len(RESAMPLERS)))
    if down == NEAREST and up == NEAREST:
        # never nearest both ways: a coin picks which one is redrawn among the other two (redux redraws until it
        # is not nearest, which is the same as a uniform pick of the others)
        if rng.random() > 0.5:
            up = int(rng.integers(NEAREST))
        else:
            down = int(rng.integers(NEAREST))
    factor = float(rng.uniform(*DOWNUP_FACTOR))
    # numpy's round (half to even) as redux; at least one pixel where redux would fail on a 1-pixel LQ
    height, width = (max(1, int(v)) for v in np.round(np.array([rows, cols]) * factor))
    return DownUp((height, width), down, up)


def _draw_up(rng: np.random.Generator, n: int, rows: int, cols: int) -> Up:
    side = float(rng.uniform(*UP_SIDE))
    half_rows, half_cols = int(rows * side) // 2, int(cols * side) // 2
    # the box lies wholly inside the image. redux bounds the column centre with the row half-width, which for the
    # square crops it handles (it asserts a square box) is the column half-width.
    row_centre = int(rng.integers(half_rows, rows - half_rows))
    col_centre = int(rng.integers(half_cols, cols - half_cols))
    box = Box(row_centre - half_rows, col_centre - half_cols, row_centre + half_rows, col_centre + half_cols)
    return Up(box, int(rng.integers(len(RESAMPLERS))))


DRAWS: dict[str, Callable[[np.random.Generator, int, int, int], Augmentation]] = {
    "mixup": _draw_mixup,
    "cutmix": _draw_cutmix,
    "resizemix": _draw_resizemix,
    "cutblur": _draw_cutblur,
    "downup": _draw_downup,
    "up": _draw_up,
}


def draw(rng: np.random.Generator, name: str, n: int, rows: int, cols: int) -> Augmentation | None:
    """The parameters of augmentation `name` for `n` pairs with a rows x cols LQ (None for "none")."""
    return None if name == "none" else DRAWS[name](rng, n, rows, cols)


def choice_problem(augs: Sequence[str], probs: Sequence[float]) -> tuple[str, str] | None:
    """(option, what is wrong) for an (augs, probs) pair, or None. redux stops at its first batch on different lengths
    (its own defaults differ: 4 names, 5 weights) and on a zero total weight, and at an unknown name when drawn."""
    unknown = [a for a in augs if a not in AUGMENTATIONS]
    if unknown:
        return "moa_augs", f"unknown augmentation(s) {unknown}; known: {list(AUGMENTATIONS)}"
    if len(augs) != len(probs):
        return "moa_probs", f"{len(probs)} probabilities for {len(augs)} moa_augs; give one per augmentation"
    if any(not np.isfinite(p) or p < 0 for p in probs) or sum(probs) <= 0:
        return "moa_probs", "probabilities must be finite, not negative, and not all zero"
    return None


class Mixer:
    """Draws and applies one augmentation per batch. The weights need not sum to 1 (redux normalises them too)."""

    def __init__(self, augs: Sequence[str], probs: Sequence[float], scale: int, rng: np.random.Generator):
        problem = choice_problem(augs, probs)
        if problem is not None:
            raise ValueError(f"moa: {problem[0]}: {problem[1]}")
        self.augs, self.scale, self.rng = list(augs), int(scale), rng
        weights = np.asarray(probs, dtype=np.float64)
        self.cumulative = np.cumsum(weights)

    def pick(self) -> str:
        """One name, with probability proportional to its weight (redux's `random.choices`: a uniform draw times
        the total, located among the cumulative weights)."""
        u = self.rng.random() * self.cumulative[-1]
        index = int(np.searchsorted(self.cumulative, u, side="right"))
        return self.augs[min(index, len(self.augs) - 1)]

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented (GT, LQ) pair: new tensors where anything changed, the inputs are never written."""
        if gt.shape[0] < 2:  # as redux, for every choice: the mixing ones need a partner
            raise ValueError(
                "moa: augmentations need batches of more than one pair (datasets.train.batch_size_per_gpu)"
            )
        augmentation = draw(self.rng, self.pick(), gt.shape[0], lq.shape[-2], lq.shape[-1])
        if augmentation is None:
            return gt, lq
        return augmentation.apply(gt, lq, self.scale)
