"""The units of training data: shards (`*.tar`, many samples each) and image files (one sample each, with the URL of
its LR partner in paired folders), found from shard sets and folders, split over ranks and DataLoader workers, and read
into samples that are still encoded.

Nothing is dropped silently: a sample or shard that cannot be used is counted under one of REASONS, in the worker's
Tally that travels to the main process with each batch, and logged now and then.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from srcluster.data.images import IMAGE_EXTS
from srcluster.data.manifest import is_shard_pattern, manifest_url, read_manifest, shard_set_root, shard_urls
from srcluster.data.remote import IO_COUNTS, is_remote, open_for_reading, read_bytes, reader_filesystem, retrying
from srcluster.data.sources import join_url, list_image_files, pair_files
from srcluster.data.tar_reader import iter_tar, split_member
from srcluster.errors import SrclusterError, StorageError

log = logging.getLogger(__name__)

TAR_IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTS)
REASONS = ("corrupt", "too_small", "bad_shard", "unreadable", "no_image", "unpaired", "size_mismatch")
COUNTERS = (*REASONS, "io_retries")  # the order of the count vector that travels with each batch


# --- finding the units ------------------------------------------------------------------------------------------


class Unit(NamedTuple):
    url: str  # a shard, or an image file
    lr: str | None = None  # the LR partner of an image file (paired folders); shards carry their LR inside
    samples: int | None = None  # how many samples the manifest lists for this shard


def is_shard_set(url: str) -> bool:
    if is_shard_pattern(url):
        return True
    fs, path = reader_filesystem(manifest_url(url))
    try:
        return retrying(lambda: fs.exists(path), f"reading {url}") if is_remote(fs) else fs.exists(path)
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc}") from None


def _as_list(urls: str | list[str]) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


def shard_units(gt: str, lq: str | None, scale: int) -> list[Unit]:
    if lq is not None:
        if lq.rstrip("/") != gt.rstrip("/"):
            raise SrclusterError(
                f"{gt} is a shard set, which holds its LR images itself: set dataroot_lq to the same "
                f"URL as dataroot_gt (not {lq})"
            )
        if not is_shard_pattern(gt):
            manifest = read_manifest(gt)
            if not manifest.get("paired"):
                raise SrclusterError(
                    f"{gt} holds no LR images (built without LR folders); leave dataroot_lq unset to make LR on the fly"
                )
            if manifest.get("scale") != scale:
                raise SrclusterError(f"{gt} pairs LR at scale {manifest.get('scale')}, but the job's scale is {scale}")
    if is_shard_pattern(gt):
        return [Unit(url) for url in shard_urls(gt)]
    root = shard_set_root(gt)
    return [Unit(join_url(root, shard["name"]), None, shard["samples"]) for shard in read_manifest(gt)["shards"]]


def _folder_units(gt: str, lq: str | None, unpaired: Counter) -> list[Unit]:
    hr = list_image_files(gt)
    if not hr:
        raise StorageError(f"{gt} holds neither a shard set (manifest.json) nor any image ({', '.join(IMAGE_EXTS)})")
    lr = list_image_files(lq) if lq is not None else None
    pairs, problems, orphans = pair_files(hr, lr)
    if problems:
        unpaired["unpaired"] += len(problems)
        log.warning(
            "%d of %d image(s) in %s are left out: %s",
            len(problems),
            len(hr),
            gt,
            "; ".join(f"{url}: {reason}" for url, reason in problems[:3]),
        )
    if orphans:
        log.warning("%d LR image(s) in %s have no HR partner in %s, e.g. %s", len(orphans), lq, gt, orphans[0])
    if not pairs:
        raise SrclusterError(f"no usable image in {gt}" + (f" with an LR partner in {lq}" if lq else ""))
    return [Unit(p.hr.url, p.lr.url if p.lr else None) for p in pairs]


def resolve_units(
    gt: str | list[str], lq: str | list[str] | None = None, scale: int = 1, unpaired: Counter | None = None
) -> list[Unit]:
    """Units for `gt` (one URL or several) and, for paired data, `lq` (one per `gt` entry), in a fixed order.

    Images left out for want of a partner are counted in `unpaired["unpaired"]`.
    """
    gts, lqs = _as_list(gt), (_as_list(lq) if lq is not None else None)
    if lqs is not None and len(lqs) != len(gts):
        raise SrclusterError(f"dataroot_lq has {len(lqs)} entries but dataroot_gt has {len(gts)}: give one each")
    unpaired = Counter() if unpaired is None else unpaired
    units: list[Unit] = []
    for index, entry in enumerate(gts):
        partner = lqs[index] if lqs is not None else None
        if is_shard_set(entry):
            units += shard_units(entry, partner, scale)
        else:
            units += _folder_units(entry, partner, unpaired)
    return units


def split_units(units: list, rank: int, world_size: int, worker: int, workers: int) -> tuple[list, bool]:
    """This (rank, worker)'s units and whether they are disjoint from every other's.

    With fewer units than rank-worker slots some slot would get none, so every slot reads all units instead (each in
    its own seeded order); the data is then not partitioned, only differently ordered.
    """
    if len(units) >= world_size * workers:
        return units[rank::world_size][worker::workers], True
    return units, False


# --- reading them ---------------------------------------------------------------------------------------------------


class Tally:
    """This worker's counts since they last travelled with a batch."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._io_seen = IO_COUNTS.get("io_retries")

    def take(self) -> torch.Tensor:
        io_now = IO_COUNTS.get("io_retries")
        self.counts["io_retries"] += io_now - self._io_seen
        self._io_seen = io_now
        vector = torch.tensor([self.counts[name] for name in COUNTERS], dtype=torch.int64)
        self.counts.clear()
        return vector


def _warn_sometimes(count: int, msg: str, *args: Any) -> None:
    """Log on the 1st, 2nd, 4th, 8th ... occurrence: visible, but no flood from a dataset full of small images."""
    if count & (count - 1) == 0:
        log.warning("%s (%d so far in this worker)", msg % args, count)


class EncodedSample(NamedTuple):
    key: str
    hr: bytes
    lr: bytes | None


def read_unit(unit: Unit, paired: bool, tally: Tally, totals: Counter) -> Iterator[EncodedSample]:
    """Every sample of one unit: each sample of a shard, or the one image file (with its LR partner).

    A missing, damaged or truncated shard ends that shard, counted, not the run; storage that stays unreachable past
    the retry deadline (SrclusterError) ends the run, loudly.
    """
    if not unit.url.endswith(".tar"):
        try:
            hr = read_bytes(unit.url)
            lr = read_bytes(unit.lr) if unit.lr else None
        except (OSError, ValueError) as exc:
            count_skip(tally, totals, "unreadable", "skipping unreadable image %s: %s", unit.url, exc)
            return
        yield EncodedSample(unit.url, hr, lr)
        return
    seen = 0
    try:
        with open_for_reading(unit.url) as stream:  # closed with the shard, which ends its read-ahead thread
            key, members = "", {}  # the sample being gathered: a sample's members are consecutive in the tar
            for name, data in iter_tar(stream):
                member_key, suffix = split_member(name)
                if member_key != key:
                    if members:
                        seen += 1
                        yield from _make_sample(key, members, paired, tally, totals)
                    key, members = member_key, {}
                members[suffix] = data
            if members:
                seen += 1
                yield from _make_sample(key, members, paired, tally, totals)
    except SrclusterError:
        raise
    except Exception as exc:  # OSError, TarFormatError, an opener's own errors: the same policy for all
        count_skip(tally, totals, "bad_shard", "skipping the rest of unreadable shard %s: %s", unit.url, exc)
        return
    if unit.samples is not None and seen != unit.samples:
        count_skip(
            tally, totals, "bad_shard", "shard %s holds %d samples, its manifest says %d", unit.url, seen, unit.samples
        )


def _make_sample(
    key: str, members: dict[str, bytes], paired: bool, tally: Tally, totals: Counter
) -> Iterator[EncodedSample]:
    ext = next((k for k in TAR_IMAGE_KEYS if k in members), None)
    if ext is None:
        count_skip(tally, totals, "no_image", "skipping sample %s without an image", key)
        return
    lr = members.get(f"lr.{ext}")
    if paired and lr is None:
        count_skip(tally, totals, "unpaired", "skipping sample %s: no LR image in its shard", key)
        return
    yield EncodedSample(key, members[ext], lr if paired else None)


def count_skip(tally: Tally, totals: Counter, reason: str, msg: str, *args: Any) -> None:
    tally.counts[reason] += 1
    totals[reason] += 1
    _warn_sometimes(totals[reason], msg, *args)
