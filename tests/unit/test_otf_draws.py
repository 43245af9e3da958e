"""`otf_draws`: traiNNer-redux's once-per-batch degradation draws (the default), one fixed shape per batch, and its
training-pair pool (`queue_size`); per-sample draws (`otf_draws: per_sample`) stay as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.degradations import EVERYTHING
from helpers.images import save
from srcluster.config import parse_job
from srcluster.data.stream import train_loader
from srcluster.degrade.config import DATASET_KEYS, Degradations
from srcluster.degrade.noise import GAUSSIAN, NONE, POISSON, add_noise
from srcluster.degrade.pipeline import draw, pair
from srcluster.degrade.pool import PairPool
from srcluster.degrade.seeds import sample_seed
from srcluster.train.batch import to_batch

# Real-ESRGAN x4plus's settings with every step on some of the time, JPEG half the time, no video codec
X4PLUS = {**EVERYTHING, "blur_prob": 0.5, "jpeg_prob": 0.5, "jpeg_prob2": 0.5, "video_codec_prob": 0}
PER_BATCH = Degradations(**X4PLUS, otf_draws="per_batch")
SCALE, GT = 4, 32


def seeds(n: int, batch: int = 0) -> list[int]:
    return [sample_seed(7, 0, f"unit/{batch}/{i}") for i in range(n)]


def test_a_batch_shares_every_switch_and_size_and_keeps_per_sample_values() -> None:
    for batch in range(20):
        plan = draw(PER_BATCH, seeds(6, batch), SCALE, GT)
        shared = {
            "usm": plan.usm_radius,
            "thick": plan.thick,
            "blur1": plan.blur1,
            "size1": plan.resize1.size,
            "mode1": np.asarray(plan.resize1.mode),
            "blur2": plan.blur2,
            "size2": plan.resize2.size,
            "mode3": np.asarray(plan.resize3.mode),
            "jpeg1": plan.jpeg1.on,
            "jpeg2": plan.jpeg2.on,
            "order": plan.jpeg2_first,
            "offsets": plan.offsets,
        }
        for name, values in shared.items():
            assert (values == values[:1]).all(), f"batch {batch}: {name} differs within the batch: {values}"
        kinds = {int(k) for k in plan.noise1.kind} - {NONE}
        assert len(kinds) <= 1, f"batch {batch}: gaussian and poisson noise in one batch"
        # what redux draws per sample stays per sample: JPEG qualities, noise strengths, blur kernels
        assert len(set(plan.jpeg1.quality.round(6))) == 6
        if kinds:
            assert len(set(plan.noise1.strength.round(6))) == 6
        if plan.blur1[0]:
            assert len({k.numpy().tobytes() for k in plan.kernels1}) == 6


def test_batch_draws_follow_the_configured_probabilities() -> None:
    """Over many batches the once-per-batch switches come out at the config's rates, as redux's draws do."""
    plans = [draw(PER_BATCH, seeds(2, batch), SCALE, GT) for batch in range(400)]
    up = np.mean([p.resize1.updown[0] == 0 for p in plans])
    gaussian = np.mean([p.noise1.kind[0] == GAUSSIAN for p in plans])
    poisson = np.mean([p.noise1.kind[0] == POISSON for p in plans])
    jpeg = np.mean([p.jpeg1.on[0] for p in plans])
    assert abs(up - 0.2) < 0.06 and abs(gaussian - 0.5) < 0.08 and abs(poisson - 0.5) < 0.08 and abs(jpeg - 0.5) < 0.08


def test_per_batch_draws_are_the_default_and_per_sample_ones_vary_within_a_batch() -> None:
    assert Degradations(**X4PLUS).otf_draws == "per_batch"  # traiNNer-redux's
    per_sample = Degradations(**X4PLUS, otf_draws="per_sample")
    sizes = {int(s) for batch in range(5) for s in draw(per_sample, seeds(8, batch), SCALE, GT).resize1.size}
    assert len(sizes) > 8


def test_a_per_batch_plan_degrades_as_one_batch_reproducibly() -> None:
    hr = torch.rand(6, 3, 64, 64)
    for batch in range(6):
        plan = draw(PER_BATCH, seeds(6, batch), SCALE, GT, crop=64)
        a_hr, a_lr = pair(hr.clone(), plan)
        _, b_lr = pair(hr.clone(), plan)
        assert a_lr.shape == (6, 3, GT // SCALE, GT // SCALE) and a_hr.shape == (6, 3, GT, GT)
        assert torch.equal(a_lr, b_lr), "the same plan gives the same LR"


def test_gray_noise_from_the_batch_stream_is_the_same_in_every_channel() -> None:
    cfg = Degradations(
        high_order_degradation=True,
        otf_draws="per_batch",
        resize_prob=[0, 0, 1],
        resize_prob2=[0, 0, 1],
        gaussian_noise_prob=1,
        noise_range=(20, 20),
        gray_noise_prob=0.5,
        gaussian_noise_prob2=0,
        poisson_scale_range2=(0, 0),
        jpeg_prob=0,
        jpeg_prob2=0,
    )
    plan = draw(cfg, seeds(16), SCALE, GT, crop=GT)
    assert plan.noise1.batch_seed is not None and 0 < plan.noise1.gray.sum() < 16
    x = torch.full((16, 3, GT, GT), 0.5)
    noisy = add_noise(x.clone(), plan.noise1, np.arange(16), plan.resize1.size) - 0.5
    for i, gray in enumerate(plan.noise1.gray):
        same = torch.allclose(noisy[i, 0], noisy[i, 1]) and torch.allclose(noisy[i, 0], noisy[i, 2])
        assert same == bool(gray), f"sample {i}: gray={gray}, channels equal={same}"
        assert abs(float(noisy[i].std()) * 255 - 20) < 2  # sigma 20 in 8-bit units


def test_the_pool_trains_on_the_batch_while_filling_then_on_pooled_pairs() -> None:
    pool = PairPool(size=12, seed=3)
    seen: list[float] = []
    for step in range(10):
        ids = torch.arange(4, dtype=torch.float32) + 4 * step  # every pair carries its own id in HR and LR
        hr, lr = ids.view(4, 1, 1, 1).expand(4, 3, 8, 8), ids.view(4, 1, 1, 1).expand(4, 3, 2, 2)
        out_hr, out_lr = pool.swap(hr, lr)
        got = out_hr[:, 0, 0, 0]
        assert torch.equal(got, out_lr[:, 0, 0, 0]), "HR and LR of a pair stay together"
        if step < 3:  # 12 / 4 batches fill the pool: trained on as they come
            assert torch.equal(got, ids)
        else:
            assert set(got.tolist()) <= set(seen), "pooled pairs are earlier batches' pairs"
            assert not set(got.tolist()) & set(ids.tolist())
        seen += ids.tolist()
    assert PairPool(size=10, seed=0).capacity(4) == 8 and PairPool(size=2, seed=0).capacity(4) == 4


def _job(draws: str, queue_size: int, degrade_on: str) -> dict:
    kernels = {k: v for k, v in X4PLUS.items() if k in DATASET_KEYS}  # these sit under datasets.train in redux
    return {
        "name": "draws",
        "scale": SCALE,
        "manual_seed": 5,
        "datasets": {
            "train": {"dataroot_gt": "/tmp/hr", "lq_size": GT // SCALE, "batch_size_per_gpu": 4, **kernels},
            "val": {"dataroot_gt": "/tmp/val"},
        },
        "network_g": {"type": "compact"},
        "train": {"optim_g": {"type": "AdamW", "lr": 1e-4}, "total_iter": 10, "losses": [{"type": "l1loss"}]},
        "srcluster": {"degrade_on": degrade_on},
        "otf_draws": draws,
        "queue_size": queue_size,
        **{k: v for k, v in X4PLUS.items() if k not in DATASET_KEYS},
    }


@pytest.mark.parametrize("draws", ["per_batch", "per_sample"])
def test_the_step_pools_per_batch_pairs_made_on_the_device(draws: str) -> None:
    job = parse_job(_job(draws, 8, "device"))
    cfg = job.datasets.train.degradations
    assert cfg is not None and cfg.otf_draws == draws
    outputs = []
    for batch in range(5):
        hr = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
        plan = draw(cfg, seeds(4, batch), SCALE, GT, crop=64)
        expected_hr, _ = pair(hr.float().div(255), plan)
        outputs.append((expected_hr, to_batch((hr, plan), job, torch.device("cpu")).pixel_gt))
    for batch, (made, trained) in enumerate(outputs):
        pooled = draws == "per_batch" and batch >= 2  # a pool of 8 fills in two batches of 4
        assert torch.equal(made, trained) != pooled, f"batch {batch}"


def test_queue_size_warns_only_where_it_does_not_act() -> None:
    assert "queue_size" in Degradations(**X4PLUS, queue_size=64, otf_draws="per_sample").ignored()
    assert "queue_size" not in Degradations(**X4PLUS, queue_size=64, otf_draws="per_batch").ignored()


def test_the_data_workers_pool_the_pairs_they_make(tmp_path) -> None:
    """With degradations in the workers, the worker's own pool: the first queue_size / batch batches leave as made,
    the later ones hold pairs of earlier batches."""
    rng = np.random.default_rng(0)
    for i in range(6):
        save(tmp_path / f"{i}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))

    def batches(cfg: Degradations) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stream = train_loader(str(tmp_path), crop=GT // 2, scale=SCALE, batch_size=2, steps=6, degradations=cfg)
        return [(hr, lr) for hr, lr in stream]

    pooled_cfg = Degradations(**X4PLUS, otf_draws="per_batch", queue_size=4)
    made = batches(pooled_cfg.model_copy(update={"queue_size": 0}))
    pooled = batches(pooled_cfg)
    for step in range(2):
        assert torch.equal(pooled[step][0], made[step][0]) and torch.equal(pooled[step][1], made[step][1])
    earlier = {bytes(hr.numpy()) for batch in made for hr in batch[0]}
    for step in range(2, 6):
        assert all(bytes(hr.numpy()) in earlier for hr in pooled[step][0])
    assert any(not torch.equal(p[0], m[0]) for p, m in zip(pooled[2:], made[2:], strict=True))
