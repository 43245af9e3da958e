"""One training stage as a Ray Train run: validate inputs, open the MLflow run, fit, export the generator.

Everything that can be checked from the driver (job file, storage endpoint and credentials, buckets, tracking server) is
checked before a single Ray worker starts, so a typo costs seconds, not a cluster allocation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from srcluster import home
from srcluster.config import Job, job_params
from srcluster.data.remote import DEADLINE_ENV
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings, is_s3, local_stack_endpoint
from srcluster.tracking import runs
from srcluster.tracking import tags as tag
from srcluster.tracking.tracker import Tracker, sync_spool
from srcluster.train.best import read as read_best

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    name: str
    run_id: str
    iterations: int
    metrics: dict[str, float]
    checkpoint_uri: str  # the final checkpoint (training state + generator)
    generator_uri: str  # the EMA generator (safetensors) to pass downstream: the best by validation, else the final one
    run_url: str
    reused: bool = False  # True when an earlier, finished run of the same config was returned
    best: dict | None = None  # metric, value and iteration of the best validation, when the stage validated


def default_storage(settings: StorageSettings) -> str:
    if settings.endpoint_url and settings.endpoint_url == local_stack_endpoint():
        return "s3://srcluster/runs"
    return str(home.home() / "runs")


def preflight(job: Job, settings: StorageSettings, storage: str, tracker: Tracker) -> None:
    """Fail before Ray starts: unreachable endpoints, wrong keys, missing buckets or datasets."""
    datasets = [job.datasets.train] + ([job.datasets.val] if job.datasets.val else [])
    urls = [entry for d in datasets for entry in (d.dataroot_gt, d.dataroot_lq) if entry]
    for url in (u for entry in urls for u in ([entry] if isinstance(entry, str) else entry)):
        settings.check(url)
        fs, path = settings.filesystem(url)
        if not (fs.exists(path) or "{" in path):
            raise SrclusterError(
                f"dataset {url} does not exist (build shards with `srcluster data sample` or `srcluster shards build`)"
            )
    settings.check(storage, create_bucket=False)
    tracker.check()
    check_weights(job)


def check_weights(job: Job) -> None:
    """Build the losses and metrics that read pretrained weights (VGG19, LPIPS, DISTS) once here, on the CPU, so a
    missing weights file is reported before any worker starts."""
    # torch: launch/submit imports this module for worker_env, so torch loads only when a stage runs
    from srcluster.components.losses import build_loss
    from srcluster.train.validate import build_metrics

    for spec in job.train.losses:
        if spec.loss_weight > 0 and spec.type in ("perceptualloss", "distsloss"):
            build_loss(spec.type, **spec.options())
    if job.datasets.val is not None and job.val.val_enabled and job.val.metrics_enabled:
        build_metrics(job.val.metrics, job.scale)


def worker_env(
    settings: StorageSettings,
    tracking_uri: str | None,
    *,
    ray_workers: bool = False,
    s3_retry_deadline_s: float | None = None,
) -> dict[str, str]:
    """The environment of every process srcluster starts away from this one (Ray Train workers, Tune trials, a submitted
    job's driver, Slurm and KubeRay pods): where storage and the tracking server are, never a secret (each process
    resolves its keys itself).

    `ray_workers`: processes under Ray Train, whose rank 0 prints the progress lines. `s3_retry_deadline_s`: processes
    that train, which retry shard reads that long and let the rank-0 tracker spool its calls while MLflow is down.
    """
    env = settings.public_env()
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if ray_workers:
        env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # rank 0's progress lines reach the console once, not print + log
    if s3_retry_deadline_s is not None:
        env[DEADLINE_ENV] = str(s3_retry_deadline_s)
        # fail fast while the tracking server is down: the rank-0 tracker spools its calls instead of blocking
        env.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_TIMEOUT="20")
    return env


def ensure_ray(env: dict[str, str]) -> None:
    import ray  # heavy: launch/submit imports this module for worker_env, so ray loads only when a stage runs

    if ray.is_initialized():
        return
    # RAY_ADDRESS (set by `ray job submit` and on clusters) joins an existing cluster; otherwise start a local one.
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        runtime_env={"env_vars": env},
        log_to_driver=True,
        configure_logging=False,
    )


def run_key(job: Job) -> str:
    """Same training config -> same key: the Ray run name, and the MLflow tag by which a rerun finds its earlier try.

    The `srcluster:` section is left out, so a rerun with another worker count still resumes the same run.
    """
    data = job.model_dump(mode="json")
    data.pop("srcluster")
    return f"{job.name}-{hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]}"


def finished_result(job: Job, tracker: Tracker, run) -> StageResult:
    from srcluster.train.loop import GENERATOR_FILE  # torch and ray: this module stays light for launch/submit

    tags = run.data.tags
    checkpoint_uri = tags[tag.CHECKPOINT_URI]
    generator_uri = tags.get(tag.GENERATOR_URI, f"{checkpoint_uri}/{GENERATOR_FILE}")
    best = None
    if tag.BEST_METRIC in tags:
        best = {
            "metric": tags[tag.BEST_METRIC],
            "value": float(tags[tag.BEST_VALUE]),
            "iteration": int(tags[tag.BEST_ITERATION]),
            "generator_uri": generator_uri,
        }
    iterations = int(tags.get(tag.ITERATIONS, job.train.total_iter))
    return StageResult(
        job.name,
        run.info.run_id,
        iterations,
        dict(run.data.metrics),
        checkpoint_uri,
        generator_uri,
        tracker.run_url(run.info.run_id),
        reused=True,
        best=best,
    )


def run_stage(
    job: Job,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    fresh: bool = False,
    log=print,
    callbacks: list | None = None,
) -> StageResult:
    """Train one stage. A rerun of the same config resumes its unfinished run from the latest checkpoint, or returns
    the finished one without training again (`fresh=True` starts over instead)."""
    settings = StorageSettings.resolve(job.srcluster.s3_endpoint)  # once per driver: every read below goes through it
    storage = job.srcluster.storage or default_storage(settings)
    tracker = Tracker(job.srcluster.mlflow.tracking_uri, buffered=True)
    preflight(job, settings, storage, tracker)

    experiment = job.srcluster.mlflow.experiment or job.name
    key = run_key(job) + (f"-{int(time.time())}" if fresh else "")
    with runs.run(
        tracker,
        experiment,
        name=run_name or job.name,
        match={tag.RUN_KEY: key},
        fresh=fresh,
        params={**job_params(job), "effective_batch": job.effective_batch},
        tags={tag.STAGE: job.name, **(tags or {})},
        parent_run_id=parent_run_id or job.srcluster.mlflow.parent_run_id,
        reuse_if=lambda previous: tag.CHECKPOINT_URI in previous.data.tags,
    ) as run:
        if run.reused:
            log(f"{job.name}: already trained in MLflow run {run.id}; reusing it (--fresh to train again)")
            return finished_result(job, tracker, run.previous)
        if run.state == "reopened":
            log(f"{job.name}: resuming MLflow run {run.id} from its latest checkpoint")
        result = fit(job, settings, storage, tracker, run.id, key, log=log, callbacks=callbacks)
    sync_spool(tracker.uri)  # tracking calls that workers on this machine spooled during an MLflow outage
    return result


def fit(
    job: Job,
    settings: StorageSettings,
    storage: str,
    tracker: Tracker,
    run_id: str,
    key: str,
    *,
    log,
    callbacks: list | None,
) -> StageResult:
    """The Ray Train run of an open MLflow run, then its generator(s) logged and its outcome tagged on the run."""
    # ray and torch: launch/submit imports this module for worker_env, so they load only when a stage runs
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from srcluster.train.loop import GENERATOR_FILE, checkpoint_file, train_worker

    env = worker_env(settings, tracker.uri, ray_workers=True, s3_retry_deadline_s=job.srcluster.s3_retry_deadline_s)
    storage_path, storage_fs = settings.ray_storage(storage)
    best_uri = f"{storage.rstrip('/')}/{key}/best"
    workers = job.srcluster.workers  # a (min, max) tuple makes the run elastic
    scaling = ScalingConfig(
        num_workers=workers,
        use_gpu=job.srcluster.use_gpu,
        resources_per_worker={
            "CPU": job.srcluster.cpus_per_worker,
            **({"GPU": job.srcluster.gpus_per_worker} if job.srcluster.use_gpu else {}),
        },
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "job": job.model_dump(mode="json"),
            "run_id": run_id,
            "tracking_uri": tracker.uri,
            "best_uri": best_uri,
        },
        scaling_config=scaling,
        run_config=RunConfig(
            name=key,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=job.srcluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.srcluster.checkpoints.keep_last),
            worker_runtime_env={"env_vars": env},
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress lines
            callbacks=callbacks,  # e.g. Ray Tune's TuneReportCallback when a Tune trial runs this stage
        ),
    )
    ensure_ray(env)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        raise  # Ctrl-C: no cause to explain (the run ends KILLED)
    except BaseException as exc:
        if known := known_failure(exc) or storage_down(settings, storage):
            raise SrclusterError(f"stage {job.name} stopped: {known}") from None
        raise
    if result.checkpoint is None:
        raise SrclusterError(f"stage {job.name} finished without a checkpoint (see the Ray logs above)")
    checkpoint_uri = checkpoint_url(storage, storage_path, result.checkpoint.path)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    iterations = int(metrics.get("iteration", job.train.total_iter))
    best = read_best(best_uri, settings) if job.best_metric else None
    generator_uri = best["generator_uri"] if best else f"{checkpoint_uri}/{GENERATOR_FILE}"
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / f"net_g_ema_{iterations}.safetensors"
        exported.write_bytes(checkpoint_file(result.checkpoint, GENERATOR_FILE))
        tracker.log_artifact(run_id, exported, "model")
        if best:
            fs, path = settings.filesystem(generator_uri)
            best_file = Path(tmp) / f"net_g_ema_{best['iteration']}.safetensors"
            fs.get_file(path, str(best_file))
            tracker.log_artifact(run_id, best_file, "model/best")
    outcome = {tag.CHECKPOINT_URI: checkpoint_uri, tag.GENERATOR_URI: generator_uri, tag.ITERATIONS: str(iterations)}
    if best:
        outcome.update(
            {
                tag.BEST_METRIC: best["metric"],
                tag.BEST_VALUE: f"{best['value']:.6g}",
                tag.BEST_ITERATION: str(best["iteration"]),
            }
        )
        log(f"{job.name}: best {best['metric']} {best['value']:.4f} at iteration {best['iteration']}")
    tracker.set_tags(run_id, outcome)
    return StageResult(
        job.name, run_id, iterations, metrics, checkpoint_uri, generator_uri, tracker.run_url(run_id), best=best
    )


KNOWN_WORKER_ERRORS = ("NonFiniteLossError", "OutOfMemoryError", "SrclusterError", "StorageError")


def known_failure(exc: BaseException) -> str | None:
    """The one-line cause of a failed run when a worker raised one of our own, explained errors."""
    texts = [str(exc), *(str(f) for f in (getattr(exc, "worker_failures", None) or {}).values())]
    for text in texts:
        for line in text.splitlines():
            for name in KNOWN_WORKER_ERRORS:
                if f"{name}: " in line:
                    return line.split(f"{name}: ", 1)[1].strip()
    return None


def storage_down(settings: StorageSettings, storage: str) -> str | None:
    """Why a failed run failed when its object store is unreachable (every part of a run fails differently then:
    data reads, checkpoint uploads, Ray's own snapshots), as one line; None when storage answers."""
    try:
        settings.check(storage)
    except SrclusterError as exc:
        return f"{exc}; the last complete checkpoint is kept: rerun the same command once storage is back to resume"
    return None


def checkpoint_url(storage: str, storage_path: str, checkpoint_path: str) -> str:
    """Ray reports checkpoint paths inside its filesystem; turn them back into URLs other jobs can read."""
    return f"s3://{checkpoint_path}" if is_s3(storage) else checkpoint_path


def recorded_checkpoints(run_folder: str, settings: StorageSettings) -> list[int]:
    """Iterations of the checkpoints Ray Train has recorded as complete for a run folder (`<storage>/<run key>`), from
    its snapshot; a checkpoint folder that is not in it (an upload cut off, a report never received) is never
    resumed."""
    fs, path = settings.filesystem(run_folder)
    try:
        snapshot = json.loads(fs.cat_file(f"{path}/checkpoint_manager_snapshot.json"))
    except FileNotFoundError:
        return []
    return sorted(int(r["checkpoint_dir_name"].split("_")[1]) for r in snapshot.get("checkpoint_results", []))
