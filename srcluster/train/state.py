"""Everything a worker trains with (`Stage`), built from the job's specs, and its checkpoint files.

A checkpoint folder holds `state.pt` (the whole Stage: networks, optimizers, schedulers, EMA, RNG, iteration, best) and
the EMA generator as safetensors, the file passed downstream.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from srcluster.components import archs, losses, weights
from srcluster.components.optim import EMA, build_optimizer, build_scheduler
from srcluster.components.specs import PretrainSpec
from srcluster.config import Job
from srcluster.storage import StorageSettings
from srcluster.tracking.models import weights_file
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
    sched_g: LambdaLR
    pixel_losses: list[tuple[str, float, nn.Module]]
    gan: tuple[float, nn.Module] | None = None
    net_d: nn.Module | None = None
    raw_d: nn.Module | None = None
    optim_d: torch.optim.Optimizer | None = None
    sched_d: LambdaLR | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast only; bf16 and fp32 need no loss scaling
    iteration: int = 0
    nonfinite_streak: int = 0
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
            "scaler": self.scaler,
            "net_g_ema": self.ema.net if self.ema else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            if part is not None and name in state:
                part.load_state_dict(state[name])
        self.iteration = int(state["iteration"])
        if self.ema:
            self.ema.step = int(state.get("ema_step", self.iteration))
        torch.set_rng_state(state["torch_rng"])
        self.world = int(state.get("world", self.world))
        if self.best is not None and "best" in state:
            self.best.load_state(state["best"])


def load_pretrain(net: nn.Module, spec: PretrainSpec | None, label: str, log, settings: StorageSettings | None) -> None:
    if spec is not None:
        report = weights.load_pretrain(
            net,
            weights_file(spec.path),
            param_key=spec.param_key,
            strict=spec.strict,
            label=spec.path,
            settings=settings,
        )
        log(f"{label}: {report.summary()}")


def build_stage(
    job: Job,
    device: torch.device,
    wrap=lambda net: net,
    log=print,
    settings: StorageSettings | None = None,
) -> Stage:
    """The stage's networks, losses, optimizers, schedules and EMA, built from `stage_specs(job)` alone. `settings`:
    the process's storage settings (resolved once at its entry point), for reading pretrains."""
    specs = stage_specs(job)
    torch.manual_seed(specs.seed)  # same initial weights on every rank
    raw_g = archs.build_generator(specs.generator.type, specs.scale, **specs.generator.options).to(device)
    load_pretrain(raw_g, specs.pretrain_g, "pretrain", log, settings)
    if job.use_channels_last:
        raw_g = raw_g.to(memory_format=torch.channels_last)
    ema = EMA.from_spec(raw_g, specs.ema) if specs.ema else None
    optim_g = build_optimizer(raw_g.parameters(), specs.optim_g)
    pixel, gan = [], None
    for spec in specs.losses:
        module = losses.build_loss(spec.type, **spec.options).to(device)
        if spec.type == "ganloss":
            gan = (spec.weight, module)
        else:
            pixel.append((spec.type, spec.weight, module))
    stage = Stage(job, device, wrap(raw_g), raw_g, ema, optim_g, build_scheduler(optim_g, specs.scheduler), pixel, gan)
    if job.use_compile:  # the training forward only: EMA, validation and checkpoints use the plain module
        # a Module in, an OptimizedModule (a Module) out; torch.compile's annotations only promise a callable
        stage.net_g = cast(nn.Module, torch.compile(stage.net_g, mode=job.compile_mode))
    if job.use_amp and not job.amp_bf16 and device.type == "cuda":
        stage.scaler = torch.amp.GradScaler("cuda")
    if gan is not None:
        assert specs.discriminator is not None and specs.optim_d is not None  # stage_specs pairs them with a ganloss
        raw_d = archs.build_discriminator(specs.discriminator.type, **specs.discriminator.options).to(device)
        load_pretrain(raw_d, specs.pretrain_d, "pretrain D", log, settings)
        stage.raw_d, stage.net_d = raw_d, wrap(raw_d)
        stage.optim_d = build_optimizer(raw_d.parameters(), specs.optim_d)
        stage.sched_d = build_scheduler(stage.optim_d, specs.scheduler)
    return stage


def write_checkpoint(stage: Stage, folder: Path) -> Path:
    """A checkpoint folder: the whole training state and the EMA generator (the file passed downstream)."""
    torch.save(stage.state(), folder / STATE_FILE)
    weights.export_generator(stage.eval_net, folder / GENERATOR_FILE)
    return folder
