"""The one training loop, `run(stage, batches, validator, reporter)`, and the Ray Train worker that runs it.

Every worker builds the same models, streams its own part of the shards (LR made on the fly: bicubic or the job's
degradations) and steps in lock-step with the others (DDP). Rank 0 validates, logs to MLflow and writes checkpoints.
Ray Train workers (`train_worker`, below) and single-worker Tune trials (srcluster/tune/trial.py) both build the
stage, the data, the validator and their reporter (train/reporters.py), then call `run`.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.execution import context as ray_train_context
from torch import nn

from srcluster.config import Job
from srcluster.data.stream import split_units
from srcluster.storage import StorageSettings
from srcluster.tracking import tags
from srcluster.tracking.tracker import Tracker
from srcluster.train import best
from srcluster.train.reporters import RayTrainReporter, Reporter
from srcluster.train.specs import train_data

# GENERATOR_FILE and checkpoint_file are read from here by run_stage and the Tune driver
from srcluster.train.state import GENERATOR_FILE, STATE_FILE, Stage, build_stage, checkpoint_file
from srcluster.train.step import check_finite, train_step
from srcluster.train.validate import Validator, build_validator

__all__ = ["GENERATOR_FILE", "STATE_FILE", "checkpoint_file", "run", "train_worker"]


class Batches(Iterable, Protocol):
    """The training loader: loader items, and its skip/retry counts (reported, not hidden)."""

    def counts(self) -> dict[str, int]: ...


def run(stage: Stage, batches: Batches, validator: Validator | None, reporter: Reporter) -> None:
    """Train `stage` to `train.total_iter` (or its plateau stop), reporting at the job's log, validation and save
    points.

    `validator` is rank 0's (None elsewhere, or when the job does not validate); every rank reaches the same report
    points, so a reporter whose report is a barrier (Ray Train) sees each on every rank.
    """
    job, device, world, rank = stage.job, stage.device, stage.world, reporter.rank
    batch_size, accum = job.batch_plan(world)
    total = job.train.total_iter
    validating = job.datasets.val is not None and job.val.val_enabled  # the same on every rank
    items = iter(batches)

    def say(message: str) -> None:
        if rank == 0:
            print(f"[{job.name}] {message}", flush=True)

    window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
    train_start = time.perf_counter()
    start_iteration = stage.iteration
    while stage.iteration < total:
        try:
            step = train_step(stage, items, accum)
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(
                f"{exc}\nout of memory at lq_size {job.datasets.train.lq_size}, batch_size_per_gpu {batch_size}: lower "
                "datasets.train.lq_size or batch_size_per_gpu and raise accum_iter to keep the effective batch"
            ) from None
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
            metrics.update(batches.counts())
            metrics.update(
                {
                    "lr": stage.optim_g.param_groups[0]["lr"],
                    "it_per_s": rate,
                    "workers": world,
                    "samples_per_s": rate * batch_size * accum * world,
                    "data_wait_fraction": window_wait / elapsed,
                    "peak_memory_mb": peak_memory_mb(device),
                }
            )
            if stage.optim_d is not None:
                metrics["lr_d"] = stage.optim_d.param_groups[0]["lr"]
            window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
            if val_now:
                assert validator is not None, "rank 0 validates: build_validator(job) must be passed to run"
                metrics.update(validate(stage, validator, reporter))
            losses_text = " ".join(f"{k} {v:.4g}" for k, v in step.items())
            val_text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_"))
            say(
                f"iter {it}/{total} | {losses_text} | lr {metrics['lr']:.2e} | {rate:.2f} it/s | "
                f"{metrics['samples_per_s']:.0f} samples/s | data wait {100 * metrics['data_wait_fraction']:.0f}% | "
                f"peak mem {metrics['peak_memory_mb']:.0f} MB | eta {eta:.0f}s {val_text}".rstrip()
            )
            reporter.log(metrics, it)
        plateaued = False
        if val_now and stage.best is not None:
            plateaued = agree(stage.best.plateaued, device, world)
            if plateaued and rank == 0:  # only rank 0 holds the best value
                say(
                    f"stopping at iteration {it}: {stage.best.metric} has not improved by more than "
                    f"{stage.best.min_delta} for {stage.best.patience} validations (best {stage.best.value:.4f} at "
                    f"iteration {stage.best.iteration})"
                )
        save_now = it % job.logger.save_checkpoint_freq == 0 or is_last or plateaued
        reporter.report(
            stage, {"iteration": it, **metrics, "stopped_early": int(plateaued)}, save=save_now, validated=val_now
        )
        if plateaued:
            break


def validate(stage: Stage, validator: Validator, reporter: Reporter) -> dict[str, float]:
    """Rank 0's validation at the current iteration: its metrics, the comparison grid logged (when `val.save_img`),
    and the best generator published when this validation is the new best."""
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / f"val_{stage.iteration:07d}.png"
        metrics = validator(stage.eval_net, grid)
        if grid.exists():
            reporter.log_artifact(grid, "comparisons")
    if stage.best is not None and stage.best.update(metrics[stage.best.metric], stage.iteration):
        reporter.publish_best(stage)
    return metrics


def agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's decision, on every rank (only rank 0 validates), so all ranks stop at the same iteration."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --- the Ray Train entry point ----------------------------------------------------------------------------------------


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker (`TorchTrainer(train_worker, train_loop_config={"job", "run_id", "tracking_uri",
    "best_uri"})`): the stage, its share of the data, rank 0's validator and the Ray Train reporter, then `run`."""
    # Ray Train logs every report at INFO ("Reporting training result ...", through a logger named after its file);
    # keep the console for progress lines.
    ray_train_context.logger.setLevel(logging.WARNING)
    job = Job.model_validate(config["job"])
    settings = StorageSettings.resolve(job.srcluster.s3_endpoint)  # once per worker process; passed down from here
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.srcluster.cpus_per_worker)))

    def log(message: str) -> None:
        if rank == 0:
            print(f"[{job.name}] {message}", flush=True)

    def wrap(net: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(net, move_to_device=False) if world > 1 else net

    stage = build_stage(job, device, wrap, log, settings)
    stage.world = world
    validator = build_validator(job) if rank == 0 else None
    stage.best = best.for_job(
        job, validator.higher_is_better(job.best_metric) if validator and job.best_metric else True
    )
    tracker = Tracker(config["tracking_uri"], buffered=True) if rank == 0 else None
    reporter = RayTrainReporter(tracker, config["run_id"], rank, best_uri=config["best_uri"], settings=settings)
    if reporter.restore(stage):
        log(f"resumed from checkpoint at iteration {stage.iteration}")
        if stage.world != world:
            batch_size, accum = job.batch_plan(world)
            change = f"{stage.world} -> {world} workers: batch_size_per_gpu {batch_size}, accum_iter {accum}"
            log(
                f"worker group resized at iteration {stage.iteration}, {change}, effective batch "
                f"{job.effective_batch} kept"
            )
            if tracker:
                tracker.set_tags(reporter.run_id, {tags.resized(stage.iteration): change})
            stage.world = world

    data = train_data(job, world)
    _, accum = job.batch_plan(world)
    remaining = job.train.total_iter - stage.iteration
    loader = data.loader(rank=rank, world=world, start=stage.iteration, steps=max(remaining, 0) * accum)
    units = loader.dataset.units
    shards, disjoint = split_units(units, rank, world, 0, 1)
    # every rank says which data it reads: on a multi-node cluster each node should stream its own share
    print(
        f"[{job.name}] rank {rank} on node {ray.get_runtime_context().get_node_id()[:12]} reads "
        f"{len(shards)} of {len(units)} shards/images{'' if disjoint else ' (all: too few to split)'}: "
        f"{', '.join(u.url.rsplit('/', 1)[-1] for u in shards[:4])}{' …' if len(shards) > 4 else ''}",
        flush=True,
    )
    log(
        f"rank {rank}/{world} on {device}: {remaining} iterations left, effective batch "
        f"{data.batch_size} x {world} workers x {accum} accum = {data.batch_size * world * accum}"
    )
    run(stage, loader, validator, reporter)
