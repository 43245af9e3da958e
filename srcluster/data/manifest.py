"""Reading a shard set (layout: `srcluster.data.shards`): its manifest, its shards' URLs, checking every shard against
the manifest, and counts from it.

The manifest is input like any other: it must have a known format and list well-formed entries that name files inside
the shard set, or reading stops with a StorageError that says which.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from braceexpand import braceexpand

from srcluster.data.remote import is_remote, open_for_reading, reader_filesystem, retrying
from srcluster.data.sources import join_url
from srcluster.data.tar_reader import TarFormatError, iter_tar, sample_key, unsafe_name
from srcluster.errors import SrclusterError, StorageError

FORMAT = "srcluster-shards/2"
READABLE_FORMATS = ("srcluster-shards/1", FORMAT)  # /1: PNG only, no LR members, no build section
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"^shard-\d{6}\.tar$")


def manifest_url(url: str) -> str:
    return url if url.rstrip("/").endswith(MANIFEST) else join_url(url, MANIFEST)


def shard_set_root(url: str) -> str:
    return url.rstrip("/").removesuffix(MANIFEST).rstrip("/")


def read_manifest(url: str) -> dict:
    """The manifest of the shard set at `url` (its folder, or the manifest.json itself)."""
    target = manifest_url(url)
    fs, path = reader_filesystem(target)
    try:
        raw = retrying(lambda: fs.cat_file(path), f"reading {target}") if is_remote(fs) else fs.cat_file(path)
    except FileNotFoundError:
        raise StorageError(f"no shard set at {url}: {target} does not exist") from None
    except OSError as exc:
        raise StorageError(f"cannot read {target}: {exc}") from None
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise StorageError(f"{target} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StorageError(f"{target} has format {found!r}, expected {FORMAT!r}")
    _check_entries(manifest, target)
    return manifest


def _check_entries(manifest: dict, target: str) -> None:
    """A manifest from storage is input like any other: its shard list must be well formed and name only files
    inside the shard set (a `../` or absolute name would make readers fetch objects elsewhere)."""
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise StorageError(f"{target} lists no shards")
    for index, entry in enumerate(shards):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise StorageError(f"{target}: shards[{index}] has no name")
        if why := unsafe_name(name):
            raise StorageError(f"{target}: shards[{index}].name {name[:200]!r} has {why}; refusing this shard set")
        for key in ("samples", "bytes"):
            if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 0:
                raise StorageError(f"{target}: shards[{index}].{key} is not a count: {entry.get(key)!r}")
    for key in ("samples", "bytes"):
        if not isinstance(manifest.get(key), int):
            raise StorageError(f"{target}: {key} is not a count: {manifest.get(key)!r}")


def is_shard_pattern(url: str) -> bool:
    return "{" in url or url.endswith(".tar")


def shard_urls(url: str) -> list[str]:
    """Full URLs of the shards of a shard set: a folder holding manifest.json, or a (brace) pattern of tar URLs."""
    if is_shard_pattern(url):
        return list(braceexpand(url))
    return [join_url(shard_set_root(url), shard["name"]) for shard in read_manifest(url)["shards"]]


# --- verifying and describing ---------------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Reads through to `inner`, hashing and counting every byte on the way."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.digest, self.count = inner, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)


def _check_shard(url: str, entry: dict) -> str | None:
    """None if the shard at `url` matches its manifest entry (bytes, sha256, samples), else what is wrong."""
    name = entry["name"]
    problems = []
    try:
        with open_for_reading(url) as raw:
            reader = _HashingReader(raw)
            keys = set()
            try:
                keys.update(sample_key(name) for name, _ in iter_tar(reader))
            except TarFormatError as exc:
                problems.append(f"not a valid tar ({exc})")
            while reader.read(1 << 20):  # the end-of-archive padding (or what follows a bad member) is hashed too
                pass
    except FileNotFoundError:
        return f"{name}: missing"
    except (OSError, SrclusterError) as exc:
        return f"{name}: unreadable ({exc.__class__.__name__}: {exc})"
    if reader.count != entry["bytes"]:
        problems.append(f"{reader.count} bytes, manifest says {entry['bytes']}")
    if reader.digest.hexdigest() != entry["sha256"]:
        problems.append("sha256 differs from the manifest")
    if len(keys) != entry["samples"]:
        problems.append(f"{len(keys)} samples, manifest says {entry['samples']}")
    return f"{name}: {'; '.join(problems)}" if problems else None


@dataclass
class VerifyResult:
    shards: int
    samples: int
    bytes: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(url: str, *, threads: int = 4) -> VerifyResult:
    """Read every shard of the set at `url` and check it against the manifest; also flag shards it does not list."""
    manifest = read_manifest(url)
    root = shard_set_root(url)
    entries = manifest["shards"]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = [p for p in pool.map(lambda e: _check_shard(join_url(root, e["name"]), e), entries) if p]
    fs, path = reader_filesystem(root)
    try:
        fs.invalidate_cache(path)
        listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except OSError as exc:
        raise StorageError(f"cannot list {root}: {exc}") from None
    named = {e["name"] for e in entries}
    problems += [f"{name}: not in the manifest" for name in sorted(listed - named) if SHARD_NAME.match(name)]
    return VerifyResult(len(entries), manifest["samples"], manifest["bytes"], problems)


def stats(url: str) -> dict[str, Any]:
    """Counts and sizes of the shard set at `url`, from its manifest (nothing else is read)."""
    manifest = read_manifest(url)
    shards = manifest["shards"]

    def spread(key: str) -> dict[str, int]:
        values = sorted(s[key] for s in shards)
        return {"min": values[0], "median": values[len(values) // 2], "max": values[-1]}

    build = manifest.get("build") or {}
    return {
        "url": url,
        "format": manifest["format"],
        "created": manifest["created"],
        "tool_version": manifest["tool_version"],
        "samples": manifest["samples"],
        "bytes": manifest["bytes"],
        "shards": len(shards),
        "shard_samples": spread("samples"),
        "shard_bytes": spread("bytes"),
        "image_format": manifest.get("image_format", "png"),
        "paired": bool(manifest.get("paired")),
        "scale": manifest.get("scale"),
        "tile": manifest.get("tile"),
        "sources": manifest.get("sources"),
        "lq_sources": manifest.get("lq_sources"),
        "source_images": build.get("source_images"),
        "skipped": build.get("skipped"),
        "bad": build.get("bad"),
    }
