"""Read HR images for training (a stream of random crops per rank and DataLoader worker) and for validation.

Input is a list of *units*: shard URLs (`*.tar`, each holding many samples) and image-file URLs (one sample each), found
from a shard set (folder with manifest.json, or a brace pattern) or from a plain folder of images. Both kinds go through
the same pipeline:

    units --split by rank, then by worker--> endless passes in a seeded order --> decode + random crop + augment
          --> shuffle buffer --> DataLoader batches (uint8, B x 3 x crop x crop) --> exactly `steps` batches

Every rank yields exactly `steps` batches whatever its share of the data, so DDP ranks never wait on each other at the
end of an epoch. Randomness comes from one generator per (seed, epoch, rank, worker): same arguments, same batches.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from srcluster.data.shards import is_shard_pattern, join_url, manifest_url, shard_urls
from srcluster.errors import SrclusterError, StorageError
from srcluster.storage import StorageSettings

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TAR_IMAGE_KEYS = tuple(ext[1:] for ext in IMAGE_EXTS)
READ_BLOCK = 8 << 20  # readahead for streaming a shard from S3: few requests, bounded memory per open shard
STORAGE_ENV = ("AWS_", "SRCLUSTER_")  # what StorageSettings.resolve() reads from the environment
_warned: set[str] = set()


# --- opening URLs -------------------------------------------------------------------------------------------------


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """WebDataset opener for s3:// (and memory://) through the one storage configuration.

    The filesystem is made here, in the process that reads, never passed in: an s3fs instance holds an event loop and
    connections that must not cross a fork, and fsspec keys its instance cache by process id.
    """
    fs, path = StorageSettings.resolve().filesystem(url)
    if mode.startswith("r"):
        return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead")
    return fs.open(path, "wb")


def register_gopen() -> None:
    from webdataset.gopen import gopen_schemes

    for scheme in ("s3", "s3a", "memory"):
        gopen_schemes[scheme] = _gopen_fsspec


register_gopen()  # at import, so spawned DataLoader workers get it when they unpickle the dataset


def _gopen(url: str):
    from webdataset.gopen import gopen

    return gopen(url, "rb")


# --- finding the units ------------------------------------------------------------------------------------------


def is_shard_set(url: str) -> bool:
    if is_shard_pattern(url):
        return True
    fs, path = StorageSettings.resolve().filesystem(manifest_url(url))
    try:
        return fs.exists(path)
    except OSError as exc:
        raise StorageError(f"cannot read {url}: {exc}") from None


def list_images(url: str) -> list[tuple[str, str]]:
    """(name, URL) of every image under the folder `url`, recursively, sorted; name is the relative path sans suffix."""
    if url.lower().endswith(IMAGE_EXTS):
        return [(url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0], url)]
    fs, root = StorageSettings.resolve().filesystem(url)
    root = root.rstrip("/")
    try:
        paths = sorted(fs.find(root))
    except OSError as exc:
        raise StorageError(f"cannot list {url}: {exc}") from None
    found = []
    for path in paths:
        rel = path[len(root) + 1:] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
        if any(part.startswith((".", "_tmp")) for part in rel.split("/")):
            continue
        stem, ext = os.path.splitext(rel)
        if ext.lower() in IMAGE_EXTS:
            found.append((stem, join_url(url, rel)))
    return found


def resolve_units(gt: str | list[str]) -> list[str]:
    """Shard URLs and image-file URLs for `gt` (one URL or several), in a deterministic order."""
    units: list[str] = []
    for entry in [gt] if isinstance(gt, str) else list(gt):
        if is_shard_set(entry):
            units += shard_urls(entry)
        else:
            images = list_images(entry)
            if not images:
                raise StorageError(f"{entry} holds neither a shard set (manifest.json) nor any image "
                                   f"({', '.join(IMAGE_EXTS)})")
            units += [image_url for _, image_url in images]
    return units


def _read_unit(url: str, skipped: Counter) -> Iterator[tuple[str, bytes]]:
    """(key, encoded image) for every sample of one unit: each sample of a shard, or the one image file."""
    if not url.endswith(".tar"):
        with _gopen(url) as f:
            yield url, f.read()
        return
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def handler(exc: Exception) -> bool:
        # A missing, truncated or damaged shard ends that shard, not the run (WebDataset's warn handler sleeps 0.5 s).
        skipped["bad_shard"] += 1
        _warn_sometimes(skipped["bad_shard"], "skipping the rest of unreadable shard %s: %s", url, exc)
        return True

    try:
        stream = _gopen(url)
    except Exception as exc:  # any opener's error (OSError, botocore, ...): the same policy as a damaged shard
        handler(exc)
        return
    with stream:  # opened here rather than by WebDataset, so the connection closes with the shard, not at GC
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        for sample in group_by_keys(files, handler=handler):
            data = next((sample[k] for k in TAR_IMAGE_KEYS if k in sample), None)
            if data is None:
                skipped["no_image"] += 1
                continue
            yield sample["__key__"], data


# --- decoding and cropping --------------------------------------------------------------------------------------


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I"):  # 16/32-bit gray: keep the top byte instead of PIL's clipping to 255
        gray = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def decode_rgb(data: bytes) -> np.ndarray:
    """A whole encoded image as HxWx3 uint8."""
    with Image.open(io.BytesIO(data)) as img:
        return _to_rgb(img)


def _random_crop(data: bytes, crop: int, rng: np.random.Generator, hflip: bool, rot: bool) -> np.ndarray | None:
    """A random crop x crop x 3 uint8 window, flipped/rotated as traiNNer's `augment` does; None if too small."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size  # known from the header: a too-small image is rejected without being decoded
        if width < crop or height < crop:
            return None
        x, y = int(rng.integers(width - crop + 1)), int(rng.integers(height - crop + 1))
        # Crop before the mode conversion so only the window is converted (PIL still decodes the full PNG).
        patch = _to_rgb(img.crop((x, y, x + crop, y + crop)))
    flip, vflip, rot90 = rng.random(3) < 0.5
    if hflip and flip:
        patch = patch[:, ::-1]
    if rot and vflip:
        patch = patch[::-1]
    if rot and rot90:
        patch = patch.transpose(1, 0, 2)
    return patch


def _warn_sometimes(count: int, msg: str, *args: Any) -> None:
    """Log on the 1st, 2nd, 4th, 8th ... occurrence: visible, but no flood from a dataset full of small images."""
    if count & (count - 1) == 0:
        log.warning(msg + " (%d so far in this worker)", *args, count)


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


def split_units(units: list[str], rank: int, world_size: int, worker: int, workers: int) -> tuple[list[str], bool]:
    """This (rank, worker)'s units and whether they are disjoint from every other's.

    With fewer units than rank-worker slots some slot would get none, so every slot reads all units instead (each in
    its own seeded order); the data is then not partitioned, only differently ordered.
    """
    if len(units) >= world_size * workers:
        return units[rank::world_size][worker::workers], True
    return units, False


class HrCrops(IterableDataset):
    """Endless random HR crops (uint8 3 x crop x crop tensors) from this rank's share of the units."""

    def __init__(self, units: list[str], *, crop: int, rank: int, world_size: int, seed: int, epoch: int,
                 use_hflip: bool, use_rot: bool, shuffle_buffer: int, with_keys: bool):
        self.units, self.crop, self.rank, self.world_size = units, crop, rank, world_size
        self.seed, self.epoch, self.use_hflip, self.use_rot = seed, epoch, use_hflip, use_rot
        self.shuffle_buffer, self.with_keys = shuffle_buffer, with_keys
        self.skipped: Counter = Counter()  # per process: only the main process's when num_workers == 0
        # A forkserver started by an earlier loader holds the environment of that moment; workers take this one instead.
        self.storage_env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV)}

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            for name in [n for n in os.environ if n.startswith(STORAGE_ENV)]:
                del os.environ[name]
            os.environ.update(self.storage_env)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        mine, _ = split_units(self.units, self.rank, self.world_size, worker, workers)
        return _shuffled(self._crops(mine, rng), self.shuffle_buffer, rng)

    def _crops(self, units: list[str], rng: np.random.Generator) -> Iterator:
        while True:  # one pass over this worker's units per loop, in a fresh seeded order
            produced = 0
            for index in rng.permutation(len(units)):
                for key, data in _read_unit(units[index], self.skipped):
                    try:
                        patch = _random_crop(data, self.crop, rng, self.use_hflip, self.use_rot)
                    except Exception as exc:  # untrusted bytes: PIL raises many kinds; one bad image must not end a run
                        self.skipped["corrupt"] += 1
                        _warn_sometimes(self.skipped["corrupt"], "skipping undecodable image %s: %s", key, exc)
                        continue
                    if patch is None:
                        self.skipped["too_small"] += 1
                        _warn_sometimes(self.skipped["too_small"], "skipping %s: smaller than the %dx%d crop",
                                        key, self.crop, self.crop)
                        continue
                    produced += 1
                    tensor = torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))
                    yield (tensor, key) if self.with_keys else tensor
            if produced == 0:
                raise SrclusterError(f"no usable {self.crop}x{self.crop} crop in {len(units)} shard(s)/image(s) "
                                     f"starting with {units[0]} (skipped: {dict(self.skipped)})")


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is single-threaded PIL; torch threads per worker would only oversubscribe


class TrainStream:
    """Exactly `steps` batches per iteration; each iteration starts the same seeded stream (and its workers) afresh."""

    def __init__(self, dataset: HrCrops, *, batch_size: int, steps: int, num_workers: int, pin_memory: bool,
                 mp_context: str):
        self.dataset, self.batch_size, self.steps = dataset, batch_size, steps
        self.num_workers, self.pin_memory, self.mp_context = num_workers, pin_memory, mp_context

    def __len__(self) -> int:
        return self.steps

    @property
    def skipped(self) -> Counter:
        """Skipped samples by reason; counted in the main process only, so complete only for num_workers == 0."""
        return self.dataset.skipped

    def __iter__(self) -> Iterator:
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
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, num_workers=workers, pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
            multiprocessing_context=context,
        )
        batches = iter(loader)
        try:
            for _ in range(self.steps):
                yield next(batches)
        finally:
            del batches  # stops the worker processes now rather than at garbage collection


def train_loader(gt: str | list[str], *, crop: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, epoch: int = 0, steps: int, use_hflip: bool = True,
                 use_rot: bool = True, shuffle_buffer: int = 256, with_keys: bool = False, pin_memory: bool = False,
                 mp_context: str = "forkserver") -> TrainStream:
    """Exactly `steps` uint8 batches (B, 3, crop, crop) of random HR crops for one rank.

    `gt` is a shard set (folder with manifest.json, or a brace pattern of tar URLs), a folder of images, or a list of
    these. With `with_keys` each batch is `(tensor, keys)` (the sample keys; image URLs for plain folders).
    """
    if crop < 1 or batch_size < 1 or steps < 0 or num_workers < 0 or seed < 0 or epoch < 0:
        raise ValueError("crop and batch_size must be positive; steps, num_workers, seed and epoch not negative")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if mp_context not in ("spawn", "forkserver"):
        raise ValueError("mp_context must be 'spawn' or 'forkserver' (fork would share s3fs state with the parent)")
    units = resolve_units(gt)
    _, disjoint = split_units(units, rank, world_size, 0, max(1, num_workers))
    warning_key = f"{gt}|{world_size}|{num_workers}"
    if not disjoint and warning_key not in _warned:  # once per data set and layout, not once per epoch
        _warned.add(warning_key)
        log.warning("%d shard(s)/image(s) for %d rank(s) x %d worker(s): every rank reads all of them in its own "
                    "seeded order instead of a disjoint share", len(units), world_size, max(1, num_workers))
    dataset = HrCrops(units, crop=crop, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                      use_hflip=use_hflip, use_rot=use_rot, shuffle_buffer=shuffle_buffer, with_keys=with_keys)
    return TrainStream(dataset, batch_size=batch_size, steps=steps, num_workers=num_workers, pin_memory=pin_memory,
                       mp_context=mp_context)


# --- validation -------------------------------------------------------------------------------------------------


def iter_images(url: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, uint8 3 x H x W) for every image of a folder (any fsspec URL) or of a shard set, in a fixed order.

    Undecodable images are skipped with a warning: a validation set should be fixed, not crash a finished epoch.
    """
    if is_shard_set(url):
        skipped: Counter = Counter()
        items = (item for shard in shard_urls(url) for item in _read_unit(shard, skipped))
    else:
        items = ((name, _read_whole(image_url)) for name, image_url in list_images(url))
    for name, data in items:
        try:
            array = decode_rgb(data)
        except Exception as exc:  # untrusted bytes, as in training
            log.warning("skipping undecodable image %s in %s: %s", name, url, exc)
            continue
        yield name, torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _read_whole(url: str) -> bytes:
    with _gopen(url) as f:
        return f.read()
