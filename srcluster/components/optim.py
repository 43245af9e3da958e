"""Optimizers, the learning-rate schedule and the generator's EMA, each built from its small spec (components/specs.py).

Every optimizer and scheduler traiNNer-redux accepts, by its name in any case, with any keyword its class takes:
torch's Adam/AdamW/NAdam, pytorch-optimizer's StableAdamW/SOAP/ADOPT/Adan, schedulefree's AdamWScheduleFree and our
AdanScheduleFree (components/adan_schedulefree.py, redux's own algorithm); torch's schedulers plus redux's
CosineAnnealingRestartLR, CosineAnnealingWarmupLR, KneeLR and pytorch-optimizer's warmup-stable-decay, stepped with
redux's linear warmup; and ema-pytorch's EMA as redux configures it.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR

from srcluster.components.specs import EMASpec, OptimizerSpec, SchedulerSpec
from srcluster.registry import did_you_mean, listed

# traiNNer-redux's optimizer registry (its class names, lower case) -> "module:class". pytorch-optimizer takes ~2 s
# to import, so a class is imported when a job names it. redux's Adan always decays decoupled (weights times
# 1 - lr * weight_decay before the update): pytorch-optimizer's Adan does that with weight_decouple, its default here.
OPTIMIZERS = {
    "adam": "torch.optim:Adam",
    "adamw": "torch.optim:AdamW",
    "nadam": "torch.optim:NAdam",
    "stableadamw": "pytorch_optimizer:StableAdamW",
    "soap": "pytorch_optimizer:SOAP",
    "adopt": "pytorch_optimizer:ADOPT",
    "adan": "pytorch_optimizer:Adan",
    "adamwschedulefree": "schedulefree:AdamWScheduleFree",
    "adanschedulefree": "srcluster.components.adan_schedulefree:AdanScheduleFree",
}
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {"adan": {"weight_decouple": True}}


def optimizer_class(name: str, key: str = "train.optim_g.type") -> type[torch.optim.Optimizer]:
    """The class traiNNer-redux builds for optimizer `name` (any case); ValueError naming `key` for an unknown one."""
    target = OPTIMIZERS.get(name.lower())
    if target is None:
        hint = did_you_mean(name.lower(), OPTIMIZERS, n=3) or f"known: {listed(sorted(OPTIMIZERS))}"
        raise ValueError(f"{key}: unknown optimizer {name!r} ({hint})")
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def build_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer in training mode: schedule-free ones are switched to it at once, as redux's get_optimizer does."""
    cls = optimizer_class(spec.type)
    optimizer = cls(params, **OPTIMIZER_DEFAULTS.get(spec.type.lower(), {}) | spec.keywords())
    if is_schedule_free(optimizer):
        optimizer.train()  # pyright: ignore[reportAttributeAccessIssue]  # schedule-free optimizers have it
    return optimizer


def check_optimizer(spec: OptimizerSpec, key: str) -> None:
    """Raise ValueError naming `key` for an unknown optimizer, a keyword its class does not take, or a value it refuses
    (built once on a one-element parameter, so a bad value stops the job before it starts)."""
    cls = optimizer_class(spec.type, f"{key}.type")
    check_keywords(cls, spec.keywords(), key, spec.type, skip=("params",))
    try:
        build_optimizer([nn.Parameter(torch.zeros(1))], spec)
    except Exception as exc:  # any library's refusal of a value (betas: [0.99] is an IndexError in torch's AdamW)
        lists = [f"{k}: {list(v)}" for k, v in spec.keywords().items() if isinstance(v, (list, tuple))]
        if isinstance(exc, IndexError) and lists:
            raise ValueError(f"{key}: {spec.type}: too few values in {', '.join(lists)}") from None
        raise ValueError(f"{key}: {spec.type}: {one_line(exc)}") from None


def check_keywords(builder: Callable, keywords: dict[str, Any], key: str, name: str, skip: Sequence[str]) -> None:
    """The keywords `builder` names in its signature; a catch-all **kwargs (pytorch-optimizer's) accepts no others."""
    params = inspect.signature(builder).parameters
    accepted = [p for p, v in params.items() if p not in skip and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    for keyword in keywords:
        if keyword not in accepted:
            hint = did_you_mean(keyword, accepted) or f"accepted: {', '.join(accepted)}"
            raise ValueError(f"{key}: {name} has no option {keyword!r} ({hint})")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Schedule-free optimizers train at one point (y) and evaluate at their average (x): they have train() / eval()."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


@contextmanager
def evaluation_weights(*optimizers: torch.optim.Optimizer | None) -> Iterator[None]:
    """The networks of schedule-free optimizers at their evaluation weights for the block, then back to training ones.

    redux switches G's optimizer around validation, and every optimizer around saving networks or a training state
    (so a checkpoint holds the weights to evaluate, and a restore switches back with train()); others are untouched.
    """
    switched = [o for o in optimizers if o is not None and is_schedule_free(o)]
    for optimizer in switched:
        optimizer.eval()  # pyright: ignore[reportAttributeAccessIssue]
    try:
        yield
    finally:
        for optimizer in switched:
            optimizer.train()  # pyright: ignore[reportAttributeAccessIssue]


# --- schedules -------------------------------------------------------------------------------------------------------


class CosineAnnealingRestartLR(LRScheduler):
    """redux's (BasicSR's) cosine annealing with restarts: cycle i of `periods[i]` iterations goes from
    eta_min + restart_weights[i] * (base_lr - eta_min) down to eta_min; past the last cycle redux stops with an error,
    so this holds eta_min there."""

    def __init__(self, optimizer, periods: Sequence[int], restart_weights: Sequence[float] = (1,), eta_min: float = 0,
                 last_epoch: int = -1):  # fmt: skip
        if len(periods) != len(restart_weights):
            raise ValueError(f"periods ({len(periods)}) and restart_weights ({len(restart_weights)}) differ in length")
        self.periods, self.restart_weights, self.eta_min = list(periods), list(restart_weights), eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        start, epoch = 0, self.last_epoch
        for period, weight in zip(self.periods, self.restart_weights, strict=True):
            if epoch <= start + period:  # redux's cycle boundaries: iteration == the cumulative period ends a cycle
                cosine = 0.5 * (1 + math.cos(math.pi * (epoch - start) / period))
                return [self.eta_min + weight * (base - self.eta_min) * cosine for base in self.base_lrs]
            start += period
        return [float(self.eta_min) for _ in self.base_lrs]


class CosineAnnealingWarmupLR(LRScheduler):
    """redux's cosine with a linear warmup: base_lr * last_epoch / warmup_iters during the warmup, then a cosine from
    base_lr to base_lr * eta_min_ratio over the remaining total_iters, held there after."""

    def __init__(self, optimizer, total_iters: int, warmup_iters: int = 0, eta_min_ratio: float = 0.1,
                 last_epoch: int = -1):  # fmt: skip
        self.total_iters, self.warmup_iters, self.eta_min_ratio = total_iters, warmup_iters, eta_min_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        if self.last_epoch < self.warmup_iters:
            factor = self.last_epoch / max(1, self.warmup_iters)
        else:
            progress = min(1.0, (self.last_epoch - self.warmup_iters) / max(1, self.total_iters - self.warmup_iters))
            factor = self.eta_min_ratio + (1 - self.eta_min_ratio) * (1 + math.cos(math.pi * progress)) / 2
        return [base * factor for base in self.base_lrs]


class KneeLR(LRScheduler):
    """redux's knee schedule (wide-minima): `peak_lr` (every group) for the first explore_ratio of total_steps, then a
    linear decay reaching 0 at total_steps; redux passes total_iter and optim_g's lr as its defaults."""

    def __init__(self, optimizer, peak_lr: float, total_steps: int, explore_ratio: float = 0.5, last_epoch: int = -1):
        if not 0 <= explore_ratio <= 1:
            raise ValueError(f"explore_ratio {explore_ratio} is not between 0 and 1")
        self.peak_lr, self.total_steps, self.explore_ratio = peak_lr, total_steps, explore_ratio
        self.explore_steps = int(total_steps * explore_ratio)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        done = self.last_epoch + 1 - self.explore_steps  # redux counts the step about to run
        decay_steps = self.total_steps - self.explore_steps
        lr = self.peak_lr if done <= 0 else max(self.peak_lr - self.peak_lr / decay_steps * done, 0.0)
        return [lr for _ in self.optimizer.param_groups]


def warmup_stable_decay(optimizer, **options) -> LRScheduler:
    """redux's WarmupStableDecayLR: pytorch-optimizer's get_wsd_schedule (imported when a job names it)."""
    from pytorch_optimizer import get_wsd_schedule  # ~2 s to import; only for the jobs that use it

    return get_wsd_schedule(optimizer, **options)


def _wsd_signature(optimizer, num_warmup_steps: int, num_stable_steps: int, num_decay_steps: int,
                   min_lr_ratio: float = 0.0, num_cycles: float = 0.5, cooldown_type: str = "1-sqrt",
                   last_epoch: int = -1) -> None:  # fmt: skip
    """get_wsd_schedule's keywords (checked without importing pytorch-optimizer)."""


SCHEDULERS: dict[str, Callable[..., LRScheduler]] = {
    cls.__name__.lower(): cast(Callable[..., LRScheduler], cls)
    for cls in (
        lr_scheduler.ConstantLR,
        lr_scheduler.LinearLR,
        lr_scheduler.ExponentialLR,
        lr_scheduler.CyclicLR,
        lr_scheduler.StepLR,
        lr_scheduler.MultiStepLR,
        lr_scheduler.OneCycleLR,
        lr_scheduler.PolynomialLR,
        lr_scheduler.CosineAnnealingWarmRestarts,
        lr_scheduler.CosineAnnealingLR,
        CosineAnnealingWarmupLR,
        CosineAnnealingRestartLR,
        KneeLR,
    )
} | {"warmupstabledecaylr": warmup_stable_decay}
SIGNATURES: dict[str, Callable[..., Any]] = {"warmupstabledecaylr": _wsd_signature}

# names redux's table has but whose schedulers a config file cannot drive: why, in the error line
CANNOT_RUN = {
    "lambdalr": "it takes a Python function (lr_lambda), which a config file cannot hold",
    "multiplicativelr": "it takes a Python function (lr_lambda), which a config file cannot hold",
    "sequentiallr": "it takes other scheduler objects, which a config file cannot hold",
    "chainedscheduler": "it takes other scheduler objects, which a config file cannot hold",
    "reducelronplateau": "it steps on a metric, and traiNNer-redux steps schedulers without one (it stops there)",
}


def scheduler_builder(name: str, key: str) -> Callable[..., LRScheduler]:
    lower = name.lower()
    if lower in CANNOT_RUN:
        raise ValueError(f"{key}: {name} cannot run from a job file: {CANNOT_RUN[lower]}")
    if lower not in SCHEDULERS:
        hint = did_you_mean(lower, SCHEDULERS, n=3) or f"known: {listed(sorted(SCHEDULERS))}"
        raise ValueError(f"{key}: unknown scheduler {name!r} ({hint})")
    return SCHEDULERS[lower]


def make_scheduler(optimizer: torch.optim.Optimizer, spec: SchedulerSpec) -> LRScheduler:
    lower = spec.type.lower()
    if lower == "multisteplr" and not spec.options:
        return MultiStepLR(optimizer, list(spec.milestones), spec.gamma)
    if lower == "cosineannealinglr" and not spec.options:
        return CosineAnnealingLR(optimizer, spec.t_max or spec.total_iter, spec.eta_min)
    builder = scheduler_builder(spec.type, "train.scheduler.type")
    return builder(optimizer, **required_typed(builder, spec) | spec.options)


def required_typed(builder: Callable, spec: SchedulerSpec) -> dict[str, Any]:
    """The typed scheduler keys (milestones, gamma, eta_min) that `builder` requires and the job left at their
    defaults: their defaults (e.g. ExponentialLR's gamma 0.1)."""
    typed = {"milestones": list(spec.milestones), "gamma": spec.gamma, "eta_min": spec.eta_min}
    params = inspect.signature(SIGNATURES.get(spec.type.lower(), builder)).parameters
    return {k: v for k, v in typed.items() if k in params and params[k].default is inspect.Parameter.empty}


def check_scheduler(spec: SchedulerSpec, key: str) -> None:
    """Raise ValueError naming `key` for an unknown scheduler, one a job file cannot drive, a keyword it does not take,
    or a value it refuses (built once on a throwaway optimizer)."""
    builder = scheduler_builder(spec.type, f"{key}.type")
    check_keywords(SIGNATURES.get(spec.type.lower(), builder), spec.options, key, spec.type, skip=("optimizer",))
    try:
        make_scheduler(torch.optim.AdamW([nn.Parameter(torch.zeros(1))]), spec)
    except Exception as exc:  # any library's refusal of a value, in whatever exception it raises
        raise ValueError(f"{key}: {spec.type}: {one_line(exc)}") from None


class Schedule:
    """traiNNer-redux's learning-rate schedule for one optimizer, stepped once per optimiser step (`step(iteration)`).

    As redux's `update_learning_rate` does after each step: the scheduler steps unless the GradScaler skipped that
    optimizer's step; then, through iteration `warmup_iter`, the lr is overwritten with initial_lr * iteration /
    warmup_iter. So the first step runs at the full lr, step k (2 <= k <= warmup_iter + 1) at lr * (k - 1) /
    warmup_iter, and a milestone at or before warmup_iter is overwritten.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: SchedulerSpec):
        self.optimizer, self.spec, self.warmup_iter = optimizer, spec, spec.warmup_iter
        self.scheduler = make_scheduler(optimizer, spec)

    def step(self, iteration: int, skipped: bool = False) -> None:
        """After optimiser step number `iteration` (1-based); `skipped`: the GradScaler skipped it (inf gradients)."""
        if not skipped:
            with warnings.catch_warnings():
                # a first step the finite check skipped has no optimizer.step() before it; redux steps the schedule too
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
                self.scheduler.step()
        if iteration <= self.warmup_iter:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * iteration / self.warmup_iter

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Where the schedule stood; its settings (milestones, periods, ...) stay the job's (a rerun may change it)."""
        self.scheduler.load_state_dict({k: v for k, v in state.items() if k in PROGRESS} | self.config())

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.scheduler.state_dict().items() if k not in PROGRESS}

    def closed_form_lrs(self) -> list[float | torch.Tensor]:
        """Each group's scheduled lr after `last_epoch` steps from the base lrs, whatever it was before (torch's closed
        form where the scheduler has one; else the schedule replayed on a throwaway optimizer)."""
        closed = getattr(self.scheduler, "_get_closed_form_lr", None)
        if closed is not None:
            return list(closed())
        params = [{"params": [nn.Parameter(torch.zeros(1))], "lr": base} for base in self.scheduler.base_lrs]
        replay = make_scheduler(torch.optim.Adam(params), self.spec)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
            for _ in range(self.scheduler.last_epoch):
                replay.step()
        return list(replay.get_last_lr())


# what a checkpoint's scheduler state contributes: how far it went (the same keys in a LambdaLR's state from before;
# CosineAnnealingWarmRestarts also counts within its cycle)
PROGRESS = ("last_epoch", "_step_count", "_last_lr", "base_lrs", "T_cur", "T_i")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: SchedulerSpec) -> Schedule:
    return Schedule(optimizer, spec)


def options_held(optimizer: torch.optim.Optimizer, spec: OptimizerSpec) -> bool:
    """Whether every param group already has `spec`'s lr (as its initial lr) and options."""
    wanted = spec.keywords()
    wanted["initial_lr"] = wanted.pop("lr")
    return all(comparable(group.get(k)) == comparable(v) for group in optimizer.param_groups for k, v in wanted.items())


def comparable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def apply_optimizer_options(optimizer: torch.optim.Optimizer, schedule: Schedule, spec: OptimizerSpec) -> None:
    """Put `spec`'s options into an optimizer restored from a checkpoint that was trained with other ones.

    A checkpoint carries its trainer's param groups and the scheduler's base_lrs, so without this a changed learning
    rate (a PBT mutation) would be ignored. The lr is set at the same point of the schedule (warmup, decay) as before:
    scaled by the new initial lr over the old one. Options a param group does not keep are left alone.
    """
    schedule.scheduler.base_lrs = [spec.lr for _ in optimizer.param_groups]
    options = {k: comparable(v) for k, v in spec.keywords().items() if k != "lr"}
    for group in optimizer.param_groups:
        group.update({k: v for k, v in options.items() if k in group})
        group.update(lr=group["lr"] * spec.lr / group["initial_lr"], initial_lr=spec.lr)
    schedule.scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # pyright: ignore[reportAttributeAccessIssue]  # what get_last_lr() reports


class EMA:
    """traiNNer-redux's EMA of the generator (ema-pytorch's `EMA` as redux configures it: update_every 1, inv_gamma 1,
    min_value 0, its ema_update_after_step and ema_switch_iter).

    It starts as a copy of G. After n updates the next one copies G again while n <= `update_after_step` (always the
    first), else moves the floating-point parameters and buffers towards G's by 1 - decay, with decay = min(`decay`,
    1 - (1 + n - update_after_step)^-power) computed in float32 as ema-pytorch does (with redux's default power 10 that
    is `decay` from the second update on); then, when `switch_every` divides n, G is set to the EMA.
    """

    def __init__(self, net: nn.Module, decay: float, power: float, update_after_step: int = 0, switch_every: int = 0):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.power, self.step = decay, power, 0
        self.update_after_step, self.switch_every = update_after_step, switch_every

    @classmethod
    def from_spec(cls, net: nn.Module, spec: EMASpec) -> EMA:
        return cls(net, spec.decay, spec.power, spec.update_after_step, spec.switch_every)

    def current_decay(self) -> float:
        """The decay the next update uses, after `step` updates (0: it copies the generator)."""
        if self.step <= self.update_after_step:
            return 0.0
        epoch = torch.tensor(self.step - self.update_after_step, dtype=torch.float32)  # ema-pytorch's float32 math
        return (1 - (1 + epoch) ** -self.power).clamp(min=0.0, max=self.decay).item()

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        done, decay = self.step, self.current_decay()
        self.step += 1
        ema_tensors, tensors = floating(self.net), floating(net)
        if done <= self.update_after_step:
            torch._foreach_copy_(ema_tensors, tensors)  # pyright: ignore[reportPrivateImportUsage]  # no public name for it
        else:
            # torch.optim's own multi-tensor lerp (swa_utils uses it): one kernel launch per step, not one per tensor
            torch._foreach_lerp_(ema_tensors, tensors, 1 - decay)  # pyright: ignore[reportPrivateImportUsage]
            if self.switch_every and done % self.switch_every == 0:  # ema-pytorch's update_model_with_ema
                torch._foreach_copy_(tensors, ema_tensors)  # pyright: ignore[reportPrivateImportUsage]


def floating(net: nn.Module) -> list[torch.Tensor]:
    """The parameters then the floating-point buffers: what ema-pytorch averages (integer buffers stay as copied)."""
    params = [p.detach() for p in net.parameters() if p.is_floating_point()]
    return params + [b for b in net.buffers() if b.is_floating_point()]
