"""The job file: traiNNer-redux's option names, validated, plus one `srcluster:` section for the cluster settings.

A job is one training stage. `load_job(path)` reads YAML safely, validates it and returns a `Job`; every mistake is
reported as one line naming the file, the key path, the bad value and (for typos) the closest known key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from srcluster.degrade.config import Degradations, parse_degradations, split_degradation_keys
from srcluster.errors import ConfigError, SrclusterError
from srcluster.storage import redact_url


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Open(BaseModel):
    """Sections whose extra keys are component options (arch or loss keyword arguments)."""

    model_config = ConfigDict(extra="allow")


PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Urls = str | list[str]


class TrainDataset(Strict):
    name: str = "train"
    type: str | None = None  # traiNNer-redux's dataset class; srcluster picks the reader from the URL instead
    dataroot_gt: Urls
    dataroot_lq: Urls | None = None
    lq_size: PositiveInt = 64
    batch_size_per_gpu: PositiveInt = 8
    accum_iter: PositiveInt = 1
    num_worker_per_gpu: Annotated[int, Field(ge=0)] = 2
    use_hflip: bool = True
    use_rot: bool = True
    # Not written in job files: parse_job fills it from traiNNer-redux's degradation keys (top level and here), so it
    # travels with the job to the workers and into the run key and MLflow params. None: bicubic LR (or paired data).
    degradations: Degradations | None = None


class ValDataset(Strict):
    name: str = "val"
    type: str | None = None
    dataroot_gt: Urls
    dataroot_lq: Urls | None = None


class Datasets(Strict):
    train: TrainDataset
    val: ValDataset | None = None


class Component(Open):
    """A registry entry by traiNNer-redux name (`type`); every other key is an option for its builder."""

    type: str

    @field_validator("type")
    @classmethod
    def lower(cls, value: str) -> str:
        return value.lower()

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Network(Component):
    pass


class Paths(Strict):
    pretrain_network_g: str | None = None
    param_key_g: str | None = None
    strict_load_g: bool = True
    pretrain_network_d: str | None = None
    param_key_d: str | None = None
    strict_load_d: bool = True
    resume_state: str | None = None


class Optimizer(Strict):
    type: Literal["AdamW", "Adam"] = "AdamW"
    lr: Annotated[float, Field(gt=0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.99)


class Scheduler(Strict):
    type: Literal["MultiStepLR", "CosineAnnealingLR"] = "MultiStepLR"
    milestones: list[PositiveInt] = []
    gamma: Annotated[float, Field(gt=0)] = 0.5
    eta_min: Annotated[float, Field(ge=0)] = 0.0


class Loss(Component):
    loss_weight: Annotated[float, Field(ge=0)] = 1.0


class TrainOptions(Strict):
    total_iter: PositiveInt
    warmup_iter: int = -1
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    ema_power: Annotated[float, Field(ge=0)] = 0.75
    grad_clip: bool = False
    grad_clip_max_norm: Annotated[float, Field(gt=0)] = 100.0
    optim_g: Optimizer = Optimizer()
    optim_d: Optimizer | None = None
    scheduler: Scheduler = Scheduler()
    losses: list[Loss]


class Metric(Component):
    """A validation metric by traiNNer-redux's type (`calculate_psnr`, ...); extra keys are the metric's options."""

    crop_border: Annotated[int, Field(ge=0)] | None = None  # default: the job's scale
    test_y_channel: bool = False  # psnr and ssim only; the perceptual metrics score RGB

    @field_validator("type")
    @classmethod
    def known(cls, value: str) -> str:
        from srcluster.components.perceptual import METRICS

        METRICS.check(value.lower().removeprefix("calculate_"), "type")
        return value.lower()


class ValOptions(Strict):
    val_enabled: bool = True
    val_freq: PositiveInt = 1000
    save_img: bool = True
    tile_size: Annotated[int, Field(ge=0)] = 0
    tile_overlap: Annotated[int, Field(ge=0)] = 8
    metrics_enabled: bool = True
    metrics: dict[str, Metric] = {"psnr": Metric(type="calculate_psnr"), "ssim": Metric(type="calculate_ssim")}


class Logger(Strict):
    print_freq: PositiveInt = 100
    save_checkpoint_freq: PositiveInt = 1000
    save_checkpoint_format: Literal["safetensors", "pth"] = "safetensors"
    use_tb_logger: bool = False


class MlflowOptions(Strict):
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else the local stack's server, else a local SQLite file
    experiment: str | None = None  # default: the job's name
    parent_run_id: str | None = None


class Checkpoints(Strict):
    keep_last: PositiveInt = 3  # the newest N checkpoints Ray Train keeps (resume points)
    best: str | None = None  # validation metric naming the best checkpoint, passed downstream; default: the first of val.metrics


class Plateau(Strict):
    """"Train until PSNR/SSIM peak": stop when `checkpoints.best` has not improved by more than `min_delta` for
    `patience` validations in a row (0 = off; `train.total_iter` always bounds the run)."""

    patience: Annotated[int, Field(ge=0)] = 0
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class Cluster(Strict):
    """srcluster's own settings: where and how the stage runs."""

    # N, or [min, max] for an elastic run (spot/preemptible nodes): the effective batch is declared at max workers and
    # held when fewer are available, by raising accum_iter (and lowering the per-worker batch when it must)
    workers: PositiveInt | tuple[PositiveInt, PositiveInt] = 2
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 1
    storage: str | None = None  # Ray Train run storage; default s3://srcluster/runs on the local stack
    s3_endpoint: str | None = None  # default: AWS_ENDPOINT_URL, else the local stack
    max_failures: Annotated[int, Field(ge=-1)] = 0  # worker-group restarts from the latest checkpoint; -1 = unlimited
    nonfinite_patience: PositiveInt = 10  # stop after this many consecutive non-finite steps (each is skipped)
    s3_retry_deadline_s: Annotated[float, Field(gt=0)] = 120  # an object store down longer than this stops the run
    # Where on-the-fly degradations run: "workers" = the DataLoader workers (CPU; the step gets ready LR, like paired
    # data), "device" = inside the training step on the worker's device (batched on the GPU, as Real-ESRGAN does).
    # auto: device with use_gpu, workers without (on CPU the workers run beside the step instead of stalling it).
    degrade_on: Literal["auto", "workers", "device"] = "auto"
    checkpoints: Checkpoints = Checkpoints()
    plateau: Plateau = Plateau()
    mlflow: MlflowOptions = MlflowOptions()

    @field_validator("workers")
    @classmethod
    def ordered_range(cls, value):
        if isinstance(value, tuple) and value[0] > value[1]:
            raise ValueError(f"[min, max] must have min <= max, got {list(value)}")
        return value

    @property
    def min_workers(self) -> int:
        return self.workers[0] if isinstance(self.workers, tuple) else self.workers

    @property
    def max_workers(self) -> int:
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers


class Job(Strict):
    _warnings: list[str] = PrivateAttr(default_factory=list)

    name: str
    scale: Literal[1, 2, 3, 4, 8]
    manual_seed: int | None = 0
    use_amp: bool = False
    amp_bf16: bool = False
    use_compile: bool = False  # torch.compile the generator's training forward (worth it on GPUs, for long runs)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None
    use_channels_last: bool = False
    datasets: Datasets
    network_g: Network
    network_d: Network | None = None
    path: Paths = Paths()
    train: TrainOptions
    val: ValOptions = ValOptions()
    logger: Logger = Logger()
    srcluster: Cluster = Cluster()

    @model_validator(mode="after")
    def components_exist(self) -> Job:
        from srcluster.components import archs, losses

        archs.check_generator_options(self.network_g.type, self.scale, self.network_g.options())
        if self.network_d is not None:
            archs.DISCRIMINATORS.check(self.network_d.type, "network_d.type")
            archs.DISCRIMINATORS.check_options(self.network_d.type, self.network_d.options(), "network_d")
        for i, loss in enumerate(self.train.losses):
            losses.LOSSES.check(loss.type, f"train.losses[{i}].type")
            losses.LOSSES.check_options(loss.type, loss.options(), f"train.losses[{i}]")
        if self.uses_gan and self.network_d is None:
            raise ValueError("train.losses: a ganloss with weight > 0 needs a discriminator, but no network_d is configured")
        uneven = [w for w in range(self.srcluster.min_workers, self.srcluster.max_workers + 1) if self.effective_batch % w]
        if uneven:
            raise ValueError(f"srcluster.workers: effective batch {self.effective_batch} cannot be held on {uneven[0]} "
                             "workers; make batch_size_per_gpu * accum_iter * max workers divisible by every worker count")
        best = self.srcluster.checkpoints.best
        if best is not None and best.removeprefix("val_") not in self.val.metrics:
            raise ValueError(f"srcluster.checkpoints.best: {best!r} is not one of val.metrics ({', '.join(self.val.metrics)})")
        return self

    @property
    def warnings(self) -> list[str]:
        """traiNNer-redux options in the job file that srcluster accepted but does not act on."""
        return self._warnings

    @property
    def uses_gan(self) -> bool:
        return any(loss.type == "ganloss" and loss.loss_weight > 0 for loss in self.train.losses)

    @property
    def degrade_in_workers(self) -> bool:
        """Whether on-the-fly degradations run in the data workers (else in the training step); see Cluster."""
        where = self.srcluster.degrade_on
        return not self.srcluster.use_gpu if where == "auto" else where == "workers"

    @property
    def effective_batch(self) -> int:
        """Samples per optimiser step, declared at the largest worker count."""
        train = self.datasets.train
        return train.batch_size_per_gpu * train.accum_iter * self.srcluster.max_workers

    def batch_plan(self, world: int) -> tuple[int, int]:
        """(batch_size_per_gpu, accum_iter) that keep `effective_batch` on `world` workers: accum_iter grows first; the
        per-worker batch shrinks only when the worker count does not divide the configured batch."""
        per_worker, remainder = divmod(self.effective_batch, world)
        if remainder:
            raise ConfigError(f"effective batch {self.effective_batch} cannot be split evenly over {world} workers; "
                              "choose batch_size_per_gpu * accum_iter divisible by every worker count in srcluster.workers")
        batch = next(b for b in range(min(self.datasets.train.batch_size_per_gpu, per_worker), 0, -1) if per_worker % b == 0)
        return batch, per_worker // batch

    @property
    def best_metric(self) -> str | None:
        """The MLflow/Ray metric key (`val_<name>`) that picks the best checkpoint, or None without validation."""
        if self.datasets.val is None or not (self.val.val_enabled and self.val.metrics_enabled and self.val.metrics):
            return None
        name = self.srcluster.checkpoints.best or next(iter(self.val.metrics))
        return f"val_{name.removeprefix('val_')}"


# --- traiNNer-redux options srcluster accepts without acting on them ------------------------------------------------

_NO_MOA = "mixture-of-augmentations (MoA) is not implemented by srcluster"
_DEBUG = "look at degradations with `srcluster degrade preview` instead"

# key path ("*" = any dataset name) -> why it has no effect. Any other unknown key is an error.
IGNORED: dict[str, str] = {
    "num_gpu": "srcluster.workers and srcluster.use_gpu choose the devices",
    "fast_matmul": "TF32 matmuls are left at PyTorch's default",
    "high_order_degradations_debug": _DEBUG,
    "high_order_degradations_debug_limit": _DEBUG,
    "train.use_moa": _NO_MOA,
    "train.moa_augs": _NO_MOA,
    "train.moa_probs": _NO_MOA,
    "train.moa_debug": _NO_MOA,
    "train.moa_debug_limit": _NO_MOA,
    "logger.use_tb_logger": "metrics go to MLflow",
    "datasets.*.meta_info": "shard manifests list the samples",
    "datasets.*.io_backend": "every URL is read through fsspec",
    "datasets.*.filename_tmpl": "pairs are matched by relative path and stem",
}

# traiNNer-redux's loss names that srcluster does not implement: fine at weight 0 (off), an error otherwise.
TRAINNER_LOSSES = frozenset({
    "adistsloss", "aesoploss", "averageloss", "bcewithlogitsdiceloss", "bicubicloss", "colorloss", "contextualloss",
    "cosimloss", "distsloss", "ffloss", "fftloss", "fliploss", "gradientvarianceloss", "ldlloss", "linedistillerloss",
    "lumaloss", "msssiml1loss", "multiscaleganloss", "nccloss", "perceptualanimeloss", "perceptualfp16loss",
    "psnrloss", "sobeledgeloss", "ssimloss", "structuretextureloss", "mssimloss", "perceptualloss", "hsluvloss",
})


def lift_degradations(data: dict, source: str) -> tuple[dict, Degradations | None, list[str]]:
    """(the job without its degradation keys, their validated `Degradations` or None, warnings).

    None when the keys neither make LR (high_order_degradation, a video codec) nor sharpen the GT: traiNNer-redux
    ignores its OTF keys when high_order_degradation is false, and so does srcluster, with a warning per key set.
    """
    train = (data.get("datasets") or {}).get("train") if isinstance(data.get("datasets"), dict) else None
    if isinstance(train, dict) and "degradations" in train:
        raise ConfigError(f"{source}: datasets.train.degradations: not a job-file key; srcluster fills it from "
                          "traiNNer-redux's degradation options (high_order_degradation, jpeg_range, "
                          "datasets.train.kernel_list, ...): set those instead")
    data, flat = split_degradation_keys(data, source)
    if not flat:
        return data, None, []
    cfg = parse_degradations(flat, source)
    warnings = [f"{source}: {key}: ignored ({why})" for key, why in cfg.ignored().items()]
    if not (cfg.makes_lr or cfg.sharpens_gt):
        from srcluster.degrade.config import IGNORED as DEGRADE_IGNORED, key_path

        defaults = Degradations()
        warnings += [f"{source}: {key_path(name)}: ignored (high_order_degradation is false)"
                     for name in sorted(cfg.model_fields_set)
                     if name not in DEGRADE_IGNORED and getattr(cfg, name) != getattr(defaults, name)]
        return data, None, warnings
    if cfg.makes_lr and isinstance(train, dict) and train.get("dataroot_lq") is not None:
        switch = "high_order_degradation" if cfg.high_order_degradation else "video_codec_prob"
        raise ConfigError(f"{source}: {switch}: LR is made from HR on the fly, so datasets.train.dataroot_lq would "
                          "be unused; remove dataroot_lq or turn the on-the-fly degradations off")
    if isinstance(train, dict):
        data["datasets"]["train"]["degradations"] = cfg
    return data, cfg, warnings


def _ignored_reason(path: tuple[str, ...]) -> str | None:
    if path[0] == "datasets" and len(path) == 3:
        return IGNORED.get(f"datasets.*.{path[2]}")
    return IGNORED.get(".".join(path))


def lift_ignored(data: dict, source: str) -> tuple[dict, list[str]]:
    """Remove the traiNNer-redux options srcluster does not act on, with one warning each; leave the rest."""
    import copy

    data = copy.deepcopy(data)
    warnings: list[str] = []

    def visit(node: dict, path: tuple[str, ...]) -> None:
        for key in list(node):
            reason = _ignored_reason((*path, str(key)))
            if reason is not None:
                del node[key]
                warnings.append(f"{source}: {'.'.join((*path, str(key)))}: ignored ({reason})")

    visit(data, ())
    for section in ("train", "logger", "val", "path"):
        if isinstance(data.get(section), dict):
            visit(data[section], (section,))
    for name, dataset in (data.get("datasets") or {}).items() if isinstance(data.get("datasets"), dict) else ():
        if isinstance(dataset, dict):
            visit(dataset, ("datasets", str(name)))
    losses = (data.get("train") or {}).get("losses") if isinstance(data.get("train"), dict) else None
    if isinstance(losses, list):
        from srcluster.components.losses import LOSSES

        kept = []
        for i, loss in enumerate(losses):
            kind = str(loss.get("type", "")).lower() if isinstance(loss, dict) else ""
            if kind in TRAINNER_LOSSES and kind not in LOSSES.names():
                if loss.get("loss_weight", 1.0) not in (0, 0.0):
                    raise ConfigError(f"{source}: train.losses[{i}].type: traiNNer-redux's {kind!r} is not implemented "
                                      "by srcluster; set its loss_weight to 0 or remove it")
                warnings.append(f"{source}: train.losses[{i}]: {kind} (weight 0) ignored: not implemented by srcluster")
                continue
            kept.append(loss)
        data["train"]["losses"] = kept
    return data, warnings


# --- loading and error messages -----------------------------------------------------------------------------------


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `path` inside `model`, for "did you mean" hints."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        inner = _first_model(field.annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union branch names ("list[str]", "function-after[...]") to locations; drop them.
    return tuple(p for p in loc if isinstance(p, int) or not re.search(r"[\[\]\-]", str(p)))


def describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    seen = set()
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        key = _dotted(loc)
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "extra_forbidden":
            known = _known_keys(Job, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known else "")
            lines.append(f"{source}: {key}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f", got {value!r}"
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key + ': ' if key else ''}{message}{shown}")
    return "\n".join(lines)


def parse_job(data: Any, source: str = "job") -> Job:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of traiNNer-redux options at the top level, got {type(data).__name__}")
    data, warnings = lift_ignored(data, source)
    data, _, more = lift_degradations(data, source)
    warnings += more
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None
    except SrclusterError as exc:  # a registry check inside a validator names the key, not the file
        raise ConfigError(f"{source}: {exc}") from None
    job._warnings = warnings
    return job


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load_job(path: str | Path) -> Job:
    return parse_job(read_yaml(path), str(path))




def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'losses': [{'type': 'l1loss'}]}} -> {'train.losses.0.type': 'l1loss'} (MLflow's key alphabet)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = redact_url(data) if isinstance(data, str) else data
    return out


def job_params(job: Job) -> dict[str, Any]:
    """The job's resolved config, flattened to dotted keys for MLflow params (URL passwords masked)."""
    return flatten(job.model_dump(mode="json"))
