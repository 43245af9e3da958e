"""Read training data as a stream of random crops per rank and DataLoader worker, and validation images whole.

Input is a list of *units*: shard URLs (`*.tar`, each holding many samples) and image-file URLs (one sample each, with
its LR partner's URL for paired folders), found from shard sets (a folder with manifest.json, or a brace pattern) or
plain folders of images. Both kinds go through the same pipeline:

    units --split by rank, then by worker--> endless passes in a seeded order --> samples, still encoded
          --> shuffle buffer --> decode + aligned random crop + augment, straight into a batch (in the worker)
          --> DataLoader (uint8: HR B x 3 x crop x crop [, LR B x 3 x crop/s x crop/s]) --> exactly `steps` batches

Every rank yields exactly `steps` batches whatever its share of the data, so DDP ranks never wait on each other at the
end of an epoch. The order of the units and the shuffle come from one generator per (seed, epoch, rank, worker); each
sample's crop, flips and on-the-fly degradations from its own seed (`sample_seed(seed, epoch, key@pass)`, pass = how
many times this sample was read before), so a sample's (HR, LR) pair is the same on any number of ranks and workers.

With on-the-fly degradations (`degradations`) each batch's per-sample parameters are drawn in the worker
(`degrade.pipeline.draw`, cheap); `degrade_in_workers` applies them there too, batched, and the batch is `(hr, lr)`
uint8 exactly like paired data; otherwise the batch is `(hr, plan)` and the training step applies the plan on its
device (`train/batch.py`).

Skipped samples (undecodable, too small, unpaired, LR size mismatch, unreadable shards) and storage retries are
counted in each worker and carried to the main process with each batch, so `TrainStream.counts()` covers every
worker; nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from srcluster.data.images import IMAGE_EXTS, ImageError, decode, decode_rgb, to_rgb8
from srcluster.data.remote import IO_COUNTS, is_remote, open_for_reading, read_bytes, reader_filesystem, retrying
from srcluster.data.shards import (
    is_shard_pattern,
    iter_tar,
    manifest_url,
    read_manifest,
    shard_set_root,
    shard_urls,
    split_member,
)
from srcluster.data.sources import join_url, list_image_files, list_images, pair_files
from srcluster.degrade.config import Degradations
from srcluster.degrade.seeds import sample_seed
from srcluster.errors import SrclusterError, StorageError

log = logging.getLogger(__name__)

TAR_IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTS)
REASONS = ("corrupt", "too_small", "bad_shard", "unreadable", "no_image", "unpaired", "size_mismatch")
COUNTERS = (*REASONS, "io_retries")  # the order of the count vector that travels with each batch
STORAGE_ENV = ("AWS_", "SRCLUSTER_")  # what StorageSettings.resolve() reads from the environment
_warned: set[str] = set()

__all__ = ["COUNTERS", "REASONS", "TrainStream", "Unit", "is_shard_set", "iter_images", "iter_pairs", "list_images",
           "random_crop", "register_gopen", "resolve_units", "split_units", "train_loader"]


# --- opening URLs -------------------------------------------------------------------------------------------------


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """WebDataset opener for s3:// (and memory://) through the one storage configuration, with read-ahead and
    retries; the filesystem is made here, in the process that reads (see `remote`)."""
    if mode.startswith("r"):
        return open_for_reading(url)
    fs, path = reader_filesystem(url)
    return fs.open(path, "wb")


def register_gopen() -> None:
    """Let `webdataset.WebDataset("s3://...")` read through srcluster's storage settings."""
    from webdataset.gopen import gopen_schemes

    for scheme in ("s3", "s3a", "memory"):
        gopen_schemes[scheme] = _gopen_fsspec


register_gopen()  # at import, so spawned DataLoader workers get it when they unpickle the dataset


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


def _as_list(urls: str | list[str] | None) -> list[str] | None:
    return None if urls is None else [urls] if isinstance(urls, str) else list(urls)


def _shard_units(gt: str, lq: str | None, scale: int) -> list[Unit]:
    if lq is not None:
        if lq.rstrip("/") != gt.rstrip("/"):
            raise SrclusterError(f"{gt} is a shard set, which holds its LR images itself: set dataroot_lq to the same "
                                 f"URL as dataroot_gt (not {lq})")
        if not is_shard_pattern(gt):
            manifest = read_manifest(gt)
            if not manifest.get("paired"):
                raise SrclusterError(f"{gt} holds no LR images (built without LR folders); leave dataroot_lq unset "
                                     "to make LR on the fly")
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
        log.warning("%d of %d image(s) in %s are left out: %s", len(problems), len(hr), gt,
                    "; ".join(f"{url}: {reason}" for url, reason in problems[:3]))
    if orphans:
        log.warning("%d LR image(s) in %s have no HR partner in %s, e.g. %s", len(orphans), lq, gt, orphans[0])
    if not pairs:
        raise SrclusterError(f"no usable image in {gt}" + (f" with an LR partner in {lq}" if lq else ""))
    return [Unit(p.hr.url, p.lr.url if p.lr else None) for p in pairs]


def resolve_units(gt: str | list[str], lq: str | list[str] | None = None, scale: int = 1,
                  unpaired: Counter | None = None) -> list[Unit]:
    """Units for `gt` (one URL or several) and, for paired data, `lq` (one per `gt` entry), in a fixed order.

    Images left out for want of a partner are counted in `unpaired["unpaired"]`.
    """
    gts, lqs = _as_list(gt), _as_list(lq)
    if lqs is not None and len(lqs) != len(gts):
        raise SrclusterError(f"dataroot_lq has {len(lqs)} entries but dataroot_gt has {len(gts)}: give one each")
    unpaired = Counter() if unpaired is None else unpaired
    units: list[Unit] = []
    for index, entry in enumerate(gts):
        partner = lqs[index] if lqs is not None else None
        if is_shard_set(entry):
            units += _shard_units(entry, partner, scale)
        else:
            units += _folder_units(entry, partner, unpaired)
    return units


class _Tally:
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
        log.warning(msg + " (%d so far in this worker)", *args, count)


class _Sample(NamedTuple):
    key: str
    hr: bytes
    lr: bytes | None


def _read_unit(unit: Unit, paired: bool, tally: _Tally, totals: Counter) -> Iterator[_Sample]:
    """Every sample of one unit: each sample of a shard, or the one image file (with its LR partner).

    A missing, damaged or truncated shard ends that shard, counted, not the run; storage that stays unreachable past
    the retry deadline (SrclusterError) ends the run, loudly.
    """
    if not unit.url.endswith(".tar"):
        try:
            hr = read_bytes(unit.url)
            lr = read_bytes(unit.lr) if unit.lr else None
        except (OSError, ValueError) as exc:
            _skip(tally, totals, "unreadable", "skipping unreadable image %s: %s", unit.url, exc)
            return
        yield _Sample(unit.url, hr, lr)
        return
    seen = 0
    try:
        with open_for_reading(unit.url) as stream:  # closed with the shard, which ends its read-ahead thread
            key, members = None, {}
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
        _skip(tally, totals, "bad_shard", "skipping the rest of unreadable shard %s: %s", unit.url, exc)
        return
    if unit.samples is not None and seen != unit.samples:
        _skip(tally, totals, "bad_shard", "shard %s holds %d samples, its manifest says %d", unit.url, seen,
              unit.samples)


def _make_sample(key: str, members: dict[str, bytes], paired: bool, tally: _Tally,
                 totals: Counter) -> Iterator[_Sample]:
    ext = next((k for k in TAR_IMAGE_KEYS if k in members), None)
    if ext is None:
        _skip(tally, totals, "no_image", "skipping sample %s without an image", key)
        return
    lr = members.get(f"lr.{ext}")
    if paired and lr is None:
        _skip(tally, totals, "unpaired", "skipping sample %s: no LR image in its shard", key)
        return
    yield _Sample(key, members[ext], lr if paired else None)


def _skip(tally: _Tally, totals: Counter, reason: str, msg: str, *args: Any) -> None:
    tally.counts[reason] += 1
    totals[reason] += 1
    _warn_sometimes(totals[reason], msg, *args)


# --- decoding and cropping --------------------------------------------------------------------------------------


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


def random_crop(hr_data: bytes, lr_data: bytes | None, crop: int, scale: int, rng: np.random.Generator,
                hflip: bool = True, rot: bool = True) -> list[np.ndarray] | str:
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
        patches = [to_rgb8(hr[y:y + crop, x:x + crop], hr_bgr)]
    else:
        lr, lr_bgr = decode(lr_data)
        (height, width), size = lr.shape[:2], crop // scale
        if hr.shape[:2] != (height * scale, width * scale):
            return "size_mismatch"
        if height < size or width < size:
            return "too_small"
        y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        patches = [to_rgb8(hr[y * scale:(y + size) * scale, x * scale:(x + size) * scale], hr_bgr),
                   to_rgb8(lr[y:y + size, x:x + size], lr_bgr)]
    return _augment(patches, rng, hflip, rot)


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
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


# --- the training stream ----------------------------------------------------------------------------------------


def split_units(units: list, rank: int, world_size: int, worker: int, workers: int) -> tuple[list, bool]:
    """This (rank, worker)'s units and whether they are disjoint from every other's.

    With fewer units than rank-worker slots some slot would get none, so every slot reads all units instead (each in
    its own seeded order); the data is then not partitioned, only differently ordered.
    """
    if len(units) >= world_size * workers:
        return units[rank::world_size][worker::workers], True
    return units, False


class _Passes:
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


class _Batch:
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
        from srcluster.degrade.pipeline import apply, draw

        hr = self.tensors[0]
        plan = draw(cfg, self.seeds, scale, hr.shape[-1])
        if not apply_here:
            self.tensors.append(plan)
            return
        lr = torch.empty((hr.shape[0], 3, plan.lq_size, plan.lq_size), dtype=torch.uint8)
        if self.shared:
            lr.share_memory_()
        lr.copy_(apply(hr, plan).mul_(255).round_())
        self.tensors.append(lr)

    def output(self, counts: torch.Tensor) -> tuple:
        return (*self.tensors, *([self.keys] if self.with_keys else []), counts)


class HrCrops(IterableDataset):
    """Endless batches of random crops (uint8 B x 3 x crop x crop, plus aligned LR crops when paired) from this rank's
    share of the units.

    Per worker: its units in endless seeded passes -> samples (still encoded) -> shuffle buffer -> decode + aligned
    crop + augment -> batch. Shuffling before decoding keeps the buffer cheap to fill: it costs reads, not decodes.
    Each batch is (hr, [lr | plan,] [keys,] counts), `counts` being this worker's COUNTERS since its previous batch.
    """

    def __init__(self, units: list[Unit], *, crop: int, scale: int, paired: bool, batch_size: int, rank: int,
                 world_size: int, seed: int, epoch: int, use_hflip: bool, use_rot: bool, shuffle_buffer: int,
                 with_keys: bool, degradations: Degradations | None = None, degrade_in_workers: bool = True):
        self.units, self.crop, self.scale, self.paired = units, crop, scale, paired
        self.degradations, self.degrade_in_workers = degradations, degrade_in_workers
        self.batch_size, self.rank, self.world_size, self.seed, self.epoch = batch_size, rank, world_size, seed, epoch
        self.use_hflip, self.use_rot = use_hflip, use_rot
        self.shuffle_buffer, self.with_keys = shuffle_buffer, with_keys
        # A forkserver started by an earlier loader holds the environment of that moment; workers take this one instead.
        self.storage_env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV)}

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            for name in [n for n in os.environ if n.startswith(STORAGE_ENV)]:
                del os.environ[name]
            os.environ.update(self.storage_env)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        mine, _ = split_units(self.units, self.rank, self.world_size, worker, workers)
        tally, totals, passes = _Tally(), Counter(), _Passes()
        samples = _shuffled(self._samples(mine, rng, tally, totals, passes), self.shuffle_buffer, rng)
        lr_crop = self.crop // self.scale if self.paired else None
        while True:
            batch = _Batch(self.batch_size, self.crop, lr_crop, info is not None, self.with_keys)
            while batch.count < batch.size:
                index, sample = next(samples)
                seed = sample_seed(self.seed, self.epoch, f"{sample.key}@{index}")
                try:
                    result = random_crop(sample.hr, sample.lr, self.crop, self.scale, np.random.default_rng([seed, 1]),
                                         self.use_hflip, self.use_rot)
                except Exception as exc:  # untrusted bytes: decoders raise many kinds; one image must not end a run
                    result = "corrupt"
                    _skip(tally, totals, result, "skipping undecodable image %s: %s", sample.key, exc)
                else:
                    if isinstance(result, str):
                        _skip(tally, totals, result, "skipping %s: %s for a %dx%d crop", sample.key, result,
                              self.crop, self.crop)
                    else:
                        batch.add(result, sample.key, seed)
                if passes.record(index, not isinstance(result, str)):
                    raise SrclusterError(f"no usable {self.crop}x{self.crop} crop in {len(mine)} shard(s)/image(s) "
                                         f"starting with {mine[0].url} (skipped: {dict(totals)})")
            if self.degradations is not None:
                batch.degrade(self.degradations, self.scale, self.degrade_in_workers)
            yield batch.output(tally.take())

    def _samples(self, units: list[Unit], rng: np.random.Generator, tally: _Tally, totals: Counter,
                 passes: _Passes) -> Iterator[tuple[int, _Sample]]:
        """(pass number, sample) for every sample of `units`, pass after pass, each pass in a fresh seeded order."""
        for index in itertools.count():
            size = 0
            for unit in rng.permutation(len(units)):
                for sample in _read_unit(units[unit], self.paired, tally, totals):
                    size += 1
                    yield index, sample
            if size == 0:
                raise SrclusterError(f"nothing readable in {len(units)} shard(s)/image(s) starting with "
                                     f"{units[0].url} (skipped: {dict(totals)})")
            passes.ended(index, size)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; torch threads per worker would only oversubscribe


class TrainStream:
    """Exactly `steps` batches per iteration; each iteration starts the same seeded stream (and its workers) afresh.

    Batches are `hr` (uint8 B x 3 x crop x crop) or, paired or degraded in the workers, `(hr, lr)`, or, to be degraded
    in the training step, `(hr, plan)`; with keys, the sample keys come last.
    `skipped`, `io_retries` and `counts()` cover all workers, up to the batch last yielded by the current iteration.
    """

    def __init__(self, dataset: HrCrops, *, steps: int, num_workers: int, pin_memory: bool,
                 mp_context: str, unpaired: int = 0):
        self.dataset, self.steps = dataset, steps
        self.num_workers, self.pin_memory, self.mp_context = num_workers, pin_memory, mp_context
        self._unpaired = unpaired  # images left out when listing (no LR partner): known before any worker starts
        self._counts: Counter = Counter()

    def __len__(self) -> int:
        return self.steps

    @property
    def skipped(self) -> Counter:
        """Samples skipped so far, by reason (REASONS), summed over all workers; images left out of a paired folder
        for want of a partner are in "unpaired" from the start."""
        counts = Counter({name: self._counts[name] for name in REASONS if self._counts[name]})
        if self._unpaired:
            counts["unpaired"] += self._unpaired
        return counts

    @property
    def io_retries(self) -> int:
        """Storage calls repeated after a transient error (server restart, timeout, 5xx), summed over all workers."""
        return self._counts["io_retries"]

    def counts(self) -> dict[str, int]:
        """Fixed keys for training metrics: `data_skipped` (total), `data_skipped_<reason>` for each of REASONS, and
        `data_io_retries`. Per rank: the same keys on every rank, so they can be summed with one all_reduce."""
        skipped = self.skipped
        out = {"data_skipped": sum(skipped.values())}
        out.update({f"data_skipped_{name}": skipped[name] for name in REASONS})
        out["data_io_retries"] = self.io_retries
        return out

    def __iter__(self) -> Iterator:
        self._counts = Counter()
        if self.steps == 0:
            return
        workers = self.num_workers
        context = None
        if workers:
            # Never fork: a forked worker would inherit the parent's s3fs event loop and connections. The forkserver
            # is a fresh interpreter that imports this module once; workers forked from it start in a fraction of a
            # second and exit without a full interpreter teardown (spawn costs seconds at both ends, per iteration).
            context = multiprocessing.get_context(self.mp_context)
            if self.mp_context == "forkserver":
                context.set_forkserver_preload([__name__])  # no effect once the server runs
        loader = DataLoader(  # batch_size=None: the workers assemble whole batches themselves
            self.dataset, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
            multiprocessing_context=context,
        )
        batches = iter(loader)
        try:
            for _ in range(self.steps):
                *batch, counts = next(batches)
                for name, value in zip(COUNTERS, counts.tolist(), strict=True):
                    self._counts[name] += value
                yield batch[0] if len(batch) == 1 else tuple(batch)
        finally:
            del batches  # stops the worker processes now rather than at garbage collection


def train_loader(gt: str | list[str], *, crop: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, epoch: int = 0, steps: int, use_hflip: bool = True,
                 use_rot: bool = True, shuffle_buffer: int = 256, with_keys: bool = False, pin_memory: bool = False,
                 mp_context: str = "forkserver", lq: str | list[str] | None = None, scale: int = 1,
                 degradations: Degradations | None = None, degrade_in_workers: bool = True) -> TrainStream:
    """Exactly `steps` uint8 batches of random HR crops (B, 3, crop, crop) for one rank.

    `gt` is a shard set (folder with manifest.json, or a brace pattern of tar URLs), a folder of images, or a list of
    these. With `lq` (paired data, LR made offline) batches are `(hr, lr)` with LR crops of crop / `scale`, aligned
    with the HR crops: for a folder entry of `gt`, `lq` names its LR folder (partners by relative path and stem); for
    a shard set built with LR folders, `lq` is the shard set's own URL. With `with_keys` the sample keys (image URLs
    for plain folders) come last in each batch.

    With `degradations` whose options make LR (Real-ESRGAN's pipeline or a video codec) every batch is `(hr, lr)`, LR
    made in the workers from each sample's own seed (`degrade_in_workers`, the default), or `(hr, plan)`: the drawn
    parameters, for the training step to apply on its device (`degrade.pipeline.apply`).
    """
    if crop < 1 or batch_size < 1 or steps < 0 or num_workers < 0 or seed < 0 or epoch < 0 or scale < 1:
        raise ValueError("crop, batch_size and scale must be positive; steps, num_workers, seed and epoch not negative")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if mp_context not in ("spawn", "forkserver"):
        raise ValueError("mp_context must be 'spawn' or 'forkserver' (fork would share s3fs state with the parent)")
    paired = lq is not None
    if degradations is not None and not degradations.makes_lr:
        degradations = None  # GT-only options (USM) are the training step's business
    if degradations is not None and (paired or crop % scale):
        raise ValueError("on-the-fly degradations need unpaired HR data and a crop that is a multiple of the scale")
    if paired and (scale < 2 or crop % scale):
        raise ValueError(f"paired data needs a scale of 2 or more that divides the HR crop ({crop}), not {scale}")
    unpaired: Counter = Counter()
    units = resolve_units(gt, lq, scale, unpaired)
    _, disjoint = split_units(units, rank, world_size, 0, max(1, num_workers))
    warning_key = f"{gt}|{world_size}|{num_workers}"
    if not disjoint and warning_key not in _warned:  # once per data set and layout, not once per epoch
        _warned.add(warning_key)
        log.warning("%d shard(s)/image(s) for %d rank(s) x %d worker(s): every rank reads all of them in its own "
                    "seeded order instead of a disjoint share", len(units), world_size, max(1, num_workers))
    dataset = HrCrops(units, crop=crop, scale=scale, paired=paired, batch_size=batch_size, rank=rank,
                      world_size=world_size, seed=seed, epoch=epoch, use_hflip=use_hflip, use_rot=use_rot,
                      shuffle_buffer=shuffle_buffer, with_keys=with_keys, degradations=degradations,
                      degrade_in_workers=degrade_in_workers)
    return TrainStream(dataset, steps=steps, num_workers=num_workers, pin_memory=pin_memory,
                       mp_context=mp_context, unpaired=unpaired["unpaired"])


# --- validation -------------------------------------------------------------------------------------------------


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _val_items(gt: str, lq: str | None, scale: int) -> Iterator[tuple[str, Callable[[], tuple[bytes, bytes | None]]]]:
    """(name, how to get its encoded HR and LR) for every image of a validation set, in a fixed order. Names are
    sample keys (shard sets) or relative paths without extension (folders); folder images are read only when used."""
    if is_shard_set(gt):
        tally, totals = _Tally(), Counter()
        for unit in _shard_units(gt, lq, scale):
            for sample in _read_unit(unit, lq is not None, tally, totals):
                yield sample.key, (lambda s=sample: (s.hr, s.lr))
        return
    pairs, problems, _ = pair_files(list_image_files(gt), list_image_files(lq) if lq is not None else None)
    for url, reason in problems:
        log.warning("validation image %s left out: %s", url, reason)
    for pair in pairs:
        yield pair.hr.stem, (lambda p=pair: (read_bytes(p.hr.url), read_bytes(p.lr.url) if p.lr else None))


def _validation(gt: str, lq: str | None, scale: int, rank: int,
                world_size: int) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
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
            log.warning("skipping validation image %s: HR %s is not %d x LR %s", name, hr.shape[:2], scale,
                        lr.shape[:2])
            continue
        yield name, hr, lr


def iter_images(url: str, *, rank: int = 0, world_size: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, uint8 3 x H x W) for every image of a folder (any fsspec URL) or of a shard set, in a fixed order.

    With `world_size` > 1 this rank gets images rank, rank + world_size, ... (gather the results on one rank).
    Undecodable images are skipped with a warning.
    """
    for name, hr, _ in _validation(url, None, 1, rank, world_size):
        yield name, _to_tensor(hr)


def iter_pairs(gt: str, lq: str, *, scale: int, rank: int = 0,
               world_size: int = 1) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, HR uint8 3 x H x W, LR uint8 3 x H/scale x W/scale) for a paired validation set: folders paired by
    relative path and stem, or a shard set built with LR (then `lq` is its own URL). Split over ranks as iter_images."""
    for name, hr, lr in _validation(gt, lq, scale, rank, world_size):
        yield name, _to_tensor(hr), _to_tensor(lr)
