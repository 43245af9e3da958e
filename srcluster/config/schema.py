"""The job schema: traiNNer-redux's option names and defaults as pydantic models, plus srcluster's `srcluster:` section.

Importing it is cheap (pydantic only, no torch): the names of architectures, losses and metrics are checked when a
`Job` is validated, which imports their component modules then. `NOT_READ` lists the fields srcluster accepts and
reads nowhere (tests/unit/test_config_surface.py keeps every other field read somewhere).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from srcluster.components.specs import GAN_LOSS_TYPES, OptimizerSpec, SchedulerSpec
from srcluster.degrade.config import IGNORED as DEGRADE_IGNORED
from srcluster.degrade.config import PER_BATCH_ONLY, Degradations
from srcluster.envnames import SECRET_NAME, VALID_NAME
from srcluster.registry import did_you_mean


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
    # traiNNer-redux's GT-only LR: made in the step by its resize_pt in this mode; None: MATLAB's bicubic (imresize)
    lq_resize_mode: Literal["bilinear", "bicubic", "nearest-exact", "lanczos", "area"] | None = None
    # Not written in job files: parse_job fills it from traiNNer-redux's degradation keys (top level and here), so it
    # travels with the job to the workers and into the run key and MLflow params. None: bicubic LR (or paired data).
    degradations: Degradations | None = None


class ValDataset(Strict):
    name: str = "val"
    type: str | None = None
    dataroot_gt: Urls
    dataroot_lq: Urls | None = None


class Datasets(Strict):
    """`train` plus validation sets: `val` and any `val_<suffix>` (val_2, val_set14, ...), the phases traiNNer-redux
    reads (it splits a key at its first `_` and validates every set whose phase is `val`)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    __pydantic_extra__: dict[str, ValDataset] = Field(init=False)  # the val_<suffix> sets, validated as ValDataset

    train: TrainDataset
    val: ValDataset | None = None

    @model_validator(mode="before")
    @classmethod
    def known_phases(cls, data: Any) -> Any:
        for key in data if isinstance(data, dict) else ():
            if key not in ("train", "val") and not str(key).startswith("val_"):
                hint = did_you_mean(str(key), ["train", "val", "val_2"])
                raise ValueError(
                    f"{key!r} is not a dataset phase: use train, val or val_<suffix> (val_2, ...)"
                    + (f"; {hint}" if hint else "")
                )
        return data

    @property
    def validation_sets(self) -> dict[str, ValDataset]:
        """Every validation set by its key, `val` first, then the val_<suffix> sets in file order."""
        extra = dict(self.model_extra or {})
        return ({"val": self.val} if self.val is not None else {}) | extra


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
    # the EMA generator's starting weights (redux: key "params_ema", strictness strict_load_g); None: a copy of G
    pretrain_network_g_ema: str | None = None
    pretrain_network_g_teacher: str | None = None  # network_g_teacher's weights (loaded strictly, as redux)
    pretrain_network_d: str | None = None
    param_key_d: str | None = None
    strict_load_d: bool = True
    resume_state: str | None = None


class Optimizer(Open):
    """An optimizer by traiNNer-redux name, any case (AdamW, Adam, NAdam, StableAdamW, SOAP, ADOPT, Adan,
    AdamWScheduleFree, AdanScheduleFree); every other key is its class's keyword (checked when the Job is validated).
    `betas`/`weight_decay` left out: the templates' (0.9, 0.99) and 0 for Adam/AdamW, the class's own otherwise."""

    type: str = "AdamW"
    lr: Annotated[float, Field(gt=0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    betas: tuple[float, ...] | None = None

    def given(self) -> dict[str, Any]:
        """Its keys besides type and lr, as the optimizer class takes them (None: left out)."""
        named = {"weight_decay": self.weight_decay, "betas": self.betas}
        return {k: v for k, v in named.items() if v is not None} | dict(self.model_extra or {})

    def spec(self) -> OptimizerSpec:
        return OptimizerSpec.of(self.type, self.lr, self.given())

    def keywords(self) -> dict[str, Any]:
        """What the optimizer class is called with (srcluster's Adam/AdamW defaults filled in)."""
        return self.spec().keywords()


class Scheduler(Open):
    """A scheduler by torch's or traiNNer-redux's name, any case; the typed keys are MultiStepLR's and
    CosineAnnealingLR's, every other key (and any typed key set for another scheduler) is its class's keyword."""

    type: str = "MultiStepLR"
    milestones: list[PositiveInt] = []
    gamma: Annotated[float, Field(gt=0)] = 0.1  # torch's MultiStepLR default, which traiNNer-redux passes through
    eta_min: Annotated[float, Field(ge=0)] = 0.0
    T_max: PositiveInt | None = None  # CosineAnnealingLR's period, as redux passes it to torch; default: total_iter

    def given(self) -> dict[str, Any]:
        """The keys besides type, as the scheduler class takes them: typed ones where they differ from their defaults
        (a job passed to the workers carries every field; a scheduler that requires one gets its default there)."""
        typed = {"milestones": self.milestones, "gamma": self.gamma, "eta_min": self.eta_min, "T_max": self.T_max}
        defaults = type(self).model_fields
        return {k: v for k, v in typed.items() if v != defaults[k].default} | dict(self.model_extra or {})


class Loss(Component):
    # traiNNer-redux: a negative weight compares the output with the bicubic upscale of the LR input (weight |w|)
    loss_weight: float = 1.0


class EcoOptions(Strict):
    """traiNNer-redux's ECO: targets (and, in `full` mode, inputs) mixed from network_g_teacher's output towards the
    real pair over the first `end_ratio` of total_iter (train/eco.py)."""

    enabled: bool = False
    end_ratio: Annotated[float, Field(gt=0, le=1)] = 0.75
    mode: Literal["full", "hr_only"] = "full"


class TrainOptions(Strict):
    total_iter: PositiveInt
    warmup_iter: int = -1
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0  # traiNNer-redux's default: no EMA (its templates set 0.999)
    ema_power: Annotated[float, Field(ge=0)] = 10.0  # traiNNer-redux's: decay is ema_decay from the second update on
    ema_update_after_step: Annotated[int, Field(ge=0)] = 0  # the EMA copies G through this many updates
    ema_switch_iter: Annotated[int, Field(ge=0)] = 0  # every N updates G is set to its EMA (0: never)
    grad_clip: bool = False
    grad_clip_max_norm: Annotated[float, Field(gt=0)] = 100.0
    # traiNNer-redux: skip D's update while an EMA of G's GAN loss rises past threshold x its previous value
    adaptive_d: bool = False
    adaptive_d_ema_decay: Annotated[float, Field(ge=0, le=1)] = 0.999
    adaptive_d_threshold: Annotated[float, Field(gt=0)] = 1.02
    # on resume: the scheduler restarts from the config's schedule at the resumed iteration instead of its saved state
    restart_scheduler: bool = False
    # mixture of augmentations (degrade/moa.py): one of moa_augs drawn per batch with moa_probs, on the device
    use_moa: bool = False
    moa_augs: list[str] = ["none", "mixup", "cutmix", "resizemix"]  # redux's defaults (its probs list is longer)
    moa_probs: list[float] = [0.4, 0.084, 0.084, 0.084, 0.348]
    moa_debug: bool = False  # saves before/after images in redux; warned: `srcluster degrade preview` instead
    moa_debug_limit: int = 100
    optim_g: Optimizer = Optimizer()
    optim_d: Optimizer | None = None
    scheduler: Scheduler = Scheduler()
    losses: list[Loss]
    eco: EcoOptions = EcoOptions()


class Metric(Component):
    """A validation metric by traiNNer-redux's type (`calculate_psnr`, ...); extra keys are the metric's options."""

    crop_border: Annotated[int, Field(ge=0)] | None = None  # default: the job's scale; psnr and ssim only
    test_y_channel: bool = False  # psnr and ssim only; the perceptual metrics score RGB
    # traiNNer-redux's direction of the best value (best checkpoint, plateau); default: the metric's own (psnr, ssim,
    # topiq higher; lpips, dists lower), where traiNNer-redux assumes higher
    better: Literal["higher", "lower"] | None = None

    def options(self) -> dict[str, Any]:
        return super().options() | ({"better": self.better} if self.better else {})

    @property
    def kind(self) -> str:
        """The registry name: traiNNer-redux's `calculate_psnr` -> `psnr` (checked when the Job is validated)."""
        return self.type.removeprefix("calculate_")

    @property
    def crops_border(self) -> bool:
        """Whether `crop_border` applies: traiNNer-redux crops it for PSNR/SSIM and scores LPIPS, DISTS and TOPIQ on
        whole images."""
        return self.kind in ("psnr", "ssim")


class ValOptions(Strict):
    """traiNNer-redux's defaults; val_enabled, val_freq and save_img, which redux requires in a `val:` section, default
    to validating every 1000 iterations with a grid. Without a `val:` section a job does not validate (see Job.val)."""

    val_enabled: bool = True
    val_freq: PositiveInt = 1000
    save_img: bool = True
    tile_size: Annotated[int, Field(ge=0)] = 0
    tile_overlap: Annotated[int, Field(ge=0)] = 0
    metrics_enabled: bool = False
    metrics: dict[str, Metric] = {}

    @model_validator(mode="after")
    def overlap_within_tile(self) -> ValOptions:
        if self.tile_size and self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap {self.tile_overlap} must be smaller than tile_size {self.tile_size} "
                "(tiles start every tile_size - tile_overlap pixels)"
            )
        return self


class Logger(Strict):
    print_freq: PositiveInt = 100
    save_checkpoint_freq: PositiveInt = 1000
    save_checkpoint_format: Literal["safetensors", "pth"] = "safetensors"  # pth: the exported generator as .pth too


class OnnxOptions(Strict):
    """traiNNer-redux's `onnx:` section (its convert_to_onnx.py's options): srcluster exports the stage's generator with
    them at the end of the stage and logs the file to MLflow (train/stage.py, srcluster/export.py)."""

    dynamo: bool = False  # true: a warning, the TorchScript exporter is used (redux's default)
    opset: Annotated[int, Field(ge=9)] = 20
    shape: str = "1x3xHxW"  # NxCxHxW: numbers fixed, letters dynamic
    verify: bool = True
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    bf16_exclude_depthwise: bool = True  # with bf16: a warning, depthwise convolutions are bf16 too
    optimize: bool = True  # onnxslim
    wrap_5d_to_4d: bool = True  # video architectures only (5D input), which srcluster does not train

    @field_validator("shape")
    @classmethod
    def four_axes_three_channels(cls, shape: str) -> str:
        parts = [p.strip() for p in shape.lower().split("x")]
        if len(parts) != 4 or parts[1] != "3" or not all(p.isalpha() or (p.isdigit() and int(p)) for p in parts):
            raise ValueError(f"{shape!r} is not NxCxHxW with 3 channels (numbers fixed, letters dynamic: 1x3xHxW)")
        return shape


class MlflowOptions(Strict):
    tracking_uri: str | None = (
        None  # default: MLFLOW_TRACKING_URI, else the local stack's server, else a local SQLite file
    )
    experiment: str | None = None  # default: the job's name
    parent_run_id: str | None = None


class Checkpoints(Strict):
    keep_last: PositiveInt = 3  # the newest N checkpoints Ray Train keeps (resume points)
    # Upload checkpoints in the background while training goes on (Ray Train's asynchronous upload); a checkpoint is
    # recorded, and so used by a resume, only once its upload completed. false: training waits for each upload.
    background_upload: bool = True
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
    # worker-group restarts from the latest checkpoint (-1 = unlimited); default: 3 under a launcher (`submit`,
    # `render slurm|k8s`: nodes get lost on clusters), 0 on this machine (a failure here is a bug to see at once)
    max_failures: Annotated[int, Field(ge=-1)] | None = None
    nonfinite_patience: PositiveInt = 10  # stop after this many consecutive non-finite steps (each is skipped)
    s3_retry_deadline_s: Annotated[float, Field(gt=0)] = 120  # an object store down longer than this stops the run
    # Where on-the-fly degradations run: "workers" = the DataLoader workers (CPU; the step gets ready LR, like paired
    # data), "device" = inside the training step on the worker's device (batched on the GPU, as Real-ESRGAN does).
    # auto: device with use_gpu, workers without (on CPU the workers run beside the step instead of stalling it).
    degrade_on: Literal["auto", "workers", "device"] = "auto"
    # Crops cut from each decoded training sample (each with its own seed): decoding is most of the data cost of
    # bicubic and paired data, so k crops per decode make up to k times the samples per loader core. The crops wait in
    # a pool of batch x k per DataLoader worker (memory) that spreads each sample's crops over different batches.
    crops_per_tile: Annotated[int, Field(ge=1, le=32)] = 1
    # DataLoader workers per training worker: unset, datasets.train.num_worker_per_gpu (traiNNer-redux's key); N;
    # or auto: the cores the GPU's rate needs on this data path, at most cpus_per_worker - 1 (train/specs.py: size_data)
    loader_workers: Literal["auto"] | Annotated[int, Field(ge=0)] | None = None
    # How validation tiles (val.tile_size): "redux" blends reflection-padded tiles as traiNNer-redux does, so scores
    # equal redux's; "context" runs each tile with tile_overlap pixels of context, exact for small receptive fields
    # (the tiling of `srcluster upscale` and `evaluate`). See srcluster/infer/upscaler.py.
    val_tiling: Literal["redux", "context"] = "redux"
    checkpoints: Checkpoints = Checkpoints()
    plateau: Plateau = Plateau()
    mlflow: MlflowOptions = MlflowOptions()
    # with use_compile: compile D and the loss networks too (redux compiles G only); most of a small-G GAN step
    compile_d_and_losses: bool = False
    ddp_bf16_gradients: bool = False  # all-reduce gradients in bf16 between workers (half the network traffic)
    # Environment of every training process (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_DEBUG, ...): set on the Ray Train
    # workers by the stage, and exported by `srcluster render` (sbatch, pods) so Ray's own processes see it too
    env: dict[str, str] = {}

    @field_validator("env")
    @classmethod
    def env_names_no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not VALID_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if SECRET_NAME.search(name):
                raise ValueError(
                    f"{name} looks like a secret, and job files travel to clusters in plain text; set it in the "
                    "cluster's environment instead"
                )
        return value

    @field_validator("loader_workers", mode="before")
    @classmethod
    def auto_or_count(cls, value: Any) -> Any:
        # one message instead of pydantic's one per member of the union
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError("expected auto, a number of DataLoader workers (0 or more), or null")

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
    # channels_last for networks, loss networks and batches under AMP (train/backend.py), on by default as in redux
    use_channels_last: bool = True
    fast_matmul: bool = False  # TF32 float32 matmuls and convolutions
    deterministic: bool = False  # torch's deterministic algorithms, no cuDNN autotuning (slower; for reproducing runs)
    detect_anomaly: bool = False  # autograd anomaly detection: names the operation that made a NaN (much slower)
    # DDP's find_unused_parameters, as redux passes it: for generators with parameters a forward may not use
    find_unused_parameters: bool = False
    datasets: Datasets
    network_g: Network
    network_d: Network | None = None
    # a frozen generator whose output is the target of given-LR data (distillation) or, with train.eco, mixed in
    network_g_teacher: Network | None = None
    path: Paths = Paths()
    train: TrainOptions
    # no `val:` section: no validation, as in traiNNer-redux (compat warns when validation sets are then unused)
    val: ValOptions = ValOptions(val_enabled=False)
    logger: Logger = Logger()
    onnx: OnnxOptions | None = None  # export the generator as ONNX at the end of the stage
    srcluster: Cluster = Cluster()

    @model_validator(mode="after")
    def moa_options(self) -> Job:
        # traiNNer-redux stops at its first training batch on these (its own defaults among them: 4 moa_augs, 5
        # moa_probs); srcluster says so when the job is read. Imported here: degrade.moa imports torch.
        if not self.train.use_moa:
            return self
        from srcluster.degrade.moa import choice_problem

        problem = choice_problem(self.train.moa_augs, self.train.moa_probs)
        if problem is not None:
            raise ValueError(f"train.{problem[0]}: {problem[1]}")
        if self.datasets.train.batch_size_per_gpu < 2:
            raise ValueError(
                "train.use_moa: MoA mixes pairs within a batch; set datasets.train.batch_size_per_gpu >= 2"
            )
        return self

    @model_validator(mode="after")
    def teacher_options(self) -> Job:
        # traiNNer-redux asserts these when it builds the model
        if self.network_g_teacher is not None and not self.path.pretrain_network_g_teacher:
            raise ValueError("network_g_teacher: needs its weights in path.pretrain_network_g_teacher")
        if self.train.eco.enabled and self.network_g_teacher is None:
            raise ValueError("train.eco.enabled: ECO mixes in a teacher's output; set network_g_teacher")
        if self.train.eco.enabled and self.scale < 2:
            raise ValueError(f"train.eco.enabled: ECO needs a scale of 2 or more, not {self.scale}")
        return self

    @model_validator(mode="after")
    def components_exist(self) -> Job:
        # The registries live beside their torch code; importing them here, when a job is validated, keeps importing
        # the schema itself torch-free (the CLI and the launcher read job files without a training environment).
        from srcluster.components import archs, losses, optim, perceptual

        archs.check_generator_options(self.network_g.type, self.scale, self.network_g.options())
        if self.network_g_teacher is not None:
            teacher = self.network_g_teacher
            archs.check_generator_options(teacher.type, self.scale, teacher.options(), "network_g_teacher")
        if self.network_d is not None:
            archs.DISCRIMINATORS.check(self.network_d.type, "network_d.type")
            archs.DISCRIMINATORS.check_options(self.network_d.type, self.network_d.options(), "network_d")
        for i, loss in enumerate(self.train.losses):
            losses.LOSSES.check(loss.type, f"train.losses[{i}].type")
            losses.LOSSES.check_options(loss.type, loss.options(), f"train.losses[{i}]")
            losses.check_values(loss.type, loss.options(), f"train.losses[{i}]")
            if loss.loss_weight < 0 and loss.type in GAN_LOSS_TYPES:
                raise ValueError(
                    f"train.losses[{i}].loss_weight: {loss.loss_weight}: a GAN loss takes a positive weight (a "
                    "negative weight compares a pixel or feature loss with the bicubic upscale of the LR)"
                )
            if loss.type == "ldlloss" and loss.loss_weight != 0 and self.train.ema_decay == 0:
                raise ValueError(
                    f"train.losses[{i}]: ldlloss compares with the EMA generator's output; set train.ema_decay > 0"
                )
        train = self.train
        for key, section in (("train.optim_g", train.optim_g), ("train.optim_d", train.optim_d)):
            if section is not None:
                optim.check_optimizer(section.spec(), key)
        scheduler = SchedulerSpec.of(
            train.scheduler.type, train.total_iter, train.warmup_iter, train.scheduler.given(), train.optim_g.lr
        )
        optim.check_scheduler(scheduler, "train.scheduler")
        for name, metric in self.val.metrics.items():
            perceptual.METRICS.check(metric.kind, f"val.metrics.{name}.type")
            perceptual.METRICS.check_options(metric.kind, metric.options(), f"val.metrics.{name}")
        if self.uses_gan and self.network_d is None:
            raise ValueError(
                "train.losses: a ganloss with weight > 0 needs a discriminator, but no network_d is configured"
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
        return any(loss.type in GAN_LOSS_TYPES and loss.loss_weight > 0 for loss in self.train.losses)

    @property
    def degrade_in_workers(self) -> bool:
        """Whether on-the-fly degradations run in the data workers (else in the training step); see Cluster. Video
        codecs code on the CPU, one clip at a time: with any codec on, degradations run in the workers (a `device`
        choice is warned about), so the step never waits for a copy to the host and back."""
        where = self.srcluster.degrade_on
        if self.uses_video_codecs:
            return True
        return not self.srcluster.use_gpu if where == "auto" else where == "workers"

    @property
    def uses_video_codecs(self) -> bool:
        cfg = self.datasets.train.degradations
        return cfg is not None and cfg.video_codec_prob > 0

    @property
    def effective_batch(self) -> int:
        """Samples per optimiser step, declared at the largest worker count."""
        train = self.datasets.train
        return train.batch_size_per_gpu * train.accum_iter * self.srcluster.max_workers

    def batch_plan(self, world: int) -> tuple[int, int]:
        """(batch_size_per_gpu, accum_iter) on `world` workers, for any worker count. The rule: the per-worker batch
        never exceeds the configured `batch_size_per_gpu`; among the plans with at most twice the fewest micro-batches
        that fit, the one whose effective batch (world x accum x batch) is closest to `effective_batch` wins, then the
        one with fewer micro-batches. So the configured effective batch is held exactly whenever such a plan has it
        (accum_iter grows first; the batch shrinks only where the count does not divide), and otherwise comes as close
        as it can; `effective_batch_on(world)` is the value used, which the workers log."""
        target, largest = self.effective_batch, self.datasets.train.batch_size_per_gpu
        fewest = -(-target // (world * largest))

        smallest = 2 if self.train.use_moa else 1  # MoA mixes pairs within a batch

        def plan(accum: int) -> tuple[int, int]:
            return max(smallest, min(largest, round(target / (world * accum)))), accum

        plans = [plan(accum) for accum in range(fewest, 2 * fewest + 1)]
        return min(plans, key=lambda p: (abs(world * p[0] * p[1] - target), p[1]))

    def effective_batch_on(self, world: int) -> int:
        """Samples per optimiser step on `world` workers (`batch_plan`): `effective_batch`, or the closest plan."""
        batch, accum = self.batch_plan(world)
        return world * batch * accum

    @property
    def validates(self) -> bool:
        """Whether the stage validates: a validation set (`val`, `val_2`, ...) and `val.val_enabled`."""
        return bool(self.datasets.validation_sets) and self.val.val_enabled

    @property
    def best_metric(self) -> str | None:
        """The MLflow/Ray metric key (`val_<name>`, scored on the first validation set) that picks the best checkpoint,
        or None without validation."""
        if not self.validates or not (self.val.metrics_enabled and self.val.metrics):
            return None
        name = self.srcluster.checkpoints.best or next(iter(self.val.metrics))
        return f"val_{name.removeprefix('val_')}"


# Fields srcluster accepts and reads nowhere: key path -> why. Every other field of `Job` (recursively) must be read
# outside this module; tests/unit/test_config_surface.py fails on a field nobody reads that is not listed here, and on
# a listed field that has become read. A traiNNer-redux option srcluster cannot act on belongs here only with a
# warning in job.warnings (see compat), never silently.
NOT_READ: dict[str, str] = {
    **{
        f"datasets.train.degradations.{name}": f"warned as ignored: {why}"
        for name, why in DEGRADE_IGNORED.items()
        if name not in PER_BATCH_ONLY
    },
    "train.moa_debug_limit": "acts only with train.moa_debug, which is warned as ignored",
    "onnx.wrap_5d_to_4d": "acts only on video architectures' 5D input; srcluster trains none (their clip datasets)",
}
