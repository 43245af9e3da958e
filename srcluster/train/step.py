"""One optimiser step of a stage: micro-batches, losses, DDP gradient sync, clipping, non-finite skips, EMA.

The step reads its options (amp, channels_last, grad clip, the degradations' GT sharpening) from the stage's job; the
loop around it is `srcluster.train.loop.run`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import time
from typing import NamedTuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from srcluster.config import Job
from srcluster.train.batch import to_batch
from srcluster.train.state import Stage


def no_sync(net: nn.Module, skip: bool):
    """DDP's `no_sync()` (gradients kept local) when `skip`; a plain module (one worker) has none. Looked up by name:
    a compiled DDP module forwards it to the DDP module inside."""
    hold_gradients = getattr(net, "no_sync", None) if skip else None
    return hold_gradients() if hold_gradients is not None else contextlib.nullcontext()


class Gan(NamedTuple):
    """A GAN stage's adversarial side: the weighted ganloss and the discriminator it scores with."""

    weight: float
    loss: nn.Module
    net_d: nn.Module  # DDP-wrapped when world > 1
    raw_d: nn.Module


def gan_of(stage: Stage) -> Gan | None:
    if stage.gan is None:
        return None
    assert stage.net_d is not None and stage.raw_d is not None  # build_stage builds D with every ganloss
    return Gan(*stage.gan, stage.net_d, stage.raw_d)


def train_step(stage: Stage, batches, accum: int) -> dict[str, float]:
    """One optimiser step over `accum` micro-batches; gradients are all-reduced only on the last one."""
    job, device = stage.job, stage.device
    gan = gan_of(stage)
    totals: dict[str, torch.Tensor] = {}  # each loss term, summed over the micro-batches on the device
    data_wait = 0.0
    for micro in range(accum):
        start = time.perf_counter()
        item = next(batches)
        data_wait += time.perf_counter() - start
        batch = to_batch(item, job, device)  # LR (bicubic, paired or degraded) and each loss's target: train/batch.py
        hr, lr = batch.gan_gt, batch.lr
        if job.use_channels_last:
            hr, lr = hr.contiguous(memory_format=torch.channels_last), lr.contiguous(memory_format=torch.channels_last)
        last = micro == accum - 1
        with no_sync(stage.net_g, not last), amp_context(job, device):
            sr = stage.net_g(lr)
            terms: dict[str, torch.Tensor] = {
                f"l_g_{name}": weight * loss(sr.float(), batch.target(name))
                for name, weight, loss in stage.pixel_losses
            }
            if gan is not None:
                # D scores the fake through its raw module with frozen weights: no DDP hook waits for D gradients here.
                gan.raw_d.requires_grad_(False)
                terms["l_g_gan"] = gan.weight * gan.loss(gan.raw_d(sr), True, is_disc=False)
                gan.raw_d.requires_grad_(True)
            loss_g = functools.reduce(operator.add, terms.values())
        scale(stage, loss_g / accum).backward()
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.detach() / accum
        if gan is not None:
            with no_sync(gan.net_d, not last), amp_context(job, device):
                # real and fake in one forward pass, so DDP sees exactly one forward per backward
                logits = gan.net_d(torch.cat([hr, sr.detach()]))
                real, fake = logits.chunk(2)
                l_real, l_fake = gan.loss(real, True, is_disc=True), gan.loss(fake, False, is_disc=True)
            scale(stage, (l_real + l_fake) / accum).backward()
            totals["l_d_real"] = totals.get("l_d_real", 0.0) + l_real.detach() / accum
            totals["l_d_fake"] = totals.get("l_d_fake", 0.0) + l_fake.detach() / accum
    steps: list[tuple[torch.optim.Optimizer, LambdaLR]] = [(stage.optim_g, stage.sched_g)]
    if stage.optim_d is not None:
        assert stage.sched_d is not None  # build_stage builds D's schedule with its optimizer
        steps.append((stage.optim_d, stage.sched_d))
    if stage.scaler:
        for optim, _ in steps:
            stage.scaler.unscale_(optim)
    # After DDP's all-reduce every rank holds the same gradients, so this norm (and the skip decision) is the same
    # on every rank: a non-finite step is skipped everywhere or nowhere.
    max_norm = job.train.grad_clip_max_norm if job.train.grad_clip else math.inf
    norms = [nn.utils.clip_grad_norm_(stage.raw_g.parameters(), max_norm)]
    if stage.raw_d is not None:
        norms.append(nn.utils.get_total_norm([p.grad for p in stage.raw_d.parameters() if p.grad is not None]))
    # one host sync per step, for the norms and all loss terms together
    values = torch.stack([*norms, *(torch.as_tensor(v) for v in totals.values())]).tolist()
    finite = all(math.isfinite(v) for v in values)
    if finite or stage.scaler:  # the scaler skips inf steps itself and lowers its scale
        for optim, sched in steps:
            stage.scaler.step(optim) if stage.scaler else optim.step()
            sched.step()
        if stage.scaler:
            stage.scaler.update()
        if stage.ema:
            stage.ema.update(stage.raw_g)
    for optim, _ in steps:
        optim.zero_grad(set_to_none=True)
    stage.nonfinite_streak = 0 if finite else stage.nonfinite_streak + 1
    stage.iteration += 1
    out = dict(zip(totals, values[len(norms) :], strict=False))
    out["grad_norm_g"] = values[0]
    out["data_wait_s"] = data_wait
    return out


def scale(stage: Stage, loss: torch.Tensor) -> torch.Tensor:
    return stage.scaler.scale(loss) if stage.scaler else loss


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(stage: Stage, patience: int) -> None:
    if stage.nonfinite_streak >= patience:
        raise NonFiniteLossError(
            f"{stage.nonfinite_streak} consecutive non-finite losses or gradients up to iteration {stage.iteration}; "
            "the last good checkpoint is kept. Lower train.optim_g.lr, turn on train.grad_clip, raise warmup_iter, "
            "or use amp_bf16: true instead of fp16"
        )


def amp_context(job: Job, device: torch.device):
    if not job.use_amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if job.amp_bf16 or device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
