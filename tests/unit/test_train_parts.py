"""The pieces of a training stage, on CPU without Ray: losses, EMA, accumulation, checkpoints, weights in and out."""

import copy
import math
from pathlib import Path

import pytest
import torch

from srcluster.components import archs, losses, weights
from srcluster.config import parse_job
from srcluster.errors import SrclusterError
from srcluster.train.state import build_stage
from srcluster.train.step import train_step


def job(**overrides):
    data = {
        "name": "unit",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 4}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 10, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}]},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_job(data)


def hr_batches(n, batch, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]


def test_losses_against_hand_computed_values():
    sr, gt = torch.tensor([[0.0, 0.5]]), torch.tensor([[0.3, 0.5]])
    assert losses.build_loss("l1loss")(sr, gt).item() == pytest.approx(0.15)
    assert losses.build_loss("charbonnierloss", eps=1e-6)(sr, gt).item() == pytest.approx(
        (math.sqrt(0.09 + 1e-6) + math.sqrt(1e-6)) / 2
    )
    logits = torch.tensor([2.0, -1.0])
    vanilla = losses.build_loss("ganloss", gan_type="vanilla")
    assert vanilla(logits, True).item() == pytest.approx(
        (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2, rel=1e-6
    )
    hinge = losses.build_loss("ganloss", gan_type="hinge")
    assert hinge(logits, True, is_disc=True).item() == pytest.approx((0 + 2) / 2)
    assert hinge(logits, False, is_disc=True).item() == pytest.approx((3 + 0) / 2)
    assert hinge(logits, True, is_disc=False).item() == pytest.approx(-0.5)
    assert losses.build_loss("ganloss", gan_type="lsgan")(logits, False).item() == pytest.approx((4 + 1) / 2)
    with pytest.raises(ValueError, match="gan_type"):
        losses.build_loss("ganloss", gan_type="wgan_gp")


def record_grads(stage):
    """Keep a copy of the generator's gradients each time its optimizer steps (Adam hides gradient scale)."""
    seen = []
    stage.optim_g.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append([p.grad.detach().clone() for p in stage.raw_g.parameters()])
    )
    return seen


def test_accumulation_equals_one_big_batch():
    big = hr_batches(1, 4)
    small = list(big[0].split(2))
    a = build_stage(job(), torch.device("cpu"))
    b = build_stage(
        job(
            datasets={"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2, "accum_iter": 2}}
        ),
        torch.device("cpu"),
    )
    grads_a, grads_b = record_grads(a), record_grads(b)
    la = train_step(a, iter(big), accum=1)
    lb = train_step(b, iter(small), accum=2)
    assert float(la["l_g_charbonnier"]) == pytest.approx(float(lb["l_g_charbonnier"]), rel=1e-5)
    for ga, gb in zip(grads_a[0], grads_b[0], strict=False):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    for pa, pb in zip(a.raw_g.parameters(), b.raw_g.parameters(), strict=False):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=2e-5)


def test_checkpoint_round_trip_gives_identical_next_step():
    data = hr_batches(4, 2)
    a = build_stage(job(), torch.device("cpu"))
    for batch in data[:2]:
        train_step(a, iter([batch]), 1)
    state = copy.deepcopy(a.state())
    expected = train_step(a, iter([data[2]]), 1)
    b = build_stage(job(manual_seed=99), torch.device("cpu"))  # different init: everything must come from the state
    b.load_state(state)
    assert b.iteration == 2 and b.ema.step == 2
    got = train_step(b, iter([data[2]]), 1)
    assert got["l_g_charbonnier"] == expected["l_g_charbonnier"]
    for pa, pb in zip(a.ema.net.parameters(), b.ema.net.parameters(), strict=False):
        torch.testing.assert_close(pa, pb)


def test_gan_step_trains_generator_and_discriminator():
    stage = build_stage(
        job(
            network_d={"type": "unetdiscriminatorsn", "num_feat": 8},
            train={"total_iter": 10, "losses": [{"type": "charbonnierloss"}, {"type": "ganloss", "loss_weight": 0.1}]},
        ),
        torch.device("cpu"),
    )
    before = [p.detach().clone() for p in stage.raw_d.parameters()]
    out = train_step(stage, iter(hr_batches(1, 2)), 1)
    assert {"l_g_charbonnier", "l_g_gan", "l_d_real", "l_d_fake"} <= set(out)
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.raw_d.parameters(), strict=False))
    assert all(p.requires_grad for p in stage.raw_d.parameters())


@pytest.mark.parametrize(
    ("name", "options"), [("unetdiscriminatorsn", {"num_feat": 8}), ("patchgandiscriminatorsn", {"ndf": 8})]
)
def test_discriminators_score_images(name, options):
    net = archs.build_discriminator(name, **options)
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape[0] == 2 and out.shape[1] == 1


@pytest.mark.parametrize("name", ["compact", "ultracompact", "superultracompact", "span", "esrgan_lite", "realplksr"])
def test_generators_upscale_by_the_job_scale(name):
    net = (
        archs.build_generator(name, 4)
        if name not in ("esrgan_lite", "realplksr")
        else archs.build_generator(name, 4, **({"num_blocks": 1} if name == "esrgan_lite" else {"n_blocks": 2}))
    )
    assert net(torch.rand(1, 3, 12, 12)).shape == (1, 3, 48, 48)


def test_pretrain_loading_strict_and_not(tmp_path):
    two = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    path = weights.export_generator(two, tmp_path / "g.safetensors")
    four = archs.build_generator("compact", 4, num_feat=8, num_conv=2)
    report = weights.load_pretrain(four, str(path), strict=False)
    assert report.loaded == len(four.state_dict()) - 2  # the last conv (weight, bias) feeds the x4 pixel shuffle
    assert any("body.6.weight (shape" in s for s in report.skipped)
    torch.testing.assert_close(four.state_dict()["body.0.weight"], two.state_dict()["body.0.weight"])
    with pytest.raises(SrclusterError, match=r"strict_load_g: pretrain .* does not match.*body.6.weight"):
        weights.load_pretrain(archs.build_generator("compact", 4, num_feat=8, num_conv=2), str(path), strict=True)
    with pytest.raises(SrclusterError, match="does not exist"):
        weights.load_pretrain(four, str(tmp_path / "missing.safetensors"))


def test_pth_pretrains_with_param_keys_and_no_pickled_code(tmp_path):
    net = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    torch.save({"params_ema": net.state_dict(), "params": {}}, tmp_path / "g.pth")
    fresh = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    assert weights.load_pretrain(fresh, str(tmp_path / "g.pth")).loaded == len(net.state_dict())

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"params": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(SrclusterError, match="not a weights-only torch file"):
        weights.load_pretrain(fresh, str(tmp_path / "evil.pth"))


def test_exported_generator_loads_in_spandrel(tmp_path):
    from spandrel import ModelLoader

    net = archs.build_generator("superultracompact", 4)
    path = weights.export_generator(net, tmp_path / "net_g_ema.safetensors")
    model = ModelLoader().load_from_file(path)
    assert model.architecture.id == "Compact" and model.scale == 4
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model.model(x), net(x))


def test_non_finite_steps_are_skipped_and_stop_the_run_after_patience():
    from srcluster.train.step import NonFiniteLossError, check_finite

    stage = build_stage(
        job(
            train={"total_iter": 10, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}], "optim_g": {"lr": 1e30}}
        ),
        torch.device("cpu"),
    )
    batches = iter(hr_batches(6, 2))
    train_step(stage, batches, 1)  # a finite step with an absurd lr leaves the weights at +-1e27
    with torch.no_grad():  # make the next forward pass overflow for certain
        for p in stage.raw_g.parameters():
            p.fill_(float("inf"))
    frozen = [p.detach().clone() for p in stage.raw_g.parameters()]
    ema_before = [p.detach().clone() for p in stage.ema.net.parameters()]
    for expected_streak in (1, 2):
        out = train_step(stage, batches, 1)
        assert not math.isfinite(out["l_g_charbonnier"])
        assert stage.nonfinite_streak == expected_streak
        check_finite(stage, patience=3)
    # skipped: the optimizer never stepped on NaN gradients
    for a, b in zip(frozen, stage.raw_g.parameters(), strict=False):
        assert torch.equal(a, b)
    for a, b in zip(ema_before, stage.ema.net.parameters(), strict=False):
        assert torch.equal(a, b)
    train_step(stage, batches, 1)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive non-finite .* Lower train.optim_g.lr"):
        check_finite(stage, patience=3)


def test_elastic_batch_plan_holds_the_effective_batch():
    elastic = job(
        datasets={"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 3}},
        srcluster={"workers": [1, 4], "cpus_per_worker": 1},
    )
    assert elastic.effective_batch == 12  # declared at max workers
    plans = {w: elastic.batch_plan(w) for w in range(1, 5)}
    assert plans == {1: (3, 4), 2: (3, 2), 3: (2, 2), 4: (3, 1)}  # the batch shrinks only where 3 does not divide
    assert all(b * a * w == 12 for w, (b, a) in plans.items())
    # any count in the range: 10 is held where a plan has it, and otherwise comes as close as the rule allows
    uneven = job(
        datasets={"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        srcluster={"workers": [2, 5]},
    )
    assert {w: uneven.batch_plan(w) for w in range(2, 6)} == {2: (1, 5), 3: (1, 3), 4: (1, 2), 5: (2, 1)}
    assert [uneven.effective_batch_on(w) for w in range(2, 6)] == [10, 9, 8, 10]


def test_elastic_ranges_over_8_to_64_gpus_stay_close_to_the_effective_batch():
    """A fidelity stage's batch 8 x 64 GPUs on any count from 8 to 64: within 10%, never above the per-GPU batch."""
    wide = job(
        datasets={"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 8}},
        srcluster={"workers": [8, 64], "cpus_per_worker": 1},
    )
    assert wide.effective_batch == 512
    for world in range(8, 65):
        batch, accum = wide.batch_plan(world)
        assert 1 <= batch <= 8 and accum >= 1
        assert abs(wide.effective_batch_on(world) - 512) <= 0.1 * 512, world
        if 512 % world == 0 and (512 // world) % 8 == 0:
            assert (batch, accum) == (8, 512 // world // 8)  # exact, full per-GPU batch, fewest micro-batches
    with pytest.raises(SrclusterError, match=r"srcluster.workers.*min <= max"):
        job(srcluster={"workers": [3, 2]})


def test_best_checkpoint_metric_and_plateau_counting():
    from srcluster.train.best import Best

    with pytest.raises(SrclusterError, match=r"srcluster.checkpoints.best: 'lpips' is not one of val.metrics"):
        job(
            datasets={
                "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 4},
                "val": {"dataroot_gt": "memory://val"},
            },
            srcluster={"checkpoints": {"best": "lpips"}},
        )
    best = Best("val_psnr", higher_is_better=True, min_delta=0.1, patience=2)
    assert best.update(30.0, 10) and best.update(30.5, 20)
    assert not best.update(30.55, 30) and not best.plateaued  # within min_delta: not an improvement
    assert not best.update(29.0, 40) and best.plateaued and (best.value, best.iteration) == (30.5, 20)
    lower = Best("val_lpips", higher_is_better=False)
    assert lower.update(0.3, 1) and lower.update(0.2, 2) and not lower.update(0.25, 3) and lower.iteration == 2


def test_tracking_calls_are_spooled_while_the_server_is_down_and_kept_in_order(tmp_path, monkeypatch):
    import json
    import socket

    from mlflow.exceptions import MlflowException

    from srcluster.tracking.tracker import Tracker

    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tracker = Tracker(f"http://127.0.0.1:{port}", buffered=True)
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"png")
    tracker.log_metrics("run1", {"loss": 0.5}, step=10)
    tracker.log_artifact("run1", grid, "comparisons")
    grid.unlink()  # the worker's temporary file is gone; the spool kept a copy
    tracker.set_tags("run1", {"k": "v"})
    tracker.end_run("run1")
    calls = [json.loads(line) for line in tracker.spool.path.read_text().splitlines()]
    assert [c["kind"] for c in calls] == ["metrics", "artifact", "tags", "end"]
    assert calls[0]["metrics"] == {"loss": 0.5} and calls[0]["step"] == 10
    assert (tmp_path / "spool" / "artifacts").exists() and Path(calls[1]["path"]).read_bytes() == b"png"
    with pytest.raises(MlflowException, match="log-batch"):  # without a spool, an outage is the caller's error
        Tracker(f"http://127.0.0.1:{port}").log_metrics("run1", {"loss": 0.5}, step=10)


@pytest.mark.slow
def test_use_compile_trains_the_same_as_eager():
    eager, compiled = job(), job(use_compile=True)
    batches = hr_batches(2, 4)
    losses_seen = []
    for config in (eager, compiled):
        stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
        losses_seen.append([float(train_step(stage, iter([b]), accum=1)["l_g_charbonnier"]) for b in batches])
    assert losses_seen[1] == pytest.approx(losses_seen[0], rel=1e-4)


@pytest.mark.slow
def test_compile_d_and_losses_compiles_the_discriminator_and_trains_as_eager():
    gan = {
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {
            "total_iter": 10,
            "losses": [{"type": "l1loss"}, {"type": "ganloss", "loss_weight": 0.1}],
        },
    }
    eager = job(**gan)
    compiled = job(**gan, use_compile=True, srcluster={"compile_d_and_losses": True})
    batch = hr_batches(1, 4)[0]
    seen = []
    for config in (eager, compiled):
        stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
        seen.append((type(stage.net_d).__name__, {k: float(v) for k, v in train_step(stage, iter([batch]), 1).items()}))
    assert (seen[0][0], seen[1][0]) == ("UNetDiscriminatorSN", "OptimizedModule")
    for key in ("l_g_l1", "l_d_real", "l_d_fake"):
        assert seen[1][1][key] == pytest.approx(seen[0][1][key], rel=1e-4), key
