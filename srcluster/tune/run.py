"""`srcluster tune SEARCH.yml`: run (or resume) a search, then report it and register the best generator.

The driver checks storage and tracking first, opens the search's parent MLflow run (found again by the search's key on
a rerun), sizes trials to the cluster, and runs a Tuner whose experiment lives next to the stage runs in object
storage, so an interrupted search is restored from there. Afterwards it closes the trials' MLflow runs, writes the trial
table and the metric plot, and registers the best trial's generator with the alias `candidate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from srcluster import home
from srcluster.console import say
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.tracking import models, runs
from srcluster.tracking import tags as tag
from srcluster.tracking.tracker import Tracker
from srcluster.train.loop import GENERATOR_FILE
from srcluster.train.stage import default_storage, ensure_ray, worker_env
from srcluster.tune.report import plot_curves, table_text, write_csv, write_trials_page
from srcluster.tune.space import LoadedSearch
from srcluster.tune.trial import TrialContext, distributed_trial, single_trial

CANDIDATE_ALIAS = "candidate"


@dataclass
class TrialRow:
    trial_id: str
    status: str  # TERMINATED | ERROR | ...
    params: dict[str, Any]
    last: float | None  # the objective at the trial's last report
    best: float | None  # the best value it reported
    iterations: int
    curve: list[tuple[int, float]]  # (iteration, objective)
    run_id: str | None = None
    generator_uri: str | None = None
    error: str | None = None


@dataclass
class SearchOutcome:
    name: str
    metric: str
    mode: str
    rows: list[TrialRow]
    parent_run_id: str
    best: TrialRow | None
    candidate: Any = None  # srcluster.tracking.models.ModelRef
    output_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def total_iterations(self) -> int:
        return sum(r.iterations for r in self.rows)


# --- resources ----------------------------------------------------------------------------------------------------


def plan_resources(search: LoadedSearch, available: Mapping[str, float]) -> tuple[dict[str, float], int]:
    """(resources of the trial's own actor, trials at once). A distributed trial's actor only waits for its Ray Train
    run, whose workers take the CPUs/GPUs, so concurrency is what the cluster holds of whole worker groups."""
    cluster = search.base_job.srcluster
    # an elastic base job ([min, max] workers) is sized at its max, like its effective batch
    workers = search.workers if isinstance(search.workers, int) else max(search.workers)
    cpus = search.spec.trial.cpus_per_worker or cluster.cpus_per_worker
    gpus = (
        (
            search.spec.trial.gpus_per_worker
            if search.spec.trial.gpus_per_worker is not None
            else cluster.gpus_per_worker
        )
        if cluster.use_gpu
        else 0
    )
    group = {"CPU": cpus * workers, "GPU": gpus * workers}
    fits = min(int(available.get(k, 0) // v) for k, v in group.items() if v > 0)
    if fits < 1:
        have = ", ".join(f"{available.get(k, 0):g} {k}" for k in group if group[k] > 0)
        need = ", ".join(f"{v:g} {k}" for k, v in group.items() if v > 0)
        raise SrclusterError(
            f"one trial needs {need} ({search.workers} workers) but the cluster has {have}: lower "
            "trial.workers or trial.cpus_per_worker"
        )
    concurrent = min(fits, search.spec.search.max_concurrent or fits, search.trial_count)
    if search.workers == 1:
        return {k: v for k, v in group.items() if v > 0}, concurrent
    # Tune needs some resource per trial; a distributed trial's actor only waits for its Ray Train run, whose workers
    # hold the CPUs/GPUs, so it asks for a token amount of memory rather than a CPU the workers would miss.
    return {"CPU": 0, "memory": 2**20}, concurrent


# --- algorithms -----------------------------------------------------------------------------------------------------


def make_scheduler(search: LoadedSearch):
    options, job = search.spec.scheduler, search.base_job
    if options.type == "asha":
        return ASHAScheduler(
            time_attr="iteration",
            max_t=job.train.total_iter,
            grace_period=options.grace_period or job.val.val_freq,
            reduction_factor=options.reduction_factor,
            brackets=options.brackets,
        )
    if options.type == "pbt":
        return PopulationBasedTraining(
            time_attr="iteration",
            perturbation_interval=options.perturbation_interval or job.val.val_freq,
            hyperparam_mutations={path: dist.domain() for path, dist in search.dists.items()},
            quantile_fraction=options.quantile_fraction,
            resample_probability=options.resample_probability,
            synch=options.synch,
        )
    return FIFOScheduler()


def make_search_alg(search: LoadedSearch, concurrent: int):
    if search.spec.search.algorithm == "optuna":
        return ConcurrencyLimiter(OptunaSearch(seed=search.spec.search.seed), max_concurrent=concurrent)
    return BasicVariantGenerator(max_concurrent=concurrent, random_state=search.spec.search.seed)


# --- the run --------------------------------------------------------------------------------------------------------


class TrialLines(tune.Callback):
    """One console line per trial report, end and failure: Tune's own status tables go to the log file unless
    `--verbose` (srcluster/console.py: quiet). Prints through `say`, not a `log` it holds: Tune pickles its
    callbacks with the experiment state, and a console's open stream does not pickle."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        say(f"trial {trial.trial_id}: iteration {result.get('iteration', '?')}, {self.metric} {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        say(f"trial {trial.trial_id}: done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        say(f"trial {trial.trial_id}: failed (its error is in the trial table and the log)")


def run_search(search: LoadedSearch, *, output_dir: Path | None = None, log=print) -> SearchOutcome:
    base = search.base_job
    settings = StorageSettings.resolve(base.srcluster.s3_endpoint)  # once per driver
    storage = search.spec.storage or f"{(base.srcluster.storage or default_storage(settings)).rstrip('/')}/tune"
    tracker = Tracker(base.srcluster.mlflow.tracking_uri)
    settings.check(storage, create_bucket=False)
    tracker.check()
    experiment = base.srcluster.mlflow.experiment or search.name
    key = search.key()

    with runs.run(
        tracker,
        experiment,
        name=f"{search.name}-search",
        match={tag.TUNE_KEY: key},
        params=search.params(),
        tags={tag.KIND: "tune", tag.PRETRAIN: base.path.pretrain_network_g or "scratch"},
    ) as parent:
        if parent.state == "reopened":
            log(f"{search.name}: continuing search run {parent.id}")
        grid = fit(search, settings, storage, tracker, experiment, parent.id, key, log)
        outcome = summarize(search, grid, tracker, experiment, parent.id, storage_is_s3=storage.startswith("s3://"))
        finish(outcome, search, tracker, settings, output_dir or home.home() / "tune" / key, log)
    return outcome


def fit(
    search: LoadedSearch,
    settings: StorageSettings,
    storage: str,
    tracker: Tracker,
    experiment: str,
    parent_id: str,
    key: str,
    log,
):
    """Run the Tuner (or restore an interrupted one from `storage`) under the open parent run; its ResultGrid."""
    env = worker_env(settings, tracker.uri, ray_workers=True)
    ensure_ray(env)
    own, concurrent = plan_resources(search, ray.cluster_resources())
    ctx = TrialContext(search, parent_id, experiment, tracker.uri)
    function = single_trial if search.workers == 1 else distributed_trial
    trainable = tune.with_resources(tune.with_parameters(function, ctx=ctx), own)
    path, fs = settings.ray_storage(storage)
    experiment_path = f"{path}/{key}"
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=fs):
        log(f"{search.name}: resuming the interrupted search from {storage}/{key} (finished trials are kept)")
        tuner = tune.Tuner.restore(
            experiment_path,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            storage_filesystem=fs,
        )
    else:
        log(
            f"{search.name}: {search.spec.num_samples} trials of {search.workers} worker(s), {concurrent} at once; "
            f"objective {search.metric} ({search.mode})"
        )
        tuner = tune.Tuner(
            trainable,
            param_space={path: dist.domain() for path, dist in search.dists.items()},
            tune_config=tune.TuneConfig(
                metric=search.metric,
                mode=search.mode,
                num_samples=search.spec.num_samples,
                search_alg=make_search_alg(search, concurrent),
                scheduler=make_scheduler(search),
            ),
            run_config=tune.RunConfig(
                name=key,
                storage_path=path,
                storage_filesystem=fs,
                # a diverged or crashed trial is recorded as ERROR; the search goes on without it
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                # PBT restarts trials from other trials' checkpoints, which must still exist by then
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if search.spec.scheduler.type == "pbt" else 2),
                verbose=1,
                callbacks=[TrialLines(search.metric)],
            ),
        )
    return tuner.fit()


def summarize(
    search: LoadedSearch, grid, tracker: Tracker, experiment: str, parent_id: str, *, storage_is_s3: bool
) -> SearchOutcome:
    rows = []
    # ResultGrid keeps its results in the order of its experiment's trials, which carry id and status
    for trial, result in zip(grid._experiment_analysis.trials, grid, strict=False):
        config = trial.config or {}
        frame = result.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if frame is not None and search.metric in frame and "iteration" in frame:
            points = ((int(i), float(v)) for i, v in zip(frame["iteration"], frame[search.metric], strict=False))
            curve = [(i, v) for i, v in points if not math.isnan(v)]
        metrics = result.metrics or {}
        values = [v for _, v in curve]
        last = metrics.get(search.metric)
        run = tracker.find_run(experiment, {tag.TUNE_TRIAL_ID: trial.trial_id})
        rows.append(
            TrialRow(
                trial_id=trial.trial_id,
                status="ERROR" if result.error else str(trial.status),
                params={p: search.dists[p].value(config[p]) for p in search.dists if p in config},
                last=float(last) if isinstance(last, (int, float)) and math.isfinite(last) else None,
                best=(min if search.mode == "min" else max)(values) if values else None,
                iterations=int(metrics.get("iteration", 0) or 0),
                curve=curve,
                run_id=run.info.run_id if run else None,
                generator_uri=generator_of(result, run, storage_is_s3),
                error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            )
        )
    rows.sort(key=lambda r: r.trial_id)
    done = [r for r in rows if r.status == "TERMINATED" and r.last is not None]
    best = (min if search.mode == "min" else max)(done, key=lambda r: r.last) if done else None
    return SearchOutcome(search.name, search.metric, search.mode, rows, parent_id, best)


def generator_of(result, run, storage_is_s3: bool) -> str | None:
    """The generator a trial ended with: the stage's best (by the search metric) when it finished, else the one in
    its latest checkpoint (a trial ASHA stopped, or a single-worker trial)."""
    metrics = result.metrics or {}
    if run is not None and run.data.tags.get(tag.GENERATOR_URI):
        return run.data.tags[tag.GENERATOR_URI]
    if metrics.get("generator_uri"):
        return metrics["generator_uri"]
    if metrics.get("checkpoint_path"):  # from TuneReportCallback: a path inside the run storage's filesystem
        path = metrics["checkpoint_path"]
        return f"{'s3://' if storage_is_s3 else ''}{path}/{GENERATOR_FILE}"
    if result.checkpoint is not None:
        path = result.checkpoint.path
        return f"{'s3://' if storage_is_s3 else ''}{path}/{GENERATOR_FILE}"
    return None


def finish(
    outcome: SearchOutcome, search: LoadedSearch, tracker: Tracker, settings: StorageSettings, output_dir: Path, log
) -> None:
    """Close the trials' runs, write and log the trial table and plot, and register the best generator (the parent
    run itself is ended by `run_search`)."""
    # A trial Tune stopped (ASHA) is torn down mid-stage: its MLflow run is left open, or was closed as FAILED or
    # KILLED by the stage seeing its Ray Train run go away, depending on which came first. Tune's verdict decides: a
    # TERMINATED trial finished (early), an open run of any other trial failed with its process.
    for row in outcome.rows:
        if row.run_id is None:
            continue
        run = tracker.get_run(row.run_id)
        sampled = {f"tune.{p}": v for p, v in row.params.items()}
        existing = run.data.params
        tracker.log_params(row.run_id, {k: v for k, v in sampled.items() if k not in existing})
        if row.status == "TERMINATED" and run.info.status != "FINISHED":
            tracker.set_tags(row.run_id, {tag.TUNE_STOPPED_EARLY: str(row.iterations)})
            tracker.end_run(row.run_id, "FINISHED")
        elif run.info.status == "RUNNING":
            tracker.end_run(row.run_id, "FAILED")
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(outcome, output_dir / "metric_curves.png")
    table = output_dir / "trials.txt"
    table.write_text(table_text(outcome, search))
    csv = write_csv(outcome, search, output_dir / "trials.csv")
    outcome.output_dir, outcome.files = output_dir, [plot, table, csv]
    try:  # a page that cannot be made (a generator gone from storage) costs only the page
        page = write_trials_page(outcome, search, output_dir / "top_trials.html", settings)
    except (SrclusterError, OSError, RuntimeError) as exc:
        log(f"{search.name}: top trials page not written ({exc.__class__.__name__}: {exc})")
        page = None
    if page is not None:
        outcome.files.append(page)
    for file in outcome.files:
        tracker.log_artifact(outcome.parent_run_id, file, "search")
    best = outcome.best
    if best is not None:
        assert best.last is not None  # summarize picks the best among the trials that reported the objective
        tracker.log_metrics(
            outcome.parent_run_id,
            {
                f"best_{outcome.metric}": best.last,
                "trials": len(outcome.rows),
                "trials_failed": sum(r.status == "ERROR" for r in outcome.rows),
                "total_iterations": outcome.total_iterations,
            },
            step=0,
        )
        tracker.set_tags(
            outcome.parent_run_id,
            {tag.TUNE_BEST_TRIAL: best.trial_id, tag.TUNE_BEST_RUN: best.run_id or ""},
        )
        outcome.candidate = register_candidate(outcome, best, search, tracker, settings, log)


def register_candidate(
    outcome: SearchOutcome, best: TrialRow, search: LoadedSearch, tracker: Tracker, settings: StorageSettings, log
):
    """The best trial's generator in the model registry, alias `candidate`, with its lineage in the tags."""
    job = search.base_job
    if best.generator_uri is None or best.run_id is None:
        log(f"{search.name}: best trial {best.trial_id} left no generator to register")
        return None
    name = search.spec.registered_model or search.name
    ref = models.find_registered(tracker, name, best.run_id)  # a rerun of a finished search registers nothing new
    if ref is None:
        lineage = {
            tag.TUNE_SEARCH_RUN: outcome.parent_run_id,
            tag.TUNE_TRIAL_ID: best.trial_id,
            tag.PRETRAIN: job.path.pretrain_network_g or "scratch",
            tag.tune_objective(outcome.metric): f"{best.last:.6g}",
        }
        network = dict(search.job_dict(best.params)["network_g"])  # the trial's own, in case the space changes it
        ref = models.log_generator(
            tracker,
            best.run_id,
            best.generator_uri,
            arch=network.pop("type"),
            options=network,
            scale=job.scale,
            settings=settings,
            registered_name=name,
            tags=lineage,
        )
    models.set_alias(
        tracker,
        ref.name,
        ref.version,
        CANDIDATE_ALIAS,
        reason=f"best {outcome.metric} {best.last:.4g} of {len(outcome.rows)} trials in search "
        f"{search.name} (run {outcome.parent_run_id})",
    )
    log(f"{search.name}: registered {ref.name} version {ref.version} as @{CANDIDATE_ALIAS}")
    return ref
