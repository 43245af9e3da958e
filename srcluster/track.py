"""The only module that talks to MLflow: which server, which experiment, runs, params, metrics, tags, artifacts.

The driver creates a stage's run (params, tags) before any Ray worker starts; rank 0 of the workers logs metrics and
images into that run by id; the driver logs the exported generator and closes the run. Only the tracking URI and the
run id cross process boundaries; artifacts go through the tracking server's proxy, so workers need no S3 keys for them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from srcluster import __version__, home
from srcluster.config import Job, flatten, redact_url
from srcluster.errors import SrclusterError

PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer param values
BATCH_LIMIT = 100  # params per log_batch call


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """Job config > MLFLOW_TRACKING_URI > the local stack's server > a SQLite file under $SRCLUSTER_HOME."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from srcluster import stack

    return stack.mlflow_url() or f"sqlite:///{home.home() / 'mlflow-local.db'}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    def __init__(self, tracking_uri: str | None = None):
        from mlflow import MlflowClient

        self.uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    def check(self) -> None:
        """Fail fast with one line when the tracking server cannot be used."""
        if not self.uri.startswith("http"):
            return
        import requests

        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            hint = " (start it with `srcluster stack up`)" if "127.0.0.1" in self.uri else ""
            raise SrclusterError(f"cannot reach the MLflow tracking server at {redact_url(self.uri)}{hint}: "
                                 f"{exc.__class__.__name__}") from None

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

    def start_run(self, experiment: str, run_name: str, *, params: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
        all_tags = {"srcluster.version": __version__, **(tags or {})}
        if commit := git_commit():
            all_tags["srcluster.git_commit"] = commit
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if ray_job := os.environ.get("RAY_JOB_ID"):
            all_tags["srcluster.ray_job_id"] = ray_job
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
        runs = self.client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, params=items[i : i + BATCH_LIMIT])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=items[i : i + BATCH_LIMIT])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def download_latest(self, run_id: str, artifact_dir: str, dest: Path) -> list[Path]:
        """The last (by name) artifact under `artifact_dir`, downloaded into `dest`; [] when there is none."""
        files = sorted(f.path for f in self.client.list_artifacts(run_id, artifact_dir) if not f.is_dir)
        if not files:
            return []
        dest.mkdir(parents=True, exist_ok=True)
        return [Path(self.client.download_artifacts(run_id, files[-1], str(dest)))]

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def run_url(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        base = redact_url(self.uri) if self.uri.startswith("http") else "mlflow ui --backend-store-uri " + self.uri
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def job_params(job: Job) -> dict[str, Any]:
    """The job's resolved config, flattened to dotted keys for MLflow params (URL passwords masked)."""
    return flatten(job.model_dump(mode="json"))
