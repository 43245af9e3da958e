"""Validation images, whole: (name, HR [, LR]) for every image of a folder or shard set, split over ranks."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import torch

from srcluster.data.images import ImageError, decode_rgb
from srcluster.data.remote import read_bytes
from srcluster.data.sources import list_image_files, pair_files
from srcluster.data.units import Tally, is_shard_set, read_unit, shard_units

log = logging.getLogger(__name__)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _val_items(gt: str, lq: str | None, scale: int) -> Iterator[tuple[str, Callable[[], tuple[bytes, bytes | None]]]]:
    """(name, how to get its encoded HR and LR) for every image of a validation set, in a fixed order. Names are
    sample keys (shard sets) or relative paths without extension (folders); folder images are read only when used."""
    if is_shard_set(gt):
        tally, totals = Tally(), Counter()
        for unit in shard_units(gt, lq, scale):
            for sample in read_unit(unit, lq is not None, tally, totals):
                yield sample.key, (lambda s=sample: (s.hr, s.lr))
        return
    pairs, problems, _ = pair_files(list_image_files(gt), list_image_files(lq) if lq is not None else None)
    for url, reason in problems:
        log.warning("validation image %s left out: %s", url, reason)
    for pair in pairs:
        yield pair.hr.stem, (lambda p=pair: (read_bytes(p.hr.url), read_bytes(p.lr.url) if p.lr else None))


def _validation(
    gt: str, lq: str | None, scale: int, rank: int, world_size: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    for index, (name, load) in enumerate(_val_items(gt, lq, scale)):
        if index % world_size != rank:
            continue
        try:
            hr_data, lr_data = load()
            hr = decode_rgb(hr_data)
            lr = decode_rgb(lr_data) if lr_data is not None else None
        except (ImageError, OSError) as exc:  # a validation set should be fixed, not crash a finished epoch
            log.warning("skipping unreadable validation image %s in %s: %s", name, gt, exc)
            continue
        if lr is not None and hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            log.warning(
                "skipping validation image %s: HR %s is not %d x LR %s", name, hr.shape[:2], scale, lr.shape[:2]
            )
            continue
        yield name, hr, lr


def iter_images(url: str, *, rank: int = 0, world_size: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, uint8 3 x H x W) for every image of a folder (any fsspec URL) or of a shard set, in a fixed order.

    With `world_size` > 1 this rank gets images rank, rank + world_size, ... (gather the results on one rank).
    Undecodable images are skipped with a warning.
    """
    for name, hr, _ in _validation(url, None, 1, rank, world_size):
        yield name, _to_tensor(hr)


def iter_pairs(
    gt: str, lq: str, *, scale: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, HR uint8 3 x H x W, LR uint8 3 x H/scale x W/scale) for a paired validation set: folders paired by
    relative path and stem, or a shard set built with LR (then `lq` is its own URL). Split over ranks as iter_images."""
    for name, hr, lr in _validation(gt, lq, scale, rank, world_size):
        assert lr is not None  # with `lq` given, samples without an LR partner are left out before this
        yield name, _to_tensor(hr), _to_tensor(lr)
