"""Optimizers, the learning-rate schedule and the generator's EMA, each built from its small spec (components/specs.py).

The numbers are traiNNer-redux's: AdamW/Adam, MultiStepLR or cosine decay behind a linear warmup, and an EMA whose
decay warms up as 1 - (1 + step)^-power.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from srcluster.components.specs import EMASpec, OptimizerSpec, SchedulerSpec

OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}


def build_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.type](params, lr=spec.lr, weight_decay=spec.weight_decay, betas=tuple(spec.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: SchedulerSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """The configured schedule, with traiNNer-redux's linear warmup over `warmup_iter` in front of it."""
    warmup, total = spec.warmup_iter, spec.total_iter
    if spec.type == "MultiStepLR":

        def decay(it: int) -> float:
            return spec.gamma ** sum(it >= m for m in spec.milestones)
    else:
        base = optimizer.param_groups[0]["lr"]
        floor = spec.eta_min / base

        def decay(it: int) -> float:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))

    def factor(it: int) -> float:
        ramp = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
        return ramp * decay(it)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def apply_optimizer_options(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, spec: OptimizerSpec
) -> None:
    """Put `spec`'s options into an optimizer restored from a checkpoint that was trained with other ones.

    A checkpoint carries its trainer's param groups and the scheduler's base_lrs, so without this a changed learning
    rate (a PBT mutation) would be ignored. The lr is set at the same point of the schedule (warmup, decay) as before.
    """
    scheduler.base_lrs = [spec.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=False):
        group.update(
            initial_lr=spec.lr,
            lr=spec.lr * factor(scheduler.last_epoch),
            betas=tuple(spec.betas),
            weight_decay=spec.weight_decay,
        )
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class EMA:
    """Exponential moving average of the generator; decay warms up as 1 - (1 + step)^-power, capped at `decay`."""

    def __init__(self, net: nn.Module, decay: float, power: float):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.power, self.step = decay, power, 0

    @classmethod
    def from_spec(cls, net: nn.Module, spec: EMASpec) -> EMA:
        return cls(net, spec.decay, spec.power)

    def current_decay(self) -> float:
        if self.power <= 0:
            return self.decay
        return min(self.decay, 1 - (1 + self.step) ** -self.power)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.step += 1
        decay = self.current_decay()
        ema_params: list[torch.Tensor] = list(self.net.parameters())
        # the multi-tensor lerp torch.optim's own EMA (swa_utils) uses: one kernel launch per step, not one per tensor
        torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - decay)  # pyright: ignore[reportPrivateImportUsage]  # no public name for it
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers(), strict=False):
            ema_buffer.copy_(buffer)
