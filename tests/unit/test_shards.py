"""Shard writing, manifest and the tar reader: layout, atomic publication, errors; on local folders and memory://
(on the local S3, with verify and stats: tests/integration/test_shards_s3.py)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import pytest
import skimage.data
import torch

from helpers.images import astronaut_tiles
from srcluster.data.shards import (
    Sample,
    TarFormatError,
    iter_tar,
    read_manifest,
    shard_urls,
    split_member,
    write_shards,
)
from srcluster.data.stream import train_loader
from srcluster.errors import SrclusterError, StorageError
from srcluster.storage import StorageSettings


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
