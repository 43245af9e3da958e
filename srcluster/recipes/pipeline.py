"""The community's three-stage recipe as one pipeline: 2x fidelity -> 4x fidelity -> 4x GAN.

A recipe file is a job config (traiNNer-redux keys) shared by all stages, plus a `stages:` mapping of per-stage
overrides. Each stage's job is derived from the shared part by the rules below, then the stage's overrides are merged on
top (deep merge; lists are replaced), so every rule can be overridden per stage.

    fidelity_2x  scale 2, LR = bicubic (on-the-fly degradation keys of the shared part are dropped), Charbonnier only,
                 AdamW lr 2e-4, from scratch
    fidelity_4x  scale 4, pretrain = fidelity_2x's EMA generator with strict_load_g: false (all but the upsampler
                 carries over), LR = bicubic, lr 1e-4, total_iter and milestones halved
    gan_4x       scale 4, pretrain = fidelity_4x's generator with strict_load_g: true, lr 1e-4 for G and D,
                 LR by Real-ESRGAN's second-order degradations (high_order_degradation: true, with traiNNer-redux's
                 defaults for every degradation key the recipe does not set),
                 a U-Net discriminator, MS-SSIM + perceptual + HSLuv + GAN losses with traiNNer-redux's template
                 weights (the perceptual loss finds VGG19's weights as components/hub.py says: a path, the hub
                 cache, staged object storage, or a download; the demo drops it, and says so, where none works)

Chaining goes through the MLflow model registry: after each stage its best generator is registered as
`<recipe>-<stage>` (srcluster/tracking/models.py) and the next stage's `pretrain_network_g` is that
`models:/<name>/<version>`, so every model version's tags (pretrain model and run, data manifest and sha256, recipe
hash, version, commit, Ray job) lead back to the data (`srcluster lineage`). `plan()` shows the derived jobs without
running anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from srcluster import home
from srcluster.config import ConfigError, Job, flatten, parse_job, read_yaml
from srcluster.console import say
from srcluster.data.shards import is_shard_pattern, manifest_url
from srcluster.degrade.config import DATASET_KEYS, split_degradation_keys
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings, is_s3, redact_url
from srcluster.tracking import runs
from srcluster.tracking import tags as tag
from srcluster.tracking.models import find_registered, get_version, is_model_uri, log_generator, parse_model_uri
from srcluster.tracking.tracker import Tracker
from srcluster.train.stage import run_stage

STAGES = ("fidelity_2x", "fidelity_4x", "gan_4x")

# traiNNer-redux's GAN templates: MS-SSIM + perceptual (VGG19) + HSLuv + GAN, with their weights
GAN_LOSSES = [
    {"type": "mssimloss", "loss_weight": 0.5},
    {"type": "perceptualloss", "criterion": "charbonnier", "loss_weight": 0.01},
    {"type": "hsluvloss", "criterion": "charbonnier", "loss_weight": 1.0},
    {"type": "ganloss", "gan_type": "vanilla", "loss_weight": 0.1},
]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _halve(values: list[int]) -> list[int]:
    return [max(1, v // 2) for v in values]


def derive(shared: dict, stage: str) -> dict:
    """The job dict of `stage` before its overrides, by the rules in this module's docstring."""
    job = copy.deepcopy(shared)
    if stage in ("fidelity_2x", "fidelity_4x"):
        job, _ = split_degradation_keys(job, f"stage {stage}")  # fidelity stages learn from bicubic LR
    train = job.setdefault("train", {})
    optim_g = train.setdefault("optim_g", {})
    if stage == "fidelity_2x":
        job["scale"] = 2
        train["losses"] = [{"type": "charbonnierloss", "loss_weight": 1.0}]
        optim_g.update(type="AdamW", lr=2e-4)
        job.setdefault("path", {}).pop("pretrain_network_g", None)
        job.pop("network_d", None)
    elif stage == "fidelity_4x":
        job["scale"] = 4
        train["losses"] = [{"type": "charbonnierloss", "loss_weight": 1.0}]
        optim_g.update(lr=1e-4)
        train["total_iter"] = max(1, int(train.get("total_iter", 2)) // 2)
        scheduler = train.setdefault("scheduler", {})
        scheduler["milestones"] = _halve(scheduler.get("milestones", []))
        job.setdefault("path", {})["strict_load_g"] = False
        job.pop("network_d", None)
    elif stage == "gan_4x":
        job["scale"] = 4
        train["losses"] = copy.deepcopy(GAN_LOSSES)
        optim_g.update(lr=1e-4)
        train["optim_d"] = {**optim_g, "lr": 1e-4}
        train["total_iter"] = max(1, int(train.get("total_iter", 2)) // 2)
        scheduler = train.setdefault("scheduler", {})
        scheduler["milestones"] = _halve(scheduler.get("milestones", []))
        job.setdefault("network_d", {"type": "unetdiscriminatorsn"})
        job.setdefault("path", {})["strict_load_g"] = True
        job.setdefault("high_order_degradation", True)
    else:
        raise ConfigError(f"stages.{stage}: unknown stage (known: {', '.join(STAGES)})")
    return job


@dataclass
class Recipe:
    name: str
    source: str
    stages: dict[str, dict]  # stage -> job dict (pretrain left open for chaining)

    def job(self, stage: str, pretrain: str | None = None) -> Job:
        data = copy.deepcopy(self.stages[stage])
        if pretrain:
            data.setdefault("path", {})["pretrain_network_g"] = pretrain
        data["name"] = f"{self.name}-{stage}"
        # every stage of a recipe lands in the recipe's experiment, beside its parent run
        data.setdefault("srcluster", {}).setdefault("mlflow", {}).setdefault("experiment", self.name)
        return parse_job(data, f"{self.source} (stage {stage})")


def load_recipe(path: str | Path) -> Recipe:
    data = read_yaml(path)
    return parse_recipe(data, str(path))


def parse_recipe(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a `stages:` section")
    data = copy.deepcopy(data)
    overrides = data.pop("stages", None) or {name: {} for name in STAGES}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: stages: expected a mapping of stage name -> overrides")
    for stage in overrides:
        if stage not in STAGES:
            raise ConfigError(f"{source}: stages.{stage}: unknown stage (known: {', '.join(STAGES)})")
    name = str(data.get("name") or Path(source).stem)
    data.setdefault("name", name)
    stages = {
        stage: deep_merge(derive(data, stage), overrides.get(stage) or {}) for stage in STAGES if stage in overrides
    }
    recipe = Recipe(name, source, stages)
    for stage in stages:  # validate every stage now, not after hours of training the first one
        recipe.job(stage, pretrain="pending://previous-stage" if stage != STAGES[0] else None)
    return recipe


# --- plan: what each stage will run, without running it ----------------------------------------------------------


def registered_name(recipe: Recipe, stage: str) -> str:
    return f"{recipe.name}-{stage}"


def plan(recipe: Recipe) -> list[dict[str, Any]]:
    """Each stage's full job (traiNNer-redux keys, URL passwords masked), with the registry model it will feed on."""
    stages, previous = [], None
    for stage in recipe.stages:
        pretrain = (
            f"models:/{registered_name(recipe, previous)}/<version registered by {previous}>" if previous else None
        )
        job = recipe.job(stage, pretrain)
        stages.append(
            {
                "stage": stage,
                "registered_model": registered_name(recipe, stage),
                "pretrain_from": previous,
                "job": _masked(trainner_keys(job)),
            }
        )
        previous = stage
    return stages


def trainner_keys(job: Job) -> dict[str, Any]:
    """The job as a job file writes it: degradations back under traiNNer-redux's own keys (top level and
    `datasets.train`) instead of srcluster's parsed `datasets.train.degradations`."""
    data = job.model_dump(mode="json")
    train = data["datasets"]["train"]
    for name, value in (train.pop("degradations", None) or {}).items():
        (train if name in DATASET_KEYS else data)[name] = value
    return data


def _masked(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _masked(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_masked(v) for v in data]
    return redact_url(data) if isinstance(data, str) else data


def format_plan(stages: list[dict[str, Any]]) -> str:
    """The first stage's job in full (YAML), then each stage as the keys it changes against the one before."""
    lines: list[str] = []
    before: dict[str, Any] = {}
    for i, entry in enumerate(stages):
        flat = flatten(entry["job"])
        source = f" (pretrain: {entry['pretrain_from']}'s registered model)" if entry["pretrain_from"] else ""
        lines.append(f"# stage {i + 1}: {entry['stage']} -> registered as {entry['registered_model']}{source}")
        if i == 0:
            lines.append(yaml.safe_dump(entry["job"], sort_keys=False).rstrip())
        else:
            for key in _merged_keys(before, flat):
                if key not in flat:
                    lines.append(f"- {key}: {before[key]!r}")
                elif key not in before:
                    lines.append(f"+ {key}: {flat[key]!r}")
                elif before[key] != flat[key]:
                    lines.append(f"~ {key}: {before[key]!r} -> {flat[key]!r}")
        lines.append("")
        before = flat
    return "\n".join(lines)


def _merged_keys(before: dict, after: dict) -> list[str]:
    """The keys of `after` in order, with each key only `before` has placed after its neighbour in `before`."""
    order = list(after)
    previous = None
    for key in before:
        if key not in after:
            order.insert(order.index(previous) + 1 if previous else 0, key)
        previous = key
    return order


def recipe_hash(recipe: Recipe) -> str:
    """Same stages' training configs -> same hash (the `srcluster:` sections, which say where to run, are left out)."""
    training = {stage: {k: v for k, v in job.items() if k != "srcluster"} for stage, job in recipe.stages.items()}
    return hashlib.sha256(json.dumps(training, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- lineage ------------------------------------------------------------------------------------------------------


def data_lineage(job: Job, settings: StorageSettings) -> dict[str, str]:
    """The training data's manifest URIs and their sha256, as run / model-version tags ("none" for image folders)."""
    roots = job.datasets.train.dataroot_gt
    uris, digests = [], []
    for url in [roots] if isinstance(roots, str) else roots:
        target = manifest_url(posixpath.dirname(url) if is_shard_pattern(url) else url)
        if is_s3(target):
            # unreachable endpoint, rejected keys, missing bucket: one line, before any run starts
            settings.check(target)
        fs, path = settings.filesystem(target)
        try:
            digest = hashlib.sha256(cast(bytes, fs.cat_file(path))).hexdigest()  # fsspec is untyped; reads binary
        except FileNotFoundError:  # a folder of images: no manifest to pin
            target, digest = url, "none"
        uris.append(target)
        digests.append(digest)
    return {tag.DATA_MANIFEST: ",".join(uris), tag.DATA_SHA256: ",".join(digests)}


def pretrain_lineage(tracker, pretrain: str | None) -> dict[str, str]:
    """Which model (pinned to a registry version) and which run the stage starts from."""
    if not pretrain:
        return {tag.PRETRAIN: "scratch", tag.PRETRAIN_MODEL: "none", tag.PRETRAIN_RUN_ID: "none"}
    if not is_model_uri(pretrain):
        return {tag.PRETRAIN: pretrain, tag.PRETRAIN_MODEL: "none", tag.PRETRAIN_RUN_ID: "none"}
    name, version, alias = parse_model_uri(pretrain)
    found = get_version(tracker, name, version, alias)  # fails here, not in a Ray worker, when the model is missing
    return {
        tag.PRETRAIN: pretrain,
        tag.PRETRAIN_MODEL: f"models:/{name}/{found.version}",
        tag.PRETRAIN_RUN_ID: found.run_id or "none",
    }


# --- running ------------------------------------------------------------------------------------------------------


@dataclass
class StageSummary:
    stage: str
    iterations: int
    psnr: float | None
    checkpoint_uri: str
    run_id: str
    model_uri: str = ""  # the registered generator, models:/<recipe>-<stage>/<version>


def register_stage(
    tracker: Tracker, settings: StorageSettings, recipe: Recipe, stage: str, job: Job, result, parent: str
):
    """The stage's best generator as registry model `<recipe>-<stage>`, once per stage run."""
    name = registered_name(recipe, stage)
    found = find_registered(tracker, name, result.run_id)
    if found is not None:
        return found
    best = getattr(result, "best", None) or {}
    key = best.get("metric") or job.best_metric
    value = best.get("value", result.metrics.get(key) if key else None)
    tags = {tag.PARENT_RUN_ID: parent}
    if key and value is not None:
        tags.update({tag.KEY_METRIC: key, tag.KEY_METRIC_VALUE: f"{float(value):.6g}"})
        if "iteration" in best:
            tags[tag.KEY_METRIC_ITERATION] = str(best["iteration"])
    return log_generator(
        tracker,
        result.run_id,
        result.generator_uri,
        arch=job.network_g.type,
        options=job.network_g.options(),
        scale=job.scale,
        settings=settings,
        registered_name=name,
        tags=tags,
    )


def _report(tracker, recipe: Recipe, parent: str, results, log, settings: StorageSettings) -> Path | None:
    """The comparison page and image; every stage is trained and registered by now, so a failure here only costs
    them. Returns the page's path."""
    from srcluster.recipes.report import PAGE_FOLDER, write_page, write_report  # torch: `--plan` needs none

    page = None
    try:
        page = write_page(tracker, recipe.name, parent, results, settings)
        path = write_report(tracker, recipe.name, parent, results)
    except (SrclusterError, OSError, RuntimeError) as exc:
        log(f"report: not written ({exc.__class__.__name__}: {exc})")
        return page
    if page:
        log(f"comparison page: {page} (MLflow: {tracker.artifact_url(parent, f'{PAGE_FOLDER}/{page.name}')})")
    log(f"report: {path}" if path else "report: skipped (the recipe has no validation dataset)")
    return page


def latest_page(recipe_name: str) -> Path | None:
    """The newest comparison page a run of `recipe_name` wrote on this machine (`recipes/report.py: write_page`)."""
    pages = sorted((home.home() / "reports").glob(f"{recipe_name}-*.html"), key=lambda p: p.stat().st_mtime)
    return pages[-1] if pages else None


def run_recipe(
    recipe: Recipe, *, on_stage_done=None, fresh: bool = False, report: bool = True, log=say
) -> list[StageSummary]:
    """Run the stages in order, each initialised from the previous stage's registered (best EMA) generator.

    A rerun skips stages that finished (found in MLflow by their config), resumes the interrupted one, and continues
    the interrupted execution's parent run. Each stage's generator is registered as `<recipe>-<stage>` with its lineage;
    at the end a report image compares the stages on the same validation crops."""
    first_job = recipe.job(next(iter(recipe.stages)))
    settings = StorageSettings.resolve(first_job.srcluster.s3_endpoint)  # once, for the lineage and the registry
    tracker = Tracker(first_job.srcluster.mlflow.tracking_uri)
    experiment = first_job.srcluster.mlflow.experiment or recipe.name
    digest = recipe_hash(recipe)
    summaries, results, pretrain = [], [], None
    # An interrupted execution of the same recipe continues under its parent run, so one parent holds all stages; a
    # finished one is never reopened (a rerun is a new execution that reuses its finished stages).
    with runs.run(
        tracker,
        experiment,
        name=f"{recipe.name}-pipeline",
        fresh=fresh,
        reopen_finished=False,
        match={tag.RECIPE: recipe.name, tag.KIND: "pipeline", tag.RECIPE_HASH: digest},
    ) as parent_run:
        parent = parent_run.id
        for stage in recipe.stages:
            job = recipe.job(stage, pretrain)
            tags = {
                tag.RECIPE: recipe.name,
                tag.STAGE: stage,
                tag.RECIPE_HASH: digest,
                **pretrain_lineage(tracker, job.path.pretrain_network_g),
                **data_lineage(job, settings),
            }
            result = run_stage(job, run_name=stage, parent_run_id=parent, fresh=fresh, tags=tags, log=log)
            if result.reused:
                tracker.set_tags(parent, {tag.reused(stage): result.run_id})
            ref = register_stage(tracker, settings, recipe, stage, job, result, parent)
            log(f"{stage}: generator registered as {ref.uri}")
            pretrain = ref.uri
            summary = StageSummary(
                stage, result.iterations, result.metrics.get("val_psnr"), result.checkpoint_uri, result.run_id, ref.uri
            )
            summaries.append(summary)
            results.append((stage, job, result, ref))
            if on_stage_done:
                on_stage_done(summary, result)
        if report:
            _report(tracker, recipe, parent, results, log, settings)
    return summaries
