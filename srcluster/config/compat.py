"""traiNNer-redux compatibility: its options that srcluster accepts without acting on them, each with a warning.

A traiNNer-redux job file should load unchanged. Keys srcluster has no use for (`num_gpu`, MoA, ...) are lifted out
before validation (`lift_ignored`), the degradation keys are gathered into `Degradations` (`lift_degradations`), and
values srcluster replaces are named after validation (`value_warnings`); every one becomes a line in job.warnings.
"""

from __future__ import annotations

import copy

from srcluster.config.schema import Job
from srcluster.degrade.config import IGNORED as DEGRADE_IGNORED
from srcluster.degrade.config import Degradations, key_path, parse_degradations, split_degradation_keys
from srcluster.errors import ConfigError

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
TRAINNER_LOSSES = frozenset(
    {
        "adistsloss",
        "aesoploss",
        "averageloss",
        "bcewithlogitsdiceloss",
        "bicubicloss",
        "colorloss",
        "contextualloss",
        "cosimloss",
        "distsloss",
        "ffloss",
        "fftloss",
        "fliploss",
        "gradientvarianceloss",
        "ldlloss",
        "linedistillerloss",
        "lumaloss",
        "msssiml1loss",
        "multiscaleganloss",
        "nccloss",
        "perceptualanimeloss",
        "perceptualfp16loss",
        "psnrloss",
        "sobeledgeloss",
        "ssimloss",
        "structuretextureloss",
        "mssimloss",
        "perceptualloss",
        "hsluvloss",
    }
)


def lift_degradations(data: dict, source: str) -> tuple[dict, Degradations | None, list[str]]:
    """(the job without its degradation keys, their validated `Degradations` or None, warnings).

    None when the keys neither make LR (high_order_degradation, a video codec) nor sharpen the GT: traiNNer-redux
    ignores its OTF keys when high_order_degradation is false, and so does srcluster, with a warning per key set.
    """
    train = (data.get("datasets") or {}).get("train") if isinstance(data.get("datasets"), dict) else None
    if isinstance(train, dict) and "degradations" in train:
        raise ConfigError(
            f"{source}: datasets.train.degradations: not a job-file key; srcluster fills it from "
            "traiNNer-redux's degradation options (high_order_degradation, jpeg_range, "
            "datasets.train.kernel_list, ...): set those instead"
        )
    data, flat = split_degradation_keys(data, source)
    if not flat:
        return data, None, []
    cfg = parse_degradations(flat, source)
    warnings = [f"{source}: {key}: ignored ({why})" for key, why in cfg.ignored().items()]
    if not (cfg.makes_lr or cfg.sharpens_gt):
        defaults = Degradations()
        warnings += [
            f"{source}: {key_path(name)}: ignored (high_order_degradation is false)"
            for name in sorted(cfg.model_fields_set)
            if name not in DEGRADE_IGNORED and getattr(cfg, name) != getattr(defaults, name)
        ]
        return data, None, warnings
    if cfg.makes_lr and isinstance(train, dict) and train.get("dataroot_lq") is not None:
        switch = "high_order_degradation" if cfg.high_order_degradation else "video_codec_prob"
        raise ConfigError(
            f"{source}: {switch}: LR is made from HR on the fly, so datasets.train.dataroot_lq would "
            "be unused; remove dataroot_lq or turn the on-the-fly degradations off"
        )
    if isinstance(train, dict):
        data["datasets"]["train"]["degradations"] = cfg
    return data, cfg, warnings


def _ignored_reason(path: tuple[str, ...]) -> str | None:
    if path[0] == "datasets" and len(path) == 3:
        return IGNORED.get(f"datasets.*.{path[2]}")
    return IGNORED.get(".".join(path))


def lift_ignored(data: dict, source: str) -> tuple[dict, list[str]]:
    """Remove the traiNNer-redux options srcluster does not act on, with one warning each; leave the rest."""
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
        # the loss registry lives beside its torch code: imported when a job is parsed, not with the schema
        from srcluster.components.losses import LOSSES

        kept = []
        for i, loss in enumerate(losses):
            kind = str(loss.get("type", "")).lower() if isinstance(loss, dict) else ""
            if kind in TRAINNER_LOSSES and kind not in LOSSES.names():
                if loss.get("loss_weight", 1.0) not in (0, 0.0):
                    raise ConfigError(
                        f"{source}: train.losses[{i}].type: traiNNer-redux's {kind!r} is not implemented "
                        "by srcluster; set its loss_weight to 0 or remove it"
                    )
                warnings.append(f"{source}: train.losses[{i}]: {kind} (weight 0) ignored: not implemented by srcluster")
                continue
            kept.append(loss)
        data["train"]["losses"] = kept
    return data, warnings


def value_warnings(job: Job, source: str) -> list[str]:
    """Valid traiNNer-redux values that srcluster replaces with its own, one warning each."""
    warnings = []
    if job.logger.save_checkpoint_format == "pth":
        warnings.append(
            f"{source}: logger.save_checkpoint_format: pth ignored (srcluster writes safetensors, which "
            "spandrel/chaiNNer and traiNNer-redux load)"
        )
    return warnings
