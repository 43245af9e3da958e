"""Shard writing, verify and stats on the local S3 (SeaweedFS): layout, atomic publication, a missing bucket,
tampered shards."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from helpers.images import astronaut_tiles
from srcluster.data.shards import read_manifest, shard_urls, stats, verify, write_shards
from srcluster.data.stream import train_loader
from srcluster.errors import StorageError
from srcluster.storage import StorageSettings


def test_s3_round_trip(s3):
    dest = f"s3://srcluster/tests/shards-{uuid.uuid4().hex}"
    manifest = write_shards(astronaut_tiles(30), dest, max_samples=10, progress=False)
    fs, root = StorageSettings.resolve().filesystem(dest)
    fs.invalidate_cache()
    keys = sorted(fs.find(root))
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["manifest.json"] + [f"shard-00000{i}.tar" for i in range(3)]
    assert not any("_tmp" in k for k in keys)
    for shard, url in zip(manifest["shards"], shard_urls(dest), strict=True):
        data = fs.cat_file(url.removeprefix("s3://"))
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert read_manifest(dest)["samples"] == 30
    assert len(list(train_loader(dest, crop=32, batch_size=4, steps=3))) == 3


def test_s3_missing_bucket(s3):
    dest = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/shards"
    with pytest.raises(StorageError, match=dest.split("/")[2]):
        write_shards(astronaut_tiles(2), dest, progress=False)


def test_verify_and_stats_on_s3(s3):
    dest = f"s3://srcluster/tests/verify-{uuid.uuid4().hex}"
    manifest = write_shards(astronaut_tiles(12), dest, max_samples=5, progress=False)
    result = verify(dest)
    assert result.ok and (result.shards, result.samples) == (3, 12)

    info = stats(dest)
    assert (info["samples"], info["shards"], info["bytes"]) == (12, 3, manifest["bytes"])
    assert info["shard_samples"] == {"min": 2, "median": 5, "max": 5}

    # Tamper with one pixel byte of the middle shard, keeping its size: only the hash can tell.
    fs, root = StorageSettings.resolve().filesystem(dest)
    path = f"{root}/shard-000001.tar"
    data = bytearray(fs.cat_file(path))
    data[2000] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    # ... a shard cut short, and a stray shard the manifest does not list.
    fs.pipe_file(f"{root}/shard-000002.tar", fs.cat_file(f"{root}/shard-000002.tar")[:3000])
    fs.pipe_file(f"{root}/shard-000007.tar", b"")
    fs.invalidate_cache()
    problems = verify(dest).problems
    assert len(problems) == 3, problems
    assert problems[0] == "shard-000001.tar: sha256 differs from the manifest"
    assert problems[1].startswith("shard-000002.tar: not a valid tar")
    assert "3000 bytes, manifest says" in problems[1] and "sha256 differs" in problems[1]
    assert problems[2] == "shard-000007.tar: not in the manifest"
