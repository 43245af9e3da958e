"""Where the training loop's results go. `run` (train/loop.py) is the same for Ray Train and Ray Tune; they differ
only by their reporter: how a checkpoint is restored, and how metrics and checkpoints are reported.

Every reporter logs rank 0's metrics and comparison grids to the stage's MLflow run. The Ray Train reporter reports
at every report point of the loop on every rank (`ray.train.report` is a barrier) and saves a checkpoint folder at the
save points. The Tune reporter (a single-worker trial, srcluster/tune/trial.py) reports with a checkpoint at every
validation, and after a restore from another trial's checkpoint (PBT) puts the trial's own optimizer options back.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
from ray import tune

from srcluster.components.optim import apply_optimizer_options
from srcluster.storage import StorageSettings
from srcluster.tracking.tracker import Tracker
from srcluster.train import best
from srcluster.train.specs import stage_specs
from srcluster.train.state import Stage, load_state_file, write_checkpoint


@dataclass
class Reporter:
    """The loop's outlet. `tracker` is rank 0's (None on the other ranks, which log nothing)."""

    tracker: Tracker | None
    run_id: str
    rank: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # logged beside every metrics row (a trial's hyperparameters)

    def restore(self, stage: Stage) -> bool:
        """Load the run's latest checkpoint into `stage`, if there is one; True when it did."""
        raise NotImplementedError

    def report(self, stage: Stage, metrics: dict[str, Any], *, save: bool, validated: bool) -> None:
        """Called on every rank at each report point (log, validation or save iteration)."""
        raise NotImplementedError

    def publish_best(self, stage: Stage) -> None:
        """`stage.best` just improved (rank 0): keep its generator where the run's consumers look for the best."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, {**metrics, **self.extra}, step=step)

    def log_artifact(self, path: Path, folder: str) -> None:
        if self.tracker is not None:
            self.tracker.log_artifact(self.run_id, path, folder)


@dataclass
class RayTrainReporter(Reporter):
    """One Ray Train worker's: checkpoints `checkpoint_<iteration>` from rank 0, the best generator under `best_uri`."""

    best_uri: str = ""
    settings: StorageSettings | None = None  # resolved once per worker process

    def restore(self, stage: Stage) -> bool:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return False
        stage.load_state(load_state_file(checkpoint, stage.device))
        return True

    def report(self, stage: Stage, metrics: dict[str, Any], *, save: bool, validated: bool) -> None:
        if not (save and self.rank == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(stage, Path(folder))
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"checkpoint_{stage.iteration:07d}",
            )

    def publish_best(self, stage: Stage) -> None:
        assert stage.best is not None and self.settings is not None
        best.publish(self.best_uri, stage.eval_net, stage.best, self.settings)


@dataclass
class TuneReporter(Reporter):
    """A single-worker Tune trial's: a checkpoint with every validation's `tune.report`; after a restore, the trial's
    own (possibly mutated) optimizer options in the restored optimizers."""

    def restore(self, stage: Stage) -> bool:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return False
        stage.load_state(load_state_file(checkpoint, stage.device))
        # a PBT checkpoint is another trial's: its param groups carry that trial's lr, betas and weight decay
        specs = stage_specs(stage.job)
        apply_optimizer_options(stage.optim_g, stage.sched_g, specs.optim_g)
        if stage.optim_d is not None:
            # build_stage builds D's optimizer and schedule from stage_specs' optim_d, all three with a ganloss
            assert stage.sched_d is not None and specs.optim_d is not None
            apply_optimizer_options(stage.optim_d, stage.sched_d, specs.optim_d)
        return True

    def report(self, stage: Stage, metrics: dict[str, Any], *, save: bool, validated: bool) -> None:
        if not validated:  # every report carries the objective, which Tune's schedulers compare trials by
            return
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(stage, Path(folder))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
