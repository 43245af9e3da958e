"""The one training loop, `run(stage, batches, validator, reporter)`, and the Ray Train worker that runs it.

Every worker builds the same models, streams its own part of the shards (LR made on the fly: bicubic or the job's
degradations) and steps in lock-step with the others (DDP). Every rank validates its share of the validation images (all
get the same metrics); rank 0 logs to MLflow, makes the comparison grids and page, and writes checkpoints.
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
from typing import Any, Protocol, cast

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.execution import context as ray_train_context
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from srcluster.components.optim import evaluation_weights
from srcluster.config import Job
from srcluster.data.stream import split_units
from srcluster.page import STAGE_PAGE_FOLDER, STAGE_PAGE_NAME, ComparePage
from srcluster.storage import StorageSettings
from srcluster.tracking import tags
from srcluster.tracking.tracker import Tracker
from srcluster.train import best, resume
from srcluster.train.reporters import RayTrainReporter, Reporter
from srcluster.train.specs import train_data

# GENERATOR_FILE and checkpoint_file are read from here by run_stage and the Tune driver
from srcluster.train.state import GENERATOR_FILE, STATE_FILE, Stage, build_stage, checkpoint_file
from srcluster.train.step import check_finite, step_values, train_step
from srcluster.train.validate import Validator, build_validator

__all__ = ["GENERATOR_FILE", "STATE_FILE", "checkpoint_file", "run", "train_worker"]


class Batches(Iterable, Protocol):
    """The training loader: loader items, and its skip/retry counts (reported, not hidden)."""

    def counts(self) -> dict[str, int]: ...


# How often rank 0 asks the driver whether to stop: a small model steps ~10x a second on a GPU, so a preemption warning
# (Slurm's is 120 s) is answered within seconds, for one small actor call and one broadcast every 10 steps
STOP_POLL_EVERY = 10


def run(stage: Stage, batches: Batches, validator: Validator | None, reporter: Reporter) -> None:
    """Train `stage` to `train.total_iter` (or its plateau stop), reporting at the job's log, validation and save
    points.

    `validator` is this rank's (None when the job does not validate): every rank validates its share of the images and
    gets the same metrics; every rank reaches the same report points, so a reporter whose report is a barrier (Ray
    Train) sees each on every rank.
    """
    job, device, world, rank = stage.job, stage.device, stage.world, reporter.rank
    batch_size, accum = job.batch_plan(world)
    total = job.train.total_iter
    validating = job.validates  # the same on every rank
    items = iter(batches)
    window_start, window_steps, window_wait = time.perf_counter(), 0, 0.0
    train_start = time.perf_counter()
    start_iteration = stage.iteration
    if validator is not None and start_iteration > 0:  # resumed: its run may already have a page to go on from
        continue_page(stage, validator, reporter)
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
        window_wait += float(step.pop("data_wait_s"))  # a float already: no device read
        it = stage.iteration
        is_last = it == total
        log_now = it % job.logger.print_freq == 0 or is_last
        val_now = validating and (it % job.val.val_freq == 0 or is_last)
        stop_reason = stop_requested(reporter, it, device, world)
        if not (log_now or val_now or it % job.logger.save_checkpoint_freq == 0 or is_last or stop_reason):
            continue
        # the step's values in one read from the device, on every rank: it also counts a skip the device decided
        # (non-finite streak, EMA updates) before a checkpoint is written
        losses = step_values(stage, step)
        metrics: dict[str, float] = {}
        if rank == 0:
            elapsed = time.perf_counter() - window_start
            rate = window_steps / elapsed
            metrics.update(losses)
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
        if val_now:  # every rank, each its share of the images (collectives inside): the same metrics on every rank
            assert validator is not None, "every rank validates: pass build_validator(job, rank, world) to run"
            with evaluation_weights(stage.optim_g):  # a schedule-free G validates its averaged weights (redux)
                validated = validate(stage, validator, reporter)
            if rank == 0:
                metrics.update(validated)
        if rank == 0:
            eta = (total - it) / max((it - start_iteration) / (time.perf_counter() - train_start), 1e-9)
            reporter.progress(progress_record(stage, metrics, losses, eta))
            reporter.log(metrics, it)
        plateaued = False
        if val_now and stage.best is not None:
            # every rank updated its best from the same metrics; rank 0's decision is still shared, so a rank whose
            # best state differed (restored from elsewhere) can never stop alone
            plateaued = agree(stage.best.plateaued, device, world)
            if plateaued and rank == 0:  # rank 0 speaks for all
                reporter.say(
                    f"stopping at iteration {it}: {stage.best.metric} has not improved by more than "
                    f"{stage.best.min_delta} for {stage.best.patience} validations (best {stage.best.value:.4f} at "
                    f"iteration {stage.best.iteration})"
                )
        if stop_reason and rank == 0:
            reporter.say(f"checkpointing at iteration {it} and stopping: {stop_reason}")
        save_now = it % job.logger.save_checkpoint_freq == 0 or is_last or plateaued or bool(stop_reason)
        # checkpoints hold a schedule-free optimizer's evaluation weights, as redux saves them
        with evaluation_weights(*((stage.optim_g, stage.optim_d) if save_now or val_now else ())):
            reporter.report(
                stage, {"iteration": it, **metrics, "stopped_early": int(plateaued)}, save=save_now, validated=val_now
            )
        if plateaued or stop_reason:
            break


def progress_record(stage: Stage, metrics: dict[str, float], losses: dict[str, float], eta_s: float) -> dict[str, Any]:
    """Rank 0's progress at a report point, as the console shows it (srcluster/console.py: progress_text)."""
    best = stage.best
    return {
        "iteration": stage.iteration,
        "total": stage.job.train.total_iter,
        "losses": dict(losses),
        "lr": metrics["lr"],
        "it_per_s": metrics["it_per_s"],
        "samples_per_s": metrics["samples_per_s"],
        "data_wait": metrics["data_wait_fraction"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "eta_s": eta_s,
        "val": {k: v for k, v in metrics.items() if k.startswith("val_")},
        "best": {"metric": best.metric, "value": best.value, "iteration": best.iteration}
        if best is not None and best.value is not None
        else None,
    }


def validate(stage: Stage, validator: Validator, reporter: Reporter) -> dict[str, float]:
    """This rank's share of the validation at the current iteration and the metrics of all of it (the same on every
    rank, which all update their best from them); rank 0 logs the comparison grids and page (when `val.save_img`) and
    publishes the best generator when this validation is the new best."""
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / f"val_{stage.iteration:07d}.png"
        metrics = validator(stage.eval_net, grid)
        if reporter.rank == 0:  # the grids and the page are rank 0's: it holds every image's output
            for path in sorted(Path(tmp).glob("val_*.png")):  # one grid per validation set
                reporter.log_artifact(path, "comparisons")
            page = validator.write_page(stage.job.name, stage.iteration, Path(tmp))
            if page is not None:  # the stage's comparison page, one file that grows by this checkpoint
                reporter.log_artifact(page, STAGE_PAGE_FOLDER)
    improved = stage.best is not None and stage.best.update(metrics[stage.best.metric], stage.iteration)
    if improved and reporter.rank == 0:
        reporter.publish_best(stage)
    return metrics


def continue_page(stage: Stage, validator: Validator, reporter: Reporter) -> None:
    """A resumed stage (a worker restart, or a rerun that continues its MLflow run) grows the comparison page its run
    already has instead of overwriting it with one that starts at the resume. Never fails the run: without the earlier
    page (tracking server down, the file unreadable) the page starts anew, and this says so once."""
    if not validator.save_img:
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = reporter.download_artifact(f"{STAGE_PAGE_FOLDER}/{STAGE_PAGE_NAME}", Path(tmp))
            previous = ComparePage.read(path) if path is not None else None
        except Exception as exc:  # any failure: the page is never worth the run
            reason = (str(exc).splitlines() or [""])[0][:200]
            reporter.say(
                f"the comparison page starts anew at iteration {stage.iteration}: its earlier checkpoints could not be "
                f"read back ({exc.__class__.__name__}: {reason})"
            )
            return
    if previous is not None:
        validator.continue_page(previous, stage.job.name, stage.iteration)


def stop_requested(reporter: Reporter, iteration: int, device: torch.device, world: int) -> str | None:
    """Whether the driver asked the run to checkpoint and stop (a preemption signal), polled by rank 0 every
    `STOP_POLL_EVERY` iterations and shared with every rank, so all stop after the same step."""
    if iteration % STOP_POLL_EVERY:
        return None
    reason = reporter.stop_requested()
    return (reason or "stop requested") if agree(reason is not None, device, world) else None


def agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's decision, on every rank (only rank 0 asks the driver), so all ranks stop at the same iteration."""
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


# DDP's buckets hold the gradients themselves (no second copy of every gradient); other options stay torch's (the GAN
# step runs D twice per backward and G's graph changes with `use_compile`, so `static_graph` is not safe to assume),
# but for the job's find_unused_parameters, which traiNNer-redux passes to DDP as given
DDP_OPTIONS = {"gradient_as_bucket_view": True}


def ddp_options(job: Job) -> dict[str, Any]:
    return DDP_OPTIONS | {"find_unused_parameters": job.find_unused_parameters}


def with_gradient_compression(ddp: nn.Module, bf16: bool) -> nn.Module:
    """`srcluster.ddp_bf16_gradients`: all-reduce gradients in bf16 (half the bytes between nodes; torch's
    bf16_compress_hook, averaged in fp32 again after), for clusters whose inter-node network is the bottleneck."""
    if bf16:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

        cast(DistributedDataParallel, ddp).register_comm_hook(None, bf16_compress_hook)
    return ddp


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker (`TorchTrainer(train_worker, train_loop_config={"job", "run_id", "tracking_uri",
    "best_uri"})`): the stage, its share of the data, its validator (each rank validates its share) and the Ray Train
    reporter, then `run`."""
    # Ray Train logs every report at INFO ("Reporting training result ...", through a logger named after its file);
    # keep the console for progress lines.
    ray_train_context.logger.setLevel(logging.WARNING)
    job = Job.model_validate(config["job"])
    settings = StorageSettings.resolve(job.srcluster.s3_endpoint)  # once per worker process; passed down from here
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.srcluster.cpus_per_worker)))
    tracker = Tracker(config["tracking_uri"], buffered=True) if rank == 0 else None
    reporter = RayTrainReporter(
        tracker,
        config["run_id"],
        rank,
        stage=job.name,
        mailbox=config.get("mailbox"),
        best_uri=config["best_uri"],
        settings=settings,
    )
    log = reporter.say

    def wrap(net: nn.Module) -> nn.Module:
        if world == 1:
            return net
        ddp = ray.train.torch.prepare_model(net, move_to_device=False, parallel_strategy_kwargs=ddp_options(job))
        return with_gradient_compression(ddp, job.srcluster.ddp_bf16_gradients)

    stage = build_stage(job, device, wrap, log, settings, staged_pretrains=config.get("staged_pretrains"))
    stage.world = world
    validator = build_validator(job, rank, world)
    stage.best = best.for_job(
        job, validator.higher_is_better(job.best_metric) if validator and job.best_metric else True
    )
    if reporter.restore(stage):
        log(f"resumed from checkpoint at iteration {stage.iteration}")
        if stage.world != world:
            batch_size, accum = job.batch_plan(world)
            held = job.effective_batch_on(world)
            change = (
                f"{stage.world} -> {world} workers: batch_size_per_gpu {batch_size}, accum_iter {accum}, "
                f"effective batch {held}"
            )
            kept = "kept" if held == job.effective_batch else f"of {job.effective_batch} is {held} (the closest plan)"
            log(f"worker group resized at iteration {stage.iteration}, {change}, effective batch {kept}")
            if tracker:
                tracker.set_tags(reporter.run_id, {tags.resized(stage.iteration): change})
            stage.world = world
    elif job.path.resume_state:  # a new run's starting point; a run's own checkpoints (above) supersede it
        resume.start_from(stage, job.path.resume_state, settings, log)

    data = train_data(job, world)
    _, accum = job.batch_plan(world)
    remaining = job.train.total_iter - stage.iteration
    loader = data.loader(rank=rank, world=world, start=stage.iteration, steps=max(remaining, 0) * accum)
    units = loader.dataset.units
    shards, whole = split_units(units, rank, world, 0, 1, seed=loader.dataset.seed, epoch=loader.dataset.epoch)
    # every rank says which data it reads first: on a multi-node cluster each node streams its own share of each pass
    print(
        f"[{job.name}] rank {rank} on node {ray.get_runtime_context().get_node_id()[:12]} reads "
        f"{len(shards)} of {len(units)} shards/images in its first pass{'' if whole else ' (some in part)'}: "
        f"{', '.join(u.url.rsplit('/', 1)[-1] for u in shards[:4])}{' …' if len(shards) > 4 else ''}",
        flush=True,
    )
    log(
        f"rank {rank}/{world} on {device}: {remaining} iterations left, effective batch "
        f"{data.batch_size} x {world} workers x {accum} accum = {data.batch_size * world * accum}"
    )
    run(stage, loader, validator, reporter)
