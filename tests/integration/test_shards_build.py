"""`srcluster shards build`: mixed formats and bit depths, bad files, tiling, pairing errors, resume, idempotence,
and the `shards` CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers.images import PHOTO, make_paired_folders, pool, save
from srcluster.cli import main
from srcluster.data.build import TileSettings, build_shards
from srcluster.data.images import decode_rgb, tile_boxes
from srcluster.data.shards import read_manifest, verify
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings


def to8(v16: np.ndarray) -> np.ndarray:
    return ((v16.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def shard_samples(dest: str) -> dict[str, dict[str, bytes]]:
    """key -> {member suffix: bytes} for every sample of a shard set (local or S3)."""
    manifest = read_manifest(dest)
    fs, root = StorageSettings.resolve().filesystem(dest)
    out: dict[str, dict[str, bytes]] = {}
    for shard in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{root}/{shard['name']}"))) as tar:
            for member in tar:
                key, suffix = member.name.split(".", 1)
                out.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return out


def test_tile_boxes():
    # 80 rows: one 64 tile, the 16-row rest is under min 32 and dropped; 96 columns: the 32-column rest gets a tile
    # flush with the edge.
    assert tile_boxes(80, 96, 64, min_size=32) == [(0, 0, 64, 64), (0, 32, 64, 64)]
    assert tile_boxes(130, 64, 64, min_size=2) == [(0, 0, 64, 64), (64, 0, 64, 64), (66, 0, 64, 64)]
    assert tile_boxes(40, 50, 64, min_size=32) == [(0, 0, 40, 50)]  # smaller than a tile: kept whole
    assert tile_boxes(20, 50, 64, min_size=32) == []  # a side under the minimum: nothing
    overlapping = [(y, x, 64, 64) for y in (0, 32, 64) for x in (0, 32, 64)]
    assert tile_boxes(128, 128, 64, stride=32, min_size=64) == overlapping
    assert tile_boxes(30, 40, None, min_size=30) == [(0, 0, 30, 40)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder of 80x96 images in every supported format and pixel layout, three bad files, one too small, one text
    file; returns it and the 8-bit RGB each good image must become."""
    root = tmp_path_factory.mktemp("mixed")
    rgb = PHOTO[100:180, 150:246]
    v16 = np.random.default_rng(0).integers(0, 65536, (80, 96, 3)).astype(np.uint16)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    expected = {
        "rgb": rgb,
        "gray16": np.repeat(to8(v16[..., :1]), 3, 2),
        "rgba": rgb,
        "la": np.repeat(rgb[..., :1], 3, 2),
        "palette": np.asarray(palette.convert("RGB")),
        "lossless": rgb,
        "pic": rgb,
        "sub/deep16": to8(v16),
    }
    save(root / "rgb.png", rgb)
    save(root / "gray16.png", v16[..., 0])  # PIL writes a 16-bit grayscale PNG (mode I;16)
    save(root / "rgba.png", np.dstack([rgb, rgb[..., :1]]))
    save(root / "la.png", Image.merge("LA", [Image.fromarray(rgb[..., 0]), Image.fromarray(rgb[..., 1])]))
    save(root / "palette.png", palette)
    save(root / "lossless.webp", rgb, lossless=True)
    save(root / "pic.bmp", rgb)
    save(root / "photo.jpg", rgb, quality=90)
    expected["photo"] = np.asarray(Image.open(root / "photo.jpg").convert("RGB"))
    (root / "sub").mkdir()
    assert cv2.imwrite(str(root / "sub" / "deep16.tiff"), v16[..., ::-1])  # 16-bit RGB TIFF (OpenCV writes BGR)
    save(root / "tiny.png", rgb[:20, :20])
    (root / "trunc.png").write_bytes((root / "rgb.png").read_bytes()[:600])
    (root / "text.jpg").write_text("not a picture")
    (root / "empty.webp").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image")
    return root, expected


def test_mixed_formats_to_s3_with_bad_files(s3, mixed):
    root, expected = mixed
    dest = f"s3://srcluster/tests/build-{uuid.uuid4().hex}"
    settings = TileSettings(tile=64, min_size=32)

    with pytest.raises(SrclusterError, match=r"3 of 13 source images are bad \(allowed: 20.0%\)") as failed:
        build_shards(str(root), dest, settings=settings, max_bad_fraction=0.2, workers=0, progress=False)
    assert "text.jpg: not a decodable image" in str(failed.value) and "build-report.json" in str(failed.value)
    fs, path = StorageSettings.resolve().filesystem(dest)
    assert json.loads(fs.cat_file(f"{path}/build-report.json"))["status"] == "failed"
    assert not fs.exists(f"{path}/manifest.json")

    result = build_shards(str(root), dest, settings=settings, max_bad_fraction=0.25, workers=2, progress=False)
    manifest = result.manifest
    assert manifest["format"] == "srcluster-shards/2" and manifest["image_format"] == "webp"
    assert manifest["tile"] == {"size": 64, "stride": 64, "min_size": 32}
    assert manifest["sources"] == [str(root)] and manifest["paired"] is False
    assert manifest["build"]["source_images"] == 13 and manifest["build"]["skipped"] == 4
    assert manifest["build"]["bad"] == 3 and manifest["created"] and manifest["tool_version"]
    skipped = {Path(s["path"]).name: (s["reason"], s["bad"]) for s in result.skipped}
    assert set(skipped) == {"trunc.png", "text.jpg", "empty.webp", "tiny.png"}
    assert skipped["tiny.png"] == ("20x20 is smaller than the minimum tile side 32", False)
    assert skipped["empty.webp"] == ("empty file", True)
    assert all(skipped[name][1] and "not a decodable image" in skipped[name][0] for name in ("trunc.png", "text.jpg"))
    report = json.loads(fs.cat_file(f"{path}/build-report.json"))
    assert report["status"] == "complete" and len(report["skipped"]) == 4

    # Every good image gave two 64x64 tiles: one at the left, one flush with the right edge (96 = 32 + 64).
    samples = shard_samples(dest)
    assert manifest["samples"] == len(samples) == 2 * len(expected)
    for name, image in expected.items():
        for x in (0, 32):
            sample = samples[f"{name}_y0000_x{x:04d}"]
            meta = json.loads(sample["json"])
            assert meta["box"] == [0, x, 64, 64] and meta["source_size"] == [80, 96]
            assert meta["source"].endswith(name + os.path.splitext(meta["source"])[1])
            assert np.array_equal(decode_rgb(sample["webp"]), image[:64, x : x + 64]), name
    assert verify(dest).ok
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(path)) == [
        "build-report.json",
        "manifest.json",
        "shard-000000.tar",
    ]


@pytest.fixture(scope="module")
def paired_folders(tmp_path_factory) -> tuple[Path, Path]:
    return make_paired_folders(tmp_path_factory.mktemp("paired"))


def test_paired_build_reports_pairing_errors(tmp_path, paired_folders):
    hr, lr = paired_folders
    dest = str(tmp_path / "paired")
    settings = TileSettings(tile=32, scale=4)
    result = build_shards(str(hr), dest, lq=str(lr), settings=settings, max_bad_fraction=0.6, workers=0, progress=False)
    reasons = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert reasons == {
        "c.png": "no LR partner c.* in the LR folder",
        "d.png": f"HR 96x64 is not 4 x LR 20x16 ({lr}/d.png); expected LR 24x16",
        "e.png": "several LR partners: e.bmp, e.png",
    }
    assert result.unpaired_lr == [f"{lr}/z.png"]
    manifest = result.manifest
    assert manifest["paired"] is True and manifest["scale"] == 4 and manifest["lq_sources"] == [str(lr)]
    assert manifest["build"]["unpaired_lr"] == 1

    # a (64x96) gives 2x3 tiles of 32, b (128x64) 4x2; every LR tile is exactly the HR tile's x4 box downscale.
    samples = shard_samples(dest)
    assert len(samples) == 6 + 8
    for key, members in samples.items():
        assert set(members) == {"webp", "lr.webp", "json"}, key
        high, low = decode_rgb(members["webp"]), decode_rgb(members["lr.webp"])
        assert high.shape == (32, 32, 3) and np.array_equal(pool(high, 4), low), key
    assert json.loads(samples["sub/b_y0096_x0032"]["json"])["lr_source"] == f"{lr}/sub/b.png"

    with pytest.raises(SrclusterError, match="2 of 5 source images are bad"):  # budget counts every pairing error
        build_shards(
            str(hr),
            str(tmp_path / "strict"),
            lq=str(lr),
            settings=settings,
            max_bad_fraction=0.3,
            workers=0,
            progress=False,
        )
    with pytest.raises(SrclusterError, match="go together"):
        build_shards(str(hr), str(tmp_path / "x"), lq=str(lr), workers=0, progress=False)
    with pytest.raises(ValueError, match="multiple of the scale"):
        TileSettings(tile=30, scale=4)


def test_rebuild_is_a_no_op_and_changes_rebuild(tmp_path, paired_folders):
    hr, _ = paired_folders
    dest = tmp_path / "same"
    settings = TileSettings(tile=32)
    first = build_shards(str(hr), str(dest), settings=settings, workers=0, progress=False)
    assert first.created
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    again = build_shards(str(hr), str(dest), settings=settings, workers=0, progress=False)
    assert not again.created and again.manifest == first.manifest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamps  # nothing rewritten

    other = build_shards(str(hr), str(dest), settings=TileSettings(tile=64), workers=0, progress=False)
    assert other.created and other.manifest["samples"] < first.manifest["samples"]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(160):
        y, x = divmod(i, 10)
        save(root / f"img{i:03d}.png", PHOTO[y * 30 : y * 30 + 48, x * 45 : x * 45 + 48])
    return root


def finished_records(dest: Path) -> list[str]:
    """Shards whose progress record is whole. A record is written in place, so a kill can leave one cut short; the
    build then ignores it and writes that shard again."""
    names = []
    for record in sorted((dest / "_build").glob("shard-*.json")):
        try:
            json.loads(record.read_bytes())
        except (OSError, ValueError):
            continue
        names.append(record.stem)
    return names


def test_interrupted_build_resumes_without_rewriting(tmp_path, many_images):
    dest = tmp_path / "resumed"
    command = [
        sys.executable,
        "-m",
        "srcluster.cli",
        "shards",
        "build",
        str(many_images),
        str(dest),
        "--tile",
        "0",
        "--shard-samples",
        "4",
        "--workers",
        "0",
        "--quiet",
    ]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(finished_records(dest)) < 2:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the build never finished a second shard"
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)  # a crash: no clean-up of any kind
    child.wait()
    assert not (dest / "manifest.json").exists(), "the build finished before it could be interrupted"
    finished = finished_records(dest)
    kept = {name: (dest / f"{name}.tar").stat() for name in finished}
    assert len(kept) >= 2

    result = build_shards(
        str(many_images), str(dest), settings=TileSettings(tile=None), max_samples=4, workers=0, progress=False
    )
    assert result.created and result.resumed_shards >= len(kept)
    for name, before in kept.items():  # finished shards were kept as they were, not written again
        after = (dest / f"{name}.tar").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name

    fresh = build_shards(
        str(many_images),
        str(tmp_path / "fresh"),
        settings=TileSettings(tile=None),
        max_samples=4,
        workers=0,
        progress=False,
    )
    assert result.manifest["samples"] == 160 and len(result.manifest["shards"]) == 40
    assert [s["sha256"] for s in result.manifest["shards"]] == [s["sha256"] for s in fresh.manifest["shards"]]
    assert sorted(p.name for p in dest.iterdir()) == (
        ["build-report.json", "manifest.json"] + [f"shard-{i:06d}.tar" for i in range(40)]
    )


def test_cli_build_verify_stats(tmp_path, mixed, capsys):
    root, _ = mixed
    dest = tmp_path / "cli"
    assert (
        main(
            [
                "shards",
                "build",
                str(root),
                str(dest),
                "--tile",
                "64",
                "--tile-min",
                "32",
                "--max-bad",
                "0.3",
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "18 samples in 1 shards" in out and "4 source(s) skipped, 3 of them bad" in out
    assert "skipped" in out and "text.jpg: not a decodable image" in out

    assert main(["shards", "stats", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["samples"], info["shards"], info["skipped"], info["bad"]) == (18, 1, 4, 3)
    assert main(["shards", "stats", str(dest)]) == 0
    assert "64, stride 64, min side 32" in capsys.readouterr().out

    assert main(["shards", "verify", str(dest)]) == 0
    shard = dest / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert main(["shards", "verify", str(dest)]) == 1
    assert "shard-000000.tar: sha256 differs from the manifest" in capsys.readouterr().out

    assert main(["shards", "build", str(root)]) == 2
    assert "at least one SRC folder and the DEST" in capsys.readouterr().err
    assert main(["shards", "build", str(tmp_path / "nothing-here"), str(tmp_path / "d"), "--quiet"]) == 2
    assert "no images" in capsys.readouterr().err
