"""The search file: a base stage, a search space over its config keys by dotted path, the objective and the algorithms.

    name: gan-search
    base: {recipe: recipes/my.yml, stage: gan_4x, pretrain: s3://.../net_g_ema.safetensors}   # or {job: jobs/x.yml}
    space:
      train.optim_g.lr: {loguniform: [1.0e-5, 1.0e-3]}
      train.losses.ganloss.loss_weight: {uniform: [0.01, 0.2]}      # a loss by its type in train.losses
      datasets.train: {choice: [{lq_size: 32, batch_size_per_gpu: 4}, {lq_size: 16, batch_size_per_gpu: 16}]}
    metric: val_dists        # default: DISTS / LPIPS / TOPIQ when their weights are here, else val_psnr
    search: {algorithm: optuna, max_concurrent: 4}
    scheduler: {type: asha}
    num_samples: 16
    trial: {workers: 2}      # 1 = single-worker trials (the only kind PBT can run)

Every path is checked against the base job when the file is loaded, and every distribution's extreme values are
validated as a whole job, so a typo or an impossible range fails before anything starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import tune

from srcluster.components import perceptual
from srcluster.config import ConfigError, Job, describe_errors, load_job, read_yaml
from srcluster.recipes.pipeline import STAGES, deep_merge, load_recipe
from srcluster.registry import did_you_mean

DISTRIBUTIONS = {  # name -> number of arguments (None: a list of options)
    "choice": None,
    "grid": None,
    "uniform": 2,
    "loguniform": 2,
    "quniform": 3,
    "qloguniform": 3,
    "randint": 2,
}
# The default objective, in order of preference: the first whose weights are on this machine wins.
PERCEPTUAL_DEFAULTS = ("dists", "lpips", "topiq")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Base(Strict):
    job: str | None = None  # a job file
    recipe: str | None = None  # or a recipe file and one of its stages
    stage: str = "gan_4x"
    pretrain: str | None = None  # pretrain_network_g of the stage (a recipe's later stages need one)
    overrides: dict[str, Any] = {}  # fixed changes for every trial, by dotted path (e.g. val.val_freq: 20)

    @model_validator(mode="after")
    def one_source(self) -> Base:
        if (self.job is None) == (self.recipe is None):
            raise ValueError("give exactly one of base.job or base.recipe")
        return self


class Search(Strict):
    algorithm: Literal["random", "optuna"] = "random"
    max_concurrent: Annotated[int, Field(gt=0)] | None = None  # default: as many as the cluster fits
    seed: int | None = None


class Scheduler(Strict):
    type: Literal["asha", "pbt", "fifo"] = "asha"
    # ASHA, in training iterations: no trial is stopped before grace_period (default: the first validation)
    grace_period: Annotated[int, Field(gt=0)] | None = None
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    brackets: Annotated[int, Field(gt=0)] = 1
    # PBT, in training iterations (default: every validation)
    perturbation_interval: Annotated[int, Field(gt=0)] | None = None
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25
    synch: bool = False  # True: trials wait for each other at every perturbation (slower, but every round counts)


class Trial(Strict):
    workers: Annotated[int, Field(gt=0)] | None = None  # default: the base job's srcluster.workers
    cpus_per_worker: Annotated[float, Field(gt=0)] | None = None
    gpus_per_worker: Annotated[float, Field(ge=0)] | None = None


class SearchFile(Strict):
    name: str
    base: Base
    space: dict[str, dict[str, Any]]
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    search: Search = Search()
    scheduler: Scheduler = Scheduler()
    num_samples: Annotated[int, Field(gt=0)] = 8
    trial: Trial = Trial()
    storage: str | None = None  # Tune's experiment storage; default: the base job's run storage
    registered_model: str | None = None  # the registry name of the candidate; default: the search name


class Dist(BaseModel):
    """One distribution of the space; `options` keeps non-scalar choices (dicts, lists), sampled by index."""

    path: str
    kind: str
    args: list[Any]

    @property
    def by_index(self) -> bool:
        return self.kind in ("choice", "grid") and not all(isinstance(v, (str, int, float, bool)) for v in self.args)

    def domain(self):
        if self.kind in ("choice", "grid"):
            values = list(range(len(self.args))) if self.by_index else self.args
            return tune.grid_search(values) if self.kind == "grid" else tune.choice(values)
        return getattr(tune, self.kind)(*self.args)

    def value(self, sampled: Any) -> Any:
        """What the job gets for a value Tune sampled."""
        return copy.deepcopy(self.args[int(sampled)]) if self.by_index else sampled

    def extremes(self) -> list[Any]:
        """Values that together exercise the whole range: each option, or both ends."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high]


def parse_dist(path: str, spec: Any, source: str) -> Dist:
    where = f"{source}: space.{path}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-3]}} "
            f"(known: {', '.join(DISTRIBUTIONS)})"
        )
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        hint = did_you_mean(str(kind), DISTRIBUTIONS) or f"known: {', '.join(DISTRIBUTIONS)}"
        raise ConfigError(f"{where}: unknown distribution {kind!r} ({hint})")
    arity = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or (arity is None and not args) or (arity is not None and len(args) != arity):
        wanted = "a non-empty list of values" if arity is None else f"a list of {arity} numbers"
        raise ConfigError(f"{where}: {kind} takes {wanted}, got {args!r}")
    if arity is not None:
        if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: {kind} takes numbers, got {args!r}")
        if args[0] >= args[1]:
            raise ConfigError(f"{where}: {kind} needs low < high, got {args!r}")
        if "log" in kind and args[0] <= 0:
            raise ConfigError(f"{where}: {kind} needs a positive low end, got {args[0]!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: randint takes integers [low, high), got {args!r}")
    return Dist(path=path, kind=kind, args=args)


# --- dotted paths into a job ------------------------------------------------------------------------------------------


def _hint(name: str, known: list[str]) -> str:
    return did_you_mean(name, known) or f"known: {', '.join(known) or 'none'}"


def set_path(data: dict, path: str, value: Any, where: str = "space") -> None:
    """Set `path` in a job dict. `train.losses.<type>.<key>` addresses the loss of that type; a dict value is merged
    into the dict at `path` (so `datasets.train: {lq_size: .., batch_size_per_gpu: ..}` changes both together)."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):  # train.losses: entries by type
            types = [str(e.get("type", "")).lower() for e in node if isinstance(e, dict)]
            if part.lower() not in types:
                raise ConfigError(f"{where}.{path}: {'.'.join(parts[:i])} has no {part!r} ({_hint(part, types)})")
            index = types.index(part.lower())
            if last:
                node[index] = deep_merge(node[index], value) if isinstance(value, dict) else value
                return
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}.{path}: {'.'.join(parts[:i])} is not a section")
        if last:
            node[part] = (
                deep_merge(node[part], value)
                if isinstance(value, dict) and isinstance(node.get(part), dict)
                else copy.deepcopy(value)
            )
            return
        if node.get(part) is None:
            raise ConfigError(f"{where}.{here}: no such section in the base job ({_hint(part, list(node))})")
        node = node[part]


def check_path(data: dict, path: str, where: str) -> None:
    """Unknown leaf keys are errors too, except inside component sections (network/loss options), which the job
    validation checks against the component's own options."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            types = [str(e.get("type", "")).lower() for e in node if isinstance(e, dict)]
            if part.lower() not in types:
                raise ConfigError(f"{where}.{path}: {'.'.join(parts[:i])} has no {part!r} ({_hint(part, types)})")
            node = node[types.index(part.lower())]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}.{path}: {'.'.join(parts[:i])} is not a section")
        # component options (network and loss keyword arguments) are checked by the job validation instead
        component = (i == 1 and parts[0] in ("network_g", "network_d")) or (i == 3 and parts[:2] == ["train", "losses"])
        if part not in node and not component:
            raise ConfigError(f"{where}.{path}: unknown key {part!r} ({_hint(part, list(node))})")
        node = node.get(part)


# --- the loaded search ------------------------------------------------------------------------------------------------


class LoadedSearch:
    """A validated search file: the base job (as a dict), the space, the objective and the trial shape."""

    def __init__(self, spec: SearchFile, base: Job, source: str):
        self.spec, self.source = spec, source
        self.base = base.model_dump(mode="json")
        self.base_job = base
        self.dists = {path: parse_dist(path, d, source) for path, d in spec.space.items()}
        if not self.dists:
            raise ConfigError(f"{source}: space: empty; name at least one config key to search")
        if not base.validates:
            raise ConfigError(
                f"{source}: base: the stage does not validate (datasets.val or val_<suffix>, and val.val_enabled); "
                "a search needs validation to score trials"
            )
        for path in self.dists:
            check_path(self.base, path, f"{source}: space")
        self.workers = spec.trial.workers or base.srcluster.workers
        if spec.scheduler.type == "pbt" and self.workers != 1:
            raise ConfigError(f"{source}: scheduler.type pbt runs single-worker trials: set trial.workers: 1")
        if spec.scheduler.type == "pbt":
            for path in self.dists:
                if path.startswith("network_") or path == "scale":
                    raise ConfigError(
                        f"{source}: space.{path}: PBT continues trials from other trials' checkpoints, "
                        "so it cannot change the model: "
                        "use scheduler asha or fifo to search this key"
                    )
        if spec.search.algorithm == "optuna" and any(d.kind == "grid" for d in self.dists.values()):
            bad = next(p for p, d in self.dists.items() if d.kind == "grid")
            raise ConfigError(f"{source}: space.{bad}: grid is for search.algorithm random; use choice with optuna")
        self.metric, self.mode, self.metric_key = resolve_metric(spec, base, source)
        self._check_extremes()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def trial_count(self) -> int:
        """num_samples times every grid's size (Tune repeats the grid num_samples times)."""
        count = self.spec.num_samples
        for dist in self.dists.values():
            count *= len(dist.args) if dist.kind == "grid" else 1
        return count

    def key(self) -> str:
        """Same search -> same key: the Tune experiment name, so a rerun restores it instead of starting over."""
        data = {"spec": self.spec.model_dump(mode="json"), "base": self.base}
        return f"{self.name}-{hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]}"

    def job_dict(self, values: dict[str, Any]) -> dict:
        """The base job with the sampled values (already mapped by `Dist.value`) and the search's trial settings."""
        data = copy.deepcopy(self.base)
        for path, value in values.items():
            set_path(data, path, value, f"{self.source}: space")
        data["val"].setdefault("metrics", {})
        data["val"]["metrics_enabled"] = True  # the objective is scored whatever the stage says (redux's default: off)
        if self.metric_key not in data["val"]["metrics"]:
            data["val"]["metrics"][self.metric_key] = {"type": self.metric_key}
        # Every report carries the objective: Tune's schedulers and Optuna score each result they get.
        val_freq = data["val"]["val_freq"]
        data["logger"]["print_freq"] = data["logger"]["save_checkpoint_freq"] = val_freq
        cluster = data["srcluster"]
        cluster["workers"] = self.workers
        if isinstance(cluster.get("checkpoints"), dict):  # the stage's best generator is picked by the objective
            cluster["checkpoints"]["best"] = self.metric_key
        if self.spec.trial.cpus_per_worker is not None:
            cluster["cpus_per_worker"] = self.spec.trial.cpus_per_worker
        if self.spec.trial.gpus_per_worker is not None:
            cluster["gpus_per_worker"] = self.spec.trial.gpus_per_worker
        return data

    def trial_job(self, sampled: dict[str, Any], name: str) -> Job:
        data = self.job_dict({p: d.value(sampled[p]) for p, d in self.dists.items() if p in sampled})
        data["name"] = name
        return validate_job(data, f"{self.source} (trial {name})")

    def _check_extremes(self) -> None:
        for path, dist in self.dists.items():
            for value in dist.extremes():
                try:
                    data = self.job_dict({path: value})
                    Job.model_validate(data)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ConfigError(
                        f"{self.source}: space.{path}: {dist.kind} value {value!r} makes an invalid job "
                        f"({where}: {first['msg'].removeprefix('Value error, ')})"
                    ) from None

    def params(self) -> dict[str, Any]:
        """The search itself as MLflow params of the parent run (MLflow stores each value as its str)."""
        spec = self.spec
        out: dict[str, Any] = {
            f"space.{p}": json.dumps(d.model_dump(include={"kind", "args"})) for p, d in self.dists.items()
        }
        out.update(
            {
                "metric": self.metric,
                "mode": self.mode,
                "search": spec.search.algorithm,
                "scheduler": spec.scheduler.type,
                "num_samples": spec.num_samples,
                "trial.workers": self.workers,
                "base": spec.base.job or f"{spec.base.recipe}:{spec.base.stage}",
                "base.pretrain": self.base_job.path.pretrain_network_g or "scratch",
            }
        )
        return out


def validate_job(data: dict, source: str) -> Job:
    """A job from a dumped (already resolved) job dict: its degradations are in their parsed form, so it is validated
    as is rather than read like a job file."""
    try:
        return Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None


def resolve_metric(spec: SearchFile, base: Job, source: str) -> tuple[str, str, str]:
    """(reported metric name, mode, val.metrics key). The default is perceptual when its weights are available."""
    configured = {name: m.type.removeprefix("calculate_") for name, m in base.val.metrics.items()}
    if spec.metric is not None:
        key = spec.metric.removeprefix("val_")
        kind = configured.get(key, key)
        if kind not in perceptual.METRICS.names():
            known = [f"val_{k}" for k in configured]
            raise ConfigError(
                f"{source}: metric: {spec.metric!r} is not a validation metric of the base job "
                f"({_hint('val_' + key, known)}; or one of {', '.join(perceptual.METRICS.names())})"
            )
        chosen = base.val.metrics.get(key)  # a configured `better:` overrides the metric's own direction
        better = (chosen.better if chosen else None) or metric_direction(kind, source)
        return f"val_{key}", spec.mode or ("max" if better == "higher" else "min"), key
    for kind in PERCEPTUAL_DEFAULTS:
        try:
            better = perceptual.build_metric(kind).better
        except Exception:  # weights not on this machine: try the next one
            continue
        key = next((name for name, k in configured.items() if k == kind), kind)
        return f"val_{key}", spec.mode or ("max" if better == "higher" else "min"), key
    key = next((name for name, k in configured.items() if k == "psnr"), "psnr")
    return f"val_{key}", spec.mode or "max", key


def metric_direction(kind: str, source: str) -> str:
    try:
        return perceptual.build_metric(kind).better
    except Exception as exc:
        raise ConfigError(f"{source}: metric: {kind} cannot be computed here: {exc}") from None


def load_base(base: Base, source: str) -> Job:
    job = _load_base(base, source)
    if not base.overrides:
        return job
    data = job.model_dump(mode="json")
    for path, value in base.overrides.items():
        check_path(data, path, f"{source}: base.overrides")
        set_path(data, path, value, f"{source}: base.overrides")
    return validate_job(data, f"{source}: base.overrides")


def _load_base(base: Base, source: str) -> Job:
    folder = Path(source).parent
    if base.job is not None:
        job = load_job(_relative(base.job, folder))
        if base.pretrain:
            data = job.model_dump(mode="json")
            data["path"]["pretrain_network_g"] = base.pretrain
            job = validate_job(data, f"{source}: base")
        return job
    assert base.recipe is not None  # Base.one_source: a job file or a recipe, and it is not a job file
    recipe = load_recipe(_relative(base.recipe, folder))
    if base.stage not in recipe.stages:
        raise ConfigError(
            f"{source}: base.stage: {base.stage!r} is not a stage of {base.recipe} "
            f"({_hint(base.stage, list(recipe.stages) or list(STAGES))})"
        )
    if base.stage != STAGES[0] and not base.pretrain:
        raise ConfigError(
            f"{source}: base.pretrain: stage {base.stage} starts from the previous stage's generator; "
            "give its URL (the `generator:` line printed by `srcluster train`/`pipeline`)"
        )
    return recipe.job(base.stage, base.pretrain)


def _relative(path: str, folder: Path) -> str:
    """Paths in a search file are relative to the file (then to the working directory)."""
    candidate = folder / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path


def parse_search(data: Any, source: str = "search") -> LoadedSearch:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with base:, space: and the search options")
    try:
        spec = SearchFile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if err["type"] == "extra_forbidden":
                known = _known(loc[:-1])
                lines.append(f"{source}: {'.'.join(loc)}: unknown key ({_hint(loc[-1], known)})")
            elif err["type"] == "missing":
                lines.append(f"{source}: {'.'.join(loc)}: required key is missing")
            else:
                lines.append(
                    f"{source}: {'.'.join(loc) + ': ' if loc else ''}{err['msg'].removeprefix('Value error, ')}"
                    f"{'' if isinstance(err.get('input'), dict) else ', got ' + repr(err.get('input'))}"
                )
        raise ConfigError("\n".join(lines)) from None
    return LoadedSearch(spec, load_base(spec.base, source), source)


def _known(loc: list[str]) -> list[str]:
    model: type[BaseModel] = SearchFile
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_search(path: str | Path) -> LoadedSearch:
    return parse_search(read_yaml(path), str(path))
