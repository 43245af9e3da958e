"""From encoded samples to batches: the shuffle buffer, decode once + aligned random crops + augment (traiNNer's), the
pool that spreads the crops of one decoded tile over batches (`CropPool`; a crop carries a paired crop beside its
on-the-fly one where paired LR is mixed in), the bookkeeping that stops a stream in which nothing gives a crop
(`Rounds`), and the batch filled in place, with on-the-fly degradations drawn (and applied) per crop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from srcluster.data.images import decode, to_rgb8
from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import Plan, draw, pair
from srcluster.degrade.pool import PairPool


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


class Decoded(NamedTuple):
    """One sample's pixels, decoded once however many crops are cut from it (`crop_decoded`)."""

    hr: np.ndarray
    hr_bgr: bool
    lr: np.ndarray | None = None
    lr_bgr: bool = False


def decode_sample(hr_data: bytes, lr_data: bytes | None) -> Decoded:
    """Decode a sample's HR image and, when paired, its LR partner. Undecodable data raises."""
    hr, hr_bgr = decode(hr_data)
    if lr_data is None:
        return Decoded(hr, hr_bgr)
    lr, lr_bgr = decode(lr_data)
    return Decoded(hr, hr_bgr, lr, lr_bgr)


def random_crop(
    hr_data: bytes,
    lr_data: bytes | None,
    crop: int,
    scale: int,
    rng: np.random.Generator,
    hflip: bool = True,
    rot: bool = True,
    pad: bool = False,
) -> list[np.ndarray] | str:
    """Decode a sample and cut one crop from it: `crop_decoded(decode_sample(...))`. Undecodable data raises."""
    return crop_decoded(decode_sample(hr_data, lr_data), crop, scale, rng, hflip, rot, pad)


def crop_decoded(
    sample: Decoded,
    crop: int,
    scale: int,
    rng: np.random.Generator,
    hflip: bool = True,
    rot: bool = True,
    pad: bool = False,
) -> list[np.ndarray] | str:
    """[HR crop] or, with LR, [HR crop, LR crop] (crop and crop / scale square, aligned) as H x W x 3 uint8 RGB arrays
    (possibly views), or the reason there is none ("too_small", "size_mismatch"), which depends on the image only (no
    draw is made before it is known).

    With `pad` (HR only) an image smaller than the crop is not skipped: it is padded with black at the bottom and
    right, after its flips, as traiNNer-redux's RealESRGANDataset pads (`embed`) after augmenting.
    Only the crop window is converted to RGB (16-bit, gray and alpha conversions cost per pixel).
    """
    hr, hr_bgr = sample.hr, sample.hr_bgr
    if sample.lr is None:
        height, width = hr.shape[:2]
        if (height < crop or width < crop) and not pad:
            return "too_small"
        y, x = int(rng.integers(max(0, height - crop) + 1)), int(rng.integers(max(0, width - crop) + 1))
        patches = [to_rgb8(hr[y : y + crop, x : x + crop], hr_bgr)]
        if patches[0].shape[:2] != (crop, crop):
            return [_pad(p, crop) for p in _augment(patches, rng, hflip, rot)]
    else:
        lr = sample.lr
        (height, width), size = lr.shape[:2], crop // scale
        if hr.shape[:2] != (height * scale, width * scale):
            return "size_mismatch"
        if height < size or width < size:
            return "too_small"
        y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        patches = [
            to_rgb8(hr[y * scale : (y + size) * scale, x * scale : (x + size) * scale], hr_bgr),
            to_rgb8(lr[y : y + size, x : x + size], sample.lr_bgr),
        ]
    return _augment(patches, rng, hflip, rot)


def _pad(patch: np.ndarray, side: int) -> np.ndarray:
    """patch at the top left of a black side x side image."""
    out = np.zeros((side, side, 3), dtype=np.uint8)
    out[: patch.shape[0], : patch.shape[1]] = patch
    return out


class Rounds:
    """Which round of passes (in which a slot reads all of the data, see `units.Split`) each sample came from, so that a
    round in which no sample gave a crop (everything too small, corrupt, ...) stops the stream instead of spinning
    forever."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}  # samples read in each round that has ended
        self.used: Counter = Counter()
        self.good: Counter = Counter()

    def ended(self, index: int, size: int) -> None:
        self.sizes[index] = size

    def record(self, index: int, ok: bool) -> bool:
        """Count one sample of round `index`; True when some round is over and none of its samples gave a crop.

        A round's end is only known once the reader has moved past it, which (with no shuffle buffer) is after its
        last sample was recorded here; so every ended round is looked at, not only the sample's own."""
        self.used[index] += 1
        self.good[index] += ok
        failed = False
        for done in [i for i, size in self.sizes.items() if self.used[i] >= size]:
            failed |= self.good[done] == 0
            del self.sizes[done], self.used[done], self.good[done]
        return failed


class Crop(NamedTuple):
    tile: int  # which decoded sample it was cut from (a number per decode in this worker)
    patches: list[np.ndarray]  # [HR] or [HR, LR], as `crop_decoded` returns them
    key: str
    seed: int  # its own per-sample seed: crop, flips and degradations
    # With paired LR mixed into on-the-fly LR: the sample's [HR, LR] crop too, cut from the same decode (`patches` then
    # holds the HR crop to degrade), so the batch, once it knows its kind, takes the one it needs
    paired: list[np.ndarray] | None = None


class CropPool:
    """Crops waiting for a batch, when each decoded sample gives several (`crops_per_tile`).

    The crops of one tile arrive together, so handing them out in order would put them side by side in one batch;
    the pool keeps `size` crops and hands out a random one whose tile the batch does not hold yet. With `size` at
    least batch size x crops per tile that is always possible: the tiles a batch already holds (at most batch - 1)
    keep at most crops per tile - 1 crops each in the pool, fewer than it holds. A pool of size 1 hands crops out
    in the order they came (one crop per tile needs no mixing beyond the shuffle buffer of encoded samples)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.crops: list[Crop] = []

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def hungry(self) -> bool:
        return len(self.crops) < self.size

    def add(self, crop: Crop) -> None:
        self.crops.append(crop)

    def take(self, tiles_in_batch: set[int]) -> Crop:
        if len(self.crops) == 1:
            return self.crops.pop()
        fresh = [i for i, crop in enumerate(self.crops) if crop.tile not in tiles_in_batch]
        candidates = fresh or range(len(self.crops))  # a tile twice in one batch only where nothing else is left
        index = candidates[int(self.rng.integers(len(candidates)))]
        self.crops[index], self.crops[-1] = self.crops[-1], self.crops[index]
        return self.crops.pop()


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

    def degrade(
        self, cfg: Degradations, scale: int, gt_size: int, apply_here: bool, pair_pool: PairPool | None = None
    ) -> None:
        """Draw each sample's degradations from its seed for the crops of this batch (`crop_size`, larger than
        gt_size with high-order degradations); apply them here and cut the gt_size pair (LR joins the batch as uint8,
        exact: the pipeline rounds LR to 8 bits), or leave the plan for the training step. With `pair_pool`
        (per_batch draws) the batch leaves the pairs the pool gives back for it (its keys stay those of the crops
        cut for it)."""
        hr = self.tensors[0]
        plan = draw(cfg, self.seeds, scale, gt_size, crop=hr.shape[-1])
        if not apply_here:
            self.plan = plan
            return
        hr_patch, lr_patch = pair(hr, plan)
        out = [torch.empty((hr.shape[0], 3, side, side), dtype=torch.uint8) for side in (gt_size, plan.lq_size)]
        if self.shared:
            out = [t.share_memory_() for t in out]
        made = hr_patch.to(torch.uint8), lr_patch.mul_(255).round_().to(torch.uint8)
        if pair_pool is not None:
            made = pair_pool.swap(*made)
        out[0].copy_(made[0])
        out[1].copy_(made[1])
        self.tensors = out

    def output(self, counts: torch.Tensor) -> tuple:
        plan = [self.plan] if self.plan is not None else []
        return (*self.tensors, *plan, *([self.keys] if self.with_keys else []), counts)
