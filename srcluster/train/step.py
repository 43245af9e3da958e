"""One optimiser step of a stage: micro-batches, losses, DDP gradient sync, clipping, non-finite skips, EMA.

traiNNer-redux's loss options act here: a loss with a negative weight compares G's output with the bicubic upscale of
the LR (`bicubic_upscale`) at |weight|, and `train.adaptive_d` skips D's passes of a micro-batch while an EMA of G's
GAN loss climbs (`adaptive_d_skips`), D's update with the last micro-batch's.

The step reads its options (amp, channels_last, grad clip, the degradations' GT sharpening) from the stage's job; the
loop around it is `srcluster.train.loop.run`. What it returns stays on the device: the loop turns it into numbers at
its report points only (`step_values`), so a step on a GPU need not wait for the GPU to finish.

How a non-finite step is skipped, and what the host waits for (each way skips exactly what traiNNer-redux skips):

- fp16 AMP (GradScalers on): the scalers find inf/NaN gradients and skip, as in redux; knowing whether they skipped
  (for the schedule and the EMA) reads their scale on the host, as redux does, and a scaler reads its own inf flag
  there unless the optimizer is a fused one.
- on a GPU, when every optimizer takes a device-side skip flag (`found_inf`: torch's fused Adam, AdamW, SGD,
  Adagrad): the skip is decided on the device and nothing waits. The EMA moves towards a target that is its own
  value on a skipped step, and the host learns of the skip one step later (`PendingFlag`), when the GPU is long past
  it, to count the non-finite streak and take the skipped update off the EMA's count. EMA updates that copy (the
  first, and switches) are the exception: they read the flag at once.
- any other optimizer (the default, non-fused AdamW among them): a step cannot be undone on the device without
  keeping a copy of its whole state, and an optimizer may keep part of its state in Python, so the step reads one
  flag on the host before the optimizers step: one wait per step. A CPU always decides so (`DEVICE_GATED`).

With `train.adaptive_d` on, whether D's passes run is one more host read per micro-batch, whichever way the skip is
decided: the flag's copy is waited for once G's backward is queued, so the device does not idle meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import time
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from srcluster.components import losses
from srcluster.components.optim import EMA, Schedule, floating
from srcluster.config import Job
from srcluster.train import backend
from srcluster.train.batch import to_batch
from srcluster.train.eco import eco_alpha, end_iteration
from srcluster.train.state import Stage, amp_dtype

# Devices whose steps decide skips on the device. A CPU runs each operation before the next, so reading the flag costs
# it nothing, while the gated EMA update costs it three more passes over the weights: it decides on the host (the
# tests add "cpu" here to run the device path).
DEVICE_GATED = frozenset({"cuda"})


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


class Trained(NamedTuple):
    """One network's side of the step."""

    net: nn.Module
    optim: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler


def train_step(stage: Stage, batches, accum: int, *, decide_on_host: bool = False) -> dict[str, torch.Tensor | float]:
    """One optimiser step over `accum` micro-batches; gradients are all-reduced only on the last one.

    Returns each loss term (traiNNer-redux's log keys), l_g_total, grad_norm_g (and grad_norm_d, unless adaptive_d
    skipped D's update) as 0-d tensors on the stage's device, data_wait_s (seconds spent waiting for batches, a
    float) and, with adaptive_d, d_skipped (the share of the micro-batches whose D passes it skipped, a float: 0 or 1
    with accum_iter 1). `decide_on_host`: read the finite flag on the host before stepping even where the device
    could decide (the benchmarks' baseline)."""
    job, device = stage.job, stage.device
    gan = gan_of(stage)
    totals: dict[str, torch.Tensor] = {}  # each loss term, summed over the micro-batches on the device
    data_wait = 0.0
    d_skips = 0  # micro-batches whose D passes adaptive_d skipped
    skip_d = False  # the last micro-batch's: D's update is skipped with it (redux steps D inside that pass)
    against_lr = any(weight < 0 for _, weight, _ in stage.pixel_losses)
    for micro in range(accum):
        start = time.perf_counter()
        item = next(batches)
        data_wait += time.perf_counter() - start
        # LR (bicubic, paired or degraded) and each loss's target (train/batch.py); ECO's alpha is the step's being made
        batch = to_batch(item, job, device, teacher=stage.teacher, iteration=stage.iteration + 1)
        hr, lr = batch.gan_gt, batch.lr
        if (layout := backend.memory_format(job)) is not torch.preserve_format:
            hr, lr = hr.contiguous(memory_format=layout), lr.contiguous(memory_format=layout)
        last = micro == accum - 1
        upscaled = bicubic_upscale(batch.lr, job.scale) if against_lr else None
        skipping: PendingFlag | None = None
        with no_sync(stage.net_g, not last), autocast(stage):
            sr = stage.net_g(lr)
            terms: dict[str, torch.Tensor] = {}  # by traiNNer-redux's log keys: l_g_mssim, l_g_hsluv_hue, ...
            sr_ema = ema_output(stage, lr)
            for name, weight, loss in stage.pixel_losses:
                target = batch.target(name) if weight > 0 else upscaled
                assert target is not None  # upscaled exists whenever a weight is negative
                terms |= losses.weighted_terms(name, abs(weight), loss, sr.float(), target, sr_ema)
            if gan is not None:
                # D scores the fake through its raw module with frozen weights: no DDP hook waits for D gradients here.
                gan.raw_d.requires_grad_(False)
                l_g_gan = gan.loss(gan.raw_d(sr), True, is_disc=False)
                gan.raw_d.requires_grad_(True)
                terms["l_g_gan"] = gan.weight * l_g_gan
                if stage.gan_loss_ema is not None:
                    skipping = adaptive_d_skips(stage, l_g_gan)
            loss_g = functools.reduce(operator.add, terms.values())
        stage.scaler_g.scale(loss_g / accum).backward()
        for name, value in {**terms, "l_g_total": loss_g}.items():  # l_g_total: traiNNer-redux logs the sum too
            add_to(totals, name, value, accum)
        # adaptive_d's one host read per micro-batch (only with it on: whether D's passes run decides which kernels are
        # queued, and a D pass cannot be undone: each moves its spectral-norm estimates). Read after G's backward is
        # queued, waiting only for the flag's copy, so the device has G's backward to run while D's passes are queued.
        skip_d = skipping is not None and skipping.value()
        d_skips += skip_d
        if gan is not None and not skip_d:
            with no_sync(gan.net_d, not last), autocast(stage):
                # real, then fake, in two forward passes as traiNNer-redux does: each training-mode pass runs one
                # spectral-norm power iteration (three per micro-batch with the generator's), so D's estimates match
                l_real = gan.loss(gan.net_d(hr), True, is_disc=True)
                l_fake = gan.loss(gan.net_d(sr.detach()), False, is_disc=True)
            stage.scaler_d.scale((l_real + l_fake) / accum).backward()
            add_to(totals, "l_d_real", l_real, accum)
            add_to(totals, "l_d_fake", l_fake, accum)
    trained = [Trained(stage.raw_g, stage.optim_g, stage.sched_g, stage.scaler_g)]
    if stage.raw_d is not None and stage.optim_d is not None and not skip_d:
        assert stage.sched_d is not None  # build_stage builds D's schedule with its optimizer
        trained.append(Trained(stage.raw_d, stage.optim_d, stage.sched_d, stage.scaler_d))
    # As traiNNer-redux: each network's gradients unscaled, their norm taken (and logged, clipping or not) before
    # clipping, and with grad_clip clipped to grad_clip_max_norm, the discriminator's as the generator's. After DDP's
    # all-reduce every rank holds the same gradients, so these norms (and the skip decision) are the same on every
    # rank: a non-finite step is skipped everywhere or nowhere.
    norms = [unscaled_norm(side, job) for side in trained]
    values = {**totals, "grad_norm_g": norms[0]} | ({"grad_norm_d": norms[1]} if len(norms) > 1 else {})
    finite = torch.stack([v.float() for v in values.values()]).isfinite().all()  # on the device: nothing waits
    if stage.scaler_g.is_enabled():
        skipped = [step_optimizer(side.optim, side.scaler) for side in trained]
        if stage.ema and not skipped[0]:  # redux: no EMA update after the scaler skipped G's step
            stage.ema.update(stage.raw_g)
        settle(stage)
        count_streak(stage, bool(finite))  # free: the scalers' reads above already waited for the step
    elif not decide_on_host and gated_on_device(stage, trained):
        skipped = [False] * len(trained)
        step_on_device(stage, trained, finite)
    else:
        skipped = [False] * len(trained)
        went_through = bool(finite)  # the step's one wait for the device
        if went_through:
            for side in trained:
                side.optim.step()
            if stage.ema:
                stage.ema.update(stage.raw_g)
        settle(stage)
        count_streak(stage, went_through)
    for side, was_skipped in zip(trained, skipped, strict=True):
        side.optim.zero_grad(set_to_none=True)
        # redux's schedule waits while the scaler skips (but moves on past a step skipped for a non-finite loss)
        side.schedule.step(stage.iteration + 1, skipped=was_skipped)
    if skip_d:
        assert stage.optim_d is not None and stage.sched_d is not None  # adaptive_d skips only a GAN stage's D
        # D's schedule waits, as redux's does for an optimizer it marks skipped; the gradients of D passes that ran
        # in earlier micro-batches go (redux leaves them to the next step's, local to each rank under DDP)
        stage.optim_d.zero_grad(set_to_none=True)
        stage.sched_d.step(stage.iteration + 1, skipped=True)
    stage.iteration += 1
    adaptive = {"d_skipped": d_skips / accum} if stage.gan_loss_ema is not None and gan is not None else {}
    return {**values, **adaptive, **eco_value(stage), "data_wait_s": data_wait}


def eco_value(stage: Stage) -> dict[str, float]:
    """ECO's alpha for the step just made, logged as traiNNer-redux logs it (`eco_alpha`)."""
    eco = stage.job.train.eco
    if not eco.enabled or stage.teacher is None:
        return {}
    return {"eco_alpha": eco_alpha(stage.iteration, end_iteration(stage.job.train.total_iter, eco.end_ratio))}


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The target of a loss with a negative weight, as traiNNer-redux makes it once per micro-batch: the LR input
    upscaled by torch's antialiased bicubic (PIL's kernel, a = -0.5) and clamped to [0, 1], without gradients and
    in float32 (outside the autocast)."""
    with torch.no_grad():
        return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic", antialias=True).clamp_(0, 1)


def adaptive_d_skips(stage: Stage, l_g_gan: torch.Tensor) -> PendingFlag:
    """traiNNer-redux's adaptive_d for one micro-batch: the EMA of G's (unweighted) GAN loss moves to
    `decay * ema + (1 - decay) * loss`, and D's passes are skipped when that is above `threshold * ema` (so a rising
    GAN loss, G losing, pauses D; from 0.0 at the start, D waits its first ~50 steps with the defaults). On the device;
    returns the flag on its way to the host. Under DDP the ranks' losses are averaged first, so every rank skips the
    same D passes (redux's per-rank decision would leave DDP's all-reduce of D's gradients unmatched)."""
    assert stage.gan_loss_ema is not None
    train = stage.job.train
    loss = l_g_gan.detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        loss = loss.to(torch.float32, copy=True)  # reduced in place: not the loss's own storage
        dist.all_reduce(loss)  # the sum (gloo has no AVG), then the mean
        loss = loss / dist.get_world_size()
    ema = stage.gan_loss_ema
    moved = train.adaptive_d_ema_decay * ema + (1 - train.adaptive_d_ema_decay) * loss
    skip = moved > ema * train.adaptive_d_threshold
    ema.copy_(moved)
    return PendingFlag(skip, ema_counted=False)


def add_to(totals: dict[str, torch.Tensor], name: str, value: torch.Tensor, accum: int) -> None:
    share = value.detach() / accum
    totals[name] = totals[name] + share if name in totals else share


def unscaled_norm(side: Trained, job: Job) -> torch.Tensor:
    """The network's gradient norm after unscaling (redux's grad_norm_g / grad_norm_d), clipped to
    grad_clip_max_norm with grad_clip; without it the gradients are left alone (no multiply by 1)."""
    side.scaler.unscale_(side.optim)
    if job.train.grad_clip:
        return nn.utils.clip_grad_norm_(side.net.parameters(), job.train.grad_clip_max_norm)
    return nn.utils.get_total_norm([p.grad for p in side.net.parameters() if p.grad is not None])


def gated_on_device(stage: Stage, trained: list[Trained]) -> bool:
    """Whether this step's skip is decided on the device: on a device of DEVICE_GATED when every optimizer takes
    torch's `found_inf` (fused kernels)."""
    return stage.device.type in DEVICE_GATED and all(
        getattr(side.optim, "_step_supports_amp_scaling", False) for side in trained
    )


def step_on_device(stage: Stage, trained: list[Trained], finite: torch.Tensor) -> None:
    """Step every optimizer with the device's skip flag, and the EMA with it where its update is a plain move
    towards G; the host counts the step (streak, EMA updates) once the flag is back (`settle`)."""
    found_inf = (~finite).float()  # what torch's GradScaler hands a fused optimizer: nonzero skips the update
    for side in trained:
        # the same hand-over as GradScaler.step: the fused kernels skip the update (and undo their step count)
        side.optim.found_inf = found_inf  # pyright: ignore[reportAttributeAccessIssue]
        try:
            side.optim.step()
        finally:
            del side.optim.found_inf  # pyright: ignore[reportAttributeAccessIssue]
    settle(stage)  # the previous step's flag: its event is long past now that this step is queued
    ema = stage.ema
    if ema is None:
        stage.pending_finite = PendingFlag(finite, ema_counted=False)
    elif moves_towards(ema):
        gated_ema_update(ema, stage.raw_g, finite)
        stage.pending_finite = PendingFlag(finite, ema_counted=True)
    else:  # a copying update (the first ones, a switch) cannot be gated by a target: read the flag now
        went_through = bool(finite)
        if went_through:
            ema.update(stage.raw_g)
        count_streak(stage, went_through)


def moves_towards(ema: EMA) -> bool:
    """Whether the EMA's next update only moves it towards G (EMA.update's lerp, no switch of G to the EMA)."""
    done = ema.step
    return done > ema.update_after_step and not (ema.switch_every and done % ema.switch_every == 0)


@torch.no_grad()
def gated_ema_update(ema: EMA, net: nn.Module, went_through: torch.Tensor) -> None:
    """EMA.update's move towards G, towards the EMA itself (no change) where the step was skipped: the target is
    G * w + EMA * (1 - w) with w = 1 or 0: G or the EMA (exactly, up to the sign of a zero) unless a weight is
    infinite; then EMA.update's own lerp."""
    ema_tensors, tensors = floating(ema.net), floating(net)
    keep = went_through.to(tensors[0].dtype)
    targets = torch._foreach_add(  # pyright: ignore[reportPrivateImportUsage]  # torch.optim's multi-tensor ops
        torch._foreach_mul(tensors, keep),  # pyright: ignore[reportPrivateImportUsage]
        torch._foreach_mul(ema_tensors, 1 - keep),  # pyright: ignore[reportPrivateImportUsage]
    )
    decay = ema.current_decay()
    ema.step += 1  # counted now; `settle` takes it back if the step turns out skipped
    torch._foreach_lerp_(ema_tensors, targets, 1 - decay)  # pyright: ignore[reportPrivateImportUsage]


class PendingFlag:
    """A device flag on its way to the host: copied into pinned memory behind the step's work, with an event to wait
    for just that copy (not for the work queued after it). On the CPU the flag is already there."""

    def __init__(self, flag: torch.Tensor, ema_counted: bool):
        self.ema_counted = ema_counted  # the EMA's update count included this step
        self.copied: torch.cuda.Event | None = None
        if flag.device.type == "cuda":
            self.host = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.host.copy_(flag, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        else:
            self.host = flag

    def value(self) -> bool:
        if self.copied is not None:
            self.copied.synchronize()
        return bool(self.host)


def settle(stage: Stage) -> None:
    """Count the last device-gated step now that its flag can be read: the non-finite streak, and an EMA update that
    a skipped step must not count (redux does not update the EMA then)."""
    pending: PendingFlag | None = stage.pending_finite
    if pending is None:
        return
    stage.pending_finite = None
    went_through = pending.value()
    if not went_through and pending.ema_counted:
        assert stage.ema is not None
        stage.ema.step -= 1
    count_streak(stage, went_through)


def count_streak(stage: Stage, went_through: bool) -> None:
    stage.nonfinite_streak = 0 if went_through else stage.nonfinite_streak + 1


def step_values(stage: Stage, step: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """A step's values as numbers, read from the device in one transfer (the loop's report points), after counting
    any step still pending, so the stage (its streak, its EMA's count) is whole for a checkpoint."""
    settle(stage)
    tensors = {k: v for k, v in step.items() if isinstance(v, torch.Tensor)}
    numbers = torch.stack([v.detach().float() for v in tensors.values()]).tolist() if tensors else []
    read = dict(zip(tensors, numbers, strict=True))
    return {k: read[k] if k in read else float(v) for k, v in step.items()}


def ema_output(stage: Stage, lr: torch.Tensor) -> torch.Tensor | None:
    """The EMA generator's output on this micro-batch, without gradients, when a loss compares with it (LDL, as
    traiNNer-redux); else None."""
    if stage.ema is None or not any(losses.needs_ema(loss) for _, _, loss in stage.pixel_losses):
        return None
    with torch.no_grad():
        return stage.ema.net(lr).float()


def step_optimizer(optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """One optimizer step through its GradScaler; True when the scaler skipped it (inf/NaN gradients), which, as in
    traiNNer-redux, is read from its scale going down. A disabled scaler just steps."""
    before = scaler.get_scale()
    scaler.step(optim)
    scaler.update()
    return scaler.get_scale() < before


class NonFiniteLossError(RuntimeError):
    pass


def check_finite(stage: Stage, patience: int) -> None:
    """Stop after `patience` consecutive non-finite steps. A step skipped on the device is counted when the next
    step (or a report point) reads its flag, so such a run stops one step later; every rank counts alike."""
    if stage.nonfinite_streak >= patience:
        raise NonFiniteLossError(
            f"{stage.nonfinite_streak} consecutive non-finite losses or gradients up to iteration {stage.iteration}; "
            "the last good checkpoint is kept. Lower train.optim_g.lr, turn on train.grad_clip, raise warmup_iter, "
            "or use amp_bf16: true instead of fp16"
        )


def autocast(stage: Stage):
    """The training autocast, in the dtype build_stage chose (`state.amp_dtype`)."""
    if stage.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(stage.device.type, dtype=stage.amp_dtype)


def amp_context(job: Job, device: torch.device):
    """The training's autocast outside a stage (validation): the same dtype as `autocast(stage)`."""
    dtype = amp_dtype(job, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
