"""traiNNer-redux compatibility: its options that srcluster accepts without acting on them, each with a warning.

A traiNNer-redux job file should load unchanged. Keys srcluster has no use for (`num_gpu`, redux's run-time and folder
keys, ...) are lifted out before validation (`lift_ignored`; `IGNORED`), the degradation keys are gathered into
`Degradations` (`lift_degradations`), and values srcluster replaces are named after validation (`value_warnings`);
every one becomes a line in job.warnings. Keys that would make srcluster train another model than redux trains
(`REFUSED`: pixel formats, normalization) load at redux's default value and stop the job with one
line otherwise; the older `gt_size` becomes `lq_size`. tests/unit/test_redux_keys.py checks every key of redux's schema.
"""

from __future__ import annotations

import copy
from typing import Any

from srcluster.config.schema import Job
from srcluster.degrade.config import IGNORED as DEGRADE_IGNORED
from srcluster.degrade.config import Degradations, key_path, parse_degradations, split_degradation_keys
from srcluster.errors import ConfigError

_DEBUG = "look at degradations with `srcluster degrade preview` instead"
_LOADER = "srcluster's streaming loader sets its own pinning and prefetching"
_RUNTIME = "traiNNer-redux sets it while running; srcluster's launcher decides it"
_RETEST = "read only by traiNNer-redux's retest.py"
_AE_BESIDE_G = "traiNNer-redux reads it only to train an autoencoder, with no network_g"
_FOLDERS = "srcluster keeps checkpoints in srcluster.storage and runs, images and models in MLflow"

# key path ("*" = any dataset name) -> why it has no effect. Any other unknown key is an error.
IGNORED: dict[str, str] = {
    "num_gpu": "srcluster.workers and srcluster.use_gpu choose the devices",
    "high_order_degradations_debug": _DEBUG,
    "high_order_degradations_debug_limit": _DEBUG,
    "logger.use_tb_logger": "metrics go to MLflow",
    "logger.wandb": "metrics go to MLflow",
    "val.pbar": "srcluster shows its own progress line",
    "val.suffix": "traiNNer-redux names only test.py's saved images with it; validation grids are named by iteration",
    "datasets.*.meta_info": "shard manifests list the samples",
    "datasets.*.io_backend": "every URL is read through fsspec",
    "datasets.*.filename_tmpl": "pairs are matched by relative path and stem",
    "datasets.*.pin_memory": _LOADER,
    "datasets.*.persistent_workers": _LOADER,
    "datasets.*.prefetch_mode": _LOADER,
    "datasets.*.num_prefetch_queue": _LOADER,
    "datasets.*.prefetch_factor": _LOADER,
    "datasets.*.dataset_enlarge_ratio": "srcluster streams samples by iteration: total_iter sets the run's length, "
    "and every pass reads each sample once however small the data set",
    "datasets.*.phase": "the phase comes from the dataset's key (train, val, val_<suffix>)",
    "dist": _RUNTIME,
    "launcher": _RUNTIME,
    "rank": _RUNTIME,
    "world_size": _RUNTIME,
    "is_train": _RUNTIME,
    "root_path": _RUNTIME,
    "switch_iter_per_epoch": _RUNTIME,
    "dist_params": _RUNTIME,
    "contents": _RUNTIME,
    "auto_resume": "a rerun of the same config resumes from its latest checkpoint anyway",
    "watch": _RETEST,
    "start_iter": _RETEST,
    "path.pretrain_network_g_path": _RETEST,
    "path.experiments_root": _FOLDERS,
    "path.models": _FOLDERS,
    "path.resume_models": _FOLDERS,
    "path.training_states": _FOLDERS,
    "path.log": _FOLDERS,
    "path.visualization": _FOLDERS,
    "path.results_root": _FOLDERS,
    "path.ignore_resume_networks": "unused by traiNNer-redux's training too",
    # redux trains an autoencoder only without network_g (its AEModel); beside a generator it reads none of these
    "network_ae": _AE_BESIDE_G,
    "train.optim_ae": _AE_BESIDE_G,
    "path.pretrain_network_ae": _AE_BESIDE_G,
    "path.pretrain_network_ae_ema": _AE_BESIDE_G,
    "path.pretrain_network_ae_decoder": _AE_BESIDE_G,
    "path.pretrain_network_ae_decoder_ema": _AE_BESIDE_G,
    "path.pretrain_network_ae_path": _AE_BESIDE_G,
}

_RGB = "srcluster trains, validates and exports RGB generators"
# key path ("*" = any dataset name) -> (the values that mean what srcluster does, why any other value is refused)
REFUSED: dict[str, tuple[tuple, str]] = {
    "input_pixel_format": (("rgb",), _RGB),
    "output_pixel_format": (("rgb",), _RGB),
    "datasets.*.color": ((None,), _RGB + "; color: y would train on luma only"),
    "datasets.*.mean": ((None,), "srcluster feeds the generator [0, 1] RGB, not normalized by mean and std"),
    "datasets.*.std": ((None,), "srcluster feeds the generator [0, 1] RGB, not normalized by mean and std"),
}

# traiNNer-redux's loss names. One that srcluster does not implement (not in the loss registry) or refuses
# (`REFUSED_LOSSES`) is fine at weight 0 (off), an error otherwise.
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

# Losses srcluster builds but does not train with yet, each with the reason (one line of the error).
REFUSED_LOSSES: dict[str, str] = {}


def lift_degradations(data: dict, source: str) -> tuple[dict, Degradations | None, list[str]]:
    """(the job without its degradation keys, their validated `Degradations` or None, warnings).

    None when the keys neither make LR (high_order_degradation, a video codec) nor sharpen the GT: traiNNer-redux
    ignores its OTF keys when high_order_degradation is false, and so does srcluster, with a warning per key set.
    With LR made on the fly, `datasets.train.dataroot_lq` goes only with `dataroot_lq_prob` > 0 (paired batches
    mixed in) and `dataroot_lq_prob` only with it.
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
    paired = isinstance(train, dict) and train.get("dataroot_lq") is not None
    if cfg.makes_lr:
        _check_paired_mix(cfg, paired, source)
    elif cfg.dataroot_lq_prob > 0:  # only the GT is sharpened: LR is bicubic or paired, never mixed
        warnings.append(f"{source}: dataroot_lq_prob: ignored (high_order_degradation is false)")
    if isinstance(train, dict):
        data["datasets"]["train"]["degradations"] = cfg
    return data, cfg, warnings


def _check_paired_mix(cfg: Degradations, paired: bool, source: str) -> None:
    """Paired LR (datasets.train.dataroot_lq) goes with LR made on the fly only as traiNNer-redux mixes them: each batch
    is paired with probability dataroot_lq_prob, else made on the fly; either without the other is a mistake."""
    if paired and cfg.dataroot_lq_prob == 0:
        switch = "high_order_degradation" if cfg.high_order_degradation else "video_codec_prob"
        raise ConfigError(
            f"{source}: {switch}: LR is made from HR on the fly, so datasets.train.dataroot_lq would be unused; "
            "remove dataroot_lq, turn the on-the-fly degradations off, or set dataroot_lq_prob (the share of paired "
            "batches) above 0 to mix the paired LR in"
        )
    if not paired and cfg.dataroot_lq_prob > 0:
        raise ConfigError(
            f"{source}: dataroot_lq_prob: mixes paired LR into the on-the-fly batches, so it needs "
            "datasets.train.dataroot_lq (the paired LR images); set it, or set dataroot_lq_prob to 0"
        )


def _pattern(path: tuple[str, ...]) -> str:
    return f"datasets.*.{path[2]}" if path[0] == "datasets" and len(path) == 3 else ".".join(path)


def _ignored_reason(path: tuple[str, ...]) -> str | None:
    return IGNORED.get(_pattern(path))


def _refuse_or_drop(node: dict, key: str, path: tuple[str, ...], source: str) -> None:
    """A REFUSED key: dropped where its value means what srcluster does anyway (redux's default), else an error."""
    accepted, why = REFUSED[_pattern(path)]
    value = node.pop(key)
    if value not in accepted:
        raise ConfigError(f"{source}: {'.'.join(path)}: {value!r} is not supported: {why}")


def _lq_size_from_gt_size(dataset: dict, name: str, scale: Any, source: str) -> None:
    """traiNNer-redux's older `gt_size` (the HR crop): one of gt_size and lq_size, lq_size = gt_size // scale."""
    gt_size = dataset.pop("gt_size", None)
    if gt_size is None:
        return
    if dataset.get("lq_size") is not None:
        raise ConfigError(f"{source}: datasets.{name}.gt_size: give one of gt_size and lq_size, not both")
    if not isinstance(gt_size, int) or isinstance(gt_size, bool) or not isinstance(scale, int) or gt_size < scale:
        raise ConfigError(
            f"{source}: datasets.{name}.gt_size: must be an integer of at least the scale ({scale!r}), got {gt_size!r}"
        )
    dataset["lq_size"] = gt_size // scale  # as traiNNer-redux's train.py converts it


def _dataset_scale(dataset: dict, name: str, scale: Any, source: str) -> None:
    """A dataset's own `scale` (BasicSR's): the job's scale is the one that counts, so it must agree."""
    own = dataset.pop("scale", None)
    if own is not None and own != scale:
        raise ConfigError(f"{source}: datasets.{name}.scale: {own!r} differs from the job's scale {scale!r}")


def lift_ignored(data: dict, source: str) -> tuple[dict, list[str]]:
    """Remove the traiNNer-redux options srcluster does not act on, with one warning each; leave the rest."""
    data = copy.deepcopy(data)
    warnings: list[str] = []
    if data.get("network_ae") is not None and data.get("network_g") is None:
        raise ConfigError(
            f"{source}: network_ae: autoencoder training (traiNNer-redux's AEModel) is not supported: srcluster "
            "trains SR generators (network_g)"
        )

    def visit(node: dict, path: tuple[str, ...]) -> None:
        for key in list(node):
            where = (*path, str(key))
            if _pattern(where) in REFUSED:
                _refuse_or_drop(node, key, where, source)
                continue
            reason = _ignored_reason(where)
            if reason is not None:
                del node[key]
                warnings.append(f"{source}: {'.'.join(where)}: ignored ({reason})")

    visit(data, ())
    for section in ("train", "logger", "val", "path"):
        if isinstance(data.get(section), dict):
            visit(data[section], (section,))
    for name, dataset in (data.get("datasets") or {}).items() if isinstance(data.get("datasets"), dict) else ():
        if isinstance(dataset, dict):
            if "clip_size" in dataset:  # redux's video datasets, for its video generators (tscunet, tfdat, ...)
                raise ConfigError(
                    f"{source}: datasets.{name}.clip_size: clip datasets (for video architectures) are not "
                    "supported; srcluster trains on single images"
                )
            visit(dataset, ("datasets", str(name)))
            _dataset_scale(dataset, str(name), data.get("scale"), source)
            if name == "train":
                _lq_size_from_gt_size(dataset, str(name), data.get("scale"), source)
    if isinstance(data.get("train"), dict):
        warnings += lift_old_losses(data["train"], source)
    losses = (data.get("train") or {}).get("losses") if isinstance(data.get("train"), dict) else None
    if isinstance(losses, list):
        # the loss registry lives beside its torch code: imported when a job is parsed, not with the schema
        from srcluster.components.losses import LOSSES

        kept = []
        for i, loss in enumerate(losses):
            kind = str(loss.get("type", "")).lower() if isinstance(loss, dict) else ""
            if kind in TRAINNER_LOSSES and (kind not in LOSSES.names() or kind in REFUSED_LOSSES):
                why = REFUSED_LOSSES.get(kind, "")
                if loss.get("loss_weight", 1.0) not in (0, 0.0):
                    what = f"is refused by srcluster: {why}" if why else "is not implemented by srcluster"
                    raise ConfigError(
                        f"{source}: train.losses[{i}].type: traiNNer-redux's {kind!r} {what}; "
                        "set its loss_weight to 0 or remove it"
                    )
                reason = "refused by srcluster" if why else "not implemented by srcluster"
                warnings.append(f"{source}: train.losses[{i}]: {kind} (weight 0) ignored: {reason}")
                continue
            kept.append(loss)
        data["train"]["losses"] = kept
    return data, warnings


# traiNNer-redux's older loss format: one `train.<name>_opt` section per loss, read in this order when the job has no
# `train.losses` list (then they become that list); with a list they are not read.
OLD_LOSS_KEYS = (
    "pixel_opt",
    "mssim_opt",
    "ms_ssim_l1_opt",
    "perceptual_opt",
    "contextual_opt",
    "dists_opt",
    "hr_inversion_opt",
    "dinov2_opt",
    "topiq_opt",
    "pd_opt",
    "fd_opt",
    "ldl_opt",
    "hsluv_opt",
    "gan_opt",
    "color_opt",
    "luma_opt",
    "avg_opt",
    "bicubic_opt",
)


def lift_old_losses(train: dict, source: str) -> list[str]:
    """Move the old `*_opt` loss sections of `train` into `train.losses`, as traiNNer-redux reads them; with a
    `losses` list they are dropped with a warning each."""
    for key in [key for key in OLD_LOSS_KEYS if key in train and train[key] is None]:
        del train[key]  # `pixel_opt: null` is no loss section at all, as in traiNNer-redux
    found = [key for key in OLD_LOSS_KEYS if train.get(key) is not None]
    if train.get("losses") is not None:
        for key in found:
            del train[key]
        reason = "train.losses is set; *_opt losses are read only without it"
        return [f"{source}: train.{key}: ignored ({reason})" for key in found]
    losses = []
    for key in found:
        section = train.pop(key)
        if not isinstance(section, dict) or "type" not in section:
            raise ConfigError(f"{source}: train.{key}: a loss section needs a type (and a loss_weight)")
        losses.append(section)
    if found:
        train["losses"] = losses
    return []


def value_warnings(job: Job, source: str) -> list[str]:
    """Valid traiNNer-redux values that srcluster replaces with its own, one warning each."""
    warnings = []
    train, degradations = job.datasets.train, job.datasets.train.degradations
    otf = degradations is not None and degradations.makes_lr
    if train.lq_resize_mode is not None and (train.dataroot_lq is not None or otf):
        made_by = "datasets.train.dataroot_lq" if train.dataroot_lq is not None else "the on-the-fly degradations"
        warnings.append(
            f"{source}: datasets.train.lq_resize_mode: ignored (the LR comes from {made_by}, as in traiNNer-redux)"
        )
    if job.logger.save_checkpoint_format == "pth":
        warnings.append(
            f"{source}: logger.save_checkpoint_format: pth ignored (for checkpoints: srcluster writes safetensors, "
            "which spandrel/chaiNNer and traiNNer-redux load; the exported generator is written as .pth too)"
        )
    if job.onnx and job.onnx.dynamo:
        warnings.append(f"{source}: onnx.dynamo: true ignored (srcluster exports with torch's TorchScript exporter)")
    if job.onnx and job.onnx.dtype == "bf16" and job.onnx.bf16_exclude_depthwise:
        warnings.append(
            f"{source}: onnx.bf16_exclude_depthwise: ignored (srcluster casts the whole generator to bf16, depthwise "
            "convolutions included)"
        )
    for name, metric in job.val.metrics.items():
        if metric.crop_border and not metric.crops_border:
            warnings.append(
                f"{source}: val.metrics.{name}.crop_border: ignored ({metric.kind} scores whole images, as in "
                "traiNNer-redux; crop_border applies to psnr and ssim)"
            )
    if job.uses_video_codecs and job.srcluster.degrade_on == "device":
        warnings.append(
            f"{source}: srcluster.degrade_on: device ignored (video codecs code on the CPU: degradations run in the "
            "data workers, so the training step never copies LR images to the host and back)"
        )
    if job.train.use_moa and job.train.moa_debug:
        warnings.append(
            f"{source}: train.moa_debug: ignored (srcluster saves no augmented tiles; `srcluster degrade preview` "
            "shows what the data pipeline makes)"
        )
    if job.val.metrics and not job.val.metrics_enabled:
        warnings.append(
            f"{source}: val.metrics: not computed (val.metrics_enabled is false, traiNNer-redux's default; set it to "
            "true to score them)"
        )
    if "val" not in job.model_fields_set and job.datasets.validation_sets:  # redux validates only with a val section
        warnings.append(
            f"{source}: datasets.{', datasets.'.join(job.datasets.validation_sets)}: not validated (no val: section; "
            "add val: {val_enabled: true, val_freq: N} to validate, as traiNNer-redux)"
        )
    if job.path.resume_state:  # traiNNer-redux ignores pretrains while resuming, and so does srcluster
        warnings += [
            f"{source}: path.{key}: replaced by the networks of path.resume_state"
            for key in ("pretrain_network_g", "pretrain_network_d")
            if getattr(job.path, key)
        ]
    return warnings
