"""`srcluster shards build`: folders of HR images (optionally with LR partners) -> a shard set with manifest and report.

    list + pair sources (sorted, deterministic) -> read bytes (threads: I/O) -> decode, tile, encode (processes: CPU)
      -> in input order into ShardSetWriter (one source's tiles never straddle two shards) -> manifest + report

Idempotent and resumable: the build's fingerprint covers its settings and every source file's path, size and
modification time. A finished build with the same fingerprint is left alone; an interrupted one continues after its
last finished shard. Encoding is deterministic, so a resumed build writes the same shards as an uninterrupted one.

Bad inputs (undecodable, unsupported, no or ambiguous LR partner, LR size not HR / scale) are skipped and listed with
their reason in `build-report.json`; the build fails once they pass `max_bad_fraction` of the sources. Images
smaller than the minimum tile are listed too but do not count as bad.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from tqdm import tqdm

from srcluster.data.images import (
    ALPHA_POLICIES,
    IMAGE_EXTS,
    STORE_FORMATS,
    AlphaPolicy,
    ImageError,
    StoreFormat,
    decode_rgb,
    encode,
    tile_boxes,
)
from srcluster.data.manifest import read_manifest
from srcluster.data.remote import read_bytes
from srcluster.data.shards import REPORT, Sample, ShardSetWriter, check_extra
from srcluster.data.sources import ImageFile, join_url, list_image_files, pair_files
from srcluster.errors import SrclusterError, StorageError

log = logging.getLogger(__name__)

BUILDER = "srcluster.data.build/2"  # bump when the same inputs and settings would give different shards


@dataclass(frozen=True)
class TileSettings:
    """How source images become samples. `scale` > 1 with LR partners: tiles are cut on the LR grid, so every HR
    tile is exactly `scale` times its LR tile at `scale` times its position."""

    tile: int | None = 512  # None: whole images
    stride: int | None = None  # default: `tile` (no overlap except the edge tile)
    min_size: int | None = None  # default: tile // 2; smaller images are skipped, narrower edge strips dropped
    scale: int = 1
    image_format: StoreFormat = "webp"
    alpha: AlphaPolicy = "drop"

    def __post_init__(self) -> None:
        if self.image_format not in STORE_FORMATS:
            raise ValueError(f"image_format must be one of {STORE_FORMATS}, not {self.image_format!r}")
        if self.alpha not in ALPHA_POLICIES:
            raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, not {self.alpha!r}")
        if self.scale < 1:
            raise ValueError("scale must be at least 1")
        for name in ("tile", "stride", "min_size"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value % self.scale):
                raise ValueError(f"{name} ({value}) must be a positive multiple of the scale ({self.scale})")
        if self.stride is not None and self.tile is None:
            raise ValueError("stride needs a tile size")

    @property
    def effective_min(self) -> int:
        if self.min_size is not None:
            return self.min_size
        return max(self.scale, (self.tile // 2) // self.scale * self.scale) if self.tile else self.scale

    def describe(self) -> dict[str, Any] | None:
        if self.tile is None:
            return {"size": None, "min_size": self.effective_min}
        return {"size": self.tile, "stride": self.stride or self.tile, "min_size": self.effective_min}


def tile_samples(
    key: str, hr: np.ndarray, lr: np.ndarray | None, settings: TileSettings, meta: dict[str, Any]
) -> list[Sample]:
    """The samples of one decoded source (HR, and LR when paired): one per tile, keys `{key}_y{y}_x{x}` when tiled."""
    s = settings.scale
    grid = hr if lr is None else lr  # cut on the LR grid so HR tiles stay aligned with LR tiles
    f = 1 if lr is None else s
    boxes = tile_boxes(
        grid.shape[0],
        grid.shape[1],
        settings.tile and settings.tile // f,
        settings.stride and settings.stride // f,
        settings.effective_min // f,
    )
    samples = []
    for y, x, h, w in boxes:
        hy, hx, hh, hw = y * f, x * f, h * f, w * f
        name = key if settings.tile is None else f"{key}_y{hy:04d}_x{hx:04d}"
        lr_bytes = None if lr is None else encode(lr[y : y + h, x : x + w], settings.image_format)
        samples.append(
            Sample(
                name,
                encode(hr[hy : hy + hh, hx : hx + hw], settings.image_format),
                {**meta, "box": [hy, hx, hh, hw], "source_size": list(hr.shape[:2])},
                settings.image_format,
                lr_bytes,
            )
        )
    return samples


# --- planning -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One source image (and its LR partner) at a fixed position in the build."""

    key: str
    hr: ImageFile
    lr: ImageFile | None = None
    problem: str | None = None  # known before reading: pairing errors, key clashes


def _key_part(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_\-/]", "_", text).strip("/")
    return "k" + cleaned if cleaned.startswith("_") or not cleaned else cleaned


def _root_labels(roots: list[str]) -> list[str]:
    """Key prefixes that keep samples from several folders apart: the folder names, numbered when they clash."""
    if len(roots) == 1:
        return [""]
    labels: list[str] = []
    for root in roots:
        base = _key_part(root.rstrip("/").rsplit("/", 1)[-1]).replace("/", "_")
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return [label + "/" for label in labels]


def plan(sources: list[str], lq: list[str] | None) -> tuple[list[Item], list[str]]:
    """(every source image as an Item, in a fixed order; LR files that have no HR partner)."""
    if lq is not None and len(lq) != len(sources):
        raise SrclusterError(f"{len(sources)} HR source(s) but {len(lq)} LR folder(s): give one LR folder per source")
    items: list[Item] = []
    orphans: list[str] = []
    keys: dict[str, str] = {}
    for index, (root, label) in enumerate(zip(sources, _root_labels(sources), strict=True)):
        hr_files = list_image_files(root)
        if not hr_files:
            raise StorageError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
        lr_files = list_image_files(lq[index]) if lq is not None else None
        pairs, problems, lost = pair_files(hr_files, lr_files)
        orphans += lost
        by_url = {p.hr.url: p for p in pairs}
        reasons = dict(problems)
        for image in hr_files:
            key = label + _key_part(image.stem)
            problem = reasons.get(image.url)
            if problem is None and (other := keys.setdefault(key, image.url)) != image.url:
                problem = f"same sample key {key!r} as {other}"
            pair = by_url.get(image.url)
            items.append(Item(key, image, pair.lr if pair else None, problem))
    return items, orphans


def fingerprint(
    items: list[Item],
    sources: list[str],
    lq: list[str] | None,
    settings: TileSettings,
    max_samples: int,
    max_bytes: int,
) -> str:
    listing = [
        [i.hr.rel, i.hr.size, i.hr.modified] + ([i.lr.rel, i.lr.size, i.lr.modified] if i.lr else []) for i in items
    ]
    content = {
        "builder": BUILDER,
        "sources": sources,
        "lq": lq,
        "settings": asdict(settings),
        "max_samples": max_samples,
        "max_bytes": max_bytes,
        "files": listing,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# --- encoding (in worker processes) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    samples: list[Sample] = field(default_factory=list)
    skip: str | None = None  # why this source gave no sample
    bad: bool = True


def encode_source(
    key: str, name: str, hr: bytes, lr_name: str | None, lr: bytes | None, settings: TileSettings
) -> Encoded:
    """Decode, check, tile and encode one source; bad input becomes a reason, never an exception."""
    try:
        hr_rgb = decode_rgb(hr, settings.alpha)
    except ImageError as exc:
        return Encoded(skip=str(exc))
    lr_rgb = None
    if lr is not None:
        try:
            lr_rgb = decode_rgb(lr, settings.alpha)
        except ImageError as exc:
            return Encoded(skip=f"LR partner {lr_name}: {exc}")
        (h, w), (lh, lw), s = hr_rgb.shape[:2], lr_rgb.shape[:2], settings.scale
        if (h, w) != (lh * s, lw * s):
            return Encoded(skip=f"HR {w}x{h} is not {s} x LR {lw}x{lh} ({lr_name}); expected LR {w / s:g}x{h / s:g}")
    meta = {"source": name} if lr_name is None else {"source": name, "lr_source": lr_name}
    samples = tile_samples(key, hr_rgb, lr_rgb, settings, meta)
    if not samples:
        h, w = hr_rgb.shape[:2]
        return Encoded(skip=f"{w}x{h} is smaller than the minimum tile side {settings.effective_min}", bad=False)
    return Encoded(samples)


def _encode_item(item: Item, settings: TileSettings, pool: ProcessPoolExecutor | None) -> Encoded:
    """Read an item's bytes here (I/O), encode in `pool` (CPU) or inline."""
    if item.problem:
        return Encoded(skip=item.problem)
    try:
        hr = read_bytes(item.hr.url)
        lr = read_bytes(item.lr.url) if item.lr else None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        return Encoded(skip=f"cannot read: {exc.__class__.__name__}: {exc}")
    args = (item.key, item.hr.url, hr, item.lr.url if item.lr else None, lr, settings)
    return pool.submit(encode_source, *args).result() if pool else encode_source(*args)


def _encoded_in_order(items: list[Item], settings: TileSettings, workers: int) -> Generator[Encoded, None, None]:
    """Encoded items in input order, `workers` processes encoding, a bounded window of items in flight."""
    if workers == 0:
        for item in items:
            yield _encode_item(item, settings, None)
        return
    # spawn: the pool must not inherit this process's s3fs event loop (workers never touch storage anyway).
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    window = 2 * workers + 2
    readers = ThreadPoolExecutor(max_workers=window, thread_name_prefix="shard-build-read")
    pending: deque[Future] = deque()
    try:
        todo = iter(items)
        for item in todo:
            pending.append(readers.submit(_encode_item, item, settings, pool))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)


# --- the build --------------------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    dest: str
    manifest: dict
    created: bool  # False: an identical build was already complete, nothing was written
    resumed_shards: int
    skipped: list[dict[str, Any]]
    unpaired_lr: list[str]

    @property
    def bad(self) -> list[dict[str, Any]]:
        return [s for s in self.skipped if s["bad"]]


def _absolute(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def _read_report(dest: str) -> dict:
    try:
        return json.loads(read_bytes(join_url(dest, REPORT)))
    except (OSError, ValueError):
        return {}


def _existing_manifest(dest: str) -> dict | None:
    try:
        return read_manifest(dest)
    except StorageError:
        return None


def build_shards(
    sources: str | list[str],
    dest: str,
    *,
    lq: str | list[str] | None = None,
    settings: TileSettings | None = None,
    max_samples: int = 1000,
    max_bytes: int = 256 << 20,
    max_bad_fraction: float = 0.01,
    workers: int | None = None,
    progress: bool = True,
    manifest_extra: dict | None = None,
) -> BuildResult:
    """Build (or finish, or confirm) the shard set at `dest` from folders of images; see the module docstring."""
    settings = settings or TileSettings()
    sources = [_absolute(s) for s in ([sources] if isinstance(sources, str) else sources)]
    lq_list = None if lq is None else [_absolute(s) for s in ([lq] if isinstance(lq, str) else lq)]
    if (lq_list is not None) != (settings.scale > 1):
        raise SrclusterError("LR folders and a scale of 2 or more go together: give both (paired) or neither")
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError("max_bad_fraction must be between 0 and 1")
    extra = check_extra(manifest_extra)
    workers = (os.cpu_count() or 1) if workers is None else workers

    items, orphans = plan(sources, lq_list)
    if orphans:
        log.warning("%d LR file(s) have no HR partner and are not used, e.g. %s", len(orphans), orphans[0])
    fp = fingerprint(items, sources, lq_list, settings, max_samples, max_bytes)
    existing = _existing_manifest(dest)
    if existing and (existing.get("build") or {}).get("fingerprint") == fp:
        log.info("%s is already built from these sources and settings; nothing to do", dest)
        skipped = _read_report(dest).get("skipped", [])
        return BuildResult(dest, existing, False, len(existing["shards"]), skipped, orphans)

    writer = ShardSetWriter(dest, max_samples=max_samples, max_bytes=max_bytes, fingerprint=fp)
    start = writer.resume()
    budget = max_bad_fraction * len(items)
    report = {"dest": dest, "sources": sources, "lq_sources": lq_list, "unpaired_lr": orphans}
    results = _encoded_in_order(items[start:], settings, workers)
    try:
        with (
            closing(results),
            tqdm(total=len(items), initial=start, desc=f"shards -> {dest}", unit="image", disable=not progress) as bar,
        ):
            for position, result in enumerate(results, start):
                if result.skip is not None:
                    writer.skip(items[position].hr.url, result.skip, bad=result.bad)
                    bad = sum(s["bad"] for s in writer.skipped)
                    if bad > budget:
                        raise _TooManyBad(bad, len(items), max_bad_fraction, writer.skipped)
                else:
                    writer.add(result.samples, position)
                bar.update()
                bar.set_postfix(shards=len(writer.shards), skipped=len(writer.skipped), refresh=False)
    except _TooManyBad as exc:
        writer.abort()
        writer.publish_json(REPORT, {**report, "status": "failed", "created": _now(), "skipped": writer.skipped})
        raise SrclusterError(f"{exc}; report: {join_url(dest, REPORT)}") from None
    except BaseException:
        writer.abort()
        raise
    writer.close(end_position=len(items))

    bad = sum(s["bad"] for s in writer.skipped)
    writer.publish_json(REPORT, {**report, "status": "complete", "created": _now(), "skipped": writer.skipped})
    manifest = writer.write_manifest(
        {
            "image_format": settings.image_format,
            "paired": lq_list is not None,
            "scale": settings.scale if lq_list is not None else None,
            "tile": settings.describe(),
            "alpha": settings.alpha,
            "sources": sources,
            "lq_sources": lq_list,
            "build": {
                "builder": BUILDER,
                "fingerprint": fp,
                "source_images": len(items),
                "skipped": len(writer.skipped),
                "bad": bad,
                "unpaired_lr": len(orphans),
                "report": REPORT,
            },
            **extra,
        }
    )
    return BuildResult(dest, manifest, True, writer.resumed_shards, writer.skipped, orphans)


class _TooManyBad(Exception):
    def __init__(self, bad: int, total: int, fraction: float, skipped: list[dict]):
        examples = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped if s["bad"])
        super().__init__(
            f"{bad} of {total} source images are bad (allowed: {fraction:.1%}): "
            f"{examples[:600]}{'…' if len(examples) > 600 else ''}"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
