"""The loss registry and what every loss shares: point-wise criteria, reductions, float32 under autocast, the log
keys of weighted terms, and building a loss from a job's options."""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import nn

from srcluster.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # elementwise, no reduction


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + eps)


ELEMENTWISE: dict[str, Criterion] = {
    "l1": lambda a, b: (a - b).abs(),
    "l2": lambda a, b: (a - b) ** 2,
    "charbonnier": charbonnier,
}


def elementwise(name: str, key: str) -> Criterion:
    if name not in ELEMENTWISE:
        raise ValueError(f"{key}: {name!r} is not one of {', '.join(ELEMENTWISE)}")
    return ELEMENTWISE[name]


def full_precision(x: torch.Tensor):
    """Inside the loop's autocast, compute this loss in float32, as traiNNer-redux does (its losses cast their inputs to
    float32 with autocast off): SSIM statistics, colour conversions and deep VGG features lose too much in
    bfloat16/float16. Cast the inputs with `.float()` inside the block."""
    return torch.autocast(x.device.type, enabled=False)


class MultiTermLoss(nn.Module, abc.ABC):
    """A loss made of named terms that the training log shows one by one (`l_g_<label>_<term>`), as traiNNer-redux
    logs a loss that returns a dict; the loss itself is their sum."""

    @abc.abstractmethod
    def components(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        parts = list(self.components(sr, gt).values())
        return torch.stack(parts).sum() if parts else sr.new_zeros(())


def log_label(loss_type: str) -> str:
    """traiNNer-redux's log key of a generator loss: its type lower-cased without "loss" (`mssimloss` -> `l_g_mssim`,
    `perceptualloss` -> `l_g_perceptual`, `ganloss` -> `l_g_gan`)."""
    return "l_g_" + loss_type.lower().replace("loss", "")


def needs_ema(loss: nn.Module) -> bool:
    """Whether the loss also compares with the EMA generator's output (traiNNer-redux's LDL)."""
    return getattr(loss, "needs_ema", False)


def weighted_terms(
    loss_type: str,
    weight: float,
    loss: nn.Module,
    sr: torch.Tensor,
    gt: torch.Tensor,
    sr_ema: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`weight * loss(sr, gt)` by its log key; a `MultiTermLoss` gives one key per term (`l_g_hsluv_hue`, ...). A loss
    that `needs_ema` gets the EMA generator's output `sr_ema` too."""
    label = log_label(loss_type)
    if isinstance(loss, MultiTermLoss):
        return {f"{label}_{name}": weight * term for name, term in loss.components(sr, gt).items()}
    if needs_ema(loss):
        if sr_ema is None:
            raise ValueError(f"train.losses: {loss_type} needs the EMA generator's output (set train.ema_decay > 0)")
        return {label: weight * loss(sr, gt, sr_ema)}
    return {label: weight * loss(sr, gt)}


REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mean": torch.mean, "sum": torch.sum}


def reducer(reduction: str, key: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """traiNNer-redux's `reduction` of a pixel loss. Its "none" (a per-pixel map) cannot be a training loss: refused."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{key}.reduction: {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    return REDUCTIONS[reduction]


def criterion_mean(name: str, key: str) -> Criterion:
    """A criterion by traiNNer-redux's name, averaged over all elements (as its nn.L1Loss / MSELoss / charbonnier)."""
    pointwise = elementwise(name, f"{key}.criterion")
    return lambda a, b: pointwise(a, b).mean()


def build_loss(name: str, **options) -> nn.Module:
    return LOSSES.build(name, **options)


# Losses built around pretrained networks: building one reads weight files, so their option values are checked when
# the stage builds them rather than when a job is checked.
NETWORK_LOSSES = frozenset(
    {
        "perceptualloss",
        "perceptualfp16loss",
        "distsloss",
        "structuretextureloss",
        "contextualloss",
        "adistsloss",
        "perceptualanimeloss",
        "linedistillerloss",
        "aesoploss",
    }
)


def check_values(name: str, options: dict, key: str) -> None:
    """Raise ValueError naming `key` when an option's value is refused (a gan_type, criterion, reduction, ...): the
    loss is built once, which for these losses is a few small tensors."""
    if name.lower() in NETWORK_LOSSES:
        return
    try:
        build_loss(name, **options)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{key}: {error}") from None
