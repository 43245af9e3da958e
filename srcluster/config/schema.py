"""The job schema: traiNNer-redux's option names and defaults as pydantic models, plus srcluster's `srcluster:` section.

Importing it is cheap (pydantic only, no torch): the names of architectures, losses and metrics are checked when a
`Job` is validated, which imports their component modules then. `NOT_READ` lists the fields srcluster accepts and
reads nowhere (tests/unit/test_config_surface.py keeps every other field read somewhere).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from srcluster.degrade.config import IGNORED as DEGRADE_IGNORED
from srcluster.degrade.config import Degradations
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

    @property
    def kind(self) -> str:
        """The registry name: traiNNer-redux's `calculate_psnr` -> `psnr` (checked when the Job is validated)."""
        return self.type.removeprefix("calculate_")


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
    save_checkpoint_format: Literal["safetensors", "pth"] = "safetensors"  # pth: a warning, safetensors is written


class MlflowOptions(Strict):
    tracking_uri: str | None = (
        None  # default: MLFLOW_TRACKING_URI, else the local stack's server, else a local SQLite file
    )
    experiment: str | None = None  # default: the job's name
    parent_run_id: str | None = None


class Checkpoints(Strict):
    keep_last: PositiveInt = 3  # the newest N checkpoints Ray Train keeps (resume points)
    best: str | None = (
        None  # validation metric naming the best checkpoint, passed downstream; default: the first of val.metrics
    )


class Plateau(Strict):
    """ "Train until PSNR/SSIM peak": stop when `checkpoints.best` has not improved by more than `min_delta` for
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
        # The registries live beside their torch code; importing them here, when a job is validated, keeps importing
        # the schema itself torch-free (the CLI and the launcher read job files without a training environment).
        from srcluster.components import archs, losses, perceptual

        archs.check_generator_options(self.network_g.type, self.scale, self.network_g.options())
        if self.network_d is not None:
            archs.DISCRIMINATORS.check(self.network_d.type, "network_d.type")
            archs.DISCRIMINATORS.check_options(self.network_d.type, self.network_d.options(), "network_d")
        for i, loss in enumerate(self.train.losses):
            losses.LOSSES.check(loss.type, f"train.losses[{i}].type")
            losses.LOSSES.check_options(loss.type, loss.options(), f"train.losses[{i}]")
        for name, metric in self.val.metrics.items():
            perceptual.METRICS.check(metric.kind, f"val.metrics.{name}.type")
            perceptual.METRICS.check_options(metric.kind, metric.options(), f"val.metrics.{name}")
        if self.uses_gan and self.network_d is None:
            raise ValueError(
                "train.losses: a ganloss with weight > 0 needs a discriminator, but no network_d is configured"
            )
        uneven = [
            w for w in range(self.srcluster.min_workers, self.srcluster.max_workers + 1) if self.effective_batch % w
        ]
        if uneven:
            raise ValueError(
                f"srcluster.workers: effective batch {self.effective_batch} cannot be held on {uneven[0]} "
                "workers; make batch_size_per_gpu * accum_iter * max workers divisible by every worker count"
            )
        best = self.srcluster.checkpoints.best
        if best is not None and best.removeprefix("val_") not in self.val.metrics:
            raise ValueError(
                f"srcluster.checkpoints.best: {best!r} is not one of val.metrics ({', '.join(self.val.metrics)})"
            )
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
            raise ConfigError(
                f"effective batch {self.effective_batch} cannot be split evenly over {world} workers; "
                "choose batch_size_per_gpu * accum_iter divisible by every worker count in srcluster.workers"
            )
        batch = next(
            b for b in range(min(self.datasets.train.batch_size_per_gpu, per_worker), 0, -1) if per_worker % b == 0
        )
        return batch, per_worker // batch

    @property
    def best_metric(self) -> str | None:
        """The MLflow/Ray metric key (`val_<name>`) that picks the best checkpoint, or None without validation."""
        if self.datasets.val is None or not (self.val.val_enabled and self.val.metrics_enabled and self.val.metrics):
            return None
        name = self.srcluster.checkpoints.best or next(iter(self.val.metrics))
        return f"val_{name.removeprefix('val_')}"


# Fields srcluster accepts and reads nowhere: key path -> why. Every other field of `Job` (recursively) must be read
# outside this module; tests/unit/test_config_surface.py fails on a field nobody reads that is not listed here, and on
# a listed field that has become read. A traiNNer-redux option srcluster cannot act on belongs here only with a
# warning in job.warnings (see compat), never silently.
NOT_READ: dict[str, str] = {
    **{f"datasets.train.degradations.{name}": f"warned as ignored: {why}" for name, why in DEGRADE_IGNORED.items()},
}
