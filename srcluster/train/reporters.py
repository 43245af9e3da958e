"""Where the training loop's results go. `run` (train/loop.py) is the same for Ray Train and Ray Tune; they differ
only by their reporter: how a checkpoint is restored, and how metrics and checkpoints are reported.

Every reporter logs rank 0's metrics and comparison grids to the stage's MLflow run, and prints rank 0's progress
lines and messages to the worker's stdout (Ray's worker logs). The Ray Train reporter also posts them to the stage's
`Mailbox`, from which the driver's `ProgressFeed` shows them on the console (srcluster/console.py): the driver's
console never depends on Ray forwarding worker output. The Ray Train reporter reports
at every report point of the loop on every rank (`ray.train.report` is a barrier) and saves a checkpoint folder at the
save points. The Tune reporter (a single-worker trial, srcluster/tune/trial.py) reports with a checkpoint at every
validation, and after a restore from another trial's checkpoint (PBT) puts the trial's own optimizer options back.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray import tune
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from srcluster.components.optim import apply_optimizer_options
from srcluster.console import StageProgress, progress_text
from srcluster.storage import StorageSettings
from srcluster.tracking.tracker import Tracker
from srcluster.train import best
from srcluster.train.specs import stage_specs
from srcluster.train.state import Stage, generator_metadata, load_state_file, write_checkpoint

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class Mailbox:
    """Rank 0's progress records and messages on their way to the driver. Rank 0 posts without waiting; calls from
    one caller run in order, so the driver takes them in the order they were sent."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.stop_reason: str | None = None  # the driver asks the run to checkpoint and stop (a preemption signal)

    def post(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def stop_requested(self) -> str | None:
        return self.stop_reason


class ProgressFeed:
    """The driver's side of a stage's `Mailbox`: a thread that shows what rank 0 posts on a `StageProgress` line until
    `close`. Needs Ray initialised."""

    POLL_S = 0.5

    def __init__(self, stage: str, total: int) -> None:
        # on the driver's node: a worker node that leaves (an elastic shrink, a preemption) must not take it along
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.mailbox: Any = Mailbox.options(scheduling_strategy=here).remote()  # typed Any: Ray's stubs lose the class
        self.display = StageProgress(stage, total)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.pump, name=f"progress-{stage}", daemon=True)
        self.thread.start()

    def drain(self) -> None:
        for item in ray.get(self.mailbox.take.remote()):
            self.display.show(item)

    def pump(self) -> None:
        try:
            while not self.stopped.wait(self.POLL_S):
                self.drain()
        except RayError as exc:  # the cluster went away: the stage's own error says why; the line just stops
            log.warning("progress line stopped: %s", exc)

    def request_stop(self, reason: str) -> None:
        """Ask rank 0 to checkpoint and stop the run at its next stop poll (`train/loop.py: STOP_POLL_EVERY`)."""
        self.mailbox.request_stop.remote(reason)

    def close(self) -> None:
        """Show what rank 0 posted last and stop the line. Never raises for Ray: it runs as the stage ends, often
        because of an error that must stay the one reported."""
        self.stopped.set()
        self.thread.join()
        try:
            self.drain()
            ray.kill(self.mailbox)
        except RayError as exc:
            log.warning("progress line: last records lost: %s", exc)
        finally:
            self.display.close()


@dataclass
class Reporter:
    """The loop's outlet. `tracker` is rank 0's (None on the other ranks, which log nothing)."""

    tracker: Tracker | None
    run_id: str
    rank: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # logged beside every metrics row (a trial's hyperparameters)
    stage: str = ""  # the job's name, which prefixes rank 0's lines
    mailbox: Any = None  # the driver's Mailbox handle (Ray Train stages), which carries rank 0's lines to the console

    def say(self, message: str) -> None:
        """A line for the person running the stage (rank 0 only): resumes, resizes, pretrain reports, early stops."""
        if self.rank == 0:
            print(f"[{self.stage}] {message}", flush=True)
            self.post({"message": message})

    def progress(self, record: dict[str, Any]) -> None:
        """Rank 0's progress record at a report point (see console.progress_text for its keys)."""
        if self.rank == 0:
            print(progress_text(self.stage, record), flush=True)
            self.post(record)

    def post(self, item: dict[str, Any]) -> None:
        if self.mailbox is not None:
            self.mailbox.post.remote(item)  # not awaited: the console must never hold up a step

    def stop_requested(self) -> str | None:
        """Why the driver asks the run to checkpoint and stop (rank 0 asks; the loop shares the answer), or None. Never
        fails the run: without an answer (the mailbox gone with its node or driver) training goes on."""
        if self.rank != 0 or self.mailbox is None:
            return None
        try:
            return ray.get(self.mailbox.stop_requested.remote(), timeout=30)
        except (RayError, TimeoutError) as exc:
            log.warning("no stop request read from the driver's mailbox: %s", exc)
            return None

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

    def download_artifact(self, path: str, dest: Path) -> Path | None:
        """The run's artifact `path` (logged by an earlier try of this run), downloaded into `dest`; None when it has
        none (or this rank logs nothing). Raises when the tracking server cannot be reached."""
        if self.tracker is None:
            return None
        return self.tracker.download_artifact(self.run_id, path, dest)


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
        name = f"checkpoint_{stage.iteration:07d}"
        if stage.job.srcluster.checkpoints.background_upload:
            # Ray uploads the folder in a thread and deletes it after; the step goes on meanwhile. Ray records the
            # checkpoint (what a resume reads) only when its upload is complete, so a half-uploaded one is never used.
            folder = write_checkpoint(stage, Path(tempfile.mkdtemp(prefix="srcluster-ckpt-")))
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=name,
                checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            )
            return
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(stage, Path(folder))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)

    def publish_best(self, stage: Stage) -> None:
        assert stage.best is not None and self.settings is not None
        best.publish(self.best_uri, stage.eval_net, stage.best, self.settings, generator_metadata(stage.job))


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
