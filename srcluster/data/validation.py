"""Validation images, whole: (name, HR [, LR]) for every image of one or several folders or shard sets, split over
ranks.

A validation set's `dataroot_gt` (and `dataroot_lq`) may list several folders, as traiNNer-redux's do: the i-th LR
folder pairs with the i-th HR folder, by relative path and stem (`data/sources.py`). As traiNNer-redux's paired dataset
does at validation, the HR of a pair is cut to `scale` x its LR from the top left, so an HR a few pixels too large
(an odd-sized original downscaled with rounding down) is still used; one smaller than that is left out with a warning.
"""

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
from srcluster.errors import SrclusterError

log = logging.getLogger(__name__)

Urls = str | list[str]


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _as_list(urls: Urls) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


def _val_items(gt: str, lq: str | None, scale: int) -> Iterator[tuple[str, Callable[[], tuple[bytes, bytes | None]]]]:
    """(name, how to get its encoded HR and LR) for every image of one folder or shard set, in a fixed order. Names
    are sample keys (shard sets) or relative paths without extension (folders); folder images are read when used."""
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


def _all_items(gt: Urls, lq: Urls | None, scale: int) -> Iterator[tuple[str, Callable[[], tuple[bytes, bytes | None]]]]:
    """_val_items over every (HR, LR) folder pair; a name already used by an earlier folder gets `~<folder number>`
    appended, so names stay unique across the folders of a set."""
    gts, lqs = _as_list(gt), (_as_list(lq) if lq is not None else None)
    if lqs is not None and len(lqs) != len(gts):
        raise SrclusterError(f"dataroot_lq has {len(lqs)} entries but dataroot_gt has {len(gts)}: give one each")
    seen: set[str] = set()
    for index, folder in enumerate(gts):
        for name, load in _val_items(folder, lqs[index] if lqs is not None else None, scale):
            unique = name if name not in seen else f"{name}~{index + 1}"
            seen.add(unique)
            yield unique, load


def _paired_hr(name: str, hr: np.ndarray, lr: np.ndarray, scale: int) -> np.ndarray | None:
    """HR cut to `scale` x LR from the top left (traiNNer-redux's validation crop), or None when it is too small."""
    height, width = lr.shape[0] * scale, lr.shape[1] * scale
    if hr.shape[0] < height or hr.shape[1] < width:
        log.warning(
            "skipping validation image %s: HR %s is smaller than %d x LR %s", name, hr.shape[:2], scale, lr.shape[:2]
        )
        return None
    return hr[:height, :width]


def _validation(
    gt: Urls, lq: Urls | None, scale: int, rank: int, world_size: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    for index, (name, load) in enumerate(_all_items(gt, lq, scale)):
        if index % world_size != rank:
            continue
        try:
            hr_data, lr_data = load()
            hr = decode_rgb(hr_data)
            lr = decode_rgb(lr_data) if lr_data is not None else None
        except (ImageError, OSError) as exc:  # a validation set should be fixed, not crash a finished epoch
            log.warning("skipping unreadable validation image %s in %s: %s", name, gt, exc)
            continue
        if lr is not None and (hr := _paired_hr(name, hr, lr, scale)) is None:
            continue
        yield name, hr, lr


def iter_images(url: Urls, *, rank: int = 0, world_size: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, uint8 3 x H x W) for every image of one or several folders (any fsspec URL) or shard sets, in a fixed
    order.

    With `world_size` > 1 this rank gets images rank, rank + world_size, ... (gather the results on one rank).
    Undecodable images are skipped with a warning.
    """
    for name, hr, _ in _validation(url, None, 1, rank, world_size):
        yield name, _to_tensor(hr)


def iter_pairs(
    gt: Urls, lq: Urls, *, scale: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, HR uint8 3 x scale*h x scale*w, LR uint8 3 x h x w) for a paired validation set: folders paired by
    relative path and stem (the i-th of `lq` with the i-th of `gt`), or shard sets built with LR (then `lq` names the
    same URLs). Split over ranks as iter_images."""
    for name, hr, lr in _validation(gt, lq, scale, rank, world_size):
        assert lr is not None  # with `lq` given, samples without an LR partner are left out before this
        yield name, _to_tensor(hr), _to_tensor(lr)
