"""Everything a worker trains with (`Stage`), built from the job's specs, and its checkpoint files.

A checkpoint folder holds `state.pt` (the whole Stage: networks, optimizers, schedulers, EMA, adaptive_d's loss EMA,
RNG, iteration, best) and the EMA generator as safetensors, the file passed downstream. A restored stage takes the
job's optimizer options, and its schedule as saved or, with `train.restart_scheduler`, the job's from the restored
iteration on (`Stage.follow_config`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from srcluster.components import archs, losses, weights
from srcluster.components.optim import (
    EMA,
    PROGRESS,
    Schedule,
    apply_optimizer_options,
    build_optimizer,
    build_scheduler,
    is_schedule_free,
    make_scheduler,
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
SCHEDULES = ("sched_g", "sched_d")  # the parts `follow_config` restores, not `load_state_dict`


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
    # train.adaptive_d with a GAN loss: traiNNer-redux's EMA of G's GAN loss (l_g_gan_ema), a 0-d float32 tensor on
    # the device, 0.0 at the start; checkpointed, so a resume goes on from it (redux starts it at 0 again)
    gan_loss_ema: torch.Tensor | None = None
    # network_g_teacher, frozen in eval mode: distillation targets and ECO (train/batch.py, train/eco.py)
    teacher: nn.Module | None = None

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
        if self.gan_loss_ema is not None:
            state["gan_loss_ema"] = self.gan_loss_ema
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

    def load_state(self, state: dict[str, Any], *, rerun: bool = True) -> None:
        """Restore a checkpoint. `rerun`: this run's own checkpoint, which a rerun of the job continues with the job's
        schedule (see `follow_config`); False: another run's, `path.resume_state`."""
        for name, part in self.parts().items():
            if part is not None and name in state and name not in SCHEDULES:
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
        if self.gan_loss_ema is not None and "gan_loss_ema" in state:  # else it starts at 0.0, as redux's
            self.gan_loss_ema.copy_(state["gan_loss_ema"])
        if self.best is not None and "best" in state:
            self.best.load_state(state["best"])
        self.follow_config({name: state[name] for name in SCHEDULES if name in state}, rerun=rerun)

    def follow_config(self, saved_schedules: dict[str, dict[str, Any]], *, rerun: bool = False) -> None:
        """After a restore at `self.iteration`: the job's optimizer options (a rerun or a PBT mutation may change the
        lr), and the schedule. A `rerun` of the job (srcluster's own checkpoints) follows the job's schedule from the
        restored iteration, whatever restart_scheduler says: a rerun may raise total_iter or add milestones (the saved
        scheduler goes on only where the job's is unchanged). A new run from `path.resume_state` resumes as
        traiNNer-redux does: with `train.restart_scheduler` false (its default) the saved scheduler goes on where it
        stood with its own settings, with true the job's schedule restarts at the restored iteration
        (`restart_schedule`). `saved_schedules`: the saved scheduler states by part name ("sched_g", "sched_d");
        where one is missing, or is another kind of scheduler than the job's, the job's restarts."""
        specs = stage_specs(self.job)
        trained = [("sched_g", self.optim_g, self.sched_g, specs.optim_g)]
        if self.optim_d is not None and self.sched_d is not None and specs.optim_d is not None:
            trained.append(("sched_d", self.optim_d, self.sched_d, specs.optim_d))
        restart = self.job.train.restart_scheduler
        for name, optimizer, schedule, spec in trained:
            saved = saved_schedules.get(name)
            if rerun:
                goes_on = saved is not None and same_settings(schedule, saved) and continue_schedule(schedule, saved)
            else:
                goes_on = not restart and saved is not None and continue_schedule(schedule, saved)
            # the options before a restart (its lrs start from the job's initial lr), after a saved schedule's load
            # (which brings back the saved base lrs); only where they differ: it rescales the lr (not bit for bit)
            if not options_held(optimizer, spec):
                apply_optimizer_options(optimizer, schedule, spec)
            if not goes_on:
                restart_schedule(optimizer, schedule, self.iteration)


def same_settings(schedule: Schedule, saved: dict[str, Any]) -> bool:
    """Whether a saved scheduler state has the job's scheduler's settings (its progress aside)."""
    return {k: v for k, v in saved.items() if k not in PROGRESS} == schedule.config()


def continue_schedule(schedule: Schedule, saved: dict[str, Any]) -> bool:
    """Load a saved scheduler state whole, its settings (milestones, periods, T_max, ...) included, as redux's
    `scheduler.load_state_dict`; False, loading nothing, where it is another kind of scheduler (it lacks one of the
    job's scheduler's settings). torch's private flags are no settings: another torch version saves other ones."""
    own = schedule.scheduler.state_dict()
    if not {k for k in schedule.config() if not k.startswith("_")} <= saved.keys():
        return False
    schedule.scheduler.load_state_dict(own | {k: v for k, v in saved.items() if k in own})
    return True


def restart_schedule(optimizer: torch.optim.Optimizer, schedule: Schedule, iteration: int) -> None:
    """traiNNer-redux's restart_scheduler: the job's schedule, not the saved one, goes on from `iteration`. Its
    scheduler is put where it would stand after `iteration` steps from the start (redux sets last_epoch and
    _step_count alone; a scheduler that counts more, as CosineAnnealingWarmRestarts' cycle, is replayed) and each lr
    is the schedule's there: the new schedule's lr at `iteration`, a milestone added before it included. (redux
    keeps the saved optimizer's lr and sets last_epoch to iteration - 1, so its new schedule acts one step late.)"""
    scheduler = schedule.scheduler
    scheduler.last_epoch = iteration
    scheduler._step_count = iteration + 1  # pyright: ignore[reportAttributeAccessIssue]  # torch's count of step() calls
    if getattr(scheduler, "_get_closed_form_lr", None) is not None:
        lrs = schedule.closed_form_lrs()
    else:
        replay = replayed(schedule, iteration)
        progress = {k: v for k, v in replay.state_dict().items() if k in PROGRESS and k != "base_lrs"}
        scheduler.load_state_dict(scheduler.state_dict() | progress)
        lrs = replay.get_last_lr()
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        warming = 0 < iteration <= schedule.warmup_iter
        group["lr"] = group["initial_lr"] * iteration / schedule.warmup_iter if warming else lr
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # pyright: ignore[reportAttributeAccessIssue]  # what get_last_lr() reports


def replayed(schedule: Schedule, iteration: int) -> LRScheduler:
    """The job's scheduler after `iteration` steps from its base lrs, on a throwaway optimizer."""
    params = [{"params": [nn.Parameter(torch.zeros(1))], "lr": base} for base in schedule.scheduler.base_lrs]
    replay = make_scheduler(torch.optim.Adam(params), schedule.spec)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
        for _ in range(iteration):
            replay.step()
    return replay


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


def build_teacher(
    job: Job,
    device: torch.device,
    log,
    settings: StorageSettings | None,
    staged: dict[str, str] | None,
) -> nn.Module | None:
    """`network_g_teacher` with its weights (`path.pretrain_network_g_teacher`, strictly, as traiNNer-redux loads it),
    frozen in eval mode on the stage's device; None without one."""
    spec = job.network_g_teacher
    if spec is None:
        return None
    weights_path = job.path.pretrain_network_g_teacher
    assert weights_path is not None  # the job's validation requires it with a teacher
    teacher = archs.build_generator(spec.type, job.scale, **spec.options()).to(device)
    pretrain = PretrainSpec(weights_path, None, True)
    load_pretrain(teacher, pretrain, "teacher", log, settings, staged=staged)
    teacher.requires_grad_(False)
    return teacher.eval().to(memory_format=backend.memory_format(job))


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
    # the teacher next, between G and D as in redux's SRModel, so the seed gives D the same initial weights as there
    teacher = build_teacher(job, device, log, settings, staged_pretrains)
    raw_d = None
    if specs.discriminator is not None:  # built next, as redux does, so the seed gives it the same initial weights
        raw_d = archs.build_discriminator(specs.discriminator.type, **specs.discriminator.options).to(device)
        load_pretrain(raw_d, specs.pretrain_d, "pretrain D", log, settings, network="d", staged=staged_pretrains)
    raw_g = raw_g.to(memory_format=layout)
    if raw_d is not None:
        raw_d = raw_d.to(memory_format=layout)
    ema = EMA.from_spec(raw_g, specs.ema) if specs.ema else None
    if ema is not None:
        # redux hands these weights to ema-pytorch as its ema_model: they are the EMA generator until its first
        # update, which copies G all the same (ema-pytorch copies on the update that finds it not yet initialised, as
        # EMA.update's first does); a resumed stage's EMA then comes from its checkpoint
        load_pretrain(ema.net, specs.pretrain_g_ema, "pretrain EMA", log, settings, staged=staged_pretrains)
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
    stage.teacher = teacher
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
        if job.train.adaptive_d:
            stage.gan_loss_ema = torch.zeros((), device=device)  # redux's l_g_gan_ema starts at 0.0
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
