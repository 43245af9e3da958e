"""WebDataset tar shards at any fsspec URL: writing them (atomically, resumably) and their manifest.

Reading them is in `manifest` (the manifest, shard URLs, verify, stats) and `tar_reader` (strict member reading); both
are re-exported here, so `srcluster.data.shards` stays the one import for a shard set.

Layout of a shard set at DEST (s3://bucket/prefix, a local folder, file://..., memory://...):

    DEST/shard-000000.tar      members `{key}.webp|png` (lossless HR image), `{key}.lr.webp|png` (LR partner, paired
    DEST/shard-000001.tar      sets only) and `{key}.json` (where the sample came from)
    DEST/manifest.json         {"format": "srcluster-shards/2", "samples", "bytes", "shards": [{name, samples, bytes,
                                sha256}], ...}; written last
    DEST/build-report.json     what a build skipped, and why (builds from folders only)

A reader must never see half a shard, and a manifest must never describe shards that are not there: every object is
written under a temporary key (`DEST/_tmp/<name>.<uuid>`) and then moved to its final name, and the manifest goes last.
An earlier manifest at DEST is removed before the first new shard lands, so a reader fails loudly instead of reading
a mix of old and new shards while a rewrite is in progress.

Resuming: after each shard, a record of it (manifest entry, position in the input, skipped inputs) is published to
`DEST/_build/`. A writer given the same `fingerprint` as an interrupted one keeps the finished shards it finds there
and continues from the input position after them; the work folders are removed once the manifest is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from srcluster import __version__
from srcluster.data.manifest import (
    FORMAT,
    MANIFEST,
    READABLE_FORMATS,
    SHARD_NAME,
    VerifyResult,
    is_shard_pattern,
    manifest_url,
    read_manifest,
    shard_set_root,
    shard_urls,
    stats,
    verify,
)
from srcluster.data.remote import is_remote, retrying
from srcluster.data.sources import join_url
from srcluster.data.tar_reader import (
    TarFormatError,
    UnsafeNameError,
    iter_tar,
    sample_key,
    split_member,
    unsafe_name,
)
from srcluster.errors import SrclusterError, StorageError
from srcluster.storage import StorageSettings, is_s3

log = logging.getLogger(__name__)

__all__ = [  # the writer's own names, then the reading side's
    "FORMAT",
    "MANIFEST",
    "READABLE_FORMATS",
    "REPORT",
    "SHARD_NAME",
    "Sample",
    "ShardSetWriter",
    "TarFormatError",
    "UnsafeNameError",
    "VerifyResult",
    "check_extra",
    "check_key",
    "is_local",
    "is_shard_pattern",
    "iter_tar",
    "manifest_url",
    "read_manifest",
    "sample_key",
    "shard_set_root",
    "shard_urls",
    "split_member",
    "stats",
    "unsafe_name",
    "verify",
    "write_shards",
]

REPORT = "build-report.json"
TMP_DIR = "_tmp"
STATE_DIR = "_build"
STATE = "state.json"
RESERVED = frozenset({"format", "created", "tool_version", "samples", "bytes", "shards"})
TAR_OVERHEAD = 512 + 512  # a member header plus padding, for the size estimate before a sample is added
MAX_PENDING_UPLOADS = 2  # finished shards waiting on disk for their upload: bounds local temp space
# Member timestamps are fixed so that the same samples always give the same bytes (and sha256): a resumed build then
# writes exactly the shards an uninterrupted one would have. When a shard set was made is in its manifest.
TAR_MTIME = 0


@dataclass(frozen=True)
class Sample:
    """One training sample. `key` names it in a shard (no dots: WebDataset splits member names at the first dot)."""

    key: str
    hr: bytes  # the HR image, losslessly encoded as `ext`
    meta: dict[str, Any] = field(default_factory=dict)
    ext: str = "png"
    lr: bytes | None = None  # the LR partner, same encoding, for datasets whose LR was made offline

    def members(self) -> list[tuple[str, bytes]]:
        out = [(f"{self.key}.{self.ext}", self.hr)]
        if self.lr is not None:
            out.append((f"{self.key}.lr.{self.ext}", self.lr))
        out.append((f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode()))
        return out


def check_key(key: str) -> None:
    # WebDataset groups tar members by the name up to the first dot of the last path component, and skips `__x__`.
    if not key or "." in key.rsplit("/", 1)[-1] or key.startswith(("__", "/")):
        raise ValueError(f"sample key {key!r} is not usable in a WebDataset shard (no dots, no leading '/' or '__')")


def is_local(fs) -> bool:
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
            fs.makedirs(f"{root}/{STATE_DIR}", exist_ok=True)
        if fs.exists(f"{root}/{MANIFEST}"):
            log.info("replacing the shard set at %s: removing its old manifest first", dest)
            fs.rm_file(f"{root}/{MANIFEST}")
    except OSError as exc:
        raise StorageError(f"cannot write shards to {dest}: {exc}") from None
    return fs, root


def _publish(fs, root: str, name: str, dest: str, *, local_file: str | None = None, data: bytes | None = None) -> None:
    """Upload under a temporary key, then move to `root/name`, so the final name only ever holds a complete object."""
    tmp = f"{root}/{TMP_DIR}/{posixpath.basename(name)}.{uuid.uuid4().hex}"

    def put() -> None:
        if local_file is not None:
            fs.put_file(local_file, tmp)
        else:
            fs.pipe_file(tmp, data)
        fs.mv(tmp, f"{root}/{name}")

    try:
        retrying(put, f"writing {join_url(dest, name)}") if is_remote(fs) else put()
    except (OSError, SrclusterError) as exc:
        with contextlib.suppress(OSError):
            fs.rm_file(tmp)
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


class ShardSetWriter:
    """Packs groups of samples into shards, publishes each with its progress record, and the manifest last.

    A group (all tiles of one source image) never straddles two shards: a shard is closed before a group that would
    take it past `max_samples` or `max_bytes` (a larger group gets a shard of its own). Groups and skipped inputs come
    with their input `position`, so an interrupted write can resume after the last finished shard.
    """

    def __init__(self, dest: str, *, max_samples: int, max_bytes: int, fingerprint: str | None = None):
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.dest, self.max_samples, self.max_bytes, self.fingerprint = dest, max_samples, max_bytes, fingerprint
        self.fs, self.root = _prepare_destination(dest, StorageSettings.resolve())
        self.shards: list[dict[str, Any]] = []  # manifest entries, finished or open
        self.skipped: list[dict[str, Any]] = []  # records of inputs left out, in input order
        self._open_skipped = 0  # how many of `self.skipped` belong to the open shard
        self.seen: set[str] = set()
        self.resumed_shards = 0
        self._workdir = tempfile.TemporaryDirectory(prefix="srcluster-shards-")
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")
        self._pending: list[Future] = []
        self._tar: tarfile.TarFile | None = None
        self._local = ""
        self._count = 0
        self._estimate = 0

    # --- resuming -------------------------------------------------------------------------------------------------

    def resume(self) -> int:
        """The input position to continue from: after the finished shards of an interrupted write with the same
        fingerprint, else 0 (and any earlier progress records are dropped)."""
        state_path = f"{self.root}/{STATE_DIR}/{STATE}"
        state = self._read_json(state_path)
        if self.fingerprint is None or not state or state.get("fingerprint") != self.fingerprint:
            self._clear_state()
            if self.fingerprint is not None:
                self._write_record(STATE, {"fingerprint": self.fingerprint})
            return 0
        position = 0
        while record := self._read_json(f"{self.root}/{STATE_DIR}/shard-{len(self.shards):06d}.json"):
            entry = record["entry"]
            try:
                size = self.fs.size(f"{self.root}/{entry['name']}")
            except OSError:
                size = None
            if size != entry["bytes"]:
                break  # its upload did not finish: this shard and everything after it are written again
            self.shards.append(entry)
            self.skipped += record["skipped"]
            self.seen.update(record["keys"])
            position = record["next"]
        self.resumed_shards = len(self.shards)
        if self.shards:
            log.info(
                "resuming %s: %d finished shard(s) kept, continuing at input %d", self.dest, len(self.shards), position
            )
        return position

    def _read_json(self, path: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable progress record %s: %s", path, exc)
            return None

    def _clear_state(self) -> None:
        try:
            for path in self.fs.find(f"{self.root}/{STATE_DIR}"):
                self.fs.rm_file(path)
        except OSError as exc:
            raise StorageError(f"cannot clear {join_url(self.dest, STATE_DIR)}: {exc}") from None

    # --- writing --------------------------------------------------------------------------------------------------

    def add(self, samples: list[Sample], position: int) -> None:
        """Add the samples made from input `position` (one group)."""
        sizes = 0
        for sample in samples:
            check_key(sample.key)
            if sample.key in self.seen:
                raise ValueError(f"duplicate sample key {sample.key!r}")
            self.seen.add(sample.key)
            sizes += sum(len(data) + TAR_OVERHEAD for _, data in sample.members())
        if not samples:
            return
        if self._tar is not None and (
            self._count + len(samples) > self.max_samples or self._estimate + sizes > self.max_bytes
        ):
            self._finish_shard(next_position=position)
        if self._tar is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self._local = os.path.join(self._workdir.name, name)
            self._tar = tarfile.open(self._local, "w")  # noqa: SIM115  # open across add() calls; _finish_shard closes it
            self.shards.append({"name": name})
            self._count, self._estimate, self._keys = 0, 1024, []  # 1024: the end-of-archive blocks
        for sample in samples:
            for name, data in sample.members():
                _add_member(self._tar, name, data, TAR_MTIME)
            self._keys.append(sample.key)
        self._count += len(samples)
        self._estimate += sizes

    def skip(self, path: str, reason: str, *, bad: bool = True) -> None:
        """Record that the next input (`path`) gave no sample; `bad` ones count against a build's error budget."""
        self.skipped.append({"path": path, "reason": reason, "bad": bad})
        self._open_skipped += 1

    def _finish_shard(self, next_position: int) -> None:
        assert self._tar is not None
        self._tar.close()
        self._tar = None
        entry = self.shards[-1]
        entry.update(samples=self._count, bytes=os.path.getsize(self._local), sha256=_sha256(self._local))
        record = {
            "entry": dict(entry),
            "next": next_position,
            "keys": self._keys,
            "skipped": self.skipped[len(self.skipped) - self._open_skipped :],
        }
        self._open_skipped = 0
        while len(self._pending) >= MAX_PENDING_UPLOADS:
            self._pending.pop(0).result()
        self._pending.append(self._uploads.submit(self._upload, self._local, entry["name"], record))

    def _upload(self, local: str, name: str, record: dict) -> None:
        try:
            _publish(self.fs, self.root, name, self.dest, local_file=local)
        finally:
            os.unlink(local)
        # Only after the shard itself: a record means "this shard is complete at its final name".
        self._write_record(f"{name.removesuffix('.tar')}.json", record)

    def _write_record(self, name: str, content: dict) -> None:
        """A progress record, written in place: one that a crash cut short fails to parse and is ignored (its shard
        is then written again), so it needs no temporary key (one request instead of three)."""
        path, data = f"{self.root}/{STATE_DIR}/{name}", json.dumps(content).encode()
        try:
            if is_remote(self.fs):
                retrying(lambda: self.fs.pipe_file(path, data), f"writing {join_url(self.dest, STATE_DIR)}/{name}")
            else:
                self.fs.pipe_file(path, data)
        except (OSError, SrclusterError) as exc:
            raise StorageError(f"cannot write {join_url(self.dest, STATE_DIR)}/{name}: {exc}") from None

    def close(self, end_position: int) -> None:
        """Finish the open shard and wait for every upload; the first failed upload raises here."""
        try:
            if self._tar is not None:
                self._finish_shard(next_position=end_position)
            for future in self._pending:
                future.result()
        finally:
            self._uploads.shutdown(wait=True, cancel_futures=True)
            self._workdir.cleanup()

    def abort(self) -> None:
        """Stop without finishing: finished shards stay (with their records, for a resume), no manifest is written."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._uploads.shutdown(wait=True, cancel_futures=True)
        self._workdir.cleanup()

    def publish_json(self, name: str, content: dict) -> None:
        _publish(self.fs, self.root, name, self.dest, data=json.dumps(content, indent=1).encode())

    def write_manifest(self, extra: dict) -> dict:
        """Publish the manifest of the finished shards (plus `extra` keys) and tidy the work folders."""
        if not self.shards:
            raise SrclusterError(f"no samples to write to {self.dest}")
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
            "samples": sum(s["samples"] for s in self.shards),
            "bytes": sum(s["bytes"] for s in self.shards),
            "shards": self.shards,
            **extra,
        }
        self.publish_json(MANIFEST, manifest)
        self._remove_leftovers({s["name"] for s in self.shards})
        log.info(
            "wrote %d samples in %d shards (%.1f MB) to %s",
            manifest["samples"],
            len(self.shards),
            manifest["bytes"] / 1e6,
            self.dest,
        )
        return manifest

    def _remove_leftovers(self, keep: set[str]) -> None:
        """Drop shards of an earlier, larger write, orphaned temporary objects and the progress records."""
        fs, root = self.fs, self.root
        try:
            fs.invalidate_cache()  # s3fs lists from a cache that predates this write
            for path in fs.ls(root, detail=False):
                name = path.rstrip("/").rsplit("/", 1)[-1]
                if SHARD_NAME.match(name) and name not in keep:
                    fs.rm_file(path)
            for folder in (TMP_DIR, STATE_DIR):
                for path in fs.find(f"{root}/{folder}"):
                    fs.rm_file(path)
                if is_local(fs) and os.path.isdir(f"{root}/{folder}"):
                    os.rmdir(f"{root}/{folder}")
        except OSError as exc:  # the new shard set is complete; leftovers only cost space
            log.warning("could not tidy %s: %s", root, exc)


def check_extra(extra: dict | None) -> dict:
    extra = dict(extra or {})
    if clash := RESERVED & extra.keys():
        raise ValueError(f"manifest_extra may not set {sorted(clash)}: srcluster writes those keys itself")
    json.dumps(extra)  # a TypeError now, not after every shard is uploaded
    return extra


def write_shards(
    samples: Iterable[Sample],
    dest: str,
    *,
    max_samples: int = 1000,
    max_bytes: int = 256 << 20,
    manifest_extra: dict | None = None,
    progress: bool = True,
) -> dict:
    """Write `samples` as `shard-NNNNNN.tar` files plus `manifest.json` under `dest`; return the manifest.

    Each sample is a group of its own: a shard closes after `max_samples` samples or before it would pass `max_bytes`
    (a single larger sample still gets a shard of its own). Shards left at `dest` by an earlier, larger write are
    removed once the new manifest is in place.
    """
    extra = check_extra(manifest_extra)
    writer = ShardSetWriter(dest, max_samples=max_samples, max_bytes=max_bytes)
    writer.resume()
    position = 0
    try:
        with tqdm(samples, desc=f"shards -> {dest}", unit="sample", disable=not progress) as bar:
            for position, sample in enumerate(bar):
                writer.add([sample], position)
                bar.set_postfix(shards=len(writer.shards), refresh=False)
    except BaseException:
        writer.abort()
        raise
    writer.close(end_position=position + 1)
    return writer.write_manifest(extra)
