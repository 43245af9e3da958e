"""The training stream from the local S3 (SeaweedFS): ranks and DataLoader workers read disjoint shards."""

from __future__ import annotations

import uuid

import pytest

from helpers.images import PER_SHARD, photo_tiles
from srcluster.data.shards import Sample, write_shards
from srcluster.data.stream import train_loader


@pytest.fixture(scope="module")
def s3_shards(s3) -> tuple[str, list[Sample]]:
    dest = f"s3://srcluster/tests/stream-{uuid.uuid4().hex}"
    samples = photo_tiles()[:24]
    write_shards(samples, dest, max_samples=PER_SHARD, progress=False)  # 4 shards: 2 per rank, 1 per worker
    return dest, samples


def test_two_ranks_two_workers_read_disjoint_shards(s3_shards):
    """Rank r of 2 owns shards r and r + 2; its worker w reads shard r + 2w. The DataLoader takes batch i from worker
    i % 2, so every batch must come from exactly one shard, and the four (rank, worker) slots never share one."""
    dest, samples = s3_shards
    by_shard = [{s.key for s in samples[i : i + PER_SHARD]} for i in range(0, len(samples), PER_SHARD)]
    slots: dict[tuple[int, int], set[str]] = {}
    for rank in range(2):
        stream = train_loader(
            dest, crop=32, batch_size=3, steps=8, num_workers=2, rank=rank, world_size=2, with_keys=True
        )
        batches = list(stream)
        assert len(batches) == 8 and {tuple(b.shape) for b, _ in batches} == {(3, 3, 32, 32)}
        for index, (_, keys) in enumerate(batches):
            worker = index % 2
            assert set(keys) <= by_shard[rank + 2 * worker], (rank, index)
            slots.setdefault((rank, worker), set()).update(keys)
        assert stream.counts()["data_skipped"] == 0
    assert len(slots) == 4
    assert all(not a & b for a in slots.values() for b in slots.values() if a is not b)
