"""What one Tune trial runs: a whole training stage with the trial's sampled config.

Two kinds, both Tune function trainables:
- `distributed_trial`: the stage as a Ray Train run with N workers (`run_stage` inside the trial, Train V2 style);
  rank 0's reports reach Tune through `TuneReportCallback`. Its MLflow child run, resume and generator export are
  run_stage's own.
- `single_trial`: one worker in the trial's own process, running the same loop as a Ray Train worker
  (`srcluster.train.loop.run`: degradations, OOM advice, best/plateau, data-wait metrics) with a `TuneReporter`, which
  reports with `tune.report(metrics, checkpoint=...)` at every validation. Population Based Training needs this: it
  pauses trials, and restarts them from another trial's checkpoint with mutated hyperparameters, which the reporter's
  `restore` then puts into the restored optimizers (`apply_optimizer_options`). Both reporters: train/reporters.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from srcluster.config import Job, job_params
from srcluster.storage import StorageSettings
from srcluster.tracking import runs, tags
from srcluster.tracking.tracker import Tracker
from srcluster.train import best, loop, resume
from srcluster.train.reporters import TuneReporter
from srcluster.train.specs import train_data
from srcluster.train.stage import run_stage
from srcluster.train.state import build_stage
from srcluster.train.validate import build_validator
from srcluster.tune.space import LoadedSearch


@dataclass
class TrialContext:
    """What every trial needs from the driver (handed over once through the object store)."""

    search: LoadedSearch
    parent_run_id: str
    experiment: str
    tracking_uri: str

    def job(self, config: dict[str, Any], trial_id: str) -> Job:
        job = self.search.trial_job(config, f"{self.search.name}-{trial_id}")
        data = job.model_dump(mode="json")
        data["srcluster"]["mlflow"].update(
            experiment=self.experiment, tracking_uri=self.tracking_uri, parent_run_id=self.parent_run_id
        )
        return Job.model_validate(data)

    def tags(self, trial_id: str) -> dict[str, str]:
        return {
            tags.TUNE_TRIAL_ID: trial_id,
            tags.TUNE_SEARCH_RUN: self.parent_run_id,
            tags.KIND: "tune-trial",
            tags.PRETRAIN: self.search.base_job.path.pretrain_network_g or "scratch",
        }

    def sampled(self, config: dict[str, Any]) -> dict[str, float]:
        """The trial's current numeric hyperparameters (PBT changes them), logged as `hp.<path>` beside the curves."""
        return {
            f"hp.{p}": v
            for p, v in config.items()
            if isinstance(v, (int, float))
            and not isinstance(v, bool)
            and p in self.search.dists
            and not self.search.dists[p].by_index
        }


def distributed_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    job = ctx.job(config, trial_id)
    result = run_stage(
        job,
        run_name=f"trial-{trial_id}",
        parent_run_id=ctx.parent_run_id,
        tags=ctx.tags(trial_id),
        callbacks=[TuneReportCallback()],
    )
    if result.reused:  # it finished before the search was interrupted: hand Tune its final result, train nothing
        tune.report({**result.metrics, "iteration": result.iterations, "generator_uri": result.generator_uri})


# --- the single-worker trial (PBT) ------------------------------------------------------------------------------------


def single_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    job = ctx.job(config, trial_id)
    tracker = Tracker(ctx.tracking_uri)
    with runs.run(
        tracker,
        ctx.experiment,
        name=f"trial-{trial_id}",
        match={tags.TUNE_TRIAL_ID: trial_id},
        params=job_params(job),
        parent_run_id=ctx.parent_run_id,
        tags={**ctx.tags(trial_id), tags.STAGE: job.name},
        reuse_if=lambda previous: True,
    ) as trial_run:
        if trial_run.reused:  # trained to the end before an interruption: report it again, train nothing
            tune.report({**trial_run.previous.data.metrics, "iteration": job.train.total_iter})
            return
        device = torch.device("cuda" if job.srcluster.use_gpu and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, int(job.srcluster.cpus_per_worker)))

        def log(message: str) -> None:
            print(f"[{job.name}] {message}", flush=True)

        settings = StorageSettings.resolve(job.srcluster.s3_endpoint)  # once per trial process; passed down
        stage = build_stage(job, device, log=log, settings=settings)
        validator = build_validator(job)
        stage.best = best.for_job(
            job, validator.higher_is_better(job.best_metric) if validator and job.best_metric else True
        )
        reporter = TuneReporter(tracker, trial_run.id, extra=ctx.sampled(config), stage=job.name)
        if reporter.restore(stage):
            log(f"restored at iteration {stage.iteration} with lr {stage.optim_g.param_groups[0]['lr']:.3g}")
        elif job.path.resume_state:  # a new trial's starting point, as for a Ray Train stage (train/loop.py)
            resume.start_from(stage, job.path.resume_state, settings, log)
        _, accum = job.batch_plan(1)
        loader = train_data(job, 1).loader(
            rank=0, world=1, start=stage.iteration, steps=max(job.train.total_iter - stage.iteration, 0) * accum
        )
        loop.run(stage, loader, validator, reporter)
