"""Options omitted from a job file take traiNNer-redux's defaults (traiNNer/utils/redux_options.py at 686293190), and
its val/logger keys srcluster has no use for load with a warning instead of an "unknown key" error."""

from __future__ import annotations

import json

import pytest

from srcluster.config import ConfigError, parse_job

VALIDATES = {
    "name": "t",
    "scale": 2,
    "datasets": {"train": {"dataroot_gt": "s3://srcluster/x"}, "val": {"dataroot_gt": "s3://srcluster/v"}},
    "network_g": {"type": "compact", "num_feat": 8},
    "train": {"total_iter": 10, "losses": [{"type": "charbonnierloss", "loss_weight": 1}]},
    "val": {"val_enabled": True, "val_freq": 5, "save_img": True},
}


def job_with(**sections):
    data = json.loads(json.dumps(VALIDATES))
    for key, value in sections.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return parse_job(data)


def test_val_options_omitted_take_redux_defaults():
    val = job_with().val
    assert val.tile_size == 0
    assert val.tile_overlap == 0  # redux: 0 (srcluster had 8)
    assert val.metrics_enabled is False  # redux: False (srcluster had True)
    assert val.metrics == {}  # redux: None, so nothing is scored


def test_paths_options_omitted_take_redux_defaults():
    path = job_with().path
    assert (path.pretrain_network_g, path.param_key_g, path.strict_load_g) == (None, None, True)
    assert (path.pretrain_network_d, path.param_key_d, path.strict_load_d) == (None, None, True)
    assert path.resume_state is None


def test_dataset_options_omitted_take_redux_defaults():
    job = job_with()
    train, val = job.datasets.train, job.datasets.val
    assert val is not None
    assert (train.accum_iter, train.use_hflip, train.use_rot, train.dataroot_lq) == (1, True, True, None)
    assert val.dataroot_lq is None


def test_logger_checkpoint_format_defaults_to_safetensors():
    assert (
        job_with(logger={"print_freq": 10, "save_checkpoint_freq": 10}).logger.save_checkpoint_format == "safetensors"
    )


def test_without_a_val_section_the_job_does_not_validate_and_says_so():
    job = job_with(val=None)  # redux validates only when its val section enables it
    assert not job.validates and job.best_metric is None
    assert any("datasets.val: not validated (no val: section" in line for line in job.warnings)


def test_metrics_without_metrics_enabled_are_not_scored_and_named():
    job = job_with(val={"val_enabled": True, "val_freq": 5, "metrics": {"psnr": {"type": "calculate_psnr"}}})
    assert job.best_metric is None  # nothing is scored, so no metric picks the best checkpoint
    assert any("val.metrics: not computed (val.metrics_enabled is false" in line for line in job.warnings)
    scored = job_with(val={"val_freq": 5, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}})
    assert scored.best_metric == "val_psnr" and not any("val.metrics" in line for line in scored.warnings)


@pytest.mark.parametrize(
    ("section", "key", "value", "warning"),
    [
        ("val", "pbar", False, "val.pbar: ignored (srcluster shows its own progress line)"),
        ("val", "suffix", "x2", "val.suffix: ignored (traiNNer-redux names only test.py's saved images"),
        ("logger", "wandb", {"project": "p"}, "logger.wandb: ignored (metrics go to MLflow)"),
    ],
)
def test_redux_keys_srcluster_does_not_act_on_load_with_a_warning(section, key, value, warning):
    data = dict(VALIDATES.get(section, {})) | {key: value}
    job = job_with(**{section: data})
    assert any(warning in line for line in job.warnings)


@pytest.mark.parametrize(
    "key", ["pin_memory", "persistent_workers", "prefetch_mode", "num_prefetch_queue", "prefetch_factor"]
)
def test_redux_loader_tuning_keys_load_with_a_warning(key):
    datasets = json.loads(json.dumps(VALIDATES["datasets"]))
    datasets["train"][key] = 4
    job = job_with(datasets=datasets)
    assert any(f"datasets.train.{key}: ignored (srcluster's streaming loader" in line for line in job.warnings)


def test_tile_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ConfigError, match="val: tile_overlap 16 must be smaller than tile_size 16"):
        job_with(val={"val_freq": 5, "tile_size": 16, "tile_overlap": 16})
    assert job_with(val={"val_freq": 5, "tile_size": 0, "tile_overlap": 16}).val.tile_overlap == 16  # untiled


def test_validation_tiles_as_redux_unless_told_otherwise():
    assert job_with().srcluster.val_tiling == "redux"
    assert job_with(srcluster={"val_tiling": "context"}).srcluster.val_tiling == "context"
