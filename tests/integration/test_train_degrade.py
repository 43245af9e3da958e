"""On-the-fly degradations in training: the job's keys reach the loader, LR is made in the data workers or in the step,
with per-sample draws every sample's (HR, LR) depends only on (seed, epoch, key, pass), LR is exactly lq_size, GT USM
reaches the losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.images import PER_SHARD, photo_tiles
from srcluster.config import parse_job
from srcluster.data.shards import write_shards
from srcluster.data.stream import train_loader
from srcluster.degrade.filters import usm_sharpen
from srcluster.degrade.pipeline import Plan, pair
from srcluster.train.batch import to_batch
from srcluster.train.state import build_stage
from srcluster.train.step import train_step

pytestmark = pytest.mark.usefixtures("single_thread")

OTF = {  # Real-ESRGAN's pipeline with every step likely, so that a wrong seed or batch dependence shows
    "high_order_degradation": True,
    "blur_prob": 0.8,
    "gaussian_noise_prob": 0.5,
    "noise_range": [1, 20],
    "poisson_scale_range": [0.05, 2],
    "gray_noise_prob": 0.3,
    "jpeg_range": [40, 95],
    "blur_prob2": 0.5,
    "jpeg_range2": [40, 95],
}
KERNELS = {"kernel_range": [3, 11], "final_sinc_prob": 0.5}  # these live under datasets.train in traiNNer-redux


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    dest = str(tmp_path_factory.mktemp("degrade") / "shards")
    write_shards(photo_tiles(), dest, max_samples=PER_SHARD, progress=False)  # 8 shards of 6 photo tiles
    return dest


def job(shards: str, **top) -> dict:
    return {
        "name": "otf",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {
            "train": {
                "dataroot_gt": shards,
                "lq_size": 16,
                "batch_size_per_gpu": 4,
                "num_worker_per_gpu": 0,
                **(KERNELS if top.get("high_order_degradation") else {}),
            }
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": 10, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        **top,
    }


def samples(stream) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (HR, LR) over a whole stream of (hr, lr, keys) batches."""
    out = {}
    for hr, lr, keys in stream:
        for i, key in enumerate(keys):
            assert key not in out  # one pass: every sample once
            out[key] = (hr[i].numpy(), lr[i].numpy())
    return out


def test_same_seed_same_lr_on_any_number_of_ranks_and_workers(shards):
    # what `otf_draws: per_sample` is for (traiNNer-redux's per-batch draws, the default, depend on the batch)
    cfg = parse_job(job(shards, **OTF, otf_draws="per_sample")).datasets.train.degradations

    def one_pass(world: int, workers: int) -> dict:
        steps = 48 // 4 // world  # exactly one pass over the 48 tiles per rank
        out = {}
        for rank in range(world):
            out.update(
                samples(
                    train_loader(
                        shards,
                        crop=32,
                        batch_size=4,
                        rank=rank,
                        world_size=world,
                        num_workers=workers,
                        seed=3,
                        epoch=7,
                        steps=steps,
                        scale=2,
                        shuffle_buffer=1,
                        with_keys=True,
                        degradations=cfg,
                    )
                )
            )
        return out

    single, spread = one_pass(1, 0), one_pass(2, 2)
    assert len(single) == 48 and single.keys() == spread.keys()
    for key, (hr, lr) in single.items():
        assert lr.shape == (3, 16, 16) and lr.dtype == np.uint8
        assert np.array_equal(hr, spread[key][0]) and np.array_equal(lr, spread[key][1]), key
    # the degradations did something, and differently per sample
    lrs = np.stack([lr for _, lr in single.values()]).astype(np.float32)
    bicubic = torch.nn.functional.interpolate(
        torch.from_numpy(np.stack([hr for hr, _ in single.values()])).float(),
        scale_factor=0.5,
        mode="bicubic",
        antialias=True,
    ).numpy()
    assert np.abs(lrs - bicubic).mean() > 2

    other_epoch = samples(
        train_loader(
            shards,
            crop=32,
            batch_size=4,
            seed=3,
            epoch=8,
            steps=12,
            scale=2,
            shuffle_buffer=1,
            with_keys=True,
            degradations=cfg,
        )
    )
    assert sum(np.array_equal(single[k][1], other_epoch[k][1]) for k in single) == 0


def test_device_path_yields_the_plan_and_gives_the_workers_lr(shards):
    cfg = parse_job(job(shards, **OTF)).datasets.train.degradations
    common = dict(crop=32, batch_size=4, seed=3, steps=3, scale=2, with_keys=True, degradations=cfg)
    in_workers = list(train_loader(shards, **common))
    on_device = list(train_loader(shards, degrade_in_workers=False, **common))
    for (hr, lr, keys), (crop, plan, keys2) in zip(in_workers, on_device, strict=True):
        assert isinstance(plan, Plan) and keys == keys2 and crop.shape[-1] == 64  # gt_size + 32, as traiNNer-redux
        patch, lr2 = pair(crop, plan)  # what the training step does with it
        assert torch.equal(hr, patch) and torch.equal(lr, lr2.mul(255).round().to(torch.uint8))


@pytest.mark.parametrize(
    "top",
    [{}, OTF, {"video_codec_prob": 1.0}, {**OTF, "video_codec_prob": 1.0}],
    ids=["bicubic", "real-esrgan", "bicubic+h264", "real-esrgan+h264"],
)
@pytest.mark.parametrize("degrade_on", ["workers", "device"])
def test_lr_is_exactly_lq_size_on_every_path(shards, top, degrade_on):
    data = job(shards, **top, srcluster={"degrade_on": degrade_on})
    data["datasets"]["train"]["lq_size"] = 15  # odd: the codec pads to even sizes and must crop back
    parsed = parse_job(data)
    assert (parsed.datasets.train.degradations is None) == (top == {})
    stream = train_loader(
        shards,
        crop=30,
        batch_size=3,
        steps=2,
        scale=2,
        seed=1,
        degradations=parsed.datasets.train.degradations,
        degrade_in_workers=parsed.degrade_in_workers,
    )
    for item in stream:
        batch = to_batch(item, parsed, torch.device("cpu"))
        assert batch.lr.shape == (3, 3, 15, 15) and batch.lr.dtype == torch.float32
        assert batch.lr.min() >= 0 and batch.lr.max() <= 1


def test_gt_usm_choices_reach_the_loss_targets(shards):
    parsed = parse_job(job(shards, l1_gt_usm=True, percep_gt_usm=False, gan_gt_usm=True))
    assert parsed.datasets.train.degradations is not None and not parsed.datasets.train.degradations.makes_lr
    hr = next(iter(train_loader(shards, crop=32, batch_size=2, steps=1, scale=2)))
    batch = to_batch(hr, parsed, torch.device("cpu"))
    sharp = usm_sharpen(hr.float() / 255)
    assert not torch.equal(sharp, hr.float() / 255)
    assert torch.equal(batch.target("charbonnierloss"), sharp) and torch.equal(batch.target("mssimloss"), sharp)
    assert torch.equal(batch.target("perceptualloss"), hr.float() / 255)
    assert torch.equal(batch.gan_gt, sharp)
    plain = to_batch(hr, parse_job(job(shards)), torch.device("cpu"))
    assert torch.equal(plain.target("charbonnierloss"), hr.float() / 255)


@pytest.mark.parametrize("degrade_on", ["workers", "device"])
def test_training_steps_with_degradations(shards, degrade_on):
    parsed = parse_job(job(shards, **OTF, l1_gt_usm=True, srcluster={"degrade_on": degrade_on}))
    parsed.datasets.train.num_worker_per_gpu = 1 if degrade_on == "workers" else 0
    data = parsed.datasets.train
    stage = build_stage(parsed, torch.device("cpu"), log=lambda _: None)
    loader = train_loader(
        shards,
        crop=32,
        batch_size=data.batch_size_per_gpu,
        steps=10,
        scale=2,
        seed=3,
        num_workers=data.num_worker_per_gpu,
        degradations=data.degradations,
        degrade_in_workers=parsed.degrade_in_workers,
    )
    batches = iter(loader)
    losses = [float(train_step(stage, batches, 1)["l_g_charbonnier"]) for _ in range(10)]
    assert stage.iteration == 10 and all(np.isfinite(losses))


@pytest.mark.slow
def test_a_ray_stage_trains_on_degraded_lr(stack, ray_cluster):
    """The job's degradations travel to the Ray workers (in the job dump), run in their DataLoader workers and are
    recorded with the run."""
    from helpers.jobs import TRAIN, VAL, tiny_job
    from srcluster.data.sample import build_sample_dataset
    from srcluster.tracking.tracker import Tracker
    from srcluster.train.stage import run_stage

    build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)
    data = tiny_job(
        name="e2e-otf",
        **OTF,
        train={"total_iter": 10, "losses": [{"type": "charbonnierloss"}]},
        l1_gt_usm=True,
        logger={"print_freq": 10, "save_checkpoint_freq": 10},
    )
    data["datasets"]["train"].update(KERNELS, num_worker_per_gpu=1)
    result = run_stage(parse_job(data))
    assert result.iterations == 10
    run = Tracker().client.get_run(result.run_id)
    params = run.data.params
    assert params["datasets.train.degradations.high_order_degradation"] == "True"
    assert params["datasets.train.degradations.kernel_range"] == "[3, 11]"
    assert np.isfinite(run.data.metrics["l_g_charbonnier"]) and run.data.metrics["val_psnr"] > 10
