"""Training parts against traiNNer-redux (commit 686293190): the EMA and its defaults, the warm-up schedule, gradient
clipping of D, redux's discriminator state dicts and spectral-norm estimates, mixed precision's fallback and scalers.

Reference values are derived from redux's code and the libraries it calls (ema-pytorch 0.8.3, torch's schedulers and
spectral norms), as each test says; nothing here imports redux.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.__arch_helpers.dysample import DySample
from torch import nn
from torch.nn.utils import parametrizations, spectral_norm

from srcluster.components.optim import EMA, build_optimizer, build_scheduler
from srcluster.components.specs import OptimizerSpec, SchedulerSpec
from srcluster.config import parse_job
from srcluster.train.specs import stage_specs
from srcluster.train.state import amp_dtype, amp_note, build_stage
from srcluster.train.step import train_step

CPU = torch.device("cpu")


def job(**overrides):
    data = {
        "name": "parity",
        "scale": 2,
        "manual_seed": 5,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 10, "losses": [{"type": "charbonnierloss"}]},
    }
    for key, value in overrides.items():
        merge = isinstance(value, dict) and key != "network_g"
        data[key] = {**data.get(key, {}), **value} if merge else value
    return parse_job(data)


def gan_job(**train):
    return job(
        network_d={"type": "dunet", "num_feat": 8},
        train={
            "total_iter": 10,
            "losses": [{"type": "charbonnierloss"}, {"type": "ganloss", "loss_weight": 0.1}],
            **train,
        },
    )


def hr_batches(n, batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return iter([torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)])


# --- EMA --------------------------------------------------------------------------------------------------------------

# ema-pytorch 0.8.3's `EMA.get_current_decay()` (float32 arithmetic, `.item()`) for updates 1..8 as traiNNer-redux
# configures it (beta = ema_decay 0.999, update_after_step 0, update_every 1), read off the library itself.
REDUX_DECAYS = {
    0.75: [
        *(0.0, 0.4053964614868164, 0.5613086223602295, 0.6464465856552124),
        *(0.7009302377700806, 0.7391525506973267, 0.7676318883895874, 0.7897759079933167),
    ],
    10.0: [0.0, *[0.9990000128746033] * 7],  # redux's default power: full decay from the second update
}


@pytest.mark.parametrize("power", [0.75, 10.0])
def test_ema_follows_redux_schedule_exactly(power):
    torch.manual_seed(0)
    batch_norm = nn.BatchNorm2d(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), batch_norm)
    assert batch_norm.running_mean is not None
    start = [t.clone() for t in net.state_dict().values()]
    ema = EMA(net, decay=0.999, power=power)
    for expected, copy in zip(ema.net.state_dict().values(), start, strict=True):
        assert torch.equal(expected, copy)  # the EMA starts as a copy of G
    expected = [t.clone() for t in start]
    decays = []
    for _ in range(8):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            batch_norm.running_mean.add_(1.0)  # a floating-point buffer is averaged too, as ema-pytorch does
        decays.append(ema.current_decay())
        ema.update(net)
        for i, (name, now) in enumerate(net.state_dict().items()):
            if name.endswith("num_batches_tracked"):
                continue  # integer buffers stay as copied at the start
            # the first update copies G; later ones lerp by 1 - decay (ema-pytorch's `lerp_(src, 1 - decay)`)
            expected[i] = now.clone() if decays[-1] == 0 else expected[i].lerp(now, 1.0 - decays[-1])
        for want, got in zip(expected, ema.net.state_dict().values(), strict=True):
            assert torch.equal(want, got)
    assert decays == REDUX_DECAYS[power]


def test_ema_update_after_step_and_switch_iter_as_redux():
    # ema-pytorch 0.8.3 with update_after_step 2 and update_model_with_ema_every 3 (redux's ema_update_after_step and
    # ema_switch_iter): updates 1-3 copy G, the decay warms up from the 4th, and after updates 4, 7 and 10 G is set to
    # the EMA (the library checks the count of updates done before each one)
    stage = build_stage(
        job(
            train={
                "total_iter": 10,
                "ema_decay": 0.999,
                "ema_power": 0.75,
                "ema_update_after_step": 2,
                "ema_switch_iter": 3,
                "losses": [{"type": "l1loss"}],
            }
        ),
        CPU,
    )
    ema, net = stage.ema, stage.raw_g
    assert ema is not None
    decays, switched = [], []
    for _ in range(10):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        decays.append(ema.current_decay())
        ema.update(net)
        switched.append(all(torch.equal(a, b) for a, b in zip(net.parameters(), ema.net.parameters(), strict=True)))
    assert decays == [0.0, 0.0, 0.0, *REDUX_DECAYS[0.75][1:8]]
    assert switched == [True, True, True, True, False, False, True, False, False, True]  # copies, then switches


def test_omitted_training_options_take_redux_defaults():
    train = job().train
    assert (train.ema_decay, train.ema_power) == (0.0, 10.0)  # redux: no EMA unless ema_decay is set
    assert train.scheduler.gamma == 0.1  # torch's MultiStepLR default, passed through by redux
    assert build_stage(job(), CPU).ema is None
    ema = build_stage(job(train={"total_iter": 10, "ema_decay": 0.999, "losses": [{"type": "l1loss"}]}), CPU).ema
    assert ema is not None and ema.power == 10.0


# --- the learning-rate schedule ---------------------------------------------------------------------------------------


def lrs_used(spec: SchedulerSpec, steps: int, skipped: frozenset[int] = frozenset()) -> list[float]:
    """The lr each optimiser step 1..steps runs at; `skipped`: steps the GradScaler skipped."""
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], OptimizerSpec(lr=1.0))
    schedule = build_scheduler(optimizer, spec)
    used = []
    for it in range(1, steps + 1):
        used.append(optimizer.param_groups[0]["lr"])
        if it not in skipped:
            optimizer.step()
        schedule.step(it, skipped=it in skipped)
    return used


def test_warmup_lr_per_iteration_as_redux():
    # redux's train.py calls update_learning_rate(current_iter) after step current_iter: scheduler.step() (unless its
    # optimizer was skipped), then for current_iter <= warmup_iter lr = initial_lr * current_iter / warmup_iter. So
    # step 1 runs at the scheduler's initial lr, step k at (k - 1) / warmup_iter, and the milestone at 3 (inside the
    # warm-up) is overwritten; the one at 6 halves the lr for step 7 on.
    spec = SchedulerSpec("MultiStepLR", total_iter=10, milestones=(3, 6), gamma=0.5, warmup_iter=4)
    assert lrs_used(spec, 8) == pytest.approx([1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.5])
    # a step the GradScaler skipped does not move the schedule: the milestone comes one step later
    assert lrs_used(spec, 8, skipped=frozenset({5})) == pytest.approx([1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5])
    # no warm-up: the milestone counts from the first step
    assert lrs_used(SchedulerSpec("MultiStepLR", 10, (2,), 0.5), 4) == pytest.approx([1.0, 1.0, 0.5, 0.5])


def test_redux_cosine_schedule_takes_its_T_max():
    # redux passes the scheduler's keys to torch's CosineAnnealingLR: T_max sets the period, not total_iter
    cosine = {"type": "CosineAnnealingLR", "T_max": 4, "eta_min": 0.2}
    spec = stage_specs(job(train={"total_iter": 10, "scheduler": cosine, "losses": [{"type": "l1loss"}]})).scheduler
    assert lrs_used(spec, 5) == pytest.approx([0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)])


def test_training_steps_run_at_redux_warmup_lr():
    stage = build_stage(job(train={"total_iter": 10, "warmup_iter": 3, "losses": [{"type": "l1loss"}]}), CPU)
    seen = []
    stage.optim_g.register_step_pre_hook(lambda optimizer, *_: seen.append(optimizer.param_groups[0]["lr"]))
    batches = hr_batches(5)
    for _ in range(5):
        train_step(stage, batches, 1)
    lr = stage.job.train.optim_g.lr
    assert seen == pytest.approx([lr, lr / 3, 2 * lr / 3, lr, lr])


# --- discriminators ---------------------------------------------------------------------------------------------------


class ReduxDUnet(nn.Module):
    """traiNNer-redux's `DUnet` (traiNNer/archs/dunet_arch.py), module for module: the reference layout."""

    def __init__(self, num_feat: int):
        super().__init__()

        def sn(conv):
            return parametrizations.spectral_norm(conv)

        def down(dim):
            return nn.Sequential(sn(nn.Conv2d(dim, dim * 2, 3, 2, 1)), nn.Mish(True))

        def up(dim):
            return nn.Sequential(DySample(dim, dim, 2, 4, False), sn(nn.Conv2d(dim, dim // 2, 3, 1, 1)))

        self.in_to_dim = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.e_x1, self.e_x2, self.e_x3 = down(num_feat), down(num_feat * 2), down(num_feat * 4)
        self.up1, self.up2, self.up3 = up(num_feat * 8), up(num_feat * 4), up(num_feat * 2)
        self.end_conv = nn.Sequential(
            sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            nn.Conv2d(num_feat, 1, 3, 1, 1),
        )


def redux_patchgan(ndf: int) -> nn.Module:
    """traiNNer-redux's `PatchGANDiscriminatorSN` (patchgan_arch.py), n_layers 3: old-API spectral norm on all five
    convolutions, each with a bias, in `model`."""
    channels = [3, ndf, ndf * 2, ndf * 4, ndf * 8]
    layers: list[nn.Module] = []
    for i, stride in enumerate((2, 2, 2, 1)):
        layers += [spectral_norm(nn.Conv2d(channels[i], channels[i + 1], 4, stride, 1)), nn.LeakyReLU(0.2, True)]
    layers.append(spectral_norm(nn.Conv2d(channels[-1], 1, 4, 1, 1)))
    return nn.Sequential(*layers)


def redux_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    if name == "dunet":
        return ReduxDUnet(8).state_dict()
    model = nn.Module()
    model.model = redux_patchgan(8)
    return model.state_dict()


@pytest.mark.parametrize(
    ("name", "options", "tensors"), [("dunet", {"num_feat": 8}, 46), ("patchgandiscriminatorsn", {"ndf": 8}, 20)]
)
def test_redux_discriminator_checkpoints_load_strictly(tmp_path, name, options, tensors):
    state = {k: v + 1 for k, v in redux_state(name, seed=11).items()}  # not what our D would start from
    assert len(state) == tensors
    save_file(state, str(tmp_path / "net_d_1000.safetensors"))  # redux's save_network: a plain safetensors file
    torch.save({"params": state}, tmp_path / "net_d_1000.pth")  # or a .pth with its param key
    for path, key in (("net_d_1000.safetensors", None), ("net_d_1000.pth", "params")):
        stage = build_stage(
            job(
                network_d={"type": name, **options},
                path={"pretrain_network_d": str(tmp_path / path), "param_key_d": key, "strict_load_d": True},
                train={"total_iter": 10, "losses": [{"type": "l1loss"}, {"type": "ganloss", "loss_weight": 0.1}]},
            ),
            CPU,
            log=lambda _: None,
        )
        assert stage.raw_d is not None
        ours = stage.raw_d.state_dict()
        assert ours.keys() == state.keys()
        for k, v in state.items():
            assert torch.equal(ours[k], v), k


@pytest.mark.parametrize(("name", "options"), [("dunet", {"num_feat": 8}), ("patchgandiscriminatorsn", {"ndf": 8})])
def test_same_seed_gives_redux_initial_discriminator(name, options):
    """Same construction order as redux: the same weights and the same initial spectral-norm estimates (redux's
    parametrized spectral norm runs 15 power iterations when it is registered)."""
    from srcluster.components import archs

    torch.manual_seed(3)
    ours = archs.build_discriminator(name, **options).state_dict()
    reference = redux_state(name, seed=3)
    assert ours.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(ours[k], v), k


def power_iterations(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """torch's `_SpectralNorm._power_method`: u <- normalize(W v), then v <- normalize(W^T u), n times."""
    w = weight.flatten(1)
    for _ in range(n):
        u = nn.functional.normalize(w @ v, dim=0, eps=1e-12)
        v = nn.functional.normalize(w.T @ u, dim=0, eps=1e-12)
    return u


def test_a_gan_step_runs_three_spectral_norm_power_iterations_as_redux():
    # redux's optimize_parameters runs D in training mode three times per micro-batch: on the fake for G's loss, then
    # on the real and on the fake for D's loss, each pass one power iteration.
    stage = build_stage(gan_job(), CPU)
    assert stage.raw_d is not None
    conv: Any = stage.raw_d.get_submodule("e_x1.0")  # a parametrized Conv2d
    norm = conv.parametrizations.weight[0]
    weight = conv.parametrizations.weight.original.detach().clone()
    u, v = norm._u.clone(), norm._v.clone()
    train_step(stage, hr_batches(1), 1)
    torch.testing.assert_close(norm._u, power_iterations(weight, u, v, 3), rtol=1e-5, atol=1e-6)


def test_grad_clip_reaches_the_discriminator():
    max_norm = 1e-4
    stage = build_stage(gan_job(grad_clip=True, grad_clip_max_norm=max_norm), CPU)
    assert stage.optim_d is not None and stage.raw_d is not None
    raw_d = stage.raw_d
    norms = []
    stage.optim_d.register_step_pre_hook(
        lambda *_: norms.append(
            nn.utils.get_total_norm([p.grad for p in raw_d.parameters() if p.grad is not None]).item()
        )
    )
    out = train_step(stage, hr_batches(1), 1)
    assert out["grad_norm_d"] > max_norm * 10  # logged before clipping, as redux's grad_norm_d
    assert norms and norms[0] <= max_norm * 1.001


# --- mixed precision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "amp_bf16", "bf16_supported", "expected"),
    [
        ("compact", False, True, torch.float16),
        ("compact", True, True, torch.bfloat16),
        ("compact", True, False, torch.float16),  # no bf16 on this GPU: redux falls back to fp16
        ("dat_light", False, True, torch.bfloat16),  # fp16-unsafe (redux's ARCHS_WITHOUT_FP16): bf16 instead
        ("swinir_s", False, True, torch.bfloat16),
        ("dat_light", False, False, None),  # ... or no AMP at all where the GPU has no bf16
    ],
)
def test_fp16_unsafe_architectures_fall_back_as_redux(monkeypatch, arch, amp_bf16, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: bf16_supported)
    amp_job = job(use_amp=True, amp_bf16=amp_bf16, network_g={"type": arch})
    assert amp_dtype(amp_job, torch.device("cuda")) == expected
    note = amp_note(amp_job, expected)
    assert (note is None) == (expected == (torch.bfloat16 if amp_bf16 else torch.float16))
    if arch == "dat_light":
        assert note is not None and "dat_light does not support fp16" in note
    assert amp_dtype(job(network_g={"type": arch}), torch.device("cuda")) is None  # use_amp off


def test_no_ema_update_and_no_schedule_step_after_an_overflow_skipped_step():
    stage = build_stage(gan_job(ema_decay=0.999, scheduler={"milestones": [1], "gamma": 0.5}), CPU)
    assert stage.ema is not None and stage.optim_d is not None
    # redux's two GradScalers, one per network (fp16 AMP on CUDA; CPU scalers here)
    stage.scaler_g, stage.scaler_d = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    ema_before = [t.clone() for t in stage.ema.net.state_dict().values()]
    g_before = [p.detach().clone() for p in stage.raw_g.parameters()]
    lr = stage.optim_g.param_groups[0]["lr"]
    overflow = next(stage.raw_g.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
    train_step(stage, hr_batches(1), 1)
    overflow.remove()
    assert stage.iteration == 1 and stage.scaler_g.get_scale() < 2.0**16 == stage.scaler_d.get_scale()
    assert all(torch.equal(a, b) for a, b in zip(g_before, stage.raw_g.parameters(), strict=True))  # G skipped
    assert all(torch.equal(a, b) for a, b in zip(ema_before, stage.ema.net.state_dict().values(), strict=True))
    assert stage.ema.step == 0
    assert stage.optim_g.param_groups[0]["lr"] == lr  # G's milestone at 1 waits for a step that was taken
    assert stage.optim_d.param_groups[0]["lr"] == lr / 2  # D's step went through
    train_step(stage, hr_batches(1, seed=1), 1)  # a step that goes through: the EMA and G's schedule move
    assert stage.ema.step == 1 and stage.optim_g.param_groups[0]["lr"] == lr / 2
