"""Read training data as a stream of random crops per rank and DataLoader worker, and validation images whole.

The stages live in their own modules: `units` (finding, splitting and reading the units), `crops` (shuffle, crop,
batch), `validation` (whole images); this one runs them in DataLoader workers and is the import for all of it.

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
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen_schemes

from srcluster.data.crops import Batch, Passes, random_crop, shuffled
from srcluster.data.remote import open_for_reading, reader_filesystem
from srcluster.data.sources import list_images
from srcluster.data.units import (
    COUNTERS,
    REASONS,
    EncodedSample,
    Tally,
    Unit,
    count_skip,
    is_shard_set,
    read_unit,
    resolve_units,
    split_units,
)
from srcluster.data.validation import iter_images, iter_pairs
from srcluster.degrade.config import Degradations
from srcluster.degrade.seeds import sample_seed
from srcluster.errors import SrclusterError

log = logging.getLogger(__name__)

STORAGE_ENV = ("AWS_", "SRCLUSTER_")  # what StorageSettings.resolve() reads from the environment
_warned: set[str] = set()

__all__ = [
    "COUNTERS",
    "REASONS",
    "TrainStream",
    "Unit",
    "is_shard_set",
    "iter_images",
    "iter_pairs",
    "list_images",
    "random_crop",
    "register_gopen",
    "resolve_units",
    "split_units",
    "train_loader",
]


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
    for scheme in ("s3", "s3a", "memory"):
        gopen_schemes[scheme] = _gopen_fsspec


register_gopen()  # at import, so spawned DataLoader workers get it when they unpickle the dataset


# --- the training stream ----------------------------------------------------------------------------------------


class HrCrops(IterableDataset):
    """Endless batches of random crops (uint8 B x 3 x crop x crop, plus aligned LR crops when paired) from this rank's
    share of the units.

    Per worker: its units in endless seeded passes -> samples (still encoded) -> shuffle buffer -> decode + aligned
    crop + augment -> batch. Shuffling before decoding keeps the buffer cheap to fill: it costs reads, not decodes.
    Each batch is (hr, [lr | plan,] [keys,] counts), `counts` being this worker's COUNTERS since its previous batch.
    """

    def __init__(
        self,
        units: list[Unit],
        *,
        crop: int,
        scale: int,
        paired: bool,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        use_hflip: bool,
        use_rot: bool,
        shuffle_buffer: int,
        with_keys: bool,
        degradations: Degradations | None = None,
        degrade_in_workers: bool = True,
    ):
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
        tally, totals, passes = Tally(), Counter(), Passes()
        samples = shuffled(self._samples(mine, rng, tally, totals, passes), self.shuffle_buffer, rng)
        lr_crop = self.crop // self.scale if self.paired else None
        while True:
            batch = Batch(self.batch_size, self.crop, lr_crop, info is not None, self.with_keys)
            while batch.count < batch.size:
                index, sample = next(samples)
                seed = sample_seed(self.seed, self.epoch, f"{sample.key}@{index}")
                try:
                    result = random_crop(
                        sample.hr,
                        sample.lr,
                        self.crop,
                        self.scale,
                        np.random.default_rng([seed, 1]),
                        self.use_hflip,
                        self.use_rot,
                    )
                except Exception as exc:  # untrusted bytes: decoders raise many kinds; one image must not end a run
                    result = "corrupt"
                    count_skip(tally, totals, result, "skipping undecodable image %s: %s", sample.key, exc)
                else:
                    if isinstance(result, str):
                        count_skip(
                            tally,
                            totals,
                            result,
                            "skipping %s: %s for a %dx%d crop",
                            sample.key,
                            result,
                            self.crop,
                            self.crop,
                        )
                    else:
                        batch.add(result, sample.key, seed)
                if passes.record(index, not isinstance(result, str)):
                    raise SrclusterError(
                        f"no usable {self.crop}x{self.crop} crop in {len(mine)} shard(s)/image(s) "
                        f"starting with {mine[0].url} (skipped: {dict(totals)})"
                    )
            if self.degradations is not None:
                batch.degrade(self.degradations, self.scale, self.degrade_in_workers)
            yield batch.output(tally.take())

    def _samples(
        self, units: list[Unit], rng: np.random.Generator, tally: Tally, totals: Counter, passes: Passes
    ) -> Iterator[tuple[int, EncodedSample]]:
        """(pass number, sample) for every sample of `units`, pass after pass, each pass in a fresh seeded order."""
        for index in itertools.count():
            size = 0
            for unit in rng.permutation(len(units)):
                for sample in read_unit(units[unit], self.paired, tally, totals):
                    size += 1
                    yield index, sample
            if size == 0:
                raise SrclusterError(
                    f"nothing readable in {len(units)} shard(s)/image(s) starting with "
                    f"{units[0].url} (skipped: {dict(totals)})"
                )
            passes.ended(index, size)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; torch threads per worker would only oversubscribe


class TrainStream:
    """Exactly `steps` batches per iteration; each iteration starts the same seeded stream (and its workers) afresh.

    Batches are `hr` (uint8 B x 3 x crop x crop) or, paired or degraded in the workers, `(hr, lr)`, or, to be degraded
    in the training step, `(hr, plan)`; with keys, the sample keys come last.
    `skipped`, `io_retries` and `counts()` cover all workers, up to the batch last yielded by the current iteration.
    """

    def __init__(
        self, dataset: HrCrops, *, steps: int, num_workers: int, pin_memory: bool, mp_context: str, unpaired: int = 0
    ):
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
            self.dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None,
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


def train_loader(
    gt: str | list[str],
    *,
    crop: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    steps: int,
    use_hflip: bool = True,
    use_rot: bool = True,
    shuffle_buffer: int = 256,
    with_keys: bool = False,
    pin_memory: bool = False,
    mp_context: str = "forkserver",
    lq: str | list[str] | None = None,
    scale: int = 1,
    degradations: Degradations | None = None,
    degrade_in_workers: bool = True,
) -> TrainStream:
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
        log.warning(
            "%d shard(s)/image(s) for %d rank(s) x %d worker(s): every rank reads all of them in its own "
            "seeded order instead of a disjoint share",
            len(units),
            world_size,
            max(1, num_workers),
        )
    dataset = HrCrops(
        units,
        crop=crop,
        scale=scale,
        paired=paired,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epoch=epoch,
        use_hflip=use_hflip,
        use_rot=use_rot,
        shuffle_buffer=shuffle_buffer,
        with_keys=with_keys,
        degradations=degradations,
        degrade_in_workers=degrade_in_workers,
    )
    return TrainStream(
        dataset,
        steps=steps,
        num_workers=num_workers,
        pin_memory=pin_memory,
        mp_context=mp_context,
        unpaired=unpaired["unpaired"],
    )
