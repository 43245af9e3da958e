"""The small typed specs every training component is built from (torchtitan style): plain dataclasses, no torch.

The train layer composes them from a job (`srcluster.train.specs.stage_specs`); components never see the job schema.
Networks and losses are built by name through the registries (`archs.build_generator(spec.type, scale,
**spec.options)`, `losses.build_loss(spec.type, **spec.options)`); optimizers, schedulers and the EMA by
`srcluster.components.optim`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class NetworkSpec:
    """A generator or discriminator by traiNNer-redux name (`type`), with its builder's keyword arguments."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainSpec:
    """Weights to start a network from: a local path (already resolved from a URL or `models:/` URI)."""

    path: str
    param_key: str | None = None
    strict: bool = True


@dataclass(frozen=True)
class LossSpec:
    """One loss term: `weight * loss(sr, target)`; `options` are the loss class's keyword arguments."""

    type: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    type: Literal["AdamW", "Adam"] = "AdamW"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass(frozen=True)
class SchedulerSpec:
    """traiNNer-redux's schedule: MultiStepLR (gamma at each milestone) or cosine to eta_min over total_iter, with a
    linear warmup over `warmup_iter` (<= 0: none) in front of it."""

    type: Literal["MultiStepLR", "CosineAnnealingLR"] = "MultiStepLR"
    total_iter: int = 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    eta_min: float = 0.0
    warmup_iter: int = -1


@dataclass(frozen=True)
class EMASpec:
    """The generator's exponential moving average: decay warms up as 1 - (1 + step)^-power, capped at `decay`."""

    decay: float = 0.999
    power: float = 0.75
