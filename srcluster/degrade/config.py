"""The on-the-fly degradation options: traiNNer-redux's keys and defaults, Real-ESRGAN's extras, srcluster's codecs.

In a traiNNer-redux job file these options are spread over two places: the pipeline switches sit at the top level
(`high_order_degradation`, `resize_prob`, `jpeg_range`, ...) and the blur kernels under `datasets.train`
(`kernel_list`, `blur_sigma`, `final_sinc_prob`, ...). `split_degradation_keys` lifts both sets out of a job mapping
into one flat mapping for `Degradations`; error messages give each key with the path it has in the job file.

Defaults are traiNNer-redux's (its `redux-config.schema.json` and option classes), so a traiNNer OTF config means the
same thing here. srcluster's own additions (video codecs, where degradations run, which JPEG) sit at the top level.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from srcluster.errors import ConfigError
from srcluster.registry import did_you_mean

RESIZE_MODES = ("area", "bicubic", "bilinear", "lanczos", "nearest-exact")
ResizeMode = Literal["area", "bicubic", "bilinear", "lanczos", "nearest-exact"]
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
Chroma = Literal["420", "422", "444"]


def _ordered(value: tuple) -> tuple:
    if value[0] > value[1]:
        raise ValueError(f"must be [min, max] with min <= max, got {list(value)}")
    return value


def _around_one(value: tuple) -> tuple:
    # traiNNer-redux draws beta from [low, 1] or [1, high] (even odds), and stops on a range that does not hold 1
    if not value[0] <= 1 <= value[1]:
        raise ValueError(
            f"must be [low, high] with low <= 1 <= high (beta is drawn below or above 1), got {list(value)}"
        )
    return value


def _odd(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] % 2 == 0 or value[1] % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {list(value)}")
    return value


Probability = Annotated[float, Field(ge=0, le=1)]
Weights = list[Annotated[float, Field(ge=0)]]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Range = Annotated[tuple[NonNegative, NonNegative], AfterValidator(_ordered)]
PositiveRange = Annotated[tuple[Positive, Positive], AfterValidator(_ordered)]
BetaRange = Annotated[tuple[Positive, Positive], AfterValidator(_ordered), AfterValidator(_around_one)]
KernelRange = Annotated[
    tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], AfterValidator(_ordered), AfterValidator(_odd)
]
JpegRange = Annotated[
    tuple[Annotated[float, Field(ge=1, le=100)], Annotated[float, Field(ge=1, le=100)]], AfterValidator(_ordered)
]
UpDownKeep = Annotated[list[Probability], Field(min_length=3, max_length=3)]

KERNEL_TYPES = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_PROBS = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
MODES: list[ResizeMode] = ["bilinear", "bicubic", "nearest-exact", "lanczos"]
QUARTERS = [0.25, 0.25, 0.25, 0.25]


class Degradations(BaseModel):
    """Everything that decides how an HR crop becomes its LR input (flat; see DATASET_KEYS for what nests where)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- switches (top level in traiNNer-redux) ---
    high_order_degradation: bool = False  # off: LR is the MATLAB bicubic downscale (then the video codec, if any)
    lq_usm: bool = False
    lq_usm_radius_range: Annotated[
        tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], AfterValidator(_ordered)
    ] = (1, 25)
    thicklines_prob: Probability = 0.0

    # --- first degradation ---
    blur_prob: Probability = 0.0
    resize_prob: UpDownKeep = Field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_mode_list: list[ResizeMode] = Field(default_factory=lambda: list(MODES))
    resize_mode_prob: Weights = Field(default_factory=lambda: list(QUARTERS))
    resize_range: PositiveRange = (0.4, 1.5)
    gaussian_noise_prob: Probability = 0.0
    noise_range: Range = (0.0, 0.0)  # sigma, in 0..255 units
    poisson_scale_range: Range = (0.0, 0.0)
    gray_noise_prob: Probability = 0.0
    jpeg_prob: Probability = 1.0
    jpeg_range: JpegRange = (75.0, 95.0)

    # --- second degradation ---
    blur_prob2: Probability = 0.0  # Real-ESRGAN calls it second_blur_prob; both spellings are accepted
    resize_prob2: UpDownKeep = Field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_mode_list2: list[ResizeMode] = Field(default_factory=lambda: list(MODES))
    resize_mode_prob2: Weights = Field(default_factory=lambda: list(QUARTERS))
    resize_range2: PositiveRange = (0.6, 1.2)
    gaussian_noise_prob2: Probability = 0.0
    noise_range2: Range = (0.0, 0.0)
    poisson_scale_range2: Range = (0.0, 0.0)
    gray_noise_prob2: Probability = 0.0
    jpeg_prob2: Probability = 1.0
    jpeg_range2: JpegRange = (75.0, 95.0)

    # --- final resize to the LR size (then/after the last JPEG, in random order) ---
    resize_mode_list3: list[ResizeMode] = Field(default_factory=lambda: list(MODES))
    resize_mode_prob3: Weights = Field(default_factory=lambda: list(QUARTERS))

    # --- blur kernels (under datasets.train in traiNNer-redux) ---
    blur_kernel_size: Annotated[int, Field(ge=1)] = 12  # unused, as in traiNNer-redux: sizes come from kernel_range
    kernel_list: list[str] = Field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob: Weights = Field(default_factory=lambda: list(KERNEL_PROBS))
    kernel_range: KernelRange = (5, 17)
    sinc_prob: Probability = 0.0
    blur_sigma: PositiveRange = (0.2, 2.0)
    betag_range: BetaRange = (0.5, 4.0)
    betap_range: BetaRange = (1.0, 2.0)
    blur_kernel_size2: Annotated[int, Field(ge=1)] = 12
    kernel_list2: list[str] = Field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob2: Weights = Field(default_factory=lambda: list(KERNEL_PROBS))
    kernel_range2: KernelRange = (5, 17)
    sinc_prob2: Probability = 0.0
    blur_sigma2: PositiveRange = (0.2, 1.0)
    betag_range2: BetaRange = (0.5, 4.0)
    betap_range2: BetaRange = (1.0, 2.0)
    final_sinc_prob: Probability = 0.0
    final_kernel_range: KernelRange = (5, 17)

    # --- sharpened GT for the losses (Real-ESRGAN's options; its recipe uses true, true, false) ---
    l1_gt_usm: bool = False
    percep_gt_usm: bool = False
    gan_gt_usm: bool = False

    # --- paired LR mixed in: the share of batches that are datasets.train.dataroot_lq's pairs instead (traiNNer-redux's
    # RealESRGANPairedModel; needs dataroot_lq, see config/compat.py and data/stream.py) ---
    dataroot_lq_prob: Probability = 0.0

    # --- accepted for traiNNer-redux compatibility, no effect (see ignored()), but queue_size ---
    high_order_degradations_debug: bool = False
    high_order_degradations_debug_limit: int = 100
    # the training-pair pool: acts with otf_draws: per_batch (the default; degrade/pool.py), warned of with per_sample
    queue_size: Annotated[int, Field(ge=0)] = 120

    # --- srcluster: video codecs, applied last to the LR image as a short clip ---
    video_codec_prob: Probability = 0.0
    video_codec_list: list[str] = Field(default_factory=lambda: ["h264"])
    video_codec_prob_list: Weights = Field(default_factory=lambda: [1.0])
    video_crf_range: Annotated[
        tuple[Annotated[int, Field(ge=0, le=51)], Annotated[int, Field(ge=0, le=51)]], AfterValidator(_ordered)
    ] = (20, 40)  # h264, hevc
    video_qscale_range: Annotated[
        tuple[Annotated[int, Field(ge=1, le=31)], Annotated[int, Field(ge=1, le=31)]], AfterValidator(_ordered)
    ] = (2, 20)  # mpeg2, mpeg4
    video_bpp_range: PositiveRange | None = None  # bits per pixel and frame: a bitrate instead of CRF/qscale
    video_preset_list: list[Preset] = Field(default_factory=lambda: ["medium"])  # x264/x265 only
    video_chroma_list: list[Chroma] = Field(default_factory=lambda: ["420"])
    video_clip_frames: Annotated[int, Field(ge=1, le=16)] = 2  # the LR image is the last frame of the clip
    video_clip_motion: Annotated[int, Field(ge=0, le=16)] = 2  # max shift (LR pixels) of the earlier frames

    # --- srcluster: how (where is the job's `srcluster.degrade_on`: it changes speed, not what is learned) ---
    # diffjpeg: traiNNer-redux's DiffJPEG on every device (what redux trains with); libjpeg: the libjpeg-turbo codec
    # on CPU and a batched model of it on GPUs (libjpeg_codec / libjpeg_model: one of them everywhere)
    jpeg_backend: Literal["diffjpeg", "libjpeg", "libjpeg_codec", "libjpeg_model"] = "diffjpeg"
    # per_batch: traiNNer-redux's draws, one resize factor/mode, noise kind, JPEG on/off, ... per batch, with its
    # training-pair pool (queue_size): one fixed shape per batch, the fastest on a GPU (`degrade/drawing.py`);
    # per_sample: every sample draws all of its degradations from its own seed, so its LR is the same on any number of
    # ranks and workers and however batches are cut (elastic runs, resumes on another world size reproduce it)
    otf_draws: Literal["per_batch", "per_sample"] = "per_batch"

    @model_validator(mode="before")
    @classmethod
    def _real_esrgan_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "second_blur_prob" in data:
            if "blur_prob2" in data:
                raise ValueError("blur_prob2: given twice (also as Real-ESRGAN's second_blur_prob); keep one")
            data = dict(data)
            data["blur_prob2"] = data.pop("second_blur_prob")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Degradations:
        # the kernel and codec registries sit beside their torch code: imported when degradations are validated, so
        # that importing this schema (and the job schema above it) stays torch-free
        from srcluster.degrade.kernels import BLUR_KERNELS
        from srcluster.degrade.video import CODECS

        problems: list[str] = []
        pairs = [
            ("kernel_list", "kernel_prob"),
            ("kernel_list2", "kernel_prob2"),
            ("resize_mode_list", "resize_mode_prob"),
            ("resize_mode_list2", "resize_mode_prob2"),
            ("resize_mode_list3", "resize_mode_prob3"),
            ("video_codec_list", "video_codec_prob_list"),
        ]
        for names, weights in pairs:
            n, w = getattr(self, names), getattr(self, weights)
            if not n:
                problems.append(f"{key_path(names)}: must not be empty")
            elif len(n) != len(w):
                problems.append(f"{key_path(weights)}: has {len(w)} entries but {key_path(names)} has {len(n)}")
            elif sum(w) <= 0:
                problems.append(f"{key_path(weights)}: the weights must not all be 0")
        problems.extend(
            f"{key_path(name)}: the up, down and keep probabilities must not all be 0"
            for name in ("resize_prob", "resize_prob2")
            if sum(getattr(self, name)) <= 0
        )
        for name in ("kernel_list", "kernel_list2"):
            for i, kind in enumerate(getattr(self, name)):
                try:
                    BLUR_KERNELS.check(kind, f"{key_path(name)}[{i}]")
                except ValueError as exc:
                    problems.append(str(exc))
        for i, codec in enumerate(self.video_codec_list):
            try:
                CODECS.check(codec, f"{key_path('video_codec_list')}[{i}]")
            except ValueError as exc:
                problems.append(str(exc))
                continue
            spec = CODECS.build(codec)
            problems.extend(
                f"video_chroma_list: {codec} cannot encode {chroma} (it supports {', '.join(spec.chroma)}); "
                "remove one of them"
                for chroma in self.video_chroma_list
                if chroma not in spec.chroma
            )
        if not self.video_chroma_list:
            problems.append("video_chroma_list: must not be empty")
        if not self.video_preset_list:
            problems.append("video_preset_list: must not be empty")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def ignored(self) -> dict[str, str]:
        """The traiNNer-redux keys this job sets, to other than their defaults, that srcluster accepts without acting
        on: key path -> why (for warnings; traiNNer's templates set several of them to their defaults)."""
        fields = type(self).model_fields
        acting = PER_BATCH_ONLY if self.otf_draws == "per_batch" else ()
        return {
            key_path(name): IGNORED[name]
            for name in sorted(self.model_fields_set)
            if name in IGNORED
            and name not in acting
            and getattr(self, name) != fields[name].get_default(call_default_factory=True)
        }

    @property
    def uses_codec(self) -> bool:
        return self.video_codec_prob > 0

    @property
    def makes_lr(self) -> bool:
        """Whether LR comes from this pipeline: Real-ESRGAN's (high_order_degradation) or bicubic + a video codec.
        Otherwise LR is the plain bicubic downscale (or paired data) and only the GT options below may apply."""
        return self.high_order_degradation or self.uses_codec

    @property
    def sharpens_gt(self) -> bool:
        return self.l1_gt_usm or self.percep_gt_usm or self.gan_gt_usm


_DEBUG = "look at degradations with `srcluster degrade preview` instead"
IGNORED: dict[str, str] = {
    "high_order_degradations_debug": _DEBUG,
    "high_order_degradations_debug_limit": _DEBUG,
    "queue_size": "not needed with otf_draws: per_sample: every sample draws its own degradation parameters, so a "
    "batch is already as varied as redux's training-pair pool makes it",
    "blur_kernel_size": "unused in traiNNer-redux too: kernel sizes come from kernel_range",
    "blur_kernel_size2": "unused in traiNNer-redux too: kernel sizes come from kernel_range2",
}

# IGNORED keys that act with `otf_draws: per_batch` (redux's training-pair pool)
PER_BATCH_ONLY = ("queue_size",)

# Where each key lives in a traiNNer-redux job file: these under datasets.train, every other one at the top level.
DATASET_KEYS: tuple[str, ...] = (
    "blur_kernel_size",
    "kernel_list",
    "kernel_prob",
    "kernel_range",
    "sinc_prob",
    "blur_sigma",
    "betag_range",
    "betap_range",
    "blur_kernel_size2",
    "kernel_list2",
    "kernel_prob2",
    "kernel_range2",
    "sinc_prob2",
    "blur_sigma2",
    "betag_range2",
    "betap_range2",
    "final_sinc_prob",
    "final_kernel_range",
)
ALIASES: dict[str, str] = {"second_blur_prob": "blur_prob2"}  # Real-ESRGAN's spelling -> traiNNer-redux's
TOP_LEVEL_KEYS: tuple[str, ...] = tuple(name for name in Degradations.model_fields if name not in DATASET_KEYS) + tuple(
    ALIASES
)
SRCLUSTER_KEYS: tuple[str, ...] = tuple(n for n in TOP_LEVEL_KEYS if n.startswith(("video_", "jpeg_b", "otf_draws")))
DATASET = "datasets.train"


def key_path(name: str) -> str:
    """The key as it is written in a job file: `datasets.train.kernel_list`, `jpeg_range`."""
    return f"{DATASET}.{name}" if name in DATASET_KEYS else name


def split_degradation_keys(job: dict[str, Any], source: str = "job") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the job without its degradation keys, those keys as one flat mapping for `Degradations`).

    Top-level keys come from the top level and kernel keys from `datasets.train`; one in the other place is an error
    that says where it belongs (traiNNer-redux would reject it too). The input is not modified.
    """
    job = copy.deepcopy(job)
    found: dict[str, Any] = {}
    train = (job.get("datasets") or {}).get("train") if isinstance(job.get("datasets"), dict) else None
    train = train if isinstance(train, dict) else {}
    for name in TOP_LEVEL_KEYS:
        if name in train:
            raise ConfigError(f"{source}: {DATASET}.{name}: belongs at the top level of the job, not under {DATASET}")
        if name in job:
            found[name] = job.pop(name)
    for name in DATASET_KEYS:
        if name in job:
            raise ConfigError(f"{source}: {name}: belongs under {DATASET}, not at the top level of the job")
        if name in train:
            found[name] = train.pop(name)
    return job, found


def _where(loc: tuple[Any, ...]) -> str:
    if not loc:
        return ""
    out = key_path(str(loc[0]))
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_degradations(data: dict[str, Any], source: str = "job") -> Degradations:
    """Validate the lifted keys; every problem becomes one line `source: key.path: what is wrong`."""
    try:
        return Degradations.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe(exc, source))) from None


def describe(exc: ValidationError, source: str) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not any(c in str(p) for c in "[]-"))
        where = _where(loc)
        if err["type"] == "extra_forbidden":
            close = did_you_mean(str(loc[-1]), Degradations.model_fields, spell=key_path)
            hint = f" ({close})" if close else ""
            lines.append(f"{source}: {where}: unknown key{hint}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        if not where:  # cross-key checks put the key path first in each line themselves
            lines.extend(f"{source}: {line}" for line in message.splitlines())
            continue
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list, tuple)) or "got" in message else f", got {value!r}"
        lines.append(f"{source}: {where}: {message}{shown}")
    return lines
