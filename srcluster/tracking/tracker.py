"""The MLflow client (with runs.py and models.py beside it, the only code that talks to MLflow): which server, which
experiment, runs, params, metrics, tags, artifacts.

The driver creates a stage's run (params, tags) before any Ray worker starts; rank 0 of the workers logs metrics and
images into that run by id; the driver logs the exported generator and closes the run. Only the tracking URI and the
run id cross process boundaries; artifacts go through the tracking server's proxy, so workers need no S3 keys for them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from srcluster import __version__, home, stack
from srcluster.errors import SrclusterError
from srcluster.storage import redact_url
from srcluster.tracking import tags as tag

log = logging.getLogger(__name__)
PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
BATCH_LIMIT = 100  # params per log_batch call


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """Job config > MLFLOW_TRACKING_URI > the local stack's server > a SQLite file under $SRCLUSTER_HOME."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return stack.mlflow_url() or f"sqlite:///{home.home() / 'mlflow-local.db'}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,  # outside a git checkout there is no commit: the return code is read below
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """`buffered=True` (training processes): while the tracking server cannot be reached, metrics, tags, artifacts and
    run ends are kept in a local spool instead of failing the run, and delivered in order once it answers again (or by
    `srcluster sync`)."""

    def __init__(self, tracking_uri: str | None = None, *, buffered: bool = False):
        from mlflow import MlflowClient  # mlflow is heavy; the launchers and the CLI parser import this module

        self.uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.spool = Spool(self) if buffered else None

    def check(self) -> None:
        """Fail fast with one line when the tracking server cannot be used."""
        if not self.uri.startswith("http"):
            return
        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            hint = " (start it with `srcluster stack up`)" if "127.0.0.1" in self.uri else ""
            raise SrclusterError(
                f"cannot reach the MLflow tracking server at {redact_url(self.uri)}{hint}: {exc.__class__.__name__}"
            ) from None

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        location = None
        if not self.uri.startswith("http"):  # no server to proxy artifacts: keep them beside the local store
            location = (home.home() / "mlflow-artifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start_run(
        self,
        experiment: str,
        run_name: str,
        *,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        all_tags = {tag.VERSION: __version__, **(tags or {})}
        if commit := git_commit():
            all_tags[tag.GIT_COMMIT] = commit
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if ray_job := os.environ.get("RAY_JOB_ID"):
            all_tags[tag.RAY_JOB_ID] = ray_job
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def find_run(self, experiment: str, tags: dict[str, str]):
        """The newest run in `experiment` carrying all of `tags`, or None."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs(
            [found.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0] if runs else None

    def get_run(self, run_id: str):
        """The run (an mlflow.entities.Run: info.status, data.tags, data.params, data.metrics)."""
        return self.client.get_run(run_id)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # mlflow is heavy; the launchers and the CLI parser import this module

        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, params=items[i : i + BATCH_LIMIT])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        from mlflow.entities import Metric  # mlflow is heavy; the launchers and the CLI parser import this module

        timestamp_ms = timestamp_ms or now_ms()
        items = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]

        def call() -> None:
            for i in range(0, len(items), BATCH_LIMIT):
                self.client.log_batch(run_id, metrics=items[i : i + BATCH_LIMIT])

        self._send(call, "metrics", run_id, metrics=metrics, step=step, timestamp_ms=timestamp_ms)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        def call() -> None:
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

        self._send(call, "tags", run_id, tags=tags)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._send(
            lambda: self.client.log_artifact(run_id, str(path), artifact_path),
            "artifact",
            run_id,
            path=str(path),
            artifact_path=artifact_path,
        )

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of `key`, in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def download_latest(self, run_id: str, artifact_dir: str, dest: Path) -> list[Path]:
        """The last (by name) artifact under `artifact_dir`, downloaded into `dest`; [] when there is none."""
        files = sorted(f.path for f in self.client.list_artifacts(run_id, artifact_dir) if not f.is_dir)
        if not files:
            return []
        dest.mkdir(parents=True, exist_ok=True)
        return [Path(self.client.download_artifacts(run_id, files[-1], str(dest)))]

    def download_artifact(self, run_id: str, path: str, dest: Path) -> Path | None:
        """The run's artifact `path` (a file) downloaded into `dest`; None when the run has no such artifact. Raises
        when the server cannot be reached: a buffered tracker asks it first, since MLflow's client would retry."""
        if self.spool is not None:
            self.check()
        folder = path.rpartition("/")[0] or None
        if not any(f.path == path and not f.is_dir for f in self.client.list_artifacts(run_id, folder)):
            return None
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dest)))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._send(lambda: self.client.set_terminated(run_id, status), "end", run_id, status=status)

    def _send(self, call, kind: str, run_id: str, **data: Any) -> None:
        """Make a tracking call; with a spool, keep it for later instead when the server cannot be reached."""
        if self.spool is None:
            return call()
        if self.spool.waiting():  # earlier calls are still spooled: keep the order
            return self.spool.add(kind, run_id, **data)
        try:
            call()
        except Exception:
            if self.reachable():
                raise  # a real error (bad value, missing run), not an outage
            self.spool.add(kind, run_id, **data)

    def run_url(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        base = redact_url(self.uri) if self.uri.startswith("http") else "mlflow ui --backend-store-uri " + self.uri
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    def artifact_url(self, run_id: str, path: str) -> str:
        """Where the MLflow UI shows one artifact of a run (an HTML page opens in its viewer)."""
        return f"{self.run_url(run_id)}/artifacts/{path}"

    def reachable(self) -> bool:
        try:
            self.check()
            return True
        except SrclusterError:
            return False


def now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """Tracking calls kept on local disk while the tracking server is down, one JSON line each, replayed in order.

    One file per process (`$SRCLUSTER_HOME/spool/<pid>-<n>.jsonl`), so a driver and a worker on one machine never
    interleave; artifacts are copied into the spool, since a temporary file is gone by the time the server is back.
    While the server is down a call is spooled at once, and the server is tried again every RETRY_S seconds, so a
    dead server costs a training step nothing.
    """

    RETRY_S = 15.0

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.folder = home.home() / "spool"
        self.path = self.folder / f"{os.getpid()}-{id(self)}.jsonl"
        self.next_try = 0.0

    def waiting(self) -> bool:
        """Whether calls are spooled; tries to deliver them first when the server is due another try."""
        if self.path.exists() and time.monotonic() >= self.next_try:
            self.replay(self.path)
        return self.path.exists()

    def add(self, kind: str, run_id: str, **data: Any) -> None:
        if not self.path.exists():
            self.next_try = time.monotonic() + self.RETRY_S
            log.warning(
                "MLflow server %s cannot be reached: keeping tracking calls in %s until it answers "
                "(or run `srcluster sync`)",
                redact_url(self.tracker.uri),
                self.folder,
            )
        if kind == "artifact":
            copy = self.folder / "artifacts" / f"{now_ms()}-{Path(data['path']).name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data["path"], copy)
            data["path"] = str(copy)
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps({"kind": kind, "run_id": run_id, **data}) + "\n")

    def replay(self, path: Path) -> int:
        """Deliver the calls in `path` in order; stop at the first failure and keep the rest. Returns the number
        sent."""
        direct = Tracker(self.tracker.uri)
        lines = path.read_text().splitlines()
        sent = 0
        try:
            for line in lines:
                call = json.loads(line)
                run_id = call.pop("run_id")
                kind = call.pop("kind")
                if kind == "metrics":
                    direct.log_metrics(run_id, call["metrics"], call["step"], call["timestamp_ms"])
                elif kind == "tags":
                    direct.set_tags(run_id, call["tags"])
                elif kind == "artifact":
                    direct.log_artifact(run_id, call["path"], call["artifact_path"])
                    Path(call["path"]).unlink(missing_ok=True)
                else:
                    direct.end_run(run_id, call["status"])
                sent += 1
        except Exception:  # still down (or down again): keep what is left for the next try
            self.next_try = time.monotonic() + self.RETRY_S
            remaining = lines[sent:]
            path.write_text("".join(f"{line}\n" for line in remaining))
            return sent
        path.unlink()
        return sent


def sync_spool(tracking_uri: str | None = None) -> tuple[int, int]:
    """`srcluster sync`: deliver the calls spooled on this machine by processes that have ended (a live process
    delivers its own). Returns (calls sent, calls still waiting)."""
    folder = home.home() / "spool"
    ended = [path for path in sorted(folder.glob("*.jsonl")) if not _alive(int(path.name.split("-", 1)[0]))]
    if not ended:
        return 0, 0
    spool = Spool(Tracker(tracking_uri))
    sent = sum(spool.replay(path) for path in ended)
    waiting = sum(len(path.read_text().splitlines()) for path in ended if path.exists())
    return sent, waiting


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
