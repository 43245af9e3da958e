"""Read training data as a stream of random crops per rank and DataLoader worker, and validation images whole.

The stages live in their own modules: `units` (finding, splitting and reading the units), `crops` (shuffle, crop,
batch), `validation` (whole images); this one runs them in DataLoader workers and is the import for all of it.

Input is a list of *units*: shard URLs (`*.tar`, each holding many samples) and image-file URLs (one sample each, with
its LR partner's URL for paired folders), found from shard sets (a folder with manifest.json, or a brace pattern) or
plain folders of images. Both kinds go through the same pipeline:

    units --split over all (rank, worker) slots, pass by pass (`units.Split`)--> this slot's samples, still encoded
          --> shuffle buffer --> decode + `crops_per_tile` aligned random crops + augment (in the worker)
          --> crop pool (only with several crops per tile) --> batch
          --> DataLoader (uint8: HR B x 3 x crop x crop [, LR B x 3 x crop/s x crop/s]) --> exactly `steps` batches

The split is over the job's samples, not its shards: in every pass each sample is read by exactly one of the world_size
x num_workers slots (shards are cut by sample position where slots outnumber them or shares would be uneven), and the
shares rotate among the slots pass by pass, so over any stretch of the stream all samples are read equally often, give
or take one (shards without a manifest count as one sample each: balanced by shard). Every rank yields exactly `steps`
batches, so DDP ranks never wait on each other at the end of an epoch. The order of the units in each round of passes
comes from (seed, epoch, round), shared by all slots; the order of a slot's parts and its shuffle buffer from (seed,
epoch, rank, worker). Each sample's crop, flips and on-the-fly degradations come from its own seed (`sample_seed(seed,
epoch, unit/position/key@pass)`: which unit, where in it, and which pass of the job's stream), which no other read of
the job shares and which does not depend on the slot that reads it, so with `otf_draws: per_sample` a sample's (HR,
LR) pair is the same on any number of ranks and workers (redux's per-batch draws, the default, depend on the batch's
other samples too). The same seed, epoch (the iteration the stream starts from), world size and worker count
give the same stream.

With `crops_per_tile` k > 1 each decoded sample gives k crops, so one decode (the bulk of the cost of bicubic and
paired data) feeds k samples. Crop j has a seed of its own, the sample's identity with `#j` appended (crop 0 keeps the
plain identity: its crop is the one k = 1 would cut), so every crop is reproducible and differs from its siblings. A
pass still reads each sample once, now giving k crops of it; skips are counted per sample, not per crop. The crops
wait in a pool of batch x k from which each batch takes crops of distinct samples (`crops.CropPool`).

With on-the-fly degradations (`degradations`) each batch's per-sample parameters are drawn in the worker
(`degrade.pipeline.draw`, cheap); `degrade_in_workers` applies them there too, batched, and the batch is `(hr, lr)`
uint8 exactly like paired data; otherwise the batch is `(hr, plan)` and the training step applies the plan on its device
(`train/batch.py`); with `otf_draws: per_batch` each worker that makes the LR passes its pairs through its own
training-pair pool (`degrade.pool`, `queue_size`), as redux's step does. With high-order degradations the crops are
traiNNer-redux's: 32 px larger than asked (an image smaller than that is padded with black, not skipped), degraded
whole, and the asked-for (HR, LR) pair is cut from them at a random place (`degrade.pipeline.pair`).

Paired data and on-the-fly degradations together mix, as traiNNer-redux's RealESRGANPairedModel does with
`dataroot_lq_prob`: one draw per batch, from the slot's own generator (seed, epoch, 4, rank, worker; continued batch
after batch), makes the whole batch paired with that probability, else on the fly. Each sample is decoded once (HR and
LR) and gives both crops: the on-the-fly one from the HR alone with the generator it has without LR (so an on-the-fly
batch is the one the stream without LR would make), and the aligned paired one from a per-sample generator of its own;
a paired batch is `(hr, lr)` exactly like paired data, an on-the-fly batch is what it is without mixing. A sample
without a usable paired crop (LR size mismatch, too small) is skipped as paired data skips it.

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

from srcluster.data.crops import (
    Batch,
    Crop,
    CropPool,
    Decoded,
    Rounds,
    crop_decoded,
    decode_sample,
    random_crop,
    shuffled,
)
from srcluster.data.remote import open_for_reading, reader_filesystem
from srcluster.data.sources import list_images
from srcluster.data.units import (
    COUNTERS,
    REASONS,
    EncodedSample,
    Split,
    Tally,
    Unit,
    count_skip,
    is_shard_set,
    read_part,
    resolve_units,
    split_units,
)
from srcluster.data.validation import iter_images, iter_pairs
from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import crop_size
from srcluster.degrade.pool import PairPool
from srcluster.degrade.seeds import sample_seed
from srcluster.errors import SrclusterError

log = logging.getLogger(__name__)

STORAGE_ENV = ("AWS_", "SRCLUSTER_")  # what StorageSettings.resolve() reads from the environment
# Tags the per-sample generator of the paired crop (when mixing) apart from the sample's other streams: [seed, 1] cuts
# its crop here; the bare seed draws its degradations and degrade/drawing.py tags its own ([seed, 2]: the pair's place).
PAIRED_CROP_STREAM = 5
# One seed's crops of a decoded sample: its crop ([HR] or [HR, LR]) and, when mixing paired and on-the-fly LR (the crop
# then being the HR to degrade), its paired [HR, LR] crop
CutCrops = tuple[list[np.ndarray], list[np.ndarray] | None]
_warned: set[str] = set()

__all__ = [
    "COUNTERS",
    "REASONS",
    "Split",
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
    share of the samples.

    Per worker (one slot of the job's `Split`): its share of each pass, endlessly -> samples (still encoded) -> shuffle
    buffer -> decode + `crops_per_tile` aligned crops + augment -> crop pool -> batch. Shuffling before decoding
    keeps the buffer cheap to fill: it costs reads, not decodes. Each batch is (hr, [lr | plan,] [keys,] counts),
    `counts` being this worker's COUNTERS since its previous batch. Mixing paired and on-the-fly LR (paired units
    with degradations), each crop in the pool carries both kinds and each batch, drawn paired or not before it is
    filled, takes the kind it is. A slot that reads a whole round of passes (all of the data) without one usable crop,
    or without one readable sample, ends the stream with an error instead of spinning.
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
        crops_per_tile: int = 1,
    ):
        self.units, self.crop, self.scale, self.paired = units, crop, scale, paired
        self.crops_per_tile = crops_per_tile
        self.degradations, self.degrade_in_workers = degradations, degrade_in_workers
        # paired LR mixed with on-the-fly LR (train_loader allows the two together only so): the share of paired batches
        self.paired_share = degradations.dataroot_lq_prob if paired and degradations is not None else None
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
        # slots are numbered rank-major, so a rank's workers together read the rank's share of a world-wide split
        split = Split(self.units, self.world_size * workers, self.seed, self.epoch)
        slot = self.rank * workers + worker
        rng = np.random.default_rng([self.seed, self.epoch, 1, self.rank, worker])
        tally, totals, rounds = Tally(), Counter(), Rounds()
        samples = shuffled(self._samples(split, slot, rng, tally, totals, rounds), self.shuffle_buffer, rng)
        lr_crop = self.crop // self.scale if self.paired else None
        # with high-order degradations, traiNNer-redux's geometry: a larger crop (small images padded) is degraded,
        # then the crop-sized pair is cut from it (`Batch.degrade` / the training step)
        cut = crop_size(self.degradations, self.crop, self.scale)
        pad = cut != self.crop
        # a generator of its own: the split's and the shuffle buffer's draws do not depend on crops_per_tile
        pool_rng = np.random.default_rng([self.seed, self.epoch, 3, self.rank, worker])
        pool = CropPool(self.batch_size * self.crops_per_tile if self.crops_per_tile > 1 else 1, pool_rng)
        # when mixing, which batches are paired: another generator of its own, so the other draws stay what they are
        kind_rng = np.random.default_rng([self.seed, self.epoch, 4, self.rank, worker])
        pair_pool = self._pair_pool(worker)
        tiles = itertools.count()
        while True:
            # traiNNer-redux draws once per batch: the whole batch is paired, or the whole batch is made on the fly
            mixed_paired = self.paired_share is not None and bool(kind_rng.random() < self.paired_share)
            degradations = None if mixed_paired else self.degradations
            if degradations is not None:  # HR crops to degrade (LR made from them)
                batch = Batch(self.batch_size, cut, None, info is not None, self.with_keys)
            else:  # HR crops for bicubic LR, or paired (HR, LR) crops
                batch = Batch(self.batch_size, self.crop, lr_crop, info is not None, self.with_keys)
            tiles_in_batch: set[int] = set()
            while batch.count < batch.size:
                while pool.hungry:
                    round_index, seeds, sample = next(samples)
                    crops = self._cut(sample, seeds, cut, pad, tally, totals)
                    tile = next(tiles)
                    for seed, (patches, paired) in zip(seeds, crops, strict=False):  # no crops: a skipped sample
                        pool.add(Crop(tile, patches, sample.key, seed, paired))
                    if rounds.record(round_index, bool(crops)):
                        raise SrclusterError(
                            f"no usable {self.crop}x{self.crop} crop in {len(self.units)} shard(s)/image(s) "
                            f"starting with {self.units[0].url} (skipped: {dict(totals)})"
                        )
                crop = pool.take(tiles_in_batch)
                tiles_in_batch.add(crop.tile)
                patches = crop.paired if mixed_paired and crop.paired is not None else crop.patches
                batch.add(patches, crop.key, crop.seed)
            if degradations is not None:
                batch.degrade(degradations, self.scale, self.crop, self.degrade_in_workers, pair_pool)
            yield batch.output(tally.take())

    def _pair_pool(self, worker: int) -> PairPool | None:
        """traiNNer-redux's training-pair pool for `otf_draws: per_batch` when this worker makes the LR (the training
        step keeps its own when the plan is applied there: train/batch.py)."""
        cfg = self.degradations
        if cfg is None or cfg.otf_draws != "per_batch" or not cfg.queue_size or not self.degrade_in_workers:
            return None
        seed = int(np.random.default_rng([self.seed, self.epoch, 6, self.rank, worker]).integers(1 << 62))
        return PairPool(cfg.queue_size, seed)

    def _cut(
        self, sample: EncodedSample, seeds: list[int], cut: int, pad: bool, tally: Tally, totals: Counter
    ) -> list[CutCrops]:
        """One crop per seed from one decode of `sample` (`_crops_of`), or none (counted once, as a skipped sample)."""
        try:
            decoded = decode_sample(sample.hr, sample.lr)
            crops = []
            for seed in seeds:
                result = self._crops_of(decoded, seed, cut, pad)
                if isinstance(result, str):  # the image's own size decides: the same for every crop of it
                    label = f"{self.crop}x{self.crop}"
                    count_skip(tally, totals, result, "skipping %s: %s for a %s crop", sample.key, result, label)
                    return []
                crops.append(result)
        except Exception as exc:  # untrusted bytes: decoders raise many kinds; one image must not end a run
            count_skip(tally, totals, "corrupt", "skipping undecodable image %s: %s", sample.key, exc)
            return []
        return crops

    def _crops_of(self, decoded: Decoded, seed: int, cut: int, pad: bool) -> CutCrops | str:
        """(the crop, None), or when mixing paired and on-the-fly LR (the HR crop to degrade, the paired crop); or the
        reason there is none (the sample then gives neither)."""
        # when mixing, the crop to degrade is cut from the HR alone with the generator it has without LR, so an
        # on-the-fly batch is the same whether paired LR is mixed in or not
        source = decoded if self.paired_share is None else decoded._replace(lr=None)
        rng = np.random.default_rng([seed, 1])
        crop = crop_decoded(source, cut, self.scale, rng, self.use_hflip, self.use_rot, pad=pad)
        if isinstance(crop, str):
            return crop
        if self.paired_share is None:
            return crop, None
        rng = np.random.default_rng([seed, PAIRED_CROP_STREAM])
        paired = crop_decoded(decoded, self.crop, self.scale, rng, self.use_hflip, self.use_rot)
        return paired if isinstance(paired, str) else (crop, paired)

    def _samples(
        self, split: Split, slot: int, rng: np.random.Generator, tally: Tally, totals: Counter, rounds: Rounds
    ) -> Iterator[tuple[int, list[int], EncodedSample]]:
        """(round number, one seed per crop, sample) for this slot's share of every pass, endlessly; a slot's parts of
        a pass are read in a fresh seeded order. Rounds (`split.slots` passes: all of the data) are what `rounds`
        keeps track of, so a slot whose share of one pass happens to be all bad does not end the stream."""
        size = 0
        for pass_index in itertools.count():
            round_index, within = divmod(pass_index, split.slots)
            parts = split.reads(slot, pass_index)
            for part in (parts[i] for i in rng.permutation(len(parts))):
                for position, sample in read_part(self.units[part.unit], part, self.paired, tally, totals):
                    size += 1
                    identity = f"{part.unit}/{position}/{sample.key}@{pass_index}"
                    names = [identity] + [f"{identity}#{crop}" for crop in range(1, self.crops_per_tile)]
                    yield round_index, [sample_seed(self.seed, self.epoch, name) for name in names], sample
            if within == split.slots - 1:
                if size == 0:
                    raise SrclusterError(
                        f"nothing readable in {len(self.units)} shard(s)/image(s) starting with "
                        f"{self.units[0].url} (skipped: {dict(totals)})"
                    )
                rounds.ended(round_index, size)
                size = 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded; torch threads per worker would only oversubscribe


class TrainStream:
    """Exactly `steps` batches per iteration; each iteration starts the same seeded stream (and its workers) afresh.

    Batches are `hr` (uint8 B x 3 x crop x crop) or, paired or degraded in the workers, `(hr, lr)`, or, to be degraded
    in the training step, `(hr, plan)`; with keys, the sample keys come last. Mixing paired and on-the-fly LR gives
    paired `(hr, lr)` batches among the on-the-fly ones (`train/batch.py: to_batch` takes either).
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
    crops_per_tile: int = 1,
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

    With both `lq` and such `degradations` (their `dataroot_lq_prob` > 0, which they then need) paired LR is mixed in
    as traiNNer-redux does: each batch is paired data's `(hr, lr)` with probability `dataroot_lq_prob`, else the
    on-the-fly batch the stream would give without `lq` (see the module's docstring).

    With `crops_per_tile` k each decoded sample gives k crops, each with its own seed (see the module's docstring).
    """
    if crop < 1 or batch_size < 1 or steps < 0 or num_workers < 0 or seed < 0 or epoch < 0 or scale < 1:
        raise ValueError("crop, batch_size and scale must be positive; steps, num_workers, seed and epoch not negative")
    if crops_per_tile < 1:
        raise ValueError(f"crops_per_tile must be at least 1, not {crops_per_tile}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if mp_context not in ("spawn", "forkserver"):
        raise ValueError("mp_context must be 'spawn' or 'forkserver' (fork would share s3fs state with the parent)")
    paired = lq is not None
    if degradations is not None and not degradations.makes_lr:
        degradations = None  # GT-only options (USM) are the training step's business
    if degradations is not None and crop % scale:
        raise ValueError("on-the-fly degradations need a crop that is a multiple of the scale")
    if degradations is not None and paired != (degradations.dataroot_lq_prob > 0):  # config/compat.py: in job terms
        raise ValueError(
            "paired data (lq) and on-the-fly degradations go together only with dataroot_lq_prob > 0 (the share of "
            "paired batches), and a dataroot_lq_prob above 0 only with paired data"
        )
    if paired and (scale < 2 or crop % scale):
        raise ValueError(f"paired data needs a scale of 2 or more that divides the HR crop ({crop}), not {scale}")
    unpaired: Counter = Counter()
    units = resolve_units(gt, lq, scale, unpaired)
    slots = world_size * max(1, num_workers)
    warning_key = f"{gt}|{world_size}|{num_workers}"
    if Split(units, slots, seed, epoch).by_position and warning_key not in _warned:  # once per data set and layout
        _warned.add(warning_key)
        log.warning(
            "%d shard(s) without sample counts (no manifest.json) for %d rank(s) x %d worker(s): every slot streams "
            "every shard and keeps its share of the samples; a shard set with a manifest is split without re-reading",
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
        crops_per_tile=crops_per_tile,
    )
    return TrainStream(
        dataset,
        steps=steps,
        num_workers=num_workers,
        pin_memory=pin_memory,
        mp_context=mp_context,
        unpaired=unpaired["unpaired"],
    )
