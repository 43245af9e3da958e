"""The small typed specs every training component is built from (torchtitan style): plain dataclasses, no torch.

The train layer composes them from a job (`srcluster.train.specs.stage_specs`); components never see the job schema.
Networks and losses are built by name through the registries (`archs.build_generator(spec.type, scale,
**spec.options)`, `losses.build_loss(spec.type, **spec.options)`); optimizers, schedulers and the EMA by
`srcluster.components.optim`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# the adversarial losses (by traiNNer-redux name): called with D's logits; one in a job makes it train a discriminator
GAN_LOSS_TYPES = frozenset({"ganloss", "multiscaleganloss"})


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
    """One loss term: `weight * loss(sr, target)`; `options` are the loss class's keyword arguments. A negative
    weight (traiNNer-redux's) compares with the LR's bicubic upscale instead of the GT, weighted by |weight|."""

    type: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer by traiNNer-redux name (`type`, any case): `lr`, then its class's keyword arguments. `betas` and
    `weight_decay` are None where the job leaves them to the class's defaults; `options` holds every other keyword."""

    type: str = "AdamW"
    lr: float = 2e-4
    weight_decay: float | None = 0.0
    betas: tuple[float, ...] | None = (0.9, 0.99)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, type: str, lr: float, given: dict[str, Any]) -> OptimizerSpec:
        """From a job's optimizer section: `given` its keys besides type and lr. Adam/AdamW without betas or
        weight_decay take the templates' (0.9, 0.99) and 0 (srcluster's documented defaults); others their class's."""
        options = dict(given)
        adam = type.lower() in ("adam", "adamw")
        betas = options.pop("betas", (0.9, 0.99) if adam else None)
        weight_decay = options.pop("weight_decay", 0.0 if adam else None)
        return cls(type, lr, weight_decay, None if betas is None else tuple(betas), options)

    def keywords(self) -> dict[str, Any]:
        """What the optimizer class is called with, besides the parameters."""
        named = {"lr": self.lr, "weight_decay": self.weight_decay, "betas": self.betas}
        return {k: v for k, v in named.items() if v is not None} | self.options


@dataclass(frozen=True)
class SchedulerSpec:
    """traiNNer-redux's schedule: a scheduler by name (torch's or redux's own, any case) stepped once per optimiser
    step, with redux's linear warmup through iteration `warmup_iter` (<= 0: none). MultiStepLR takes `milestones` and
    `gamma`, CosineAnnealingLR `eta_min` and `t_max` (default total_iter); every other scheduler takes `options`, its
    class's keyword arguments."""

    type: str = "MultiStepLR"
    total_iter: int = 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    eta_min: float = 0.0
    warmup_iter: int = -1
    t_max: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, type: str, total_iter: int, warmup_iter: int, given: dict[str, Any], peak_lr: float) -> SchedulerSpec:
        """From a job's scheduler section: `given` the keys it sets besides type. MultiStepLR and CosineAnnealingLR
        keep their typed fields (gamma default 0.1, torch's; T_max default total_iter); KneeLR takes total_iter and
        `peak_lr` (optim_g's lr) unless given, as redux passes them."""
        lower = type.lower()
        if lower == "multisteplr" and given.keys() <= {"milestones", "gamma"}:
            return cls(type, total_iter, tuple(given.get("milestones", ())), given.get("gamma", 0.1), 0.0, warmup_iter)
        if lower == "cosineannealinglr" and given.keys() <= {"T_max", "eta_min"}:
            eta_min = given.get("eta_min", 0.0)
            return cls(type, total_iter, (), 0.1, eta_min, warmup_iter, given.get("T_max"))
        defaults = {"total_steps": total_iter, "peak_lr": peak_lr} if lower == "kneelr" else {}
        return cls(type, total_iter, gamma=0.1, warmup_iter=warmup_iter, options=defaults | given)


@dataclass(frozen=True)
class EMASpec:
    """The generator's exponential moving average (ema-pytorch's, as traiNNer-redux uses it): after n updates the next
    one copies the generator while n <= `update_after_step`, else uses decay min(`decay`, 1 - (1 + n - after)^-power);
    `switch_every` > 0 sets the generator to the EMA after every such number of updates."""

    decay: float = 0.999
    power: float = 10.0
    update_after_step: int = 0
    switch_every: int = 0
