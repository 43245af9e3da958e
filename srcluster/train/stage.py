"""One training stage as a Ray Train run: validate inputs, open the MLflow run, fit, export the generator.

Everything that can be checked from the driver (job file, storage endpoint and credentials, buckets, tracking server) is
checked before a single Ray worker starts, so a typo costs seconds, not a cluster allocation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srcluster import home
from srcluster.components.hub import WEIGHTS_URL_ENV
from srcluster.config import Job, flatten, job_params
from srcluster.console import say
from srcluster.data.remote import DEADLINE_ENV
from srcluster.errors import Preempted, SrclusterError
from srcluster.storage import StorageSettings, is_s3, local_stack_endpoint
from srcluster.tracking import runs
from srcluster.tracking import tags as tag
from srcluster.tracking.tracker import PARAM_VALUE_LIMIT, Tracker, sync_spool
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
    datasets = [job.datasets.train, *job.datasets.validation_sets.values()]
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
        if spec.loss_weight != 0 and spec.type in ("perceptualloss", "distsloss", "linedistillerloss"):
            build_loss(spec.type, **spec.options())
    if job.validates and job.val.metrics_enabled:
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
    if os.environ.get(WEIGHTS_URL_ENV):  # staged pretrained weights (`srcluster weights pull --to`)
        env[WEIGHTS_URL_ENV] = os.environ[WEIGHTS_URL_ENV]
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


# The run's identity: what makes the model. Everything else (total_iter, milestones, val_freq, print_freq, the lr, loss
# weights, degradations, crop and batch sizes, the `srcluster:` section) may change between reruns: the run continues
# from its latest checkpoint and follows the new config from there, as a traiNNer-redux user resumes a run.
IDENTITY_TAG_LIMIT = 5000  # MLflow keeps 8000 characters of a tag value; longer values are stored as their hash


def run_identity(job: Job) -> dict[str, Any]:
    """The options that make the model, by their job-file key: name, scale, architecture (D only when a GAN loss
    trains it), training data, where the weights start (pretrains, `path.resume_state`) and the teacher it learns
    from. The EMA's starting weights and the teacher count only when set, so jobs without them keep their run keys."""
    gan = job.uses_gan
    data, path = job.datasets.train, job.path
    return flatten(
        {
            "name": job.name,
            "scale": job.scale,
            "network_g": job.network_g.model_dump(mode="json"),
            "network_d": job.network_d.model_dump(mode="json") if gan and job.network_d else None,
            "datasets": {"train": {"dataroot_gt": data.dataroot_gt, "dataroot_lq": data.dataroot_lq}},
            "path": {
                "pretrain_network_g": path.pretrain_network_g,
                "pretrain_network_d": path.pretrain_network_d if gan else None,
                "resume_state": path.resume_state,
            },
        }
    ) | flatten(optional_identity(job))


def optional_identity(job: Job) -> dict[str, Any]:
    """The identity's keys that only some jobs set (the EMA's starting weights, a teacher)."""
    out: dict[str, Any] = {}
    if job.path.pretrain_network_g_ema:
        out["path.pretrain_network_g_ema"] = job.path.pretrain_network_g_ema
    if job.network_g_teacher is not None:
        out["network_g_teacher"] = job.network_g_teacher.model_dump(mode="json")
        out["path.pretrain_network_g_teacher"] = job.path.pretrain_network_g_teacher
        out["train.eco"] = job.train.eco.model_dump(mode="json")
    return out


def run_key(job: Job) -> str:
    """Same identity (`run_identity`) -> same key: the Ray run name, and the MLflow tag by which a rerun finds its
    earlier run and continues it from its latest checkpoint."""
    return f"{job.name}-{digest(run_identity(job))[:10]}"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def identity_tag(identity: dict[str, Any]) -> str:
    """The identity as a tag value; values too long for MLflow are kept as their hash (enough to say they changed)."""
    text = json.dumps(identity, sort_keys=True)
    if len(text) <= IDENTITY_TAG_LIMIT:
        return text
    return json.dumps({k: v if len(json.dumps(v)) < 200 else f"sha256:{digest(v)}" for k, v in identity.items()})


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`key old -> new` for every key whose value differs (a missing key reads as None)."""

    def short(value: Any) -> str:
        text = "none" if value is None else value if isinstance(value, str) else json.dumps(value)
        return text if len(text) <= 60 else f"{text[:57]}..."

    return [
        f"{key} {short(before.get(key))} -> {short(after.get(key))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def identity_changes(previous_tag: str, job: Job) -> list[str]:
    """What changed in the model since the run that carries the identity tag `previous_tag`."""
    current = json.loads(identity_tag(run_identity(job)))
    return changes(json.loads(previous_tag), current)


def option_changes(previous_params: dict[str, str], job: Job) -> list[str]:
    """The training options that differ from an earlier run's MLflow params (the `srcluster:` section left out)."""

    def training(params: dict[str, Any]) -> dict[str, str]:
        text = {k: str(v)[:PARAM_VALUE_LIMIT] for k, v in params.items() if "." in k and not k.startswith("srcluster.")}
        return {k: v for k, v in text.items() if v != "None"}

    return changes(training(previous_params), training(job_params(job)))


def run_params(job: Job) -> dict[str, Any]:
    return {**job_params(job), "effective_batch": job.effective_batch}


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
    log=say,
    callbacks: list | None = None,
) -> StageResult:
    """Train one stage. A rerun with the same model (`run_identity`) continues its run from the latest checkpoint,
    following the new config (a raised total_iter, new milestones, ...), or returns the finished run when it already
    trained that far (`fresh=True` starts over instead). A changed model starts a new run and says what changed."""
    settings = StorageSettings.resolve(job.srcluster.s3_endpoint)  # once per driver: every read below goes through it
    storage = job.srcluster.storage or default_storage(settings)
    tracker = Tracker(job.srcluster.mlflow.tracking_uri, buffered=True)
    preflight(job, settings, storage, tracker)

    experiment = job.srcluster.mlflow.experiment or job.name
    key = run_key(job) + (f"-{int(time.time())}" if fresh else "")
    if not fresh and tracker.find_run(experiment, {tag.RUN_KEY: key}) is None:
        say_what_changed(job, tracker, experiment, log)
        if job.path.resume_state:
            check_resume_state(job, settings)
    with runs.run(
        tracker,
        experiment,
        name=run_name or job.name,
        match={tag.RUN_KEY: key},
        fresh=fresh,
        params=run_params(job),
        tags={tag.STAGE: job.name, tag.IDENTITY: identity_tag(run_identity(job)), **(tags or {})},
        parent_run_id=parent_run_id or job.srcluster.mlflow.parent_run_id,
        reuse_if=lambda previous: trained_far_enough(previous, job),
    ) as run:
        if run.reused:
            log(f"{job.name}: already trained in MLflow run {run.id}; reusing it (--fresh to train again)")
            return finished_result(job, tracker, run.previous)
        if run.state == "reopened":
            say_continuing(job, tracker, run.id, run.previous, f"{storage.rstrip('/')}/{key}", settings, log)
        result = fit(job, settings, storage, tracker, run.id, key, log=log, callbacks=callbacks)
    sync_spool(tracker.uri)  # tracking calls that workers on this machine spooled during an MLflow outage
    return result


def trained_far_enough(previous, job: Job) -> bool:
    """A finished earlier run is returned as it is when it trained to this job's total_iter (or stopped early on its
    plateau on the way there); a raised total_iter continues it."""
    tags = previous.data.tags
    trained_to = tags.get(tag.TOTAL_ITER) or tags.get(tag.ITERATIONS)
    return tag.CHECKPOINT_URI in tags and trained_to is not None and int(trained_to) >= job.train.total_iter


def say_what_changed(job: Job, tracker: Tracker, experiment: str, log) -> None:
    """No run has this job's identity: when an earlier run of the same stage does, name what changed in the model."""
    earlier = tracker.find_run(experiment, {tag.STAGE: job.name})
    if earlier is None or tag.IDENTITY not in earlier.data.tags:
        return
    changed = identity_changes(earlier.data.tags[tag.IDENTITY], job)
    if changed:
        log(
            f"{job.name}: the model changed since MLflow run {earlier.info.run_id} ({'; '.join(changed)}): starting a "
            "new run (the earlier run keeps its checkpoints)"
        )


def say_continuing(job: Job, tracker: Tracker, run_id: str, previous, run_folder: str, settings, log) -> None:
    """A rerun of the same model: say from which checkpoint it continues and which training options changed (also
    tagged on the run, whose params keep the first run's values)."""
    recorded = recorded_checkpoints(run_folder, settings)
    where = f"its checkpoint at iteration {recorded[-1]}" if recorded else "the start (no checkpoint was recorded)"
    changed = option_changes(previous.data.params, job)
    log(f"{job.name}: continuing MLflow run {run_id} from {where}" + (f" with {'; '.join(changed)}" if changed else ""))
    if changed:
        at = recorded[-1] if recorded else 0
        tracker.set_tags(run_id, {tag.CONTINUED: f"at iteration {at}: {'; '.join(changed)}"[:IDENTITY_TAG_LIMIT]})


def check_resume_state(job: Job, settings: StorageSettings) -> None:
    """A new run that starts from `path.resume_state`: refuse a state that cannot be carried over before Ray starts."""
    # torch: launch/submit imports this module for worker_env, so torch loads only when a stage runs
    from srcluster.train.resume import check

    check(job, settings)


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
    from srcluster.train.reporters import ProgressFeed

    env = worker_env(settings, tracker.uri, ray_workers=True, s3_retry_deadline_s=job.srcluster.s3_retry_deadline_s)
    env.update(job.srcluster.env)  # the job's own settings for its training processes (NCCL_SOCKET_IFNAME, ...)
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
    ensure_ray(env)
    feed = ProgressFeed(job.name, job.train.total_iter)  # rank 0's progress lines, shown on the driver's console
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "job": job.model_dump(mode="json"),
            "staged_pretrains": staged_pretrains(job, f"{storage.rstrip('/')}/{key}", settings, log),
            "run_id": run_id,
            "tracking_uri": tracker.uri,
            "best_uri": best_uri,
            "mailbox": feed.mailbox,
        },
        scaling_config=scaling,
        run_config=RunConfig(
            name=key,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=max_failures(job)),
            checkpoint_config=CheckpointConfig(num_to_keep=job.srcluster.checkpoints.keep_last),
            worker_runtime_env={"env_vars": env},
            logging_config=LoggingConfig(log_level="WARNING"),  # per-report INFO lines drown the progress lines
            callbacks=callbacks,  # e.g. Ray Tune's TuneReportCallback when a Tune trial runs this stage
        ),
    )
    try:
        with stop_on_signals(feed, log) as stopping:
            result = trainer.fit()
    except KeyboardInterrupt:
        raise  # Ctrl-C: no cause to explain (the run ends KILLED)
    except BaseException as exc:
        if known := known_failure(exc) or storage_down(settings, storage):
            raise SrclusterError(f"stage {job.name} stopped: {known}") from None
        raise
    finally:
        feed.close()
    if result.checkpoint is None:
        raise SrclusterError(f"stage {job.name} finished without a checkpoint (see the Ray logs above)")
    checkpoint_uri = checkpoint_url(storage, storage_path, result.checkpoint.path)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    iterations = int(metrics.get("iteration", job.train.total_iter))
    if stopping and iterations < job.train.total_iter:
        raise Preempted(
            f"stage {job.name} stopped at iteration {iterations} of {job.train.total_iter} on {stopping[0]}; its "
            f"checkpoint is kept ({checkpoint_uri}): run the same command again to resume"
        )
    best = read_best(best_uri, settings) if job.best_metric else None
    generator_uri = best["generator_uri"] if best else f"{checkpoint_uri}/{GENERATOR_FILE}"
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / f"net_g_ema_{iterations}.safetensors"
        exported.write_bytes(checkpoint_file(result.checkpoint, GENERATOR_FILE))
        tracker.log_artifact(run_id, exported, "model")
        for extra in generator_exports(job, exported, log):  # .pth and ONNX, as the job's logger and onnx: ask
            tracker.log_artifact(run_id, extra, "model")
        if best:
            fs, path = settings.filesystem(generator_uri)
            best_file = Path(tmp) / f"net_g_ema_{best['iteration']}.safetensors"
            fs.get_file(path, str(best_file))
            tracker.log_artifact(run_id, best_file, "model/best")
    outcome = {
        tag.CHECKPOINT_URI: checkpoint_uri,
        tag.GENERATOR_URI: generator_uri,
        tag.ITERATIONS: str(iterations),
        tag.TOTAL_ITER: str(job.train.total_iter),
    }
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


# Set by the launchers in the job's environment (launch/submit.py: job_env): the stage runs on a cluster
ON_CLUSTER_ENV = "SRCLUSTER_ON_CLUSTER"
CLUSTER_MAX_FAILURES = 3


def max_failures(job: Job) -> int:
    """`srcluster.max_failures`, or its default: a few restarts on a cluster, none on this machine."""
    if job.srcluster.max_failures is not None:
        return job.srcluster.max_failures
    return CLUSTER_MAX_FAILURES if os.environ.get(ON_CLUSTER_ENV) == "1" else 0


# every weights file a stage starts from, by its key under `path:`
PRETRAIN_KEYS = ("pretrain_network_g", "pretrain_network_d", "pretrain_network_g_ema", "pretrain_network_g_teacher")


def staged_pretrains(job: Job, run_folder: str, settings: StorageSettings, log) -> dict[str, str]:
    """Each `models:/` pretrain resolved once, here, and its weights copied to the run's storage (`<run>/pretrains/`):
    {the job's URI: the copy's URL}, which the workers read instead of each asking the MLflow server (at 32-64 ranks
    those calls time out). Reports still name the pretrain as the job gives it."""
    from srcluster.tracking.models import is_model_uri, weights_file

    staged: dict[str, str] = {}
    for key in PRETRAIN_KEYS:
        source = getattr(job.path, key)
        if not source or not is_model_uri(source):
            continue
        local = weights_file(source)
        url = f"{run_folder}/pretrains/{key.removeprefix('pretrain_')}{Path(local).suffix}"
        fs, path = settings.filesystem(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(local, path)
        staged[source] = url
        log(f"{job.name}: {key} {source} staged at {url} for the workers")
    return staged


# A scheduler's warning that a job's time is up: Slurm's `--signal=B:USR1@120` (forwarded by the rendered sbatch),
# SIGTERM from a spot reclaim or a pod eviction (within its grace period)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(feed, log) -> Iterator[list[str]]:
    """While the stage trains, a stop signal asks rank 0 (through the progress feed's mailbox) to checkpoint and stop;
    the list yielded holds the signal's name once one came. Only the main thread can take signals: elsewhere (a Tune
    trial's stage) the block runs without handlers."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request_stop(number: int, _frame) -> None:
        name = signal.Signals(number).name
        if not received:
            log(f"{name}: checkpointing at the next poll and stopping")
            feed.request_stop(name)
        received.append(name)

    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def generator_exports(job: Job, generator_file: Path, log) -> list[Path]:
    """The exported generator in the other formats the job asks for, written beside `generator_file`: `.pth`
    (`logger.save_checkpoint_format: pth`, a plain state dict as redux writes it) and ONNX (the `onnx:` section,
    verified in onnxruntime)."""
    files: list[Path] = []
    if job.logger.save_checkpoint_format != "pth" and job.onnx is None:
        return files
    import torch  # the driver imports torch only when a stage exports more than its safetensors

    from srcluster.components.archs import build_generator
    from srcluster.components.weights import read_state_dict
    from srcluster.export import OnnxSettings, export_onnx, file_name

    state = read_state_dict(str(generator_file))
    if job.logger.save_checkpoint_format == "pth":
        files.append(generator_file.with_suffix(".pth"))
        torch.save(state, files[-1])
    if job.onnx is not None:
        net = build_generator(job.network_g.type, job.scale, **job.network_g.options())
        net.load_state_dict(state)
        o = job.onnx
        settings = OnnxSettings(opset=o.opset, dtype=o.dtype, shape=o.shape, slim=o.optimize, verify=o.verify)
        name = f"{generator_file.stem}_{job.network_g.type}"
        result = export_onnx(net, job.scale, generator_file.parent / file_name(name, job.scale, settings), settings)
        checked = "" if result.max_abs_error is None else f", max abs error vs torch {result.max_abs_error:.2e}"
        log(f"{job.name}: exported {result.path.name} (opset {result.opset}{checked})")
        files.append(result.path)
    return files


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
