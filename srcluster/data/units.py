"""The units of training data: shards (`*.tar`, many samples each) and image files (one sample each, with the URL of
its LR partner in paired folders), found from shard sets and folders; the split of their samples over the job's slots
(rank x DataLoader worker), pass by pass; and reading a slot's part of a unit into samples that are still encoded.

The split (`Split`) gives each sample to exactly one slot per pass and, over a round of as many passes as there are
slots, every sample to every slot once, so per-sample counts stay within one of each other however unevenly the
shards are filled. Units are cut where a slot's share ends, by sample position, when their sample counts are known
(a shard set's manifest; an image is one sample).

Nothing is dropped silently: a sample or shard that cannot be used is counted under one of REASONS, in the worker's
Tally that travels to the main process with each batch, and logged now and then.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
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
    samples: int | None = None  # how many samples it holds: a shard's manifest count, 1 for an image, None: unknown


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
    return [Unit(p.hr.url, p.lr.url if p.lr else None, 1) for p in pairs]


def resolve_units(
    gt: str | list[str], lq: str | list[str] | None = None, scale: int = 1, unpaired: Counter | None = None
) -> list[Unit]:
    """Units for `gt` (one URL or several) and, for paired data, `lq` (one per `gt` entry), in a fixed order.

    Images left out for want of a partner are counted in `unpaired["unpaired"]`.
    """
    gts, lqs = _as_list(gt), (_as_list(lq) if lq is not None else None)
    if not gts:
        raise SrclusterError("dataroot_gt lists no shard set, folder or image to train on")
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


# --- splitting them over the job's slots ------------------------------------------------------------------------


class Read(NamedTuple):
    """One slot's part of one unit in one pass: the samples at positions start, start + step, ... before stop (None:
    to the end of the unit, however many samples it really holds). Positions count samples in the order they are
    stored."""

    unit: int  # index into the job's unit list
    start: int = 0
    stop: int | None = None
    step: int = 1

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None and self.step == 1


class Split:
    """Which samples each of a job's `slots` (rank x DataLoader worker, `rank * workers + worker`) reads in each pass.

    Passes come in rounds of `slots` passes. A round lays all samples out in one order (its units shuffled, from the
    job's seed, epoch and the round number; the same in every slot) and cuts that line into `slots` chunks that differ
    by at most one sample; in the round's i-th pass slot k reads chunk (k + i) mod slots. So within a pass the slots
    read disjoint samples that together are all of them; over a round each slot reads every sample once (a slot that
    finds nothing usable in a whole round has seen all the data, see `HrCrops`); and any run of passes hands every
    slot the same number of samples, give or take one, so no sample is read more often than another because its shard
    happened to land in a smaller share.

    Chunks are contiguous runs of that line rather than every slots-th sample: a slot then reads whole shards except
    at most two cut ones per pass, so each shard is fetched about once per pass job-wide (taking every slots-th sample
    would have every slot stream every shard). A cut shard is read from its start up to the end of the slot's part
    (tar has no index to seek by), a small cost next to reading whole shards in every slot.

    Without sample counts (a brace pattern or a list of tar URLs: no manifest) a shard counts as one sample, so chunks
    hold whole shards; with fewer such shards than slots, every slot streams every shard and takes every slots-th
    sample instead, rotating which ones pass by pass (`by_position`; it costs `slots` times the reads).
    """

    def __init__(self, units: Sequence[Unit], slots: int, seed: int, epoch: int):
        if slots < 1:
            raise ValueError(f"a split needs at least one slot, not {slots}")
        self.units, self.slots, self.seed, self.epoch = units, slots, seed, epoch
        counts = [unit.samples for unit in units]
        known = all(count is not None for count in counts) and sum(c or 0 for c in counts) > 0
        self.weights = [int(c or 0) for c in counts] if known else [1] * len(units)
        self.by_position = not known and len(units) < slots
        self.total = sum(self.weights)
        self._round: int | None = None  # the round whose line is laid out below (only this slot's chunk is built)
        self._order = np.zeros(0, dtype=np.int64)
        self._begins = self._ends = self._order
        self._empty: dict[int, list[int]] = {}  # chunk -> the units of the line that hold no sample (placed by hand)

    def reads(self, slot: int, pass_index: int) -> list[Read]:
        """What `slot` reads in pass `pass_index`, in the round's unit order."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside the split's {self.slots} slot(s)")
        round_index, offset = divmod(pass_index, self.slots)
        if self.by_position:  # fewer units than slots: the order costs nothing to draw again
            # sample i of unit u goes to slot (i + u + pass) mod slots: disjoint within a pass, all of it per round
            order = self._shuffled_units(round_index)
            return [Read(int(u), (slot - int(u) - pass_index) % self.slots, None, self.slots) for u in order]
        if self._round != round_index:
            self._lay_out(round_index)
        return self._chunk((slot + offset) % self.slots)

    def _shuffled_units(self, round_index: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, 2, round_index]).permutation(len(self.units))

    def _chunk_of(self, position: int) -> int:
        """The chunk holding `position` of the line: chunk c holds [c * total // slots, (c + 1) * total // slots)."""
        return ((position + 1) * self.slots - 1) // self.total

    def _lay_out(self, round_index: int) -> None:
        """The round's line: its units in order and where each begins and ends in it."""
        self._round, self._order = round_index, self._shuffled_units(round_index)
        weights = np.asarray(self.weights, dtype=np.int64)[self._order]
        self._ends = np.cumsum(weights)
        self._begins = self._ends - weights
        self._empty = {}
        for index in np.flatnonzero(weights == 0).tolist():  # it goes with the sample before it (or the first)
            owner = self._chunk_of(max(int(self._begins[index]) - 1, 0))
            self._empty.setdefault(owner, []).append(index)

    def _chunk(self, chunk: int) -> list[Read]:
        """Chunk `chunk` of the round's line as Reads, in line order. The chunk holding a unit's last sample reads it to
        its end, so samples past a manifest's count are still read (once) and the count is checked."""
        low, high = chunk * self.total // self.slots, (chunk + 1) * self.total // self.slots
        first = int(np.searchsorted(self._ends, low, side="right"))  # the first unit that ends past `low`
        stop = int(np.searchsorted(self._begins, high, side="left"))  # the first unit that begins at `high` or later
        indexes = [i for i in range(first, stop) if self._ends[i] > self._begins[i]]
        indexes = sorted(indexes + self._empty.get(chunk, []))
        reads = []
        for index in indexes:
            begin, end = int(self._begins[index]), int(self._ends[index])
            start = max(begin, low) - begin
            reads.append(Read(int(self._order[index]), start, None if end <= high else high - begin))
        return reads


def split_units(
    units: Sequence[Unit], rank: int, world_size: int, worker: int, workers: int, seed: int = 0, epoch: int = 0
) -> tuple[list[Unit], bool]:
    """The units that this (rank, worker) reads, whole or in part, in its first pass of the stream seeded by (`seed`,
    `epoch`), and whether it reads all of them whole (no other slot reads any of them in that pass).

    With `worker=0, workers=1` it is the rank's share of the first pass: exactly what the rank's DataLoader workers
    read together in that pass, however many they are.
    """
    reads = Split(units, world_size * workers, seed, epoch).reads(rank * workers + worker, 0)
    return [units[read.unit] for read in reads], all(read.whole for read in reads)


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
    """Every sample of one unit: each sample of a shard, or the one image file (with its LR partner)."""
    for _, sample in read_part(unit, Read(0), paired, tally, totals):
        yield sample


def read_part(
    unit: Unit, part: Read, paired: bool, tally: Tally, totals: Counter
) -> Iterator[tuple[int, EncodedSample]]:
    """(position, sample) for the samples of `unit` that `part` takes (its `unit` index is not looked at).

    A missing, damaged or truncated shard ends that shard, counted, not the run; storage that stays unreachable past
    the retry deadline (SrclusterError) ends the run, loudly. Only the samples the part takes are counted when
    skipped, so a sample is counted by the one slot that owns it. A shard that ends before the part does, or (read to
    its end) holds another number of samples than its manifest says, is counted once by this part.
    """
    if not unit.url.endswith(".tar"):
        if not _takes(part, 0):
            return
        try:
            hr = read_bytes(unit.url)
            lr = read_bytes(unit.lr) if unit.lr else None
        except (OSError, ValueError) as exc:
            count_skip(tally, totals, "unreadable", "skipping unreadable image %s: %s", unit.url, exc)
            return
        yield 0, EncodedSample(unit.url, hr, lr)
        return
    seen = 0  # samples met so far; the one being gathered is number seen - 1
    try:
        with open_for_reading(unit.url) as stream:  # closed with the shard, which ends its read-ahead thread
            key: str | None = None  # the sample being gathered: a sample's members are consecutive in the tar
            members: dict[str, bytes] = {}
            for name, data in iter_tar(stream):
                member_key, suffix = split_member(name)
                if member_key != key:
                    if key is not None and _takes(part, seen - 1):
                        yield from _make_sample(seen - 1, key, members, paired, tally, totals)
                    if part.stop is not None and seen >= part.stop:
                        return  # the part is read; the rest of the shard belongs to other slots
                    seen += 1
                    key, members = member_key, {}
                members[suffix] = data if _takes(part, seen - 1) else b""  # others' samples: only their names
            if key is not None and _takes(part, seen - 1):
                yield from _make_sample(seen - 1, key, members, paired, tally, totals)
    except SrclusterError:
        raise
    except Exception as exc:  # OSError, TarFormatError, an opener's own errors: the same policy for all
        count_skip(tally, totals, "bad_shard", "skipping the rest of unreadable shard %s: %s", unit.url, exc)
        return
    short = part.stop is not None and seen < part.stop
    if unit.samples is not None and (short or (part.stop is None and seen != unit.samples)):
        count_skip(
            tally, totals, "bad_shard", "shard %s holds %d samples, its manifest says %d", unit.url, seen, unit.samples
        )


def _takes(part: Read, position: int) -> bool:
    return (
        position >= part.start
        and (part.stop is None or position < part.stop)
        and (position - part.start) % part.step == 0
    )


def _make_sample(
    position: int, key: str, members: dict[str, bytes], paired: bool, tally: Tally, totals: Counter
) -> Iterator[tuple[int, EncodedSample]]:
    ext = next((k for k in TAR_IMAGE_KEYS if k in members), None)
    if ext is None:
        count_skip(tally, totals, "no_image", "skipping sample %s without an image", key)
        return
    lr = members.get(f"lr.{ext}")
    if paired and lr is None:
        count_skip(tally, totals, "unpaired", "skipping sample %s: no LR image in its shard", key)
        return
    yield position, EncodedSample(key, members[ext], lr if paired else None)


def count_skip(tally: Tally, totals: Counter, reason: str, msg: str, *args: Any) -> None:
    tally.counts[reason] += 1
    totals[reason] += 1
    _warn_sometimes(totals[reason], msg, *args)
