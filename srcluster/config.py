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

from srcluster.errors import ConfigError


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
        from srcluster.train.perceptual import METRICS

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


class Cluster(Strict):
    """srcluster's own settings: where and how the stage runs."""

    workers: PositiveInt = 2
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 1
    storage: str | None = None  # Ray Train run storage; default s3://srcluster/runs on the local stack
    s3_endpoint: str | None = None  # default: AWS_ENDPOINT_URL, else the local stack
    max_failures: Annotated[int, Field(ge=-1)] = 0  # worker-group restarts from the latest checkpoint; -1 = unlimited
    nonfinite_patience: PositiveInt = 10  # stop after this many consecutive non-finite steps (each is skipped)
    mlflow: MlflowOptions = MlflowOptions()


class Job(Strict):
    _warnings: list[str] = PrivateAttr(default_factory=list)

    name: str
    scale: Literal[1, 2, 3, 4, 8]
    manual_seed: int | None = 0
    use_amp: bool = False
    amp_bf16: bool = False
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
        from srcluster.train import archs, losses

        archs.check_generator_options(self.network_g.type, self.scale, self.network_g.options())
        if self.network_d is not None:
            archs.DISCRIMINATORS.check(self.network_d.type, "network_d.type")
            archs.DISCRIMINATORS.check_options(self.network_d.type, self.network_d.options(), "network_d")
        for i, loss in enumerate(self.train.losses):
            losses.LOSSES.check(loss.type, f"train.losses[{i}].type")
            losses.LOSSES.check_options(loss.type, loss.options(), f"train.losses[{i}]")
        if self.uses_gan and self.network_d is None:
            raise ValueError("train.losses has a ganloss with weight > 0 but no network_d is configured")
        return self

    @property
    def warnings(self) -> list[str]:
        """traiNNer-redux options in the job file that srcluster accepted but does not act on."""
        return self._warnings

    @property
    def uses_gan(self) -> bool:
        return any(loss.type == "ganloss" and loss.loss_weight > 0 for loss in self.train.losses)

    @property
    def effective_batch(self) -> int:
        train = self.datasets.train
        return train.batch_size_per_gpu * train.accum_iter * self.srcluster.workers


# --- traiNNer-redux options srcluster accepts without acting on them ------------------------------------------------

_NO_COMPILE = "torch.compile is not used by srcluster yet"
_NO_MOA = "mixture-of-augmentations (MoA) is not implemented by srcluster"
_NO_OTF = "on-the-fly degradations are not applied yet: LR is the bicubic downscale of HR"
_DEBUG = "look at degradations with `srcluster degrade preview` instead"

# key path ("*" = any dataset name) -> why it has no effect. Any other unknown key is an error.
IGNORED: dict[str, str] = {
    "num_gpu": "srcluster.workers and srcluster.use_gpu choose the devices",
    "use_compile": _NO_COMPILE,
    "compile_mode": _NO_COMPILE,
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
    **{key: _NO_OTF for key in (
        "high_order_degradation", "thicklines_prob", "lq_usm", "lq_usm_radius_range", "queue_size",
        "blur_prob", "resize_prob", "resize_mode_list", "resize_mode_prob", "resize_range", "gaussian_noise_prob",
        "noise_range", "poisson_scale_range", "gray_noise_prob", "jpeg_prob", "jpeg_range", "blur_prob2",
        "resize_prob2", "resize_mode_list2", "resize_mode_prob2", "resize_range2", "gaussian_noise_prob2",
        "noise_range2", "poisson_scale_range2", "gray_noise_prob2", "jpeg_prob2", "jpeg_range2", "resize_mode_list3",
        "resize_mode_prob3")},
    **{f"datasets.*.{key}": _NO_OTF for key in (
        "blur_kernel_size", "kernel_list", "kernel_prob", "kernel_range", "sinc_prob", "blur_sigma", "betag_range",
        "betap_range", "blur_kernel_size2", "kernel_list2", "kernel_prob2", "kernel_range2", "sinc_prob2",
        "blur_sigma2", "betag_range2", "betap_range2", "final_sinc_prob", "final_kernel_range")},
}

# traiNNer-redux's loss names that srcluster does not implement: fine at weight 0 (off), an error otherwise.
TRAINNER_LOSSES = frozenset({
    "adistsloss", "aesoploss", "averageloss", "bcewithlogitsdiceloss", "bicubicloss", "colorloss", "contextualloss",
    "cosimloss", "distsloss", "ffloss", "fftloss", "fliploss", "gradientvarianceloss", "ldlloss", "linedistillerloss",
    "lumaloss", "msssiml1loss", "multiscaleganloss", "nccloss", "perceptualanimeloss", "perceptualfp16loss",
    "psnrloss", "sobeledgeloss", "ssimloss", "structuretextureloss", "mssimloss", "perceptualloss", "hsluvloss",
})


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
        from srcluster.train.losses import LOSSES

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
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from None
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


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host` URLs."""
    return re.sub(r"(://[^/:@]+):[^/@]+@", r"\1:***@", url)


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
