"""Write HR samples as WebDataset tar shards to any fsspec URL, plus the `manifest.json` that describes them.

Layout of a shard set at DEST (s3://bucket/prefix, a local folder, file://..., memory://...):

    DEST/shard-000000.tar     members `{key}.png` (lossless HR image) and `{key}.json` (where it came from)
    DEST/shard-000001.tar
    DEST/manifest.json        {"format": "srcluster-shards/1", "samples", "bytes",
                               "shards": [{name, samples, bytes, sha256}], ...}

A reader must never see half a shard, and a manifest must never describe shards that are not there: every object is
written under a temporary key (`DEST/_tmp/<name>.<uuid>`) and then moved to its final name, and the manifest goes last.
An earlier manifest at DEST is removed before the first new shard lands, so a reader fails loudly instead of reading
a mix of old and new shards while a rewrite is in progress.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from srcluster.errors import SrclusterError, StorageError
from srcluster.storage import StorageSettings, is_s3

log = logging.getLogger(__name__)

FORMAT = "srcluster-shards/1"
MANIFEST = "manifest.json"
TMP_DIR = "_tmp"
SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")
RESERVED = frozenset({"format", "created", "tool_version", "samples", "bytes", "shards"})
TAR_OVERHEAD = 3 * 512  # two member headers plus padding, for the size estimate before a sample is added
MAX_PENDING_UPLOADS = 2  # finished shards waiting on disk for their upload: bounds local temp space


@dataclass(frozen=True)
class Sample:
    """One HR training image; `key` names it in a shard (no dots: WebDataset splits member names at the first dot)."""

    key: str
    hr_png: bytes
    meta: dict[str, Any] = field(default_factory=dict)


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def check_key(key: str) -> None:
    # WebDataset groups tar members by the name up to the first dot of the last path component, and skips `__x__`.
    if not key or "." in key.rsplit("/", 1)[-1] or key.startswith("__") or key.startswith("/"):
        raise ValueError(f"sample key {key!r} is not usable in a WebDataset shard (no dots, no leading '/' or '__')")


def is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _prepare_destination(dest: str, settings: StorageSettings):
    """(fs, root path) for `dest`, after fail-fast checks that give one clear error instead of a stack of retries."""
    if is_s3(dest):
        settings.check(dest, create_bucket=False)
    elif "://" not in dest or dest.startswith("file://"):
        settings.check(dest)
    fs, root = settings.filesystem(dest)
    root = root.rstrip("/")
    try:
        if is_local(fs):
            fs.makedirs(f"{root}/{TMP_DIR}", exist_ok=True)
        if fs.exists(f"{root}/{MANIFEST}"):
            log.info("replacing the shard set at %s: removing its old manifest first", dest)
            fs.rm_file(f"{root}/{MANIFEST}")
    except OSError as exc:
        raise StorageError(f"cannot write shards to {dest}: {exc}") from None
    return fs, root


def _publish(fs, root: str, name: str, dest: str, *, local_file: str | None = None, data: bytes | None = None) -> None:
    """Upload under a temporary key, then move to `root/name`, so the final name only ever holds a complete object."""
    tmp = f"{root}/{TMP_DIR}/{name}.{uuid.uuid4().hex}"
    try:
        if local_file is not None:
            fs.put_file(local_file, tmp)
        else:
            fs.pipe_file(tmp, data)
        fs.mv(tmp, f"{root}/{name}")
    except OSError as exc:
        try:
            fs.rm_file(tmp)
        except OSError:
            pass
        raise StorageError(f"cannot write {join_url(dest, name)}: {exc}") from None


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    tar.addfile(info, io.BytesIO(data))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ShardWriter:
    """Fills local tar files one at a time and hands each finished one to a background upload."""

    def __init__(self, fs, root: str, dest: str, workdir: str, max_samples: int, max_bytes: int):
        self.fs, self.root, self.dest, self.workdir = fs, root, dest, workdir
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.mtime = int(time.time())
        self.shards: list[dict[str, Any]] = []
        self.uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")
        self.pending: list[Future] = []
        self.tar: tarfile.TarFile | None = None
        self.count = 0
        self.estimate = 0

    def add(self, sample: Sample) -> None:
        meta = json.dumps(sample.meta, sort_keys=True).encode()
        size = len(sample.hr_png) + len(meta) + TAR_OVERHEAD
        if self.tar is not None and (self.count >= self.max_samples or self.estimate + size > self.max_bytes):
            self.finish_shard()
        if self.tar is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self.local = os.path.join(self.workdir, name)
            self.tar = tarfile.open(self.local, "w")
            self.shards.append({"name": name})
            self.count, self.estimate = 0, 1024  # the end-of-archive blocks
        _add_member(self.tar, f"{sample.key}.png", sample.hr_png, self.mtime)
        _add_member(self.tar, f"{sample.key}.json", meta, self.mtime)
        self.count += 1
        self.estimate += size

    def finish_shard(self) -> None:
        assert self.tar is not None
        self.tar.close()
        self.tar = None
        entry = self.shards[-1]
        entry.update(samples=self.count, bytes=os.path.getsize(self.local), sha256=_sha256(self.local))
        while len(self.pending) >= MAX_PENDING_UPLOADS:
            self.pending.pop(0).result()
        self.pending.append(self.uploads.submit(self._upload, self.local, entry["name"]))

    def _upload(self, local: str, name: str) -> None:
        try:
            _publish(self.fs, self.root, name, self.dest, local_file=local)
        finally:
            os.unlink(local)

    def close(self) -> None:
        """Finish the last shard and wait for every upload; the first failed upload raises here."""
        try:
            if self.tar is not None:
                self.finish_shard()
            for future in self.pending:
                future.result()
        finally:
            self.uploads.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop without finishing: shards already uploaded stay, but no manifest will describe them."""
        if self.tar is not None:
            self.tar.close()
        self.uploads.shutdown(wait=True, cancel_futures=True)


def write_shards(samples: Iterable[Sample], dest: str, *, max_samples: int = 1000, max_bytes: int = 256 << 20,
                 manifest_extra: dict | None = None, progress: bool = True) -> dict:
    """Write `samples` as `shard-NNNNNN.tar` files plus `manifest.json` under `dest`; return the manifest.

    A shard closes after `max_samples` samples or before it would pass `max_bytes` (a single larger sample still gets a
    shard of its own). Shards left at `dest` by an earlier, larger write are removed once the new manifest is in place.
    """
    from tqdm import tqdm

    import srcluster

    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be positive")
    extra = dict(manifest_extra or {})
    if clash := RESERVED & extra.keys():
        raise ValueError(f"manifest_extra may not set {sorted(clash)}: srcluster writes those keys itself")
    json.dumps(extra)  # a TypeError now, not after every shard is uploaded

    fs, root = _prepare_destination(dest, StorageSettings.resolve())
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    seen: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="srcluster-shards-") as workdir:
        writer = _ShardWriter(fs, root, dest, workdir, max_samples, max_bytes)
        try:
            with tqdm(samples, desc=f"shards -> {dest}", unit="sample", disable=not progress) as bar:
                for sample in bar:
                    check_key(sample.key)
                    if sample.key in seen:
                        raise ValueError(f"duplicate sample key {sample.key!r}")
                    seen.add(sample.key)
                    writer.add(sample)
                    bar.set_postfix(shards=len(writer.shards), refresh=False)
        except BaseException:
            writer.abort()
            raise
        writer.close()

    if not writer.shards:
        raise SrclusterError(f"no samples to write to {dest}")
    manifest = {
        "format": FORMAT,
        "created": created,
        "tool_version": srcluster.__version__,
        "samples": sum(s["samples"] for s in writer.shards),
        "bytes": sum(s["bytes"] for s in writer.shards),
        "shards": writer.shards,
        **extra,
    }
    _publish(fs, root, MANIFEST, dest, data=json.dumps(manifest, indent=1).encode())
    _remove_leftovers(fs, root, {s["name"] for s in writer.shards})
    log.info("wrote %d samples in %d shards (%.1f MB) to %s", manifest["samples"], len(writer.shards),
             manifest["bytes"] / 1e6, dest)
    return manifest


def _remove_leftovers(fs, root: str, keep: set[str]) -> None:
    """Drop shards of an earlier, larger write and the empty temp folder (local filesystems keep empty folders)."""
    try:
        for path in fs.ls(root, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if SHARD_NAME.match(name) and name not in keep:
                fs.rm_file(path)
        if is_local(fs):
            os.rmdir(f"{root}/{TMP_DIR}")
    except OSError as exc:  # the new shard set is complete; leftovers only cost space
        log.warning("could not tidy %s: %s", root, exc)


# --- reading ------------------------------------------------------------------------------------------------------


def manifest_url(url: str) -> str:
    return url if url.rstrip("/").endswith(MANIFEST) else join_url(url, MANIFEST)


def read_manifest(url: str) -> dict:
    """The manifest of the shard set at `url` (its folder, or the manifest.json itself)."""
    target = manifest_url(url)
    fs, path = StorageSettings.resolve().filesystem(target)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise StorageError(f"no shard set at {url}: {target} does not exist") from None
    except OSError as exc:
        raise StorageError(f"cannot read {target}: {exc}") from None
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise StorageError(f"{target} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StorageError(f"{target} has format {found!r}, expected {FORMAT!r}")
    return manifest


def is_shard_pattern(url: str) -> bool:
    return "{" in url or url.endswith(".tar")


def shard_urls(url: str) -> list[str]:
    """Full URLs of the shards of a shard set: a folder holding manifest.json, or a (brace) pattern of tar URLs."""
    if is_shard_pattern(url):
        from braceexpand import braceexpand

        return list(braceexpand(url))
    base = url.rstrip("/").removesuffix(MANIFEST).rstrip("/")
    return [join_url(base, shard["name"]) for shard in read_manifest(url)["shards"]]
