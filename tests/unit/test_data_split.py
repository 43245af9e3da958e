"""Each training sample once per pass across all ranks x DataLoader workers: the split itself (`units.Split`), and the
real dataset iterated in-process as each (rank, worker) slot would run it (the worker lookup patched)."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
import skimage.data
import torch

from helpers.images import astronaut_tiles
from srcluster.data import stream as stream_module
from srcluster.data.sample import encode_png
from srcluster.data.shards import Sample, write_shards
from srcluster.data.stream import Split, train_loader
from srcluster.data.units import Read, Unit, split_units
from srcluster.errors import SrclusterError

CROP = 16


def positions(units: list[Unit], reads: list[Read]) -> list[tuple[int, int]]:
    """(unit, position) of every sample the reads take (an unknown count stands for 5 samples)."""
    out = []
    for read in reads:
        count = units[read.unit].samples
        end = (5 if count is None else count) if read.stop is None else read.stop
        out += [(read.unit, position) for position in range(read.start, end, read.step)]
    return out


@pytest.mark.parametrize("case", range(40))
def test_split_partitions_every_pass_and_balances_every_stretch(case):
    rnd = random.Random(case)
    slots, known = rnd.randint(1, 9), case % 4 != 0
    units = [Unit(f"s{i}.tar", None, rnd.randint(0, 12) if known else None) for i in range(rnd.randint(1, 20))]
    split = Split(units, slots, seed=case, epoch=0)
    everything = set(positions(units, [Read(u) for u in range(len(units))]))
    for pass_index in range(2 * slots):
        reads = Counter(p for slot in range(slots) for p in positions(units, split.reads(slot, pass_index)))
        assert set(reads) == everything and set(reads.values()) <= {1}  # each sample, by exactly one slot
    for slot in range(slots):  # a round of `slots` passes shows a slot all of the data, once
        seen = Counter(p for i in range(slots, 2 * slots) for p in positions(units, split.reads(slot, i)))
        assert set(seen) == everything and set(seen.values()) <= {1}
    if known and not split.by_position:  # any stretch of passes hands every slot as many samples, give or take one
        for passes in range(1, 2 * slots + 1):
            totals = [sum(len(positions(units, split.reads(s, i))) for i in range(passes)) for s in range(slots)]
            assert max(totals) - min(totals) <= 1, (passes, totals)


def test_split_units_names_the_first_pass_share():
    units = [Unit(f"s{i}.tar", None, 10) for i in range(4)]
    shares = [split_units(units, rank, 2, 0, 1, seed=5) for rank in range(2)]
    assert all(whole for _, whole in shares)  # 20 samples per rank: two whole shards each
    assert sorted(u.url for share, _ in shares for u in share) == [u.url for u in units]
    one = [Unit("only.tar", None, 6)]
    assert split_units(one, 1, 2, 0, 1) == (one, False)  # both ranks read a part of it


# --- the real dataset, slot by slot -------------------------------------------------------------------------------


def slot_batches(dataset, monkeypatch, worker: int, workers: int, count: int) -> list[tuple]:
    """The first `count` batches that DataLoader worker `worker` of `workers` would produce from `dataset`."""
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
    batches = iter(dataset)
    return [next(batches) for _ in range(count)]


def job_batches(gt, monkeypatch, *, world: int, workers: int, count: int, **kw) -> dict[tuple[int, int], list]:
    """(rank, worker) -> its first `count` batches of (hr, keys, counts)."""
    out = {}
    for rank in range(world):
        dataset = train_loader(
            gt, crop=CROP, rank=rank, world_size=world, num_workers=workers, steps=1, with_keys=True, **kw
        ).dataset
        for worker in range(workers):
            out[rank, worker] = slot_batches(dataset, monkeypatch, worker, workers, count)
    return out


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> tuple[str, list[str]]:
    """A shard set of 2 x 20 photo tiles (32 x 32); returns its folder and the keys."""
    dest = str(tmp_path_factory.mktemp("split") / "two")
    samples = astronaut_tiles(40)
    write_shards(samples, dest, max_samples=20, progress=False)
    return dest, [s.key for s in samples]


def test_two_shards_over_eight_slots_each_sample_once_per_pass(two_shards, monkeypatch):
    dest, keys = two_shards
    # 4 ranks x 2 workers, 40 samples: a pass is 5 samples per slot, a batch of 5 with no shuffle buffer
    slots = job_batches(dest, monkeypatch, world=4, workers=2, count=2, batch_size=5, shuffle_buffer=1)
    assert len(slots) == 8
    for pass_index in range(2):
        got = [key for batches in slots.values() for key in batches[pass_index][1]]
        assert len(got) == len(set(got)) == 40 and set(got) == set(keys), pass_index
    crops = {
        (key, pass_index): hr[i]
        for batches in slots.values()
        for pass_index, (hr, batch_keys, _) in enumerate(batches)
        for i, key in enumerate(batch_keys)
    }
    first = torch.stack([crop for (_, p), crop in crops.items() if p == 0]).flatten(1)
    assert len(torch.unique(first, dim=0)) == 40  # no two slots hand over the same crop
    # the same sample's next read is a new draw (its seed holds the pass), though another slot reads it
    assert sum(torch.equal(crops[key, 0], crops[key, 1]) for key in keys) <= 2


def test_a_slot_whose_share_is_all_bad_in_one_pass_goes_on(tmp_path, monkeypatch):
    """One shard of too-small images and one of good tiles over 2 slots: a slot whose whole share of a pass gives no
    crop must read on (its next pass holds the other shard), and only data with no crop at all ends the stream."""
    tiny = encode_png(skimage.data.astronaut()[:8, :8])
    dest = str(tmp_path / "half")
    write_shards(
        [*(Sample(f"tiny{i}", tiny, {}) for i in range(6)), *astronaut_tiles(6)], dest, max_samples=6, progress=False
    )
    slots = job_batches(dest, monkeypatch, world=2, workers=1, count=3, batch_size=2, shuffle_buffer=1)
    assert all(len(batches) == 3 for batches in slots.values())
    assert not any(key.startswith("tiny") for batches in slots.values() for _, keys, _ in batches for key in keys)

    only_tiny = str(tmp_path / "tiny")
    write_shards([Sample(f"tiny{i}", tiny, {}) for i in range(6)], only_tiny, max_samples=6, progress=False)
    for buffer in (1, 256):  # with no buffer a round's end is known only after its last sample went to the crop
        with pytest.raises(SrclusterError, match="no usable 16x16 crop in 1 shard"):
            job_batches(only_tiny, monkeypatch, world=2, workers=2, count=1, batch_size=2, shuffle_buffer=buffer)


@pytest.fixture(scope="module")
def uneven_sets(tmp_path_factory) -> tuple[list[str], list[str]]:
    """23 shard sets of one shard each, 1 to 9 samples (109 in all): uneven shares for any split by whole shards."""
    root = tmp_path_factory.mktemp("uneven")
    tiles, sizes = astronaut_tiles(109), [1, 9, 2, 8, 3, 7, 4, 6, 5, 5, 9, 1, 2, 3, 4, 6, 7, 8, 9, 1, 3, 5, 1]
    assert sum(sizes) == len(tiles)
    sets, start = [], 0
    for index, size in enumerate(sizes):
        dest = str(root / f"set{index:02d}")
        write_shards(tiles[start : start + size], dest, progress=False)
        sets.append(dest)
        start += size
    return sets, [t.key for t in tiles]


def test_uneven_shards_counts_stay_within_one(uneven_sets, monkeypatch):
    """23 uneven shards over 3 ranks x 2 workers, about 4 passes: at every point of the stream (each slot having made
    the same number of crops) every sample has been read as often as any other, give or take one."""
    sets, keys = uneven_sets
    per_slot = 4 * len(keys) // 6
    slots = job_batches(sets, monkeypatch, world=3, workers=2, count=per_slot, batch_size=1, shuffle_buffer=1)
    streams = [[batch[1][0] for batch in batches] for batches in slots.values()]
    counts = Counter(dict.fromkeys(keys, 0))
    for step in range(per_slot):
        counts.update(stream[step] for stream in streams)
        assert max(counts.values()) - min(counts.values()) <= 1, step
    assert set(counts) == set(keys)
    first_pass = [key for stream in streams for key in stream[: len(keys) // 6]]
    assert len(first_pass) == len(set(first_pass))  # no sample twice within the first pass


def test_shards_without_counts_split_by_sample_position(two_shards, monkeypatch):
    """A brace pattern has no manifest: with fewer shards than slots each slot keeps every n-th sample, still each
    sample once per pass."""
    dest, keys = two_shards
    pattern = f"{dest}/shard-00000{{0..1}}.tar"
    slots = job_batches(pattern, monkeypatch, world=2, workers=2, count=2, batch_size=10, shuffle_buffer=1)
    for pass_index in range(2):
        got = [key for batches in slots.values() for key in batches[pass_index][1]]
        assert sorted(got) == sorted(keys), pass_index


def test_same_seed_same_stream_other_seed_other_order(two_shards, monkeypatch):
    dest, _ = two_shards

    def run(seed: int) -> list[tuple]:
        slots = job_batches(dest, monkeypatch, world=2, workers=2, count=3, batch_size=4, seed=seed)
        return [(hr, keys) for batches in slots.values() for hr, keys, _ in batches]

    first, again, other = run(3), run(3), run(4)
    assert [keys for _, keys in first] == [keys for _, keys in again]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    assert [keys for _, keys in first] != [keys for _, keys in other]
