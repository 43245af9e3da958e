"""Every training component built from its small spec alone, without a job; the job -> specs mapping; torch-free
specs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from srcluster.components import archs, losses
from srcluster.components.optim import EMA, apply_optimizer_options, build_optimizer, build_scheduler
from srcluster.components.specs import EMASpec, LossSpec, NetworkSpec, OptimizerSpec, SchedulerSpec
from srcluster.config import parse_job
from srcluster.train.specs import stage_specs, train_data


def lrs(spec: SchedulerSpec, steps: int, lr: float = 1.0) -> list[float]:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimizerSpec(lr=lr))
    scheduler = build_scheduler(optimizer, spec)
    out = []
    for it in range(1, steps + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(it)
    return out


def test_networks_and_losses_from_their_specs():
    g = NetworkSpec("compact", {"num_feat": 8, "num_conv": 2})
    assert archs.build_generator(g.type, 2, **g.options)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    d = NetworkSpec("patchgandiscriminatorsn", {"ndf": 8})
    assert archs.build_discriminator(d.type, **d.options)(torch.rand(1, 3, 32, 32)).shape[:2] == (1, 1)
    loss = LossSpec("charbonnierloss", 0.5, {"eps": 1e-6})
    sr, gt = torch.tensor([[0.0, 0.5]]), torch.tensor([[0.3, 0.5]])
    assert losses.build_loss(loss.type, **loss.options)(sr, gt).item() == pytest.approx(
        (math.sqrt(0.09 + 1e-6) + math.sqrt(1e-6)) / 2
    )


def test_optimizer_from_its_spec():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(params, OptimizerSpec("AdamW", lr=1e-3, weight_decay=0.01, betas=(0.5, 0.9)))
    assert isinstance(adamw, torch.optim.AdamW)
    assert {k: adamw.param_groups[0][k] for k in ("lr", "weight_decay", "betas")} == {
        "lr": 1e-3,
        "weight_decay": 0.01,
        "betas": (0.5, 0.9),
    }
    assert type(build_optimizer(params, OptimizerSpec("Adam"))) is torch.optim.Adam


def test_schedules_with_warmup_from_their_specs():
    # traiNNer-redux's warmup: the first step at the full lr, step k at (k - 1) / warmup_iter until warmup_iter + 1
    multistep = SchedulerSpec("MultiStepLR", total_iter=10, milestones=(4, 6), gamma=0.5, warmup_iter=2)
    assert lrs(multistep, 8) == pytest.approx([1, 0.5, 1, 1, 0.5, 0.5, 0.25, 0.25])
    cosine = SchedulerSpec("CosineAnnealingLR", total_iter=4, eta_min=0.2)
    expected = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * it / 4)) for it in range(5)]
    assert lrs(cosine, 5) == pytest.approx(expected)  # torch's CosineAnnealingLR with T_max = total_iter


def test_ema_from_its_spec_copies_then_averages():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA.from_spec(net, EMASpec(decay=0.5, power=10))
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # the first update copies the generator
    assert ema.net.weight.item() == 1.0
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)  # then decay min(0.5, 1 - 2^-10) = 0.5
    assert ema.net.weight.item() == 2.0


def test_optimizer_options_put_into_a_restored_optimizer():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimizerSpec(lr=1.0))
    scheduler = build_scheduler(optimizer, SchedulerSpec(total_iter=10, warmup_iter=4))
    optimizer.step()
    scheduler.step(1)
    apply_optimizer_options(optimizer, scheduler, OptimizerSpec(lr=4.0, weight_decay=0.1, betas=(0.5, 0.9)))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (pytest.approx(4.0 * 1 / 4), 0.1, (0.5, 0.9))
    optimizer.step()
    scheduler.step(2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4.0 * 2 / 4)  # the schedule goes on from the new lr


def test_a_gan_job_composes_its_specs():
    job = parse_job(
        {
            "name": "g",
            "scale": 4,
            "manual_seed": 7,
            "high_order_degradation": True,
            "datasets": {
                "train": {"dataroot_gt": "memory://x", "lq_size": 16, "batch_size_per_gpu": 4, "accum_iter": 2}
            },
            "network_g": {"type": "compact", "num_feat": 8},
            "network_d": {"type": "patchgandiscriminatorsn", "ndf": 8},
            "train": {
                "total_iter": 100,
                "warmup_iter": 5,
                "ema_decay": 0,
                "optim_g": {"lr": 1e-3, "betas": [0.5, 0.9]},
                "scheduler": {"type": "MultiStepLR", "milestones": [50], "gamma": 0.1},
                "losses": [
                    {"type": "l1loss", "loss_weight": 0},
                    {"type": "charbonnierloss", "loss_weight": 2.0},
                    {"type": "ganloss", "loss_weight": 0.1, "gan_type": "vanilla"},
                ],
            },
            "srcluster": {"workers": 2},
        }
    )
    specs = stage_specs(job)
    assert specs.generator == NetworkSpec("compact", {"num_feat": 8}) and specs.scale == 4 and specs.seed == 7
    assert specs.discriminator == NetworkSpec("patchgandiscriminatorsn", {"ndf": 8})
    assert [(loss.type, loss.weight) for loss in specs.losses] == [("charbonnierloss", 2.0), ("ganloss", 0.1)]
    assert specs.losses[1].options == {"gan_type": "vanilla"}
    assert specs.optim_g == specs.optim_d == OptimizerSpec("AdamW", 1e-3, 0.0, (0.5, 0.9))  # optim_d: optim_g's
    assert specs.scheduler == SchedulerSpec("MultiStepLR", 100, (50,), 0.1, 0.0, 5)
    assert specs.ema is None and specs.pretrain_g is None
    data = train_data(job, world=1)  # effective batch 16 on one worker: batch 4, accum 4
    assert (data.crop, data.batch_size, data.scale, data.dataroot_gt) == (64, 4, 4, "memory://x")
    assert data.degradations is not None and data.degradations == job.datasets.train.degradations


def test_specs_and_the_data_spec_do_not_import_torch():
    code = (
        "import sys, srcluster.components.specs, srcluster.data.spec, srcluster.train.specs; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
