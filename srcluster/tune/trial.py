"""What one Tune trial runs: a whole training stage with the trial's sampled config.

Two kinds, both Tune function trainables:
- `distributed_trial`: the stage as a Ray Train run with N workers (`run_stage` inside the trial, Train V2 style);
  rank 0's reports reach Tune through `TuneReportCallback`. Its MLflow child run, resume and generator export are
  run_stage's own.
- `single_trial`: one worker in the trial's own process, reporting with `tune.report(metrics, checkpoint=...)` at every
  validation. Population Based Training needs this: it pauses trials, and restarts them from another trial's
  checkpoint with mutated hyperparameters, which `apply_optimizer_options` then puts into the restored optimizers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcluster.tune.space import LoadedSearch

TRIAL_TAG = "srcluster.tune.trial_id"
SEARCH_TAG = "srcluster.tune.search_run"


@dataclass
class TrialContext:
    """What every trial needs from the driver (handed over once through the object store)."""

    search: LoadedSearch
    parent_run_id: str
    experiment: str
    tracking_uri: str

    def job(self, config: dict[str, Any], trial_id: str):
        job = self.search.trial_job(config, f"{self.search.name}-{trial_id}")
        data = job.model_dump(mode="json")
        data["srcluster"]["mlflow"].update(experiment=self.experiment, tracking_uri=self.tracking_uri,
                                           parent_run_id=self.parent_run_id)
        from srcluster.config import Job

        return Job.model_validate(data)

    def tags(self, trial_id: str) -> dict[str, str]:
        return {TRIAL_TAG: trial_id, SEARCH_TAG: self.parent_run_id, "srcluster.kind": "tune-trial",
                "srcluster.pretrain": self.search.base_job.path.pretrain_network_g or "scratch"}


def distributed_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from srcluster.train.stage import run_stage

    trial_id = tune.get_context().get_trial_id()
    job = ctx.job(config, trial_id)
    result = run_stage(job, run_name=f"trial-{trial_id}", parent_run_id=ctx.parent_run_id, tags=ctx.tags(trial_id),
                       callbacks=[TuneReportCallback()])
    if result.reused:  # it finished before the search was interrupted: hand Tune its final result, train nothing
        tune.report({**result.metrics, "iteration": result.iterations, "generator_uri": result.generator_uri})


# --- the single-worker trial (PBT) ------------------------------------------------------------------------------------


def apply_optimizer_options(optimizer, scheduler, options) -> None:
    """Put the trial's own optimizer options into an optimizer restored from a checkpoint.

    A PBT checkpoint carries the donor trial's param groups and the scheduler's base_lrs, so without this the mutated
    learning rate would be ignored. The lr is set at the same point of the schedule (warmup, decay) as before.
    """
    scheduler.base_lrs = [options.lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group.update(initial_lr=options.lr, lr=options.lr * factor(scheduler.last_epoch),
                     betas=tuple(options.betas), weight_decay=options.weight_decay)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def child_run(tracker, ctx: TrialContext, job, trial_id: str):
    """The trial's MLflow run: found again by its trial id after a PBT restart or a resumed search."""
    from srcluster.config import job_params

    run = tracker.find_run(ctx.experiment, {TRIAL_TAG: trial_id})
    if run is not None:
        return run.info.run_id, run.info.status
    run_id = tracker.start_run(ctx.experiment, f"trial-{trial_id}", params=job_params(job),
                               parent_run_id=ctx.parent_run_id, tags={**ctx.tags(trial_id), "srcluster.stage": job.name})
    return run_id, "RUNNING"


def single_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    import torch
    from ray import tune

    from srcluster.data.stream import iter_images, train_loader
    from srcluster.tracking.tracker import Tracker
    from srcluster.components import weights
    from srcluster.train.loop import GENERATOR_FILE, STATE_FILE, build_stage, check_finite, load_state_file, train_step
    from srcluster.train.validate import build_metrics, prepare, validate

    trial_id = tune.get_context().get_trial_id()
    job = ctx.job(config, trial_id)
    tracker = Tracker(ctx.tracking_uri)
    run_id, status = child_run(tracker, ctx, job, trial_id)
    if status == "FINISHED":  # trained to the end before an interruption: report it again, train nothing
        metrics = tracker.client.get_run(run_id).data.metrics
        tune.report({**metrics, "iteration": job.train.total_iter})
        return
    tracker.reopen(run_id)

    device = torch.device("cuda" if job.srcluster.use_gpu and torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, int(job.srcluster.cpus_per_worker)))

    def log(message: str) -> None:
        print(f"[{job.name}] {message}", flush=True)

    stage = build_stage(job, device, log=log)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        stage.load_state(load_state_file(checkpoint, device))
        apply_optimizer_options(stage.optim_g, stage.sched_g, job.train.optim_g)
        if stage.optim_d is not None:
            apply_optimizer_options(stage.optim_d, stage.sched_d, job.train.optim_d or job.train.optim_g)
        log(f"restored at iteration {stage.iteration} with lr {stage.optim_g.param_groups[0]['lr']:.3g}")

    val_images = prepare(iter_images(_first(job.datasets.val.dataroot_gt)), job.scale)
    val_metrics = build_metrics(job.val.metrics, job.scale)
    data, total = job.datasets.train, job.train.total_iter
    batch_size, accum = job.batch_plan(1)
    loader = train_loader(
        data.dataroot_gt, crop=data.lq_size * job.scale, batch_size=batch_size, num_workers=data.num_worker_per_gpu,
        seed=job.manual_seed or 0, epoch=stage.iteration, steps=max(total - stage.iteration, 0) * accum,
        use_hflip=data.use_hflip, use_rot=data.use_rot, lq=data.dataroot_lq, scale=job.scale)
    batches = iter(loader)
    try:
        while stage.iteration < total:
            step = train_step(stage, batches, accum)
            check_finite(stage, job.srcluster.nonfinite_patience)
            it = stage.iteration
            if it % job.val.val_freq and it != total:
                continue
            step.pop("data_wait_s", None)
            metrics = {**step, "iteration": it, "lr": stage.optim_g.param_groups[0]["lr"]}
            if stage.optim_d is not None:
                metrics["lr_d"] = stage.optim_d.param_groups[0]["lr"]
            metrics.update({f"val_{k}": v for k, v in validate(stage.eval_net, val_images, val_metrics, job.scale).items()})
            # the trial's current hyperparameters (PBT changes them) beside the curves they produce
            sampled = {f"hp.{p}": v for p, v in config.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and p in ctx.search.dists and not ctx.search.dists[p].by_index}
            tracker.log_metrics(run_id, {**metrics, **sampled}, step=it)
            with tempfile.TemporaryDirectory() as folder:
                torch.save(stage.state(), Path(folder) / STATE_FILE)
                weights.export_generator(stage.eval_net, Path(folder) / GENERATOR_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)


def _first(urls: str | list[str]) -> str:
    return urls if isinstance(urls, str) else urls[0]
