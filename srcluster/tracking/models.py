"""Generators in the MLflow model registry: log one from a run, register it, alias it, and resolve `models:/` URIs.

A logged generator is an MLflow pyfunc model folder (`MLmodel` + `artifacts/<file>.safetensors`) whose MLmodel
`metadata` holds the traiNNer-redux arch name, its options and the scale. MLflow 3's pytorch flavour would save a traced
`pt2` graph instead, which cannot be loaded back as weights into the configured architecture, so it is not used: a
pretrain must stay a plain state dict. The pyfunc side (`srcluster/infer/pyfunc_model.py`, saved as code, not a
pickle; referenced by path, so this layer imports no inference code) lets `mlflow.pyfunc.load_model` upscale images
too.

    log_generator(tracker, run_id, "s3://.../net_g_ema.safetensors", arch="compact", options={}, scale=2,
                  registered_name="demo-fidelity_2x") -> ModelRef(name, version, "models:/demo-fidelity_2x/1", run_id)
    set_alias(tracker, "demo-gan_4x", "3", "champion", reason="sharpest on Set14")
    resolve_model_uri("models:/demo-gan_4x@champion") -> (local .safetensors, "compact", {...}, 4)

Model versions are immutable, so a resolved version is downloaded once into `$SRCLUSTER_HOME/models/` and reused.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from srcluster import __version__, home
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings, redact_url
from srcluster.tracking import tags as tag
from srcluster.tracking.tracker import Tracker

MODEL_DIR = "generator_model"  # artifact folder of the logged model inside its run
GENERATOR_ARTIFACT = "generator"  # key of the safetensors file among the pyfunc artifacts
URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))/?")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    uri: str  # models:/name/version
    run_id: str


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias): exactly one of version / alias is set."""
    match = URI.fullmatch(uri)
    if not match:
        raise SrclusterError(f"{uri}: not a registry model URI (expected models:/NAME/VERSION or models:/NAME@ALIAS)")
    return match["name"], match["version"], match["alias"]


# --- logging and registering ------------------------------------------------------------------------------------


def _fetch(generator: str | Path, dest: Path, settings: StorageSettings) -> Path:
    """The generator file (local path or any fsspec URL) copied to `dest`."""
    fs, path = settings.filesystem(str(generator))
    try:
        dest.write_bytes(cast(bytes, fs.cat_file(path)))  # fsspec is untyped; cat_file reads in binary mode
    except FileNotFoundError:
        raise SrclusterError(f"generator {generator} does not exist") from None
    return dest


def _free_artifact_path(tracker: Tracker, run_id: str) -> str:
    taken = {Path(f.path).name for f in tracker.client.list_artifacts(run_id) if f.is_dir}
    return next(p for p in (MODEL_DIR, *(f"{MODEL_DIR}_{i}" for i in range(2, 1000))) if p not in taken)


def save_model_folder(
    generator: str | Path, folder: Path, *, arch: str, options: dict[str, Any], scale: int, settings: StorageSettings
) -> Path:
    """An MLflow pyfunc model folder at `folder` carrying the generator and its arch, options and scale."""
    import mlflow.pyfunc  # mlflow is heavy; the CLI parser imports this module

    with tempfile.TemporaryDirectory() as tmp:
        weights = _fetch(generator, Path(tmp) / (Path(str(generator)).name or "net_g.safetensors"), settings)
        if weights.suffix != ".safetensors":
            raise SrclusterError(f"generator {generator}: expected a .safetensors file")
        with warnings.catch_warnings():  # type-hint advice for predict(); we take images, not a typed schema
            warnings.simplefilter("ignore")
            mlflow.pyfunc.save_model(
                str(folder),
                python_model=str(Path(__file__).parents[1] / "infer" / "pyfunc_model.py"),
                artifacts={GENERATOR_ARTIFACT: str(weights)},
                # explicit: inferring requirements would load the model in a subprocess
                pip_requirements=[f"srcluster=={__version__}", "torch", "spandrel", "safetensors"],
                metadata={"arch": arch, "arch_options": dict(options), "scale": int(scale)},
            )
    return folder


def log_generator(
    tracker: Tracker,
    run_id: str,
    generator: str | Path,
    *,
    arch: str,
    options: dict[str, Any],
    scale: int,
    settings: StorageSettings,
    registered_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> ModelRef:
    """Log `generator` (.safetensors, path or URL, read through `settings`) into run `run_id` as an MLflow model and
    register it.

    The model version gets the run's `srcluster.*` lineage tags (all but `tags.RUN_ONLY`), the arch/scale, and `tags` on
    top; the run gets a `tags.REGISTERED_MODEL` tag pointing back at the version. `registered_name` defaults to the
    run's name."""
    client = tracker.client
    run = client.get_run(run_id)
    name = registered_name or run.info.run_name
    if not name:
        raise SrclusterError(f"run {run_id} has no name to register its generator under: pass registered_name")
    artifact_root = run.info.artifact_uri
    if artifact_root is None:
        raise SrclusterError(f"run {run_id} has no artifact location to register its generator from")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model_folder(
            generator, Path(tmp) / MODEL_DIR, arch=arch, options=options, scale=scale, settings=settings
        )
        artifact_path = _free_artifact_path(tracker, run_id)
        tracker.log_artifacts(run_id, folder, artifact_path)
    # the run's lineage (version, commit, Ray job, pretrain, data, recipe) travels with the model version
    version_tags = {k: v for k, v in run.data.tags.items() if k.startswith(tag.PREFIX) and k not in tag.RUN_ONLY}
    version_tags.update(
        {
            tag.ARCH: arch,
            tag.ARCH_OPTIONS: json.dumps(options, sort_keys=True),
            tag.SCALE: str(scale),
            tag.GENERATOR: str(generator),
            **(tags or {}),
        }
    )
    _ensure_registered_model(tracker, name)
    version = client.create_model_version(
        name,
        f"{artifact_root.rstrip('/')}/{artifact_path}",
        run_id=run_id,
        tags={k: str(v) for k, v in version_tags.items()},
    )
    ref = ModelRef(name, str(version.version), f"models:/{name}/{version.version}", run_id)
    tracker.set_tags(run_id, {tag.REGISTERED_MODEL: ref.uri})
    return ref


def _ensure_registered_model(tracker: Tracker, name: str) -> None:
    from mlflow.exceptions import MlflowException  # mlflow is heavy; the CLI parser imports this module

    try:
        tracker.client.get_registered_model(name)
    except MlflowException:
        try:
            tracker.client.create_registered_model(name, description="srcluster generator (safetensors + arch)")
        except MlflowException as exc:  # created meanwhile by another process
            if "already exists" not in str(exc).lower():
                raise


def find_registered(tracker: Tracker, name: str, run_id: str) -> ModelRef | None:
    """The newest version of `name` registered from `run_id`, if any (so a reused stage is not registered twice)."""
    from mlflow.exceptions import MlflowException  # mlflow is heavy; the CLI parser imports this module

    try:
        found = tracker.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return ModelRef(name, str(newest.version), f"models:/{name}/{newest.version}", run_id)


def set_alias(tracker: Tracker, name: str, version: str | int, alias: str, *, reason: str = "") -> None:
    """Point `models:/name@alias` at `version`; who, when and why are kept as tags on that version."""
    get_version(tracker, name, str(version))  # one-line error for an unknown name or version
    tracker.client.set_registered_model_alias(name, alias, str(version))
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for key, value in {"by": getpass.getuser(), "at": stamp, "reason": reason}.items():
        tracker.client.set_model_version_tag(name, str(version), tag.alias_note(alias, key), value)


# --- resolving ---------------------------------------------------------------------------------------------------


def get_version(tracker: Tracker, name: str, version: str | None = None, alias: str | None = None):
    """The registry's ModelVersion for name + version or alias, or a one-line error naming what is missing."""
    from mlflow.exceptions import MlflowException  # mlflow is heavy; the CLI parser imports this module

    try:
        tracker.client.get_registered_model(name)
    except MlflowException:
        raise SrclusterError(f"no registered model {name!r} in the registry at {_where(tracker)}") from None
    try:
        if alias is not None:
            return tracker.client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = tracker.client.search_model_versions(f"name = '{name}'")
            return max(versions, key=lambda v: int(v.version))
        return tracker.client.get_model_version(name, str(version))
    except (MlflowException, ValueError):
        what = f"alias @{alias}" if alias is not None else f"version {version}"
        raise SrclusterError(f"registered model {name!r} has no {what} (registry at {_where(tracker)})") from None


def _where(tracker: Tracker) -> str:
    return redact_url(tracker.uri)


def download_version(tracker: Tracker, version) -> Path:
    """The model folder of a ModelVersion on local disk, downloaded once per (registry, name, version)."""
    import mlflow.artifacts  # mlflow is heavy; the CLI parser imports this module

    registry = hashlib.sha256(tracker.uri.encode()).hexdigest()[:10]
    folder = home.home() / "models" / registry / version.name / str(version.version)
    if (folder / "MLmodel").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=folder.parent))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=version.source, dst_path=str(staging), tracking_uri=tracker.uri
        )
        if not (Path(local) / "MLmodel").exists():
            raise SrclusterError(
                f"models:/{version.name}/{version.version} ({version.source}) is not an MLflow model "
                "folder (no MLmodel file)"
            )
        try:
            Path(local).rename(folder)  # atomic: a concurrent reader sees no folder or a whole one
        except OSError:
            if not (folder / "MLmodel").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_model_folder(folder: Path, label: str) -> tuple[Path, str, dict[str, Any], int]:
    """(safetensors path, arch, options, scale) from a logged generator folder."""
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    meta = spec.get("metadata") or {}
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if GENERATOR_ARTIFACT not in artifacts or "arch" not in meta:
        raise SrclusterError(
            f"{label} was not logged by srcluster (its MLmodel has no generator artifact or arch metadata)"
        )
    return (
        folder / artifacts[GENERATOR_ARTIFACT]["path"],
        meta["arch"],
        dict(meta.get("arch_options") or {}),
        int(meta["scale"]),
    )


def resolve_model_uri(uri: str, *, tracker: Tracker | None = None) -> tuple[str, str, dict[str, Any], int]:
    """`models:/name@alias` or `models:/name/version` -> (local safetensors path, arch, options, scale)."""
    name, version, alias = parse_model_uri(uri)
    tracker = tracker or Tracker()
    found = get_version(tracker, name, version, alias)
    path, arch, options, scale = read_model_folder(download_version(tracker, found), uri)
    return str(path), arch, options, scale


def weights_file(source: str, *, tracker: Tracker | None = None) -> str:
    """A pretrain or generator source as a path or URL that weights can read: `models:/` URIs resolve to the version's
    safetensors (downloaded once per version), anything else is returned as is."""
    return resolve_model_uri(source, tracker=tracker)[0] if is_model_uri(source) else source


# --- a run's generators (`srcluster compare runs:/...`) -----------------------------------------------------------


@dataclass(frozen=True)
class RunGenerator:
    """A generator a stage run logged (`model/net_g_ema_<iter>.safetensors`, the best under `model/best/`), on disk."""

    stage: str
    iteration: int
    uri: str  # the downloaded file
    note: str  # "final", "best", or "final, best"


_ITERATION = re.compile(r"net_g_ema_(\d+)\.safetensors$")


def _get_run(tracker: Tracker, run_id: str):
    from mlflow.exceptions import MlflowException  # mlflow is heavy; the CLI parser imports this module

    try:
        return tracker.get_run(run_id)
    except MlflowException:
        raise SrclusterError(f"runs:/{run_id}: no such run at {_where(tracker)}") from None


def child_runs(tracker: Tracker, run_id: str) -> list:
    """A pipeline's stage runs, oldest first."""
    parent = _get_run(tracker, run_id)
    return list(
        tracker.client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{run_id}'",
            order_by=["attributes.start_time ASC"],
        )
    )


def stage_generators(tracker: Tracker, run) -> list[RunGenerator]:
    """The final and best generators a stage run logged, downloaded once into `$SRCLUSTER_HOME/runs/`, by iteration."""
    run_id = run.info.run_id
    stage = run.data.tags.get(tag.STAGE, run.info.run_name or run_id[:8])
    found: dict[int, list[str]] = {}
    paths: dict[int, str] = {}
    for folder, note in (("model", "final"), ("model/best", "best")):
        for entry in tracker.client.list_artifacts(run_id, folder):
            match = _ITERATION.search(entry.path)
            if entry.is_dir or match is None:
                continue
            iteration = int(match.group(1))
            found.setdefault(iteration, []).append(note)
            paths.setdefault(iteration, entry.path)
    dest = home.home() / "runs" / run_id
    out = []
    for iteration in sorted(found):
        local = dest / paths[iteration]
        if not local.exists():
            local = Path(tracker.client.download_artifacts(run_id, paths[iteration], str(dest)))
        out.append(RunGenerator(stage, iteration, str(local), ", ".join(found[iteration])))
    return out


def run_generators(tracker: Tracker, run_id: str, stage: str | None = None) -> list[RunGenerator]:
    """`runs:/RUN_ID`: a stage run's generators, or for a pipeline's parent run each stage's (the one it passed on:
    the best, else the final); `runs:/RUN_ID/STAGE`: that stage's generators."""
    run = _get_run(tracker, run_id)
    children = child_runs(tracker, run_id) if run.data.tags.get(tag.KIND) == "pipeline" or stage else []
    if stage is not None:
        named = {c.data.tags.get(tag.STAGE): c for c in children}
        if stage not in named:
            stages = ", ".join(map(str, named)) or "none"
            raise SrclusterError(f"runs:/{run_id}/{stage}: the run has no stage {stage!r} (stages: {stages})")
        return _some(stage_generators(tracker, named[stage]), f"runs:/{run_id}/{stage}")
    if not children:
        return _some(stage_generators(tracker, run), f"runs:/{run_id}")
    out = []
    for child in children:
        generators = stage_generators(tracker, child)
        if generators:
            out.append(next((g for g in generators if "best" in g.note), generators[-1]))
    return _some(out, f"runs:/{run_id}")


def _some(generators: list[RunGenerator], uri: str) -> list[RunGenerator]:
    if not generators:
        raise SrclusterError(f"{uri}: the run logged no generator (model/net_g_ema_<iter>.safetensors) yet")
    return generators
