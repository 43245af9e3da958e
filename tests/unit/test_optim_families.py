"""Every optimizer and scheduler traiNNer-redux accepts, from a job file: names in any case, any keyword of the class,
one-line errors; values against the libraries' own classes or against redux's formulas; schedule-free optimizers at
their evaluation weights around validation and in checkpoints, as redux switches them."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_optimizer
import schedulefree
import torch
from torch import nn
from torch.optim import lr_scheduler

from helpers.batches import HRBatches
from helpers.images import PHOTO, save
from srcluster.components.adan_schedulefree import AdanScheduleFree
from srcluster.components.optim import Schedule, build_optimizer, build_scheduler, evaluation_weights
from srcluster.config import parse_job
from srcluster.errors import ConfigError
from srcluster.train.loop import run
from srcluster.train.reporters import Reporter
from srcluster.train.specs import stage_specs
from srcluster.train.state import build_stage

pytestmark = pytest.mark.usefixtures("single_thread")


def job(optim_g=None, scheduler=None, total_iter=10, **train):
    data = {
        "name": "optim",
        "scale": 2,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": total_iter, "losses": [{"type": "charbonnierloss"}], **train},
    }
    if optim_g is not None:
        data["train"]["optim_g"] = optim_g
    if scheduler is not None:
        data["train"]["scheduler"] = scheduler
    return parse_job(data)


W0 = torch.tensor([[0.5, -1.0, 2.0], [0.25, 3.0, -0.75]])
TARGET = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])


def grad_at(w: torch.Tensor) -> torch.Tensor:
    """The gradient of the fixed tiny problem sum(|w - target|^3) / 3."""
    return (w - TARGET).abs() * (w - TARGET)


def steps(optimizer_for, n: int = 3) -> torch.Tensor:
    """The weights after `n` steps on the tiny problem, from an optimizer made by `optimizer_for([param])`."""
    param = nn.Parameter(W0.clone())
    optimizer = optimizer_for([param])
    for _ in range(n):
        param.grad = grad_at(param.detach())
        optimizer.step()
    return param.detach().clone()


def from_job(optim_g: dict):
    spec = stage_specs(job(optim_g)).optim_g
    return lambda params: build_optimizer(params, spec)


# --- optimizers -------------------------------------------------------------------------------------------------------

REDUX_OPTIMIZERS = {
    "Adam": torch.optim.Adam,
    "ADAMW": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "StableAdamW": pytorch_optimizer.StableAdamW,
    "soap": pytorch_optimizer.SOAP,
    "ADOPT": pytorch_optimizer.ADOPT,
    "Adan": pytorch_optimizer.Adan,
    "AdamWScheduleFree": schedulefree.AdamWScheduleFree,
    "adanschedulefree": AdanScheduleFree,
}


@pytest.mark.parametrize("name", REDUX_OPTIMIZERS)
def test_every_redux_optimizer_builds_from_its_name_in_any_case_and_steps(name):
    optimizer = build_optimizer([nn.Parameter(W0.clone())], stage_specs(job({"type": name, "lr": 1e-2})).optim_g)
    assert type(optimizer) is REDUX_OPTIMIZERS[name]
    moved = steps(from_job({"type": name, "lr": 1e-2}))
    assert torch.isfinite(moved).all() and (moved - W0).abs().min() > 0
    # closer to the target than where it started
    assert (moved - TARGET).abs().sum() < (W0 - TARGET).abs().sum()


@pytest.mark.parametrize(
    ("options", "library"),
    [
        ({"type": "NAdam", "lr": 0.05, "betas": [0.8, 0.95], "momentum_decay": 0.01}, torch.optim.NAdam),
        ({"type": "soap", "lr": 0.05, "precondition_frequency": 1}, pytorch_optimizer.SOAP),
        ({"type": "stableadamw", "lr": 0.05, "weight_decay": 0.1}, pytorch_optimizer.StableAdamW),
        ({"type": "adopt", "lr": 0.05}, pytorch_optimizer.ADOPT),
        ({"type": "adamwschedulefree", "lr": 0.05, "warmup_steps": 2}, schedulefree.AdamWScheduleFree),
    ],
)
def test_steps_match_the_library_class_with_the_same_keywords(options, library):
    keywords = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k != "type"}

    def direct(params):
        optimizer = library(params, **keywords)
        if hasattr(optimizer, "train"):
            optimizer.train()  # redux's get_optimizer switches a schedule-free optimizer to training
        return optimizer

    assert torch.equal(steps(from_job(options)), steps(direct))


def adan_moments(grads: list[torch.Tensor], betas=(0.98, 0.92, 0.99), eps=1e-8) -> list[torch.Tensor]:
    """Adan's normalized update at each step, from the paper's (and redux's) formulas."""
    b1, b2, b3 = betas
    m = v = n = torch.zeros_like(grads[0])
    previous, updates = grads[0], []
    for t, g in enumerate(grads, start=1):
        diff = g - previous
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + b2 * diff) ** 2
        denom = (n / (1 - b3**t)).sqrt() + eps
        updates.append((m / (1 - b1**t) + b2 * v / (1 - b2**t)) / denom)
        previous = g
    return updates


def test_adan_two_steps_are_redux_decoupled_adan():
    # redux's Adan shrinks the weights by 1 - lr * weight_decay before each update (pytorch-optimizer's
    # weight_decouple, on by default here); the update is Adan's
    lr, wd = 0.1, 0.5
    g1 = grad_at(W0)
    (u1,) = adan_moments([g1])
    w1 = W0 * (1 - lr * wd) - lr * u1
    g2 = grad_at(w1)
    w2 = w1 * (1 - lr * wd) - lr * adan_moments([g1, g2])[1]
    assert torch.allclose(steps(from_job({"type": "adan", "lr": lr, "weight_decay": wd}), 2), w2, atol=1e-6)


def test_adan_schedule_free_follows_redux_formulas_and_switches_to_its_average():
    # redux's AdanScheduleFree: y = lerp(y, z, c) * (1 - lr wd) - lr (1 - c) u, z = z - lr u, with c = w_t / sum(w),
    # w_t = lr_max^2 (r = 0) and lr_max = lr * t / warmup_steps during the warmup; x = y + (1 - 1/b1)(z - y)
    lr, wd, warmup, b1 = 0.1, 0.5, 4, 0.98
    param = nn.Parameter(W0.clone())
    optimizer = build_optimizer([param], stage_specs(job({"type": "AdanScheduleFree", "lr": lr, "weight_decay": wd,
                                                          "warmup_steps": warmup})).optim_g)  # fmt: skip
    g1 = grad_at(W0)
    param.grad = g1
    optimizer.step()
    (u1,) = adan_moments([g1])
    y1, z1 = W0 * (1 - lr * wd), W0 - lr * u1  # c = 1 at the first step
    assert torch.allclose(param.detach(), y1, atol=1e-6)
    g2 = grad_at(y1)
    param.grad = g2
    optimizer.step()
    u2 = adan_moments([g1, g2])[1]
    c2 = (lr * 2 / warmup) ** 2 / ((lr / warmup) ** 2 + (lr * 2 / warmup) ** 2)
    y2 = (y1 + c2 * (z1 - y1)) * (1 - lr * wd) - lr * (1 - c2) * u2
    z2 = z1 - lr * u2
    assert torch.allclose(param.detach(), y2, atol=1e-6)
    with evaluation_weights(optimizer):
        assert torch.allclose(param.detach(), y2 + (1 - 1 / b1) * (z2 - y2), atol=1e-5)
    assert torch.allclose(param.detach(), y2, atol=1e-5)  # back to the training point


def test_extra_keywords_act():
    # eps: with gradients far below it, Adam's first step shrinks by 1e6
    tiny = 1e-6
    moved = {}
    for eps in (1e-8, 1.0):
        param = nn.Parameter(torch.zeros(2))
        optimizer = build_optimizer([param], stage_specs(job({"type": "Adam", "lr": 0.1, "eps": eps})).optim_g)
        param.grad = torch.full((2,), tiny)
        optimizer.step()
        moved[eps] = -param.detach()[0].item()
    # Adam's first step: lr * g / (|g| + eps)
    assert moved == pytest.approx({eps: 0.1 * tiny / (tiny + eps) for eps in (1e-8, 1.0)}, rel=1e-4)
    # amsgrad keeps the running maximum of the second moment
    spec = stage_specs(job({"type": "adamw", "amsgrad": True})).optim_g
    param = nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([param], spec)
    param.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.param_groups[0]["amsgrad"] and "max_exp_avg_sq" in optimizer.state[param]
    # Adam/AdamW keep srcluster's template defaults; other optimizers their class's own
    assert stage_specs(job({"type": "AdamW"})).optim_g.keywords() == {"lr": 2e-4, "weight_decay": 0.0,
                                                                      "betas": (0.9, 0.99)}  # fmt: skip
    assert stage_specs(job({"type": "Adan", "lr": 1e-3})).optim_g.keywords() == {"lr": 1e-3}


@pytest.mark.parametrize(
    ("optim_g", "message"),
    [
        ({"type": "AdamW", "betaz": [0.9, 0.99]}, "train.optim_g: AdamW has no option 'betaz' (did you mean 'betas'?)"),
        ({"type": "adamq"}, "train.optim_g.type: unknown optimizer 'adamq' (did you mean 'adam'"),
        ({"type": "adam", "betas": [1.5, 0.9]}, "train.optim_g: adam: Invalid beta parameter at index 0: 1.5"),
        ({"type": "Adan", "foo": 1}, "train.optim_g: Adan has no option 'foo'"),
        ({"type": "AdamW", "betas": [0.99]}, "train.optim_g: AdamW: too few values in betas: [0.99]"),
    ],
)
def test_a_bad_optimizer_is_one_line_naming_the_key(optim_g, message):
    with pytest.raises(ConfigError) as exc:
        job(optim_g)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# --- schedulers -------------------------------------------------------------------------------------------------------


def lrs_of(schedule_for, n: int) -> list[float]:
    """The lr each optimiser step 1..n runs at, the schedule stepped after each (no warm-up)."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = schedule_for(optimizer)
    used = []
    for it in range(1, n + 1):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step(it) if isinstance(schedule, Schedule) else schedule.step()
    return used


def job_schedule(scheduler: dict, total_iter: int = 12, **train):
    spec = stage_specs(job({"type": "Adam", "lr": 1.0}, scheduler, total_iter, **train)).scheduler
    return lambda optimizer: build_scheduler(optimizer, spec)


TORCH_SCHEDULERS = [
    ("StepLR", {"step_size": 3, "gamma": 0.5}),
    ("multisteplr", {"milestones": [2, 5], "gamma": 0.3}),
    ("ConstantLR", {"factor": 0.25, "total_iters": 4}),
    ("LINEARLR", {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 5}),
    ("ExponentialLR", {"gamma": 0.8}),
    ("PolynomialLR", {"total_iters": 8, "power": 2.0}),
    ("CosineAnnealingLR", {"T_max": 6, "eta_min": 0.1}),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2, "eta_min": 0.05}),
    ("OneCycleLR", {"max_lr": 2.0, "total_steps": 12, "pct_start": 0.25}),
    ("CyclicLR", {"base_lr": 0.1, "max_lr": 1.0, "step_size_up": 3, "mode": "triangular2"}),
]


@pytest.mark.parametrize(("name", "options"), TORCH_SCHEDULERS)
def test_torch_schedulers_by_name_give_torch_curves(name, options):
    cls = getattr(lr_scheduler, next(n for n in dir(lr_scheduler) if n.lower() == name.lower()))
    ours = lrs_of(job_schedule({"type": name, **options}), 12)
    assert ours == pytest.approx(lrs_of(lambda optimizer: cls(optimizer, **options), 12))
    assert len(set(ours)) > 1  # the options act: the lr moves


def test_redux_cosine_annealing_restart_lr():
    # redux's: cycle i runs from eta_min + w_i (lr - eta_min) down to eta_min over periods[i] steps; the step that
    # ends a cycle (iteration == cumulative period) still belongs to it
    periods, weights, eta_min = [4, 6], [1.0, 0.5], 0.1
    scheduler = {"type": "CosineAnnealingRestartLR", "periods": periods, "restart_weights": weights, "eta_min": eta_min}
    expected = []
    for epoch in range(10):
        start, idx = (0, 0) if epoch <= 4 else (4, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * (epoch - start) / periods[idx]))
        expected.append(eta_min + weights[idx] * (1.0 - eta_min) * cosine)
    assert lrs_of(job_schedule(scheduler), 10) == pytest.approx(expected)


def test_redux_cosine_annealing_warmup_lr():
    scheduler = {"type": "cosineannealingwarmuplr", "total_iters": 10, "warmup_iters": 3, "eta_min_ratio": 0.2}
    expected = [e / 3 for e in range(3)] + [
        0.2 + 0.8 * (1 + math.cos(math.pi * min(1.0, (e - 3) / 7))) / 2 for e in range(3, 12)
    ]
    assert lrs_of(job_schedule(scheduler), 12) == pytest.approx(expected)


def test_redux_knee_lr_takes_total_iter_and_optim_g_lr_by_default():
    # redux passes total_steps=total_iter and peak_lr=optim_g's lr: peak for the first explore_ratio of the steps,
    # then linear to 0 at total_steps (counted from the step about to run)
    ours = lrs_of(job_schedule({"type": "KneeLR", "explore_ratio": 0.4}, total_iter=10), 10)
    explore = int(10 * 0.4)
    expected = [1.0 if e + 1 <= explore else max(1.0 - (e + 1 - explore) / (10 - explore), 0.0) for e in range(10)]
    assert ours == pytest.approx(expected)


def test_redux_warmup_stable_decay_is_pytorch_optimizers():
    options = {"num_warmup_steps": 2, "num_stable_steps": 4, "num_decay_steps": 5, "min_lr_ratio": 0.1}
    ours = lrs_of(job_schedule({"type": "WarmupStableDecayLR", **options}), 12)
    assert ours == pytest.approx(lrs_of(lambda o: pytorch_optimizer.get_wsd_schedule(o, **options), 12))


def test_redux_warmup_applies_over_any_scheduler():
    # redux overwrites the lr through warmup_iter after the scheduler stepped: step k at initial_lr * (k - 1) / warmup;
    # torch's ExponentialLR multiplies the lr it finds, so after the warm-up it goes on from the full lr
    ours = lrs_of(job_schedule({"type": "ExponentialLR", "gamma": 0.5}, warmup_iter=2), 5)
    assert ours == pytest.approx([1.0, 0.5, 1.0, 0.5, 0.25])


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ({"type": "cosineanealinglr"}, "train.scheduler.type: unknown scheduler 'cosineanealinglr' (did you mean"),
        ({"type": "LambdaLR"}, "train.scheduler.type: LambdaLR cannot run from a job file: it takes a Python function"),
        ({"type": "ReduceLROnPlateau"}, "train.scheduler.type: ReduceLROnPlateau cannot run from a job file"),
        ({"type": "StepLR", "step_sze": 3}, "train.scheduler: StepLR has no option 'step_sze' (did you mean"),
        ({"type": "OneCycleLR", "max_lr": 1.0}, "train.scheduler: OneCycleLR: You must define either total_steps"),
        (
            {"type": "CosineAnnealingRestartLR", "periods": [5, 5], "restart_weights": [1]},
            "train.scheduler: CosineAnnealingRestartLR: periods (2) and restart_weights (1) differ in length",
        ),
    ],
)
def test_a_bad_scheduler_is_one_line_naming_the_key(scheduler, message):
    with pytest.raises(ConfigError) as exc:
        job(scheduler=scheduler)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "scheduler",
    [
        {"type": "OneCycleLR", "max_lr": 2.0, "total_steps": 12},
        {"type": "CosineAnnealingWarmRestarts", "T_0": 2, "T_mult": 2},
        {"type": "CosineAnnealingRestartLR", "periods": [4, 8], "restart_weights": [1, 0.5]},
    ],
)
def test_a_restored_schedule_is_recomputed_where_it_stood_and_goes_on_as_before(scheduler):
    # after a restore with changed options the lr is recomputed at the restored step (Stage.follow_config); where
    # torch gives no closed form the schedule is replayed
    make = job_schedule(scheduler)
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make(optimizer)
    for it in range(1, 6):
        optimizer.step()
        schedule.step(it)
    restored_optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    restored_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    restored = make(restored_optimizer)
    restored.load_state_dict(copy.deepcopy(schedule.state_dict()))
    assert restored.closed_form_lrs() == pytest.approx(schedule.scheduler.get_last_lr())
    for it in range(6, 12):
        for o, s in ((optimizer, schedule), (restored_optimizer, restored)):
            o.step()
            s.step(it)
        assert restored_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


# --- schedule-free optimizers in the loop -----------------------------------------------------------------------------


class ProbeValidator:
    """Records whether G's optimizer was in eval mode (its averaged weights in G) when validation ran."""

    def __init__(self, stage):
        self.stage, self.train_modes = stage, []

    def __call__(self, net, grid):
        self.train_modes.append(self.stage.optim_g.param_groups[0]["train_mode"])
        return {}

    def write_page(self, *_):
        return None


class StateRecorder(Reporter):
    def __init__(self):
        super().__init__(tracker=None, run_id="r")
        self.saved = []

    def report(self, stage, metrics, *, save, validated):
        if save:
            self.saved.append(copy.deepcopy(stage.state()))


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "adanschedulefree"])
def test_schedule_free_validates_and_saves_at_its_average_and_resumes_where_it_trained(tmp_path, name):
    save(tmp_path / "val" / "a.png", PHOTO[:32, :32])
    config = parse_job(
        {
            "name": "sf",
            "scale": 2,
            "manual_seed": 1,
            "datasets": {
                "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2},
                "val": {"dataroot_gt": str(tmp_path / "val")},
            },
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "train": {"total_iter": 4, "optim_g": {"type": name, "lr": 1e-2}, "losses": [{"type": "charbonnierloss"}]},
            "val": {"val_freq": 2},
            "logger": {"print_freq": 2, "save_checkpoint_freq": 4},
            "srcluster": {"workers": 1},
        }
    )
    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    probe, recorder = ProbeValidator(stage), StateRecorder()
    run(stage, HRBatches(4), probe, recorder)  # pyright: ignore[reportArgumentType]  # a probe, not a Validator
    assert probe.train_modes == [False, False]  # validated at 2 and 4 in eval mode
    assert stage.optim_g.param_groups[0]["train_mode"]  # and trains on in train mode
    (checkpoint,) = recorder.saved  # iteration 4
    assert not checkpoint["optim_g"]["param_groups"][0]["train_mode"]
    training_weights = {k: p.detach().clone() for k, p in stage.raw_g.named_parameters()}
    with evaluation_weights(stage.optim_g):
        averaged = {k: p.detach().clone() for k, p in stage.raw_g.named_parameters()}
    # the checkpoint's G is the average (what redux saves); a restore trains on from the training point
    assert all(torch.allclose(checkpoint["net_g"][k], v, atol=1e-6) for k, v in averaged.items())
    assert any(not torch.allclose(averaged[k], training_weights[k]) for k in averaged)
    restored = build_stage(config, torch.device("cpu"), log=lambda _: None)
    restored.load_state(copy.deepcopy(checkpoint))
    assert restored.optim_g.param_groups[0]["train_mode"]
    for k, p in restored.raw_g.named_parameters():
        assert torch.allclose(p, training_weights[k], atol=1e-6)
