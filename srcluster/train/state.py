"""Everything a worker trains with (`Stage`), built from the job's specs, and its checkpoint files.

A checkpoint folder holds `state.pt` (the whole Stage: networks, optimizers, schedulers, EMA, RNG, iteration, best) and
the EMA generator as safetensors, the file passed downstream.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from srcluster.components import archs, losses, weights
from srcluster.components.optim import (
    EMA,
    PROGRESS,
    Schedule,
    apply_optimizer_options,
    build_optimizer,
    build_scheduler,
    is_schedule_free,
    options_held,
)
from srcluster.components.specs import PretrainSpec
from srcluster.config import Job
from srcluster.storage import StorageSettings
from srcluster.tracking.models import weights_file
from srcluster.train import backend
from srcluster.train.best import Best
from srcluster.train.specs import stage_specs

STATE_FILE = "state.pt"
GENERATOR_FILE = "net_g_ema.safetensors"


def checkpoint_file(checkpoint, name: str) -> bytes:
    """One file of a Ray checkpoint, read straight from its storage into memory.

    Not `Checkpoint.as_directory()`: every process on a node shares its download folder, and a rank that takes the
    folder's lock after another rank's download downloads again over the files that rank is reading (a torn
    state.pt on resume). Reading through the checkpoint's own filesystem gives each rank its own whole copy."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as stream:
        return stream.read()


def load_state_file(checkpoint, device: torch.device) -> dict:
    return torch.load(io.BytesIO(checkpoint_file(checkpoint, STATE_FILE)), map_location=device, weights_only=True)


@dataclass
class Stage:
    """Everything a worker trains with; built once, saved and restored as a whole."""

    job: Job  # train_step reads the step's options (amp, channels_last, grad clip, degradations) from it
    device: torch.device
    net_g: nn.Module  # DDP-wrapped when world > 1
    raw_g: nn.Module
    ema: EMA | None
    optim_g: torch.optim.Optimizer
    sched_g: Schedule
    pixel_losses: list[tuple[str, float, nn.Module]]
    gan: tuple[float, nn.Module] | None = None
    net_d: nn.Module | None = None
    raw_d: nn.Module | None = None
    optim_d: torch.optim.Optimizer | None = None
    sched_d: Schedule | None = None
    # traiNNer-redux's: one GradScaler per network, enabled with use_amp unless amp_bf16 (so also after the fp16 -> bf16
    # fallback of an fp16-unsafe architecture); a disabled one passes everything through
    scaler_g: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    scaler_d: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    amp_dtype: torch.dtype | None = None  # the training autocast's dtype; None: no autocast (see `amp_dtype`)
    iteration: int = 0
    nonfinite_streak: int = 0
    pending_finite: Any = None  # train/step.py: the last device-gated step's flag until the host has read it
    best: Best | None = None  # the best generator by the job's best_metric, and the plateau counter
    world: int = 1  # worker count this state was trained with (an elastic resume may differ)

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.net if self.ema else self.raw_g

    def state(self) -> dict[str, Any]:
        state = {name: part.state_dict() for name, part in self.parts().items() if part is not None}
        state.update(
            iteration=self.iteration,
            ema_step=self.ema.step if self.ema else 0,
            torch_rng=torch.get_rng_state(),
            world=self.world,
        )
        if self.best is not None:
            state["best"] = self.best.state()
        return state

    def parts(self) -> dict[str, Any]:
        return {
            "net_g": self.raw_g,
            "optim_g": self.optim_g,
            "sched_g": self.sched_g,
            "net_d": self.raw_d,
            "optim_d": self.optim_d,
            "sched_d": self.sched_d,
            "scaler_g": self.scaler_g if self.scaler_g.is_enabled() else None,
            "scaler_d": self.scaler_d if self.scaler_d.is_enabled() else None,
            "net_g_ema": self.ema.net if self.ema else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            if part is not None and name in state:
                part.load_state_dict(state[name])
        if "scaler" in state and self.scaler_g.is_enabled():  # a checkpoint from before G and D had a scaler each
            self.scaler_g.load_state_dict(state["scaler"])
        for optimizer in (self.optim_g, self.optim_d):
            if optimizer is not None and is_schedule_free(optimizer):
                optimizer.train()  # pyright: ignore[reportAttributeAccessIssue]  # saved in eval mode, as redux's
        self.iteration = int(state["iteration"])
        if self.ema:
            self.ema.step = int(state.get("ema_step", self.iteration))
        torch.set_rng_state(state["torch_rng"])
        self.world = int(state.get("world", self.world))
        if self.best is not None and "best" in state:
            self.best.load_state(state["best"])
        self.follow_config(state)

    def follow_config(self, state: dict[str, Any] | None = None) -> None:
        """After a restore: the job's optimizer options and schedule from the restored iteration on, not the
        checkpoint's (a rerun may raise total_iter, add milestones or change the lr; traiNNer-redux's
        restart_scheduler). `state`: the checkpoint, whose schedule is kept where the job's is the same; None (an
        imported state) sets every lr from the job's schedule."""
        specs = stage_specs(self.job)
        trained = [("sched_g", self.optim_g, self.sched_g, specs.optim_g)]
        if self.optim_d is not None and self.sched_d is not None and specs.optim_d is not None:
            trained.append(("sched_d", self.optim_d, self.sched_d, specs.optim_d))
        for name, optimizer, schedule, spec in trained:
            if not options_held(optimizer, spec):
                apply_optimizer_options(optimizer, schedule, spec)  # only then: it rescales the lr (not bit for bit)
            saved = (state or {}).get(name)
            if saved is None or {k: v for k, v in saved.items() if k not in PROGRESS} != schedule.config():
                lr_from_schedule(optimizer, schedule, self.iteration)


def lr_from_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, iteration: int) -> None:
    """Each param group's lr where the job's schedule has it after `iteration` steps (the schedule steps relative to
    the current lr, so a milestone added before the restored iteration would otherwise never apply)."""
    lrs = schedule.closed_form_lrs()  # at the restored last_epoch
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        warming = 0 < iteration <= schedule.warmup_iter
        group["lr"] = group["initial_lr"] * iteration / schedule.warmup_iter if warming else lr
    schedule.scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # pyright: ignore[reportAttributeAccessIssue]  # what get_last_lr() reports


def load_pretrain(
    net: nn.Module,
    spec: PretrainSpec | None,
    label: str,
    log,
    settings: StorageSettings | None,
    network: str = "g",
    staged: dict[str, str] | None = None,
) -> None:
    """`network`: "g" or "d", naming the job's path.strict_load_<network> in a mismatch error. `staged`: pretrain
    source -> the copy the driver staged for the workers (`train/stage.py: staged_pretrains`), read instead."""
    if spec is not None:
        report = weights.load_pretrain(
            net,
            (staged or {}).get(spec.path) or weights_file(spec.path),
            param_key=spec.param_key,
            strict=spec.strict,
            label=spec.path,
            settings=settings,
            strict_key=f"strict_load_{network}",
        )
        log(f"{label}: {report.summary()}")


def amp_dtype(job: Job, device: torch.device) -> torch.dtype | None:
    """The training autocast's dtype, as traiNNer-redux picks it on CUDA: bf16 with amp_bf16 (fp16 where the GPU has
    no bf16), else fp16, except for the architectures redux marks fp16-unsafe (`archs.FP16_UNSAFE`), which train under
    bf16, or without autocast where the GPU has no bf16. On CPU autocast runs bf16. None: no autocast."""
    if not job.use_amp:
        return None
    if device.type != "cuda":
        return torch.bfloat16
    bf16 = torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if job.amp_bf16 and bf16 else torch.float16
    if dtype == torch.float16 and job.network_g.type in archs.FP16_UNSAFE:
        return torch.bfloat16 if bf16 else None
    return dtype


def amp_note(job: Job, dtype: torch.dtype | None) -> str | None:
    """On CUDA, the line redux logs when the autocast dtype is not the one the job asked for."""
    if not job.use_amp or dtype == (torch.bfloat16 if job.amp_bf16 else torch.float16):
        return None
    if job.amp_bf16 and dtype == torch.float16:
        return "amp_bf16: this GPU has no bf16; AMP runs fp16"
    name = job.network_g.type
    if dtype is None:
        return f"use_amp: network_g {name} does not support fp16 and this GPU has no bf16; AMP is off"
    return f"use_amp: network_g {name} does not support fp16; AMP runs bf16 (as traiNNer-redux does)"


def build_stage(
    job: Job,
    device: torch.device,
    wrap=lambda net: net,
    log=print,
    settings: StorageSettings | None = None,
    staged_pretrains: dict[str, str] | None = None,
) -> Stage:
    """The stage's networks, losses, optimizers, schedules and EMA, built from `stage_specs(job)` alone. `settings`:
    the process's storage settings (resolved once at its entry point), for reading pretrains; `staged_pretrains`:
    the driver's copies of `models:/` pretrains (see `load_pretrain`)."""
    specs = stage_specs(job)
    backend.configure(job)  # every training path builds its stage here, before any network exists
    layout = backend.memory_format(job)
    torch.manual_seed(specs.seed)  # same initial weights on every rank
    raw_g = archs.build_generator(specs.generator.type, specs.scale, **specs.generator.options).to(device)
    load_pretrain(raw_g, specs.pretrain_g, "pretrain", log, settings, staged=staged_pretrains)
    raw_d = None
    if specs.discriminator is not None:  # built next, as redux does, so the seed gives it the same initial weights
        raw_d = archs.build_discriminator(specs.discriminator.type, **specs.discriminator.options).to(device)
        load_pretrain(raw_d, specs.pretrain_d, "pretrain D", log, settings, network="d", staged=staged_pretrains)
    raw_g = raw_g.to(memory_format=layout)
    if raw_d is not None:
        raw_d = raw_d.to(memory_format=layout)
    ema = EMA.from_spec(raw_g, specs.ema) if specs.ema else None
    optim_g = build_optimizer(raw_g.parameters(), specs.optim_g)
    pixel, gan = [], None
    for spec in specs.losses:
        module = losses.build_loss(spec.type, **spec.options).to(device)
        module = module.to(memory_format=layout)  # the loss networks (VGG, DISTS) too, as redux lays them out
        if spec.type in losses.GAN_LOSSES:
            gan = (spec.weight, module)
        else:
            pixel.append((spec.type, spec.weight, module))
    if job.use_compile and job.srcluster.compile_d_and_losses:
        # redux compiles G only; in a small-G GAN step D and the loss networks (VGG, DISTS) are most of the work
        pixel = [(name, weight, compiled(module)) for name, weight, module in pixel]
    stage = Stage(job, device, wrap(raw_g), raw_g, ema, optim_g, build_scheduler(optim_g, specs.scheduler), pixel, gan)
    if job.use_compile:  # the training forward only: EMA, validation and checkpoints use the plain module
        # a Module in, an OptimizedModule (a Module) out; torch.compile's annotations only promise a callable
        stage.net_g = cast(nn.Module, torch.compile(stage.net_g, mode=job.compile_mode))
    stage.amp_dtype = amp_dtype(job, device)
    if device.type == "cuda" and (note := amp_note(job, stage.amp_dtype)):  # on CPU autocast is bf16 by choice
        log(note)
    if stage.amp_dtype is not None and not job.amp_bf16 and device.type == "cuda":
        stage.scaler_g, stage.scaler_d = torch.amp.GradScaler("cuda"), torch.amp.GradScaler("cuda")
    if gan is not None:
        assert raw_d is not None and specs.optim_d is not None  # stage_specs pairs them with a ganloss
        stage.raw_d, stage.net_d = raw_d, wrap(raw_d)
        if job.use_compile and job.srcluster.compile_d_and_losses:
            stage.net_d = cast(nn.Module, torch.compile(stage.net_d, mode=job.compile_mode))
        stage.optim_d = build_optimizer(raw_d.parameters(), specs.optim_d)
        stage.sched_d = build_scheduler(stage.optim_d, specs.scheduler)
    return stage


def compiled(loss: nn.Module) -> nn.Module:
    """A loss with a feature network (parameters) compiled; parameter-free losses are cheap and stay eager, and so do
    multi-term losses (their `components` is what the step calls, which a compiled wrapper would not compile)."""
    if hasattr(loss, "components") or not any(True for _ in loss.parameters()):
        return loss
    return cast(nn.Module, torch.compile(loss))


def generator_metadata(job: Job) -> dict[str, str]:
    """What an exported generator's header says about it (`weights.generator_metadata`)."""
    return weights.generator_metadata(job.network_g.type, job.scale, job.network_g.options())


def write_checkpoint(stage: Stage, folder: Path) -> Path:
    """A checkpoint folder: the whole training state and the EMA generator (the file passed downstream)."""
    torch.save(stage.state(), folder / STATE_FILE)
    weights.export_generator(stage.eval_net, folder / GENERATOR_FILE, generator_metadata(stage.job))
    return folder
