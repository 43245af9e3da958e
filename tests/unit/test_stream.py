"""The training stream: exact step counts, rank/worker splits, determinism, skipping and counting bad input, paired
LR/HR crops, folders and memory://, validation splits (from the local S3: tests/integration/test_stream_s3.py)."""

from __future__ import annotations

import io
import logging
import os
import uuid

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from helpers.images import PER_SHARD, make_paired_folders, photo_tiles, pool
from srcluster.data.build import TileSettings, build_shards
from srcluster.data.sample import encode_png
from srcluster.data.shards import Sample, write_shards
from srcluster.data.stream import REASONS, iter_images, iter_pairs, resolve_units, split_units, train_loader
from srcluster.errors import SrclusterError


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> tuple[str, list[list[str]]]:
    """8 local shards of 6 tiles; returns the folder and each shard's keys."""
    dest = str(tmp_path_factory.mktemp("stream") / "shards")
    samples = photo_tiles()
    write_shards(samples, dest, max_samples=PER_SHARD, progress=False)
    keys = [s.key for s in samples]
    return dest, [keys[i : i + PER_SHARD] for i in range(0, len(keys), PER_SHARD)]


def keys_of(stream) -> list[str]:
    return [key for _, batch_keys in stream for key in batch_keys]


def test_exact_steps_and_shapes(shard_set):
    dest, _ = shard_set
    stream = train_loader(dest, crop=32, batch_size=7, steps=13)  # 91 crops: more than one pass over 48 tiles
    batches = list(stream)
    assert len(stream) == 13 and len(batches) == 13
    assert {tuple(b.shape) for b in batches} == {(7, 3, 32, 32)}
    assert all(b.dtype == torch.uint8 for b in batches)
    assert sum(stream.skipped.values()) == 0


def test_ranks_read_disjoint_shards(shard_set):
    dest, shard_keys = shard_set
    units = resolve_units(dest)
    seen = []
    for rank in range(2):
        stream = train_loader(
            dest, crop=32, batch_size=4, steps=6, rank=rank, world_size=2, with_keys=True, shuffle_buffer=1, seed=2
        )  # no shuffle buffer: 24 crops are exactly one pass
        batches = list(stream)
        assert len(batches) == 6
        seen.append(set(keys_of(batches)))
        share, whole = split_units(units, rank, 2, 0, 1, seed=2)
        assert whole and len(share) == 4  # 48 tiles over 2 ranks: 4 whole shards of 6 each
        allowed = {key for keys, unit in zip(shard_keys, units, strict=True) if unit in share for key in keys}
        assert seen[rank] == allowed  # 24 crops from 24 tiles each pass: every tile of its share
    assert not seen[0] & seen[1]


def test_unequal_shares_same_step_count(tmp_path):
    dest = str(tmp_path / "uneven")
    write_shards(photo_tiles()[:15], dest, max_samples=PER_SHARD, progress=False)  # shards of 6, 6, 3
    counts = [len(list(train_loader(dest, crop=32, batch_size=4, steps=9, rank=r, world_size=3))) for r in range(3)]
    assert counts == [9, 9, 9]


def test_same_seed_same_batches_other_rank_other_batches(shard_set):
    dest, _ = shard_set
    args = dict(crop=24, batch_size=4, steps=5, world_size=2)
    first = torch.stack(list(train_loader(dest, rank=0, seed=3, **args)))
    assert torch.equal(first, torch.stack(list(train_loader(dest, rank=0, seed=3, **args))))
    assert not torch.equal(first, torch.stack(list(train_loader(dest, rank=1, seed=3, **args))))
    assert not torch.equal(first, torch.stack(list(train_loader(dest, rank=0, seed=4, **args))))
    assert not torch.equal(first, torch.stack(list(train_loader(dest, rank=0, seed=3, epoch=1, **args))))


def test_augmentation_switches(shard_set):
    """With flips and rotations off, every crop is a window of an original tile, in its original orientation."""
    dest, _ = shard_set
    originals = {s.key: np.asarray(Image.open(io.BytesIO(s.hr))) for s in photo_tiles()}
    stream = train_loader(dest, crop=48, batch_size=8, steps=3, use_hflip=False, use_rot=False, with_keys=True)
    for batch, keys in stream:
        for crop, key in zip(batch, keys, strict=True):
            assert np.array_equal(crop.permute(1, 2, 0).numpy(), originals[key])


def test_fewer_shards_than_slots_split_the_shard(tmp_path, caplog):
    dest = str(tmp_path / "one")
    write_shards(photo_tiles()[:6], dest, progress=False)
    units = resolve_units(dest)
    assert [split_units(units, rank, 2, 0, 1) for rank in range(2)] == [(units, False)] * 2  # each reads a part
    with caplog.at_level(logging.WARNING, logger="srcluster.data.stream"):
        streams = [
            train_loader(dest, crop=32, batch_size=3, steps=8, rank=r, world_size=2, with_keys=True, shuffle_buffer=1)
            for r in range(2)
        ]
    batches = [list(s) for s in streams]
    assert [len(b) for b in batches] == [8, 8]
    for step in range(8):  # a batch of 3 is a pass's share: the two ranks split the shard's 6 tiles in every pass
        keys = [key for rank in range(2) for key in batches[rank][step][1]]
        assert sorted(keys) == sorted(s.key for s in photo_tiles()[:6])
    assert not caplog.text  # a manifest gives the counts to split by: no warning


def test_corrupt_png_is_skipped(tmp_path):
    good = photo_tiles()[:10]
    broken = Sample("broken", good[0].hr[: len(good[0].hr) // 2], {}, ext="webp")  # an image cut off halfway
    garbage = Sample("garbage", b"definitely not an image", {})
    dest = str(tmp_path / "bad")
    write_shards([*good[:5], broken, *good[5:], garbage], dest, max_samples=6, progress=False)
    # 30 crops: 3 passes over 10 (no shuffle buffer, so the count does not hang on which samples it lets out)
    stream = train_loader(dest, crop=32, batch_size=5, steps=6, with_keys=True, shuffle_buffer=1)
    keys = keys_of(stream)
    assert len(keys) == 30 and not {"broken", "garbage"} & set(keys)
    assert stream.skipped["corrupt"] >= 4


def test_truncated_shard_is_skipped(tmp_path):
    dest = tmp_path / "trunc"
    write_shards(photo_tiles()[:12], str(dest), max_samples=6, progress=False)
    shard = dest / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    stream = train_loader(str(dest), crop=32, batch_size=4, steps=5, with_keys=True)
    assert len(list(stream)) == 5
    assert stream.skipped["bad_shard"] >= 1


def write_images(folder, images: dict[str, np.ndarray]) -> None:
    for name, image in images.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


def test_folder_input_and_small_images(tmp_path):
    photo = skimage.data.chelsea()
    write_images(
        tmp_path,
        {
            "a/big.png": photo[:64, :64],
            "b/bigger.jpg": photo[64:144, :96],
            "c.webp": photo[:80, 100:180],
            "tiny.png": photo[:20, :20],
            "narrow.bmp": photo[:100, :16],
            ".hidden.png": photo[:64, :64],
        },
    )
    (tmp_path / "notes.txt").write_text("not an image")
    stream = train_loader(str(tmp_path), crop=32, batch_size=2, steps=6, with_keys=True)
    keys = keys_of(stream)
    assert len(keys) == 12
    assert {os.path.basename(k) for k in keys} == {"big.png", "bigger.jpg", "c.webp"}
    assert stream.skipped["too_small"] >= 2

    names = [(name, tuple(image.shape)) for name, image in iter_images(str(tmp_path))]
    assert names == [
        ("a/big", (3, 64, 64)),
        ("b/bigger", (3, 80, 96)),
        ("c", (3, 80, 80)),
        ("narrow", (3, 100, 16)),
        ("tiny", (3, 20, 20)),
    ]
    big = dict(iter_images(str(tmp_path)))["a/big"]
    assert np.array_equal(big.permute(1, 2, 0).numpy(), photo[:64, :64])


def test_everything_too_small_fails_clearly(tmp_path):
    write_images(tmp_path, {"tiny.png": skimage.data.chelsea()[:16, :16]})
    with pytest.raises(SrclusterError, match="no usable 32x32 crop"):
        list(train_loader(str(tmp_path), crop=32, batch_size=2, steps=1))


def test_iter_images_of_shard_set(shard_set):
    dest, shard_keys = shard_set
    items = list(iter_images(dest))
    assert [name for name, _ in items] == [k for keys in shard_keys for k in keys]
    assert {tuple(t.shape) for _, t in items} == {(3, 48, 48)}


def test_memory_folder(tmp_path):
    import fsspec

    root = f"memory://imgs-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{root}/one.png", encode_png(skimage.data.astronaut()[:40, :40]))
    batches = list(train_loader(root, crop=40, batch_size=2, steps=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 40, 40)] * 2


def test_skip_counts_come_back_from_workers(tmp_path):
    good = photo_tiles()[:8]
    broken = [Sample(f"broken{i}", good[i].hr[:300], {}, ext="webp") for i in range(2)]
    small = [Sample(f"small{i}", encode_png(skimage.data.astronaut()[:8, :8]), {}) for i in range(2)]
    dest = str(tmp_path / "counted")
    # 4 shards of 3 over 2 workers; every pass, the workers between them read each corrupt and too-small sample once.
    write_shards(
        [*good[:2], broken[0], *good[2:4], broken[1], *good[4:6], small[0], *good[6:], small[1]],
        dest,
        max_samples=3,
        progress=False,
    )
    stream = train_loader(dest, crop=32, batch_size=4, steps=4, num_workers=2)
    assert len(list(stream)) == 4  # 16 crops from 8 good tiles: two passes at least
    counts = stream.counts()
    assert counts["data_skipped_corrupt"] >= 2 and counts["data_skipped_too_small"] >= 2
    assert counts["data_skipped"] == sum(counts[f"data_skipped_{r}"] for r in REASONS)
    assert set(counts) == {"data_skipped", "data_io_retries", *(f"data_skipped_{r}" for r in REASONS)}
    assert stream.skipped["corrupt"] == counts["data_skipped_corrupt"]


def test_paired_crops_from_shards_and_folders(tmp_path):
    hr, lr = make_paired_folders(tmp_path)
    dest = str(tmp_path / "paired")
    build_shards(
        str(hr),
        dest,
        lq=str(lr),
        settings=TileSettings(tile=32, scale=4),
        max_bad_fraction=1,
        workers=0,
        progress=False,
    )
    for gt, lq in ((dest, dest), (str(hr), str(lr))):
        stream = train_loader(gt, lq=lq, scale=4, crop=16, batch_size=4, steps=4)
        for high, low in stream:
            assert high.shape == (4, 3, 16, 16) and low.shape == (4, 3, 4, 4) and low.dtype == torch.uint8
            for one_hr, one_lr in zip(high, low, strict=True):  # augmented together: still the LR of its HR
                assert np.array_equal(pool(one_hr.permute(1, 2, 0).numpy(), 4), one_lr.permute(1, 2, 0).numpy())
    # Folders: c (no partner) and e (two partners) are left out at listing; d's LR has the wrong size.
    assert stream.skipped["unpaired"] == 2 and stream.skipped["size_mismatch"] >= 1

    with pytest.raises(SrclusterError, match="set dataroot_lq to the same URL"):
        train_loader(dest, lq=str(lr), scale=4, crop=16, batch_size=2, steps=1)
    with pytest.raises(SrclusterError, match="at scale 4, but the job's scale is 2"):
        train_loader(dest, lq=dest, scale=2, crop=16, batch_size=2, steps=1)
    unpaired = str(tmp_path / "hr-only")
    write_shards(photo_tiles()[:2], unpaired, progress=False)
    with pytest.raises(SrclusterError, match="holds no LR images"):
        train_loader(unpaired, lq=unpaired, scale=4, crop=16, batch_size=2, steps=1)
    with pytest.raises(ValueError, match="divides the HR crop"):
        train_loader(dest, lq=dest, scale=4, crop=18, batch_size=2, steps=1)

    pairs = list(iter_pairs(str(hr), str(lr), scale=4))
    assert [(name, tuple(a.shape), tuple(b.shape)) for name, a, b in pairs] == [
        ("a", (3, 64, 96), (3, 16, 24)),
        ("d", (3, 64, 80), (3, 16, 20)),
        ("sub/b", (3, 128, 64), (3, 32, 16)),
    ]  # d's HR is cut to 4 x its LR from the top left, as traiNNer-redux validates
    from_shards = list(iter_pairs(dest, dest, scale=4))
    assert len(from_shards) == 14 and all(tuple(low.shape) == (3, 8, 8) for _, _, low in from_shards)


def test_validation_split_over_ranks(shard_set, tmp_path):
    dest, _shard_keys = shard_set
    everything = [name for name, _ in iter_images(dest)]
    parts = [[name for name, _ in iter_images(dest, rank=r, world_size=3)] for r in range(3)]
    assert sorted(n for part in parts for n in part) == sorted(everything)
    assert all(part == everything[r::3] for r, part in enumerate(parts))
