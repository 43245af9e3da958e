"""Shard writing, manifest, verify and stats: layout, atomic publication, errors; on local folders, memory:// and
the local S3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import pytest
import skimage.data
import torch

from srcluster.data.sample import tiles
from srcluster.data.shards import (
    Sample, TarFormatError, iter_tar, read_manifest, shard_urls, split_member, stats, verify, write_shards,
)
from srcluster.data.stream import train_loader
from srcluster.errors import SrclusterError, StorageError
from srcluster.storage import StorageSettings


def astronaut_tiles(count: int, size: int = 32) -> list[Sample]:
    """Real photo tiles (astronaut, 512x512): 256 of 32 x 32 available."""
    return list(tiles("astronaut", skimage.data.astronaut(), size, size))[:count]


def test_round_trip_local(tmp_path):
    dest = str(tmp_path / "shards")
    samples = astronaut_tiles(40)
    manifest = write_shards(samples, dest, max_samples=16, manifest_extra={"note": "round trip"}, progress=False)

    assert manifest["format"] == "srcluster-shards/2"
    assert manifest["samples"] == 40 and manifest["note"] == "round trip"
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["samples"] for s in manifest["shards"]] == [16, 16, 8]
    assert read_manifest(dest) == manifest == read_manifest(dest + "/manifest.json")

    urls = shard_urls(dest)
    assert urls == [f"{dest}/shard-00000{i}.tar" for i in range(3)]
    assert shard_urls(f"{dest}/shard-{{000000..000002}}.tar") == urls

    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
        assert names[:2] == [f"{samples[0].key}.webp", f"{samples[0].key}.json"]
        assert tar.extractfile(names[0]).read() == samples[0].hr
        assert json.loads(tar.extractfile(names[1]).read()) == samples[0].meta

    batches = list(train_loader(dest, crop=24, batch_size=5, steps=7))
    assert len(batches) == 7
    assert all(b.shape == (5, 3, 24, 24) and b.dtype == torch.uint8 for b in batches)


def test_memory_sha256_and_no_temp_keys():
    dest = f"memory://shards-{uuid.uuid4().hex}"
    manifest = write_shards(astronaut_tiles(20), dest, max_samples=8, progress=False)
    fs, root = StorageSettings.resolve().filesystem(dest)
    for shard in manifest["shards"]:
        data = fs.cat_file(f"{root}/{shard['name']}")
        assert len(data) == shard["bytes"]
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert manifest["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(root))
    assert names == ["manifest.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_max_bytes_splits_and_rewrite_removes_stale_shards(tmp_path):
    dest = str(tmp_path / "s")
    samples = astronaut_tiles(12)
    one = len(samples[0].hr)
    manifest = write_shards(samples, dest, max_bytes=3 * one + 4096, progress=False)
    assert len(manifest["shards"]) > 3
    assert all(s["bytes"] <= 3 * one + 4096 + 2 * one for s in manifest["shards"])

    write_shards(samples[:2], dest, progress=False)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", "shard-000000.tar"]


def test_bad_samples_rejected(tmp_path):
    png = astronaut_tiles(1)[0].hr
    with pytest.raises(ValueError, match="not usable"):
        write_shards([Sample("a.b", png, {})], str(tmp_path / "x"), progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([Sample("a", png, {}), Sample("a", png, {})], str(tmp_path / "y"), progress=False)
    with pytest.raises(SrclusterError, match="no samples"):
        write_shards([], str(tmp_path / "z"), progress=False)
    with pytest.raises(ValueError, match="may not set"):
        write_shards([Sample("a", png, {})], str(tmp_path / "w"), manifest_extra={"shards": []}, progress=False)


def test_bad_local_destination(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    dest = str(blocker / "shards")
    with pytest.raises(StorageError, match="a-file"):
        write_shards(astronaut_tiles(2), dest, progress=False)


def test_missing_manifest(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StorageError, match="expected 'srcluster-shards/2'"):
        shard_urls(str(tmp_path))


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


def test_tiles_are_lossless_webp():
    import numpy as np
    from PIL import Image

    sample = astronaut_tiles(1, size=64)[0]
    assert sample.ext == "webp" and sample.hr[8:12] == b"WEBP"
    decoded = np.asarray(Image.open(io.BytesIO(sample.hr)))
    assert (decoded == skimage.data.astronaut()[:64, :64]).all()


def test_old_png_format_is_still_readable(tmp_path):
    """Shard sets written before WebP (format /1, PNG members) stay readable."""
    dest = tmp_path / "v1"
    samples = [Sample(s.key, s.hr, s.meta, ext="png") for s in astronaut_tiles(4)]
    write_shards(samples, str(dest), progress=False)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps({**manifest, "format": "srcluster-shards/1"}))
    assert read_manifest(str(dest))["samples"] == 4
    assert len(list(train_loader(str(dest), crop=16, batch_size=2, steps=2))) == 2


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


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_lean_tar_reader(fmt):
    """The stream's tar reader: long names in each format, and damage that Python's tarfile would let pass."""
    long_name = "deep/" * 20 + "sample_y0000_x0000.lr.webp"  # 146 characters: beyond the 100 of a plain header
    members = [("a.webp", b"x" * 700), (long_name, b"y" * 1024), ("a.json", b"")]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    assert list(iter_tar(io.BytesIO(raw))) == members
    assert split_member(long_name) == ("deep/" * 20 + "sample_y0000_x0000", "lr.webp")

    members_end = -(-len(raw.rstrip(b"\0")) // 512) * 512  # where the end-of-archive blocks begin
    for cut in (300, 1000, members_end):  # inside a header, inside data, just before the end-of-archive blocks
        with pytest.raises(TarFormatError, match="cut short"):
            list(iter_tar(io.BytesIO(raw[:cut])))
    damaged = bytearray(raw)
    damaged[3] ^= 1  # a name byte of the first header
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar(io.BytesIO(bytes(damaged))))
