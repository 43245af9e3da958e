"""From encoded samples to batches: the shuffle buffer, decode + aligned random crop + augment (traiNNer's), the
bookkeeping that stops a stream in which nothing gives a crop, and the batch filled in place, with on-the-fly
degradations drawn (and applied) per sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch

from srcluster.data.images import decode, to_rgb8
from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import Plan, apply, draw


def shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of `size`; it fills two items per item out, so the first batch comes early."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    start = max(1, size // 8)
    for item in items:
        buf.append(item)
        if len(buf) < size:
            extra = next(items, None)
            if extra is not None:
                buf.append(extra)
        if len(buf) >= start:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()


def _augment(patches: list[np.ndarray], rng: np.random.Generator, hflip: bool, rot: bool) -> list[np.ndarray]:
    """traiNNer's `augment`: the same horizontal flip, vertical flip and transpose for HR and LR."""
    flip, vflip, rot90 = rng.random(3) < 0.5
    if hflip and flip:
        patches = [p[:, ::-1] for p in patches]
    if rot and vflip:
        patches = [p[::-1] for p in patches]
    if rot and rot90:
        patches = [p.transpose(1, 0, 2) for p in patches]
    return patches


def random_crop(
    hr_data: bytes,
    lr_data: bytes | None,
    crop: int,
    scale: int,
    rng: np.random.Generator,
    hflip: bool = True,
    rot: bool = True,
) -> list[np.ndarray] | str:
    """[HR crop] or, with LR, [HR crop, LR crop] (crop and crop / scale square, aligned) as H x W x 3 uint8 RGB arrays
    (possibly views), or the reason there is none ("too_small", "size_mismatch"). Undecodable data raises.

    Only the crop window is converted to RGB (16-bit, gray and alpha conversions cost per pixel).
    """
    hr, hr_bgr = decode(hr_data)
    if lr_data is None:
        height, width = hr.shape[:2]
        if height < crop or width < crop:
            return "too_small"
        y, x = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
        patches = [to_rgb8(hr[y : y + crop, x : x + crop], hr_bgr)]
    else:
        lr, lr_bgr = decode(lr_data)
        (height, width), size = lr.shape[:2], crop // scale
        if hr.shape[:2] != (height * scale, width * scale):
            return "size_mismatch"
        if height < size or width < size:
            return "too_small"
        y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        patches = [
            to_rgb8(hr[y * scale : (y + size) * scale, x * scale : (x + size) * scale], hr_bgr),
            to_rgb8(lr[y : y + size, x : x + size], lr_bgr),
        ]
    return _augment(patches, rng, hflip, rot)


class Passes:
    """Which pass over this worker's units each sample came from, so that a pass in which no sample gave a crop
    (everything too small, corrupt, ...) stops the stream instead of spinning forever."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.used: Counter = Counter()
        self.good: Counter = Counter()

    def ended(self, index: int, size: int) -> None:
        self.sizes[index] = size

    def record(self, index: int, ok: bool) -> bool:
        """Count one sample of pass `index`; True when that pass is over and none of its samples gave a crop."""
        self.used[index] += 1
        self.good[index] += ok
        if self.used[index] < self.sizes.get(index, -1):
            return False
        if index in self.sizes:
            failed = self.good[index] == 0
            del self.sizes[index], self.used[index], self.good[index]
            return failed
        return False


class Batch:
    """One batch being filled in place: each crop is copied once, straight into the tensors that leave the worker
    (allocated in shared memory when in a worker, so the DataLoader hands them over without another copy)."""

    def __init__(self, size: int, crop: int, lr_crop: int | None, shared: bool, with_keys: bool):
        shapes = [(size, 3, crop, crop)] + ([(size, 3, lr_crop, lr_crop)] if lr_crop else [])
        self.tensors = [torch.empty(shape, dtype=torch.uint8) for shape in shapes]
        self.shared = shared
        if shared:
            self.tensors = [t.share_memory_() for t in self.tensors]
        self.arrays = [t.numpy() for t in self.tensors]
        self.with_keys = with_keys
        self.keys: list[str] = []
        self.seeds: list[int] = []
        self.plan: Plan | None = None  # the drawn degradations, when the training step applies them
        self.size, self.count = size, 0

    def add(self, patches: list[np.ndarray], key: str, seed: int) -> None:
        for array, patch in zip(self.arrays, patches, strict=True):
            np.copyto(array[self.count], patch.transpose(2, 0, 1))
        self.keys.append(key)
        self.seeds.append(seed)
        self.count += 1

    def degrade(self, cfg: Degradations, scale: int, apply_here: bool) -> None:
        """Draw each sample's degradations from its seed; apply them here (LR joins the batch as uint8, exact: the
        pipeline rounds LR to 8 bits) or leave the plan for the training step."""
        hr = self.tensors[0]
        plan = draw(cfg, self.seeds, scale, hr.shape[-1])
        if not apply_here:
            self.plan = plan
            return
        lr = torch.empty((hr.shape[0], 3, plan.lq_size, plan.lq_size), dtype=torch.uint8)
        if self.shared:
            lr.share_memory_()
        lr.copy_(apply(hr, plan).mul_(255).round_())
        self.tensors.append(lr)

    def output(self, counts: torch.Tensor) -> tuple:
        plan = [self.plan] if self.plan is not None else []
        return (*self.tensors, *plan, *([self.keys] if self.with_keys else []), counts)
