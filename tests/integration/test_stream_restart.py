"""The stream survives its S3 server being killed and restarted mid-read (on a stack of its own: the session's
stack stays up)."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

import pytest
import skimage.data

from helpers.free_ports import free_port_block
from srcluster import stack as stack_mod
from srcluster.data import remote
from srcluster.data.sample import tiles
from srcluster.data.shards import write_shards
from srcluster.data.stream import train_loader


@pytest.fixture
def own_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "home"))
    services = stack_mod.up(s3_port=free_port_block(len(stack_mod.S3_PORT_ROLES)), mlflow=False, timeout=120)
    yield services["s3"]
    stack_mod.down(grace=1)


def test_s3_restart_during_reading_does_not_end_the_stream(own_stack, monkeypatch, caplog):
    dest = "s3://srcluster/restart/shards"
    samples = list(tiles("astronaut", skimage.data.astronaut(), 48, 48))[:48]
    write_shards(samples, dest, max_samples=12, progress=False)  # 4 shards of ~45 KB
    monkeypatch.setattr(remote, "READ_BLOCK", 4 << 10)  # ~12 ranged GETs per shard, so the kill lands mid-shard

    steps = 30  # 120 crops: 2.5 passes over the 48 tiles, most of them after the restart
    stream = train_loader(dest, crop=32, batch_size=4, steps=steps, shuffle_buffer=1, num_workers=0)
    batches = iter(stream)
    got = [next(batches) for _ in range(2)]  # 8 of the first shard's 12 samples: its last blocks are not fetched yet

    os.killpg(own_stack.pid, signal.SIGKILL)
    down_at = time.monotonic()
    restarted: list[float] = []

    def restart() -> None:
        time.sleep(1.0)  # the reader meets a dead endpoint first
        stack_mod.up(s3_port=own_stack.port, mlflow=False, timeout=120)
        restarted.append(time.monotonic() - down_at)

    thread = threading.Thread(target=restart)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="srcluster.data.remote"):
        got += list(batches)
    thread.join()

    assert restarted, "the S3 server did not come back"
    assert len(got) == steps and all(b.shape == (4, 3, 32, 32) for b in got)
    assert stream.io_retries > 0  # it did wait for the server ...
    assert sum(stream.skipped.values()) == 0  # ... and lost no shard and no sample to the restart
    assert stream.counts()["data_io_retries"] == stream.io_retries
    # The retry picked up inside a shard, at the block that failed (not only when opening the next shard).
    assert re.search(r"reading s3://\S+/shard-\d+\.tar at byte [1-9]\d* failed", caplog.text), caplog.text
