"""Data sizing (srcluster issue #16, item 8): several crops per decoded tile (`srcluster.crops_per_tile`), loader
workers sized from the job (`srcluster.loader_workers`), and what `check` and `render` say about the data rate."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import srcluster.data.stream as stream_module
from helpers.images import astronaut_tiles
from helpers.jobs import launch_job, tiny_job, write_job
from srcluster.cli import main
from srcluster.config import parse_job
from srcluster.data.crops import Crop, CropPool
from srcluster.data.shards import write_shards
from srcluster.data.spec import per_core_rate, step_rate
from srcluster.data.stream import train_loader
from srcluster.errors import ConfigError
from srcluster.launch.jobfile import load
from srcluster.launch.render import fit
from srcluster.train.specs import crops_to_fit, size_data, train_data

TILES, CROP = 12, 16


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> tuple[str, list[str]]:
    """12 photo tiles of 64 px in 3 shards; returns the folder and the keys."""
    dest = str(tmp_path_factory.mktemp("sizing") / "tiles")
    samples = astronaut_tiles(TILES, size=64)
    write_shards(samples, dest, max_samples=4, progress=False)
    return dest, [s.key for s in samples]


def crops_of(gt: str, count: int, **kw) -> list[tuple[str, torch.Tensor]]:
    """(key, HR crop) of the first `count` batches of a one-slot stream, batch by batch."""
    stream = train_loader(gt, crop=CROP, steps=count, with_keys=True, seed=3, **kw)
    return [(key, hr[i]) for hr, keys in stream for i, key in enumerate(keys)]


# --- crops_per_tile -------------------------------------------------------------------------------------------------


def test_each_crop_of_a_tile_is_its_own_reproducible_draw_and_crop_0_is_the_single_crop(shard_set):
    dest, keys = shard_set
    single = crops_of(dest, 6, batch_size=4)  # 24 crops: 2 passes over the 12 tiles at one crop per tile
    several = crops_of(dest, 45, batch_size=4, crops_per_tile=3)  # 180 crops: 5 passes' worth at three per tile
    assert len(several) == 180
    again = crops_of(dest, 45, batch_size=4, crops_per_tile=3)
    assert all(a == b and torch.equal(x, y) for (a, x), (b, y) in zip(several, again, strict=True))

    by_key: dict[str, list[torch.Tensor]] = {}
    for key, crop in several:
        by_key.setdefault(key, []).append(crop)
    assert set(by_key) == set(keys)
    for key, crops in by_key.items():  # every crop of a sample, in a pass and across passes, is a draw of its own
        flat = torch.stack(crops).flatten(1)
        assert len(torch.unique(flat, dim=0)) == len(crops), key
    # crop 0 of a sample's read keeps the plain per-sample seed: one crop per tile cuts exactly that crop
    for key, crop in single:
        assert any(torch.equal(crop, other) for other in by_key[key]), key


def test_each_sample_once_per_pass_with_k_crops_of_it(shard_set, monkeypatch):
    """2 ranks x 2 workers over 12 samples, 3 crops each: every slot reads its share of each pass once, so at any
    point the samples' crop counts differ by at most what the crop pools hold back."""
    dest, keys = shard_set
    k, batch, passes = 3, 2, 4
    per_slot_batches = passes * TILES * k // (4 * batch)
    counts: Counter = Counter()
    decodes: Counter = Counter()
    real_cut = stream_module.HrCrops._cut

    def counting_cut(self, sample, seeds, *args):
        decodes[sample.key] += 1
        assert len(seeds) == k and len(set(seeds)) == k  # a seed per crop
        return real_cut(self, sample, seeds, *args)

    monkeypatch.setattr(stream_module.HrCrops, "_cut", counting_cut)
    for rank in range(2):
        dataset = train_loader(
            dest, crop=CROP, batch_size=batch, rank=rank, world_size=2, num_workers=2, steps=1, with_keys=True,
            crops_per_tile=k, shuffle_buffer=1,
        ).dataset  # fmt: skip
        for worker in range(2):
            monkeypatch.setattr(stream_module, "get_worker_info", lambda w=worker: SimpleNamespace(id=w, num_workers=2))
            batches = iter(dataset)
            for _ in range(per_slot_batches):
                _, batch_keys, _ = next(batches)
                counts.update(batch_keys)
    assert set(counts) == set(keys) and sum(counts.values()) == passes * TILES * k
    held_back = batch * k + k - 1  # what one slot's pool can hold
    assert max(counts.values()) - min(counts.values()) <= 2 * held_back
    # decodes: one per sample per pass (plus what the pools hold), never one per crop
    assert sum(decodes.values()) <= passes * TILES + 4 * (held_back // k + 1)
    assert max(decodes.values()) - min(decodes.values()) <= 2


def test_crops_of_one_tile_are_spread_over_batches(tmp_path):
    """Four crops per tile, batches of four, no shuffle buffer: in the order they are cut a batch would be one tile;
    the crop pool hands each batch crops of four different tiles, and still mixes them (not tile by tile). 64 tiles,
    so that a tile comes again (next pass) only long after its crops left the pool of 16."""
    dest = str(tmp_path / "many")
    write_shards(astronaut_tiles(64), dest, max_samples=16, progress=False)
    stream = train_loader(dest, crop=CROP, batch_size=4, steps=64, with_keys=True, shuffle_buffer=1, crops_per_tile=4)
    batches = [keys for _, keys in stream]
    assert all(len(set(keys)) == 4 for keys in batches)
    assert len({tuple(sorted(keys)) for keys in batches}) > 32  # not the same four tiles batch after batch


def test_the_pool_always_finds_another_tile_when_it_holds_batch_x_k():
    rng = np.random.default_rng(0)
    batch, k = 5, 3
    pool, tiles, taken = CropPool(batch * k, rng), iter(range(10**6)), []
    for _ in range(40):
        in_batch: set[int] = set()
        for _ in range(batch):
            while pool.hungry:
                tile = next(tiles)
                for crop in range(k):
                    pool.add(Crop(tile, [], f"t{tile}", crop))
            picked = pool.take(in_batch)
            assert picked.tile not in in_batch
            in_batch.add(picked.tile)
            taken.append((picked.tile, picked.seed))
    assert len(taken) == len(set(taken))  # nothing handed out twice


def test_crops_per_tile_is_checked():
    with pytest.raises(ValueError, match="crops_per_tile"):
        train_loader("unused", crop=CROP, batch_size=2, steps=1, crops_per_tile=0)
    with pytest.raises(ConfigError, match=r"srcluster\.crops_per_tile"):
        parse_job(tiny_job(srcluster={"crops_per_tile": 0}))


# --- loader workers from the job ------------------------------------------------------------------------------------


def gpu_job(arch: str = "span", *, cpus: float = 8, data: dict | None = None, top: dict | None = None, **cluster):
    train = {"dataroot_gt": "s3://b/tiles", "lq_size": 64, "batch_size_per_gpu": 8, "num_worker_per_gpu": 2}
    return parse_job(
        tiny_job(
            **(top or {}),
            scale=4,
            network_g={"type": arch},
            datasets={"train": {**train, **(data or {})}},
            val={"val_enabled": False},
            srcluster={"workers": 2, "use_gpu": True, "cpus_per_worker": cpus, **cluster},
        )
    )


def test_loader_workers_default_to_num_worker_per_gpu_or_a_number():
    assert size_data(gpu_job()).workers == 2
    assert size_data(gpu_job(loader_workers=5)).workers == 5
    assert train_data(gpu_job(loader_workers=5, crops_per_tile=4), 2).num_workers == 5
    assert train_data(gpu_job(loader_workers=5, crops_per_tile=4), 2).crops_per_tile == 4
    with pytest.raises(ConfigError, match=r"srcluster\.loader_workers: expected auto"):
        gpu_job(loader_workers="many")


def test_auto_workers_are_the_cores_the_gpus_rate_needs_within_the_spare_cpus():
    sizing = size_data(gpu_job(loader_workers="auto"))
    per_core = per_core_rate("bicubic", 256, 4, 1)
    assert sizing.path == "bicubic" and sizing.needed == step_rate("span", 64) == 1300 and sizing.cores is not None
    assert sizing.cores == math.ceil(1300 / per_core) and sizing.workers == min(7, sizing.cores)
    assert sizing.cpus_needed == sizing.cores + 1
    four = size_data(gpu_job(loader_workers="auto", crops_per_tile=4))
    assert four.per_core > 2.5 * sizing.per_core and four.workers < sizing.workers  # one decode feeds four crops
    assert size_data(gpu_job(loader_workers="auto", cpus=3)).workers == 2  # capped: one CPU runs the step
    assert size_data(gpu_job(loader_workers="auto", cpus=1)).workers == 0
    assert size_data(gpu_job("compact", loader_workers="auto")).workers == 7  # unknown step rate: every spare core
    assert size_data(gpu_job(loader_workers="auto", use_gpu=False)).needed is None
    assert size_data(gpu_job("dat_2", loader_workers="auto")).workers == 1  # a slow step needs little data
    assert step_rate("span", 128) == pytest.approx(1300 / 4)  # a GPU's samples/s fall with the LR area


def test_degradations_in_the_workers_cost_far_more_per_sample_than_on_the_device():
    otf = {"high_order_degradation": True}
    workers = size_data(gpu_job(top=otf, degrade_on="workers"))
    device = size_data(gpu_job(top=otf, degrade_on="device"))
    paired = size_data(gpu_job(data={"dataroot_lq": "s3://b/tiles"}))
    assert (workers.path, device.path, paired.path) == ("otf-workers", "otf-device", "paired")
    assert workers.per_core * 5 < device.per_core < size_data(gpu_job()).per_core
    assert paired.per_core < size_data(gpu_job()).per_core


# --- what check and render say --------------------------------------------------------------------------------------


def test_check_prints_the_rate_a_gpu_needs_and_the_workers(tmp_path, capsys):
    job = tiny_job(
        scale=4,
        network_g={"type": "span"},
        datasets={"train": {"dataroot_gt": "s3://b/tiles", "lq_size": 64, "num_worker_per_gpu": 2}},
        val={"val_enabled": False},
        srcluster={"workers": 2, "use_gpu": True, "cpus_per_worker": 8, "loader_workers": "auto"},
    )
    write_job(tmp_path, job)
    path = str(tmp_path / "job.yml")
    assert main(["check", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    sizing = size_data(parse_job(job))
    data = next(line for line in lines if line.startswith("data: "))
    assert data.startswith("data: span trains ~1300 samples/s per GPU (A100, lq_size 64); bicubic data from 512 px")
    assert f"crops_per_tile 1: ~{sizing.per_core:.0f} samples/s per core -> {sizing.cores} loader cores per GPU" in data
    assert f"loader workers: {sizing.workers} per training worker (srcluster.loader_workers: auto)" in lines

    assert main(["check", path, "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)["data"]
    assert fields["needed_samples_per_s_per_gpu"] == 1300 and fields["loader_workers"] == sizing.workers
    assert fields["loader_cores_needed"] == sizing.cores and fields["path"] == "bicubic"

    write_job(tmp_path, {**job, "network_g": {"type": "compact"}})
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    assert "data: compact: samples/s per GPU unknown (step rates known for span, dat_2)" in out
    assert "loader workers: 7 per training worker (srcluster.loader_workers: auto)" in out


def test_render_warns_when_a_gpu_has_fewer_cpus_than_its_data_path_needs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job = launch_job(
        "fit", scale=4, network_g={"type": "span"}, srcluster={"workers": 2, "use_gpu": True, "cpus_per_worker": 4}
    )
    job["datasets"]["train"]["lq_size"] = 64
    write_job(tmp_path, job)
    warnings = fit(load("job.yml"), hosts=1, gpus=2, cpus=8, host="node", flag="node")
    sizing = size_data(load("job.yml").jobs[0])
    short = [w for w in warnings if "the data path needs" in w]
    assert len(short) == 1 and f"needs {sizing.cpus_needed} CPUs per GPU" in short[0]
    assert "a worker has 4 (srcluster.cpus_per_worker; a node has 4 per GPU)" in short[0]
    enough = crops_to_fit(load("job.yml").jobs[0], 3)
    assert enough == 2 and f"srcluster.crops_per_tile {enough} would fit" in short[0] and "--cpus-per-node" in short[0]

    four = {**job, "srcluster": {**job["srcluster"], "crops_per_tile": 4}}
    write_job(tmp_path, four)  # the CPUs suffice now, but the job's num_worker_per_gpu is 0
    (few,) = [w for w in fit(load("job.yml"), hosts=1, gpus=2, cpus=8, host="node", flag="node") if "data" in w]
    assert "0 loader workers (datasets.train.num_worker_per_gpu) but the data path needs 2" in few
    write_job(tmp_path, {**four, "srcluster": {**four["srcluster"], "loader_workers": "auto"}})
    assert not [w for w in fit(load("job.yml"), hosts=1, gpus=2, cpus=8, host="node", flag="node") if "data" in w]

    otf = {**job, "high_order_degradation": True, "srcluster": {**job["srcluster"], "degrade_on": "workers"}}
    write_job(tmp_path, otf)
    code = main(["render", "slurm", "job.yml", "--nodes", "1", "--gpus-per-node", "2", "-o", "out.sh"])
    err = capsys.readouterr().err
    assert code == 0 and "srcluster.degrade_on: device" in err and "otf-workers data" in err
