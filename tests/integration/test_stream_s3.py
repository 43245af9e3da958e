"""The training stream from the local S3 (SeaweedFS): ranks and DataLoader workers read disjoint shares of each pass."""

from __future__ import annotations

import uuid

import pytest

from helpers.images import PER_SHARD, photo_tiles
from srcluster.data.shards import Sample, write_shards
from srcluster.data.stream import resolve_units, split_units, train_loader


@pytest.fixture(scope="module")
def s3_shards(s3) -> tuple[str, list[Sample]]:
    dest = f"s3://srcluster/tests/stream-{uuid.uuid4().hex}"
    samples = photo_tiles()[:24]
    write_shards(samples, dest, max_samples=PER_SHARD, progress=False)  # 4 shards: 1 per slot per pass
    return dest, samples


def test_two_ranks_two_workers_read_disjoint_shards(s3_shards):
    """24 samples in 4 shards over 2 ranks x 2 workers: each (rank, worker) slot reads one whole shard per pass (6
    samples, two batches of 3), the four slots four different shards, and a slot's shard changes from pass to pass.
    The DataLoader takes batch i from worker i % 2, so with no shuffle buffer every batch comes from one shard."""
    dest, samples = s3_shards
    by_shard = [{s.key for s in samples[i : i + PER_SHARD]} for i in range(0, len(samples), PER_SHARD)]
    units = resolve_units(dest)
    read: dict[tuple[int, int], list[int]] = {}  # (rank, worker) -> its shard in each pass
    for rank in range(2):
        stream = train_loader(
            dest,
            crop=32,
            batch_size=3,
            steps=8,
            num_workers=2,
            rank=rank,
            world_size=2,
            with_keys=True,
            shuffle_buffer=1,
        )
        batches = list(stream)
        assert len(batches) == 8 and {tuple(b.shape) for b, _ in batches} == {(3, 3, 32, 32)}
        for index, (_, keys) in enumerate(batches):
            worker, pass_index = index % 2, index // 4
            shard = next(i for i, shard_keys in enumerate(by_shard) if set(keys) <= shard_keys)  # one shard each
            passes = read.setdefault((rank, worker), [])
            if len(passes) == pass_index:
                passes.append(shard)
            assert passes[pass_index] == shard, (rank, index)
        assert stream.counts()["data_skipped"] == 0
    for (rank, worker), shards in read.items():  # the first pass is the one `split_units` names
        assert [units[shards[0]]] == split_units(units, rank, 2, worker, 2)[0]
    for pass_index in range(2):
        assert sorted(shards[pass_index] for shards in read.values()) == [0, 1, 2, 3]
    assert all(shards[0] != shards[1] for shards in read.values())
