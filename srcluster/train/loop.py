"""The training loop of one stage, as it runs inside each Ray Train worker.

Every worker builds the same models, streams its own part of the shards, makes LR by bicubic downscale on the fly and
steps in lock-step with the others (DDP). Rank 0 validates, logs to MLflow and writes checkpoints; every worker calls
`ray.train.report` at the same iterations, since that call is a barrier.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srcluster.config import Job
from srcluster.degrade.resize import imresize
from srcluster.components import archs, losses, weights
from srcluster.tracking.models import weights_file
from srcluster.train.batch import to_batch
from srcluster.train.best import Best, publish as publish_best
from srcluster.train.validate import ValImage, build_metrics, prepare, validate

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


class EMA:
    """Exponential moving average of the generator; decay warms up as 1 - (1 + step)^-power, capped at ema_decay."""

    def __init__(self, net: nn.Module, decay: float, power: float):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.power, self.step = decay, power, 0

    def current_decay(self) -> float:
        if self.power <= 0:
            return self.decay
        return min(self.decay, 1 - (1 + self.step) ** -self.power)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.step += 1
        decay = self.current_decay()
        ema_params = list(self.net.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - decay)
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers()):
            ema_buffer.copy_(buffer)


def build_optimizer(params, options) -> torch.optim.Optimizer:
    cls = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[options.type]
    return cls(params, lr=options.lr, weight_decay=options.weight_decay, betas=tuple(options.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, job: Job) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured schedule, with traiNNer-redux's linear warmup over `warmup_iter` in front of it."""
    options, warmup, total = job.train.scheduler, job.train.warmup_iter, job.train.total_iter
    if options.type == "MultiStepLR":
        def decay(it: int) -> float:
            return options.gamma ** sum(it >= m for m in options.milestones)
    else:
        base = optimizer.param_groups[0]["lr"]
        floor = options.eta_min / base

        def decay(it: int) -> float:
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))

    def factor(it: int) -> float:
        ramp = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
        return ramp * decay(it)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Stage:
    """Everything a worker trains with; built once, saved and restored as a whole."""

    job: Job
    device: torch.device
    net_g: nn.Module  # DDP-wrapped when world > 1
    raw_g: nn.Module
    ema: EMA | None
    optim_g: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    pixel_losses: list[tuple[str, float, nn.Module]]
    gan: tuple[float, nn.Module] | None = None
    net_d: nn.Module | None = None
    raw_d: nn.Module | None = None
    optim_d: torch.optim.Optimizer | None = None
    sched_d: torch.optim.lr_scheduler.LRScheduler | None = None
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
        state.update(iteration=self.iteration, ema_step=self.ema.step if self.ema else 0,
                     torch_rng=torch.get_rng_state(), world=self.world)
        if self.best is not None:
            state["best"] = self.best.state()
        return state

    def parts(self) -> dict[str, Any]:
        return {"net_g": self.raw_g, "optim_g": self.optim_g, "sched_g": self.sched_g,
                "net_d": self.raw_d, "optim_d": self.optim_d, "sched_d": self.sched_d, "scaler": self.scaler,
                "net_g_ema": self.ema.net if self.ema else None}

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


def build_stage(job: Job, device: torch.device, wrap=lambda net: net, log=print) -> Stage:
    torch.manual_seed(job.manual_seed or 0)  # same initial weights on every rank
    raw_g = archs.build_generator(job.network_g.type, job.scale, **job.network_g.options()).to(device)
    if job.path.pretrain_network_g:
        report = weights.load_pretrain(raw_g, weights_file(job.path.pretrain_network_g), param_key=job.path.param_key_g,
                                       strict=job.path.strict_load_g)
        log(f"pretrain: {report.summary()}")
    if job.use_channels_last:
        raw_g = raw_g.to(memory_format=torch.channels_last)
    ema = EMA(raw_g, job.train.ema_decay, job.train.ema_power) if job.train.ema_decay > 0 else None
    optim_g = build_optimizer(raw_g.parameters(), job.train.optim_g)
    pixel, gan = [], None
    for spec in job.train.losses:
        if spec.loss_weight == 0:
            continue
        module = losses.build_loss(spec.type, **spec.options()).to(device)
        if spec.type == "ganloss":
            gan = (spec.loss_weight, module)
        else:
            pixel.append((spec.type, spec.loss_weight, module))
    stage = Stage(job, device, wrap(raw_g), raw_g, ema, optim_g, build_scheduler(optim_g, job), pixel, gan)
    if job.use_compile:  # the training forward only: EMA, validation and checkpoints use the plain module
        stage.net_g = torch.compile(stage.net_g, mode=job.compile_mode)
    if job.use_amp and not job.amp_bf16 and device.type == "cuda":
        stage.scaler = torch.amp.GradScaler("cuda")
    if gan is not None:
        assert job.network_d is not None  # the config validator guarantees it
        raw_d = archs.build_discriminator(job.network_d.type, **job.network_d.options()).to(device)
        if job.path.pretrain_network_d:
            report = weights.load_pretrain(raw_d, weights_file(job.path.pretrain_network_d), param_key=job.path.param_key_d,
                                           strict=job.path.strict_load_d)
            log(f"pretrain D: {report.summary()}")
        stage.raw_d, stage.net_d = raw_d, wrap(raw_d)
        stage.optim_d = build_optimizer(raw_d.parameters(), job.train.optim_d or job.train.optim_g)
        stage.sched_d = build_scheduler(stage.optim_d, job)
    return stage


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (MATLAB imresize, antialiased) downscale on the training device; float in [0, 1]."""
    return imresize(hr, 1 / scale, kernel="bicubic").clamp_(0, 1)


def no_sync(net: nn.Module, skip: bool):
    return net.no_sync() if skip and hasattr(net, "no_sync") else contextlib.nullcontext()


def train_step(stage: Stage, batches, accum: int) -> dict[str, float]:
    """One optimiser step over `accum` micro-batches; gradients are all-reduced only on the last one."""
    job, device = stage.job, stage.device
    totals: dict[str, float] = {}
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
            terms = {f"l_g_{name}": weight * loss(sr.float(), batch.target(name))
                     for name, weight, loss in stage.pixel_losses}
            if stage.gan is not None:
                # D scores the fake through its raw module with frozen weights: no DDP hook waits for D gradients here.
                stage.raw_d.requires_grad_(False)
                weight, gan_loss = stage.gan
                terms["l_g_gan"] = weight * gan_loss(stage.raw_d(sr), True, is_disc=False)
                stage.raw_d.requires_grad_(True)
            loss_g = sum(terms.values())
        scale(stage, loss_g / accum).backward()
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.detach() / accum
        if stage.gan is not None:
            with no_sync(stage.net_d, not last), amp_context(job, device):
                # real and fake in one forward pass, so DDP sees exactly one forward per backward
                logits = stage.net_d(torch.cat([hr, sr.detach()]))
                real, fake = logits.chunk(2)
                l_real, l_fake = stage.gan[1](real, True, is_disc=True), stage.gan[1](fake, False, is_disc=True)
            scale(stage, (l_real + l_fake) / accum).backward()
            totals["l_d_real"] = totals.get("l_d_real", 0.0) + l_real.detach() / accum
            totals["l_d_fake"] = totals.get("l_d_fake", 0.0) + l_fake.detach() / accum
    steps = [(optim, sched) for optim, sched in ((stage.optim_g, stage.sched_g), (stage.optim_d, stage.sched_d)) if optim]
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
    out = dict(zip(totals, values[len(norms):]))
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
            "or use amp_bf16: true instead of fp16")


def amp_context(job: Job, device: torch.device):
    if not job.use_amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if job.amp_bf16 or device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# --- the Ray Train entry point ----------------------------------------------------------------------------------------


def train_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from srcluster.data.stream import iter_images, split_units, train_loader
    from srcluster.tracking.tracker import Tracker

    job = Job.model_validate(config["job"])
    # Ray Train logs every report at INFO ("Reporting training result ...", through a logger named after its file);
    # keep the console for progress lines.
    from ray.train.v2._internal.execution import context as ray_train_context

    ray_train_context.logger.setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.srcluster.cpus_per_worker)))

    def log(message: str) -> None:
        if rank == 0:
            print(f"[{job.name}] {message}", flush=True)

    def wrap(net: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(net, move_to_device=False) if world > 1 else net

    stage = build_stage(job, device, wrap, log)
    stage.world = world
    val_metrics: dict = {}
    if rank == 0 and job.datasets.val is not None and job.val.val_enabled:
        val_metrics = build_metrics(job.val.metrics if job.val.metrics_enabled else {}, job.scale)
    if job.best_metric:
        options = job.srcluster.plateau
        higher = val_metrics[job.best_metric.removeprefix("val_")].better == "higher" if rank == 0 else True
        stage.best = Best(job.best_metric, higher, options.min_delta, options.patience)

    tracker = Tracker(config["tracking_uri"], buffered=True) if rank == 0 else None
    run_id = config["run_id"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        stage.load_state(load_state_file(checkpoint, device))
        log(f"resumed from checkpoint at iteration {stage.iteration}")
    batch_size, accum = job.batch_plan(world)
    if checkpoint is not None and stage.world != world:
        change = f"{stage.world} -> {world} workers: batch_size_per_gpu {batch_size}, accum_iter {accum}"
        log(f"worker group resized at iteration {stage.iteration}, {change}, effective batch {job.effective_batch} kept")
        if tracker:
            tracker.set_tags(run_id, {f"srcluster.resize.{stage.iteration}": change})
        stage.world = world

    validating = job.datasets.val is not None and job.val.val_enabled
    val_images: list[ValImage] = []
    if rank == 0 and validating:
        val_images = prepare(iter_images(_first(job.datasets.val.dataroot_gt)), job.scale)

    data = job.datasets.train
    total = job.train.total_iter
    remaining = total - stage.iteration
    loader = train_loader(
        data.dataroot_gt, crop=data.lq_size * job.scale, batch_size=batch_size, rank=rank,
        world_size=world, num_workers=data.num_worker_per_gpu, seed=job.manual_seed or 0, epoch=stage.iteration,
        steps=max(remaining, 0) * accum, use_hflip=data.use_hflip, use_rot=data.use_rot,
        lq=data.dataroot_lq, scale=job.scale, degradations=data.degradations,
        degrade_in_workers=job.degrade_in_workers,
    )
    batches = iter(loader)
    shards, disjoint = split_units(loader.dataset.units, rank, world, 0, 1)
    # every rank says which data it reads: on a multi-node cluster each node should stream its own share
    print(f"[{job.name}] rank {rank} on node {ray.get_runtime_context().get_node_id()[:12]} reads "
          f"{len(shards)} of {len(loader.dataset.units)} shards/images{'' if disjoint else ' (all: too few to split)'}: "
          f"{', '.join(u.url.rsplit('/', 1)[-1] for u in shards[:4])}{' …' if len(shards) > 4 else ''}", flush=True)
    log(f"rank {rank}/{world} on {device}: {remaining} iterations left, effective batch "
        f"{batch_size} x {world} workers x {accum} accum = {batch_size * world * accum}")

    window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
    train_start = time.perf_counter()
    start_iteration = stage.iteration
    while stage.iteration < total:
        try:
            step = train_step(stage, batches, accum)
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(
                f"{exc}\nout of memory at lq_size {data.lq_size}, batch_size_per_gpu {batch_size}: lower "
                "datasets.train.lq_size or batch_size_per_gpu and raise accum_iter to keep the effective batch") from None
        check_finite(stage, job.srcluster.nonfinite_patience)
        window_steps += 1
        window_wait += step.pop("data_wait_s")
        it = stage.iteration
        is_last = it == total
        log_now = it % job.logger.print_freq == 0 or is_last
        val_now = validating and (it % job.val.val_freq == 0 or is_last)
        if not (log_now or val_now or it % job.logger.save_checkpoint_freq == 0 or is_last):
            continue
        metrics: dict[str, float] = {}
        if rank == 0:
            elapsed = time.perf_counter() - window_start
            rate = window_steps / elapsed
            eta = (total - it) / max((it - start_iteration) / (time.perf_counter() - train_start), 1e-9)
            metrics.update(step)
            metrics.update(loader.counts())  # skipped samples by reason and S3 retries: reported, not hidden
            metrics.update({"lr": stage.optim_g.param_groups[0]["lr"], "it_per_s": rate, "workers": world,
                            "samples_per_s": rate * batch_size * accum * world,
                            "data_wait_fraction": window_wait / elapsed, "peak_memory_mb": peak_memory_mb(device)})
            window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
            if val_now:
                with tempfile.TemporaryDirectory() as tmp:
                    grid = Path(tmp) / f"val_{it:07d}.png"
                    metrics.update({f"val_{k}": v for k, v in validate(stage.eval_net, val_images, val_metrics, job.scale,
                                                                         grid_path=grid).items()})
                    tracker.log_artifact(run_id, grid, "comparisons")
                if stage.best is not None and stage.best.update(metrics[stage.best.metric], it):
                    publish_best(config["best_uri"], stage.eval_net, stage.best)
            losses_text = " ".join(f"{k} {v:.4g}" for k, v in step.items())
            val_text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_"))
            log(f"iter {it}/{total} | {losses_text} | lr {metrics['lr']:.2e} | {rate:.2f} it/s | "
                f"{metrics['samples_per_s']:.0f} samples/s | data wait {100 * metrics['data_wait_fraction']:.0f}% | "
                f"peak mem {metrics['peak_memory_mb']:.0f} MB | eta {eta:.0f}s {val_text}".rstrip())
            tracker.log_metrics(run_id, metrics, step=it)
        plateaued = val_now and stage.best is not None and agree(stage.best.plateaued, device, world)
        if plateaued and rank == 0:
            log(f"stopping at iteration {it}: {stage.best.metric} has not improved by more than "
                f"{stage.best.min_delta} for {stage.best.patience} validations (best {stage.best.value:.4f} at "
                f"iteration {stage.best.iteration})")
        save_now = it % job.logger.save_checkpoint_freq == 0 or is_last or plateaued
        report(stage, {"iteration": it, **metrics, "stopped_early": int(plateaued)}, save=save_now, rank=rank)
        if plateaued:
            break


def agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's decision, on every rank (only rank 0 validates), so all ranks stop at the same iteration."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def report(stage: Stage, metrics: dict[str, float], *, save: bool, rank: int) -> None:
    import ray.train

    if not (save and rank == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(stage.state(), Path(folder) / STATE_FILE)
        weights.export_generator(stage.eval_net, Path(folder) / GENERATOR_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint_{stage.iteration:07d}")


def _first(urls: str | list[str]) -> str:
    return urls if isinstance(urls, str) else urls[0]
