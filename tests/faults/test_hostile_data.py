"""Fault 5: hostile data in shards and folders. Every case is either handled (decoded correctly) or skipped with a
counted reason, and a stream or build over a mix of all of them completes.

Shards are written by hand (tarfile), not by srcluster's writer, because the writer would refuse most of these.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from srcluster.data.build import TileSettings, build_shards
from srcluster.data.images import MAX_PIXELS, ImageError, decode, decode_rgb
from srcluster.data.shards import read_manifest, verify
from srcluster.data.stream import REASONS, train_loader
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings

CROP = 32


# --- hostile images -------------------------------------------------------------------------------------------------


def photo(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth RGB test picture with distinct corners, so a rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1)
    return rgb.astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


def jpeg(rgb: np.ndarray, *, mode: str = "RGB", progressive: bool = False, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    options = {"quality": 95, "progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    Image.fromarray(rgb).convert(mode).save(out, "JPEG", **options)
    return out.getvalue()


def png16(rgb: np.ndarray) -> bytes:
    wide = np.minimum(rgb.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)  # low bytes matter too
    ok, data = cv2.imencode(".png", wide[..., ::-1].copy())
    assert ok
    return data.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side RGB pixels, followed by a few bytes of compressed data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def huge_jpeg(side: int = 65_000) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim side x side pixels."""
    data = bytearray(jpeg(photo(16, 16)))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def images() -> dict[str, bytes]:
    """Every hostile (or merely unusual) image case, by name."""
    rgb = photo()
    return {
        "zero_byte": b"",
        "one_pixel": png(photo(1, 1)),
        "smaller_than_crop": png(photo(CROP - 8, CROP + 8)),
        "not_an_image": b"this is a text file with an image name\n" * 4,
        "png16": png16(rgb),
        "cmyk_jpeg": jpeg(rgb, mode="CMYK"),
        "progressive_jpeg": jpeg(rgb, progressive=True),
        "exif_rotated_jpeg": jpeg(rgb, orientation=6),
        "huge_png_header": huge_png(),
        "huge_jpeg_header": huge_jpeg(),
    }


# What each case becomes: "ok" (used) or the stream's counted reason for skipping it.
STREAM_OUTCOME = {
    "zero_byte": "corrupt",
    "one_pixel": "too_small",
    "smaller_than_crop": "too_small",
    "not_an_image": "corrupt",
    "png16": "ok",
    "cmyk_jpeg": "ok",
    "progressive_jpeg": "ok",
    "exif_rotated_jpeg": "ok",
    "huge_png_header": "corrupt",
    "huge_jpeg_header": "corrupt",
}
FAULT_NAMES = {
    "zero_byte": "zero-byte image",
    "one_pixel": "1x1 image",
    "smaller_than_crop": "image smaller than the crop",
    "not_an_image": "non-image bytes under an image name",
    "png16": "16-bit PNG",
    "cmyk_jpeg": "CMYK JPEG",
    "progressive_jpeg": "progressive JPEG",
    "exif_rotated_jpeg": "EXIF-rotated JPEG (orientation 6)",
    "huge_png_header": "PNG header claiming 100000x100000 px",
    "huge_jpeg_header": "JPEG header claiming 65000x65000 px",
}


def test_decoding_each_case(fault_record):
    """Decode-level outcome of every case: the right pixels, or an ImageError with a reason (no crash, no OOM)."""
    rgb = photo()
    cases = images()
    out = decode_rgb(cases["png16"])
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)  # (v*257+100)*255/65535 rounds back to v
    for name in ("cmyk_jpeg", "progressive_jpeg"):
        out = decode_rgb(cases[name])
        assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 6, name
    upright = decode_rgb(cases["exif_rotated_jpeg"])
    with Image.open(io.BytesIO(cases["exif_rotated_jpeg"])) as img:
        reference = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert upright.shape == (rgb.shape[1], rgb.shape[0], 3)  # orientation 6: shown turned 90 degrees clockwise
    assert np.abs(upright.astype(int) - reference).max() <= 2  # OpenCV's and PIL's JPEG decoders differ by rounding
    assert np.abs(upright.astype(int) - np.rot90(rgb, -1)).mean() < 6
    for name in ("huge_png_header", "huge_jpeg_header"):  # decoding would first allocate 12-30 GB
        with pytest.raises(ImageError, match=r"claims \d+ pixels.*refused before decoding"):
            decode(cases[name])
    with pytest.raises(ImageError, match="empty file"):
        decode(cases["zero_byte"])
    with pytest.raises(ImageError, match="not a decodable image"):
        decode(cases["not_an_image"])
    assert decode_rgb(cases["one_pixel"]).shape == (1, 1, 3)
    assert MAX_PIXELS < 100_000 * 100_000


# --- shards on S3 -----------------------------------------------------------------------------------------------------


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def good_members(prefix: str, count: int) -> list[tuple[str, bytes]]:
    rgb = photo()
    members = []
    for i in range(count):
        members += [(f"{prefix}{i:03d}.png", png(np.roll(rgb, i, axis=1))), (f"{prefix}{i:03d}.json", b"{}")]
    return members


def put(url: str, data: bytes) -> None:
    fs, path = StorageSettings.resolve().filesystem(url)
    fs.pipe_file(path, data)


@pytest.fixture(scope="module")
def hostile_shards(s3) -> dict[str, str]:
    """Shards on the session's S3: one of good samples, one per image case, and the damaged / unsafe ones."""
    root = f"s3://srcluster/tests/hostile-{uuid.uuid4().hex}"
    shards: dict[str, bytes] = {"good": tar_bytes(good_members("good", 6))}
    for name, data in images().items():
        ext = "jpg" if "jpeg" in name else "png"
        shards[name] = tar_bytes([(f"{name}.{ext}", data), (f"{name}.json", b"{}")])
    shards["no_image_member"] = tar_bytes([("notes.txt", b"hello"), ("notes.json", b"{}")])
    whole = tar_bytes(good_members("cut", 4))
    shards["truncated_tar"] = whole[: len(whole) // 2]
    shards["dotdot_member"] = tar_bytes([*good_members("before", 1), ("../../escape.png", png(photo()))])
    shards["absolute_member"] = tar_bytes([("/etc/escape.png", png(photo())), *good_members("after", 1)])
    urls = {}
    for name, data in shards.items():
        urls[name] = f"{root}/{name}.tar"
        put(urls[name], data)
    return urls


def stream_counts(urls: list[str], steps: int) -> tuple[dict[str, int], set[str]]:
    stream = train_loader(urls, crop=CROP, batch_size=4, steps=steps, with_keys=True, shuffle_buffer=1)
    keys = {key for _, batch_keys in stream for key in batch_keys}
    return stream.counts(), keys


@pytest.mark.parametrize("case", list(STREAM_OUTCOME))
def test_stream_image_case(hostile_shards, fault_record, case):
    """A shard holding one case, streamed with a good shard: used, or skipped under its own reason only."""
    counts, keys = stream_counts([hostile_shards["good"], hostile_shards[case]], steps=8)  # 32 crops: >= 4 passes
    outcome = STREAM_OUTCOME[case]
    others = {f"data_skipped_{r}": 0 for r in REASONS if r != outcome}
    assert {k: counts[k] for k in others} == others
    if outcome == "ok":
        assert counts["data_skipped"] == 0 and case in keys
        fault_record(f"shard: {FAULT_NAMES[case]}", True, note="decoded and used")
    else:
        assert counts[f"data_skipped_{outcome}"] >= 4 and case not in keys  # once per pass
        fault_record(f"shard: {FAULT_NAMES[case]}", True, note=f"skipped, counted as data_skipped_{outcome}")


SHARD_FAULTS = {  # case: (counted reason, fault, what happens)
    "no_image_member": ("no_image", "sample with non-image members only", "skipped"),
    "truncated_tar": ("bad_shard", "truncated tar shard", "rest of the shard skipped"),
    "dotdot_member": ("bad_shard", "tar member named ../../escape.png", "shard refused from that member on"),
    "absolute_member": ("bad_shard", "tar member named /etc/escape.png", "shard refused from that member on"),
}


@pytest.mark.parametrize("case", list(SHARD_FAULTS))
def test_stream_shard_case(hostile_shards, fault_record, caplog, case):
    reason, fault, outcome = SHARD_FAULTS[case]
    counts, keys = stream_counts([hostile_shards["good"], hostile_shards[case]], steps=8)
    assert counts[f"data_skipped_{reason}"] >= 4
    assert counts["data_skipped"] == counts[f"data_skipped_{reason}"]
    assert not any("escape" in key for key in keys)  # an unsafe member never becomes a sample
    if case == "truncated_tar":
        assert any(key.startswith("cut") for key in keys)  # the samples before the cut are used
    if case == "absolute_member":
        assert not any(key.startswith("after") for key in keys)  # nothing after the refusal is trusted
    if case in ("dotdot_member", "absolute_member"):
        assert any(
            "has a '..' component" in r.getMessage() or "has an absolute path" in r.getMessage() for r in caplog.records
        )
    fault_record(f"shard: {fault}", True, note=f"{outcome}, counted as data_skipped_{reason}")


def write_manifest(root: str, shards: list[dict]) -> None:
    manifest = {
        "format": "srcluster-shards/2",
        "created": "2026-01-01T00:00:00+00:00",
        "tool_version": "0",
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
    }
    put(f"{root}/manifest.json", json.dumps(manifest).encode())


def test_stream_over_the_whole_mix_completes(hostile_shards, fault_record):
    """One shard set (with a manifest) holding every hostile shard: the stream yields every batch it owes, and
    every reason is counted; `shards verify` names the damaged shards."""
    root = hostile_shards["good"].rsplit("/", 1)[0]
    fs, _ = StorageSettings.resolve().filesystem(root)
    entries = []
    for name, url in hostile_shards.items():
        size = fs.size(url.removeprefix("s3://"))
        entries.append(
            {"name": url.rsplit("/", 1)[1], "samples": 6 if name == "good" else 1, "bytes": size, "sha256": "0" * 64}
        )
    write_manifest(root, entries)
    start = time.perf_counter()
    stream = train_loader(root, crop=CROP, batch_size=4, steps=12, with_keys=True)
    batches = list(stream)
    assert len(batches) == 12 and all(tuple(hr.shape) == (4, 3, CROP, CROP) for hr, _ in batches)
    counts = stream.counts()
    for reason in ("corrupt", "too_small", "no_image", "bad_shard"):
        assert counts[f"data_skipped_{reason}"] > 0, (reason, counts)
    result = verify(root)
    problems = "\n".join(result.problems)
    assert "truncated_tar.tar: not a valid tar" in problems and "dotdot_member.tar: not a valid tar" in problems
    skipped = ", ".join(
        f"{k.removeprefix('data_skipped_')} {v}" for k, v in counts.items() if k.startswith("data_skipped_") and v
    )
    fault_record(
        "shard set mixing every hostile case",
        True,
        iterations_lost=0,
        note=f"12 of 12 batches in {time.perf_counter() - start:.1f} s; skipped {skipped}",
    )


@pytest.mark.parametrize(
    "name", ["../elsewhere/shard-000000.tar", "/etc/shard-000000.tar", "s3://other-bucket/shard-000000.tar"]
)
def test_manifest_with_unsafe_shard_name_is_refused(hostile_shards, fault_record, name):
    root = f"{hostile_shards['good'].rsplit('/', 1)[0]}/unsafe-{uuid.uuid4().hex[:8]}"
    write_manifest(
        root,
        [
            {"name": "shard-000000.tar", "samples": 1, "bytes": 10, "sha256": "0" * 64},
            {"name": name, "samples": 1, "bytes": 10, "sha256": "0" * 64},
        ],
    )
    with pytest.raises(SrclusterError, match=r"shards\[1\]\.name .* refusing this shard set") as caught:
        read_manifest(root)
    assert "\n" not in str(caught.value)
    with pytest.raises(SrclusterError, match="refusing"):
        train_loader(root, crop=CROP, batch_size=4, steps=1)
    kind = "../" if name.startswith("..") else "an absolute path" if name.startswith("/") else "a URL"
    fault_record(f"manifest entry with {kind}", True, note="shard set refused with a one-line error")


# --- folders --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-folder")
    rgb = photo()
    for i in range(4):
        (folder / f"good{i}.png").write_bytes(png(np.roll(rgb, 7 * i, axis=0)))
    for name, data in images().items():
        (folder / f"{name}.{'jpg' if 'jpeg' in name else 'png'}").write_bytes(data)
    (folder / "readme.txt").write_text("not an image: not listed")
    return folder


def test_build_from_hostile_folder(s3, hostile_folder, fault_record):
    """`shards build` over the folder: usable images become samples (EXIF-rotated ones upright), the rest are in the
    report with their reason, and the build completes."""
    dest = f"s3://srcluster/tests/hostile-build-{uuid.uuid4().hex}"
    start = time.perf_counter()
    result = build_shards(
        str(hostile_folder),
        dest,
        settings=TileSettings(tile=None, min_size=CROP),
        max_bad_fraction=1.0,
        workers=0,
        progress=False,
    )
    reasons = {Path(s["path"]).stem: s["reason"] for s in result.skipped}
    assert "empty file" in reasons["zero_byte"]
    assert "not a decodable image" in reasons["not_an_image"]
    assert (
        "refused before decoding" in reasons["huge_png_header"]
        and "refused before decoding" in reasons["huge_jpeg_header"]
    )
    assert "smaller than the minimum tile" in reasons["one_pixel"]
    assert "smaller than the minimum tile" in reasons["smaller_than_crop"]
    assert set(reasons) == {
        "zero_byte",
        "not_an_image",
        "huge_png_header",
        "huge_jpeg_header",
        "one_pixel",
        "smaller_than_crop",
    }
    bad = {Path(s["path"]).stem for s in result.bad}
    assert bad == {"zero_byte", "not_an_image", "huge_png_header", "huge_jpeg_header"}  # small ones are not "bad"
    assert result.manifest["samples"] == 8  # 4 good + 16-bit, CMYK, progressive, EXIF-rotated
    assert verify(dest).ok
    meta = {}
    fs, path = StorageSettings.resolve().filesystem(dest)
    for url in fs.find(path):
        if url.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(fs.cat_file(url))) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        meta[member.name.removesuffix(".json")] = json.loads(tar.extractfile(member).read())
    assert meta["exif_rotated_jpeg"]["source_size"] == [64, 48]  # stored upright: 64 high, 48 wide
    elapsed = time.perf_counter() - start
    for name, reason in reasons.items():
        fault_record(f"folder build: {FAULT_NAMES[name]}", True, note=f"skipped: {reason[:70]}")
    fault_record(
        "folder build over every hostile case",
        True,
        note=f"completed in {elapsed:.1f} s: {result.manifest['samples']} samples, "
        f"{len(result.skipped)} skipped with reasons",
    )


def test_stream_from_hostile_folder(hostile_folder, fault_record):
    """Training straight from the folder: every batch arrives, the bad images are counted by reason."""
    stream = train_loader(str(hostile_folder), crop=CROP, batch_size=4, steps=10, with_keys=True)
    keys = {key for _, batch_keys in stream for key in batch_keys}
    counts = stream.counts()
    assert counts["data_skipped_corrupt"] > 0 and counts["data_skipped_too_small"] > 0
    assert counts["data_skipped"] == counts["data_skipped_corrupt"] + counts["data_skipped_too_small"]
    used = {Path(k).stem for k in keys}
    assert used <= {"good0", "good1", "good2", "good3", "png16", "cmyk_jpeg", "progressive_jpeg", "exif_rotated_jpeg"}
    fault_record(
        "folder stream over every hostile case",
        True,
        iterations_lost=0,
        note=f"10 of 10 batches; skipped corrupt {counts['data_skipped_corrupt']}, "
        f"too_small {counts['data_skipped_too_small']}",
    )


def test_folder_listing_with_dotdot_keys(fault_record):
    """Object stores allow keys like `train/a/../../x.png`; a folder listing never hands such a file out (it would
    name an object outside the folder, and its name becomes a validation image's file name)."""
    import fsspec

    from srcluster.data.sources import list_image_files

    fs = fsspec.filesystem("memory")
    root = f"/hostile-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(f"{root}/a/../../escape.png", png(photo()))
    fs.pipe_file(f"{root}/good.png", png(photo()))
    listed = list_image_files(f"memory://{root}")
    assert [f.rel for f in listed] == ["good.png"]
    fault_record("folder key with ../ (object store)", True, note="not listed")
