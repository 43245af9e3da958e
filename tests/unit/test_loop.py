"""The one training loop (`train.loop.run`) on CPU without Ray, through a recording reporter: report points, save
points, validation through the inference module's tiles, the comparison grid only with `val.save_img`, the plateau
stop."""

from __future__ import annotations

import re

import pytest
import torch

from helpers.batches import HRBatches, Recorder
from helpers.images import PHOTO, save
from srcluster.config import Metric, parse_job
from srcluster.infer import upscaler
from srcluster.train import best
from srcluster.train.loop import STOP_POLL_EVERY, run
from srcluster.train.state import build_stage
from srcluster.train.validate import Validator, ValImage, ValSet, build_metrics, build_validator, prepare

pytestmark = pytest.mark.usefixtures("single_thread")


def job(val_folder, **overrides):
    data = {
        "name": "loop",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {
            "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2},
            "val": {"dataroot_gt": str(val_folder)},
        },
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 6, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}]},
        "val": {"val_freq": 3, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        "logger": {"print_freq": 2, "save_checkpoint_freq": 4},
        "srcluster": {"workers": 1},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_job(data)


@pytest.fixture
def val_folder(tmp_path):
    save(tmp_path / "val" / "a.png", PHOTO[:40, :48])
    return tmp_path / "val"


def train(config, n=6):
    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    validator = build_validator(config)
    stage.best = best.for_job(config, validator.higher_is_better(config.best_metric))
    recorder = Recorder()
    run(stage, HRBatches(n), validator, recorder)
    return stage, recorder


def test_loop_reports_at_log_validation_and_save_points(val_folder):
    stage, recorder = train(job(val_folder))
    assert stage.iteration == 6
    # print_freq 2, val_freq 3, save_checkpoint_freq 4, and the last iteration
    assert [(it, save, validated) for it, save, validated, _ in recorder.reports] == [
        (2, False, False),
        (3, False, True),
        (4, True, False),
        (6, True, True),
    ]
    assert recorder.logged == [2, 3, 4, 6]
    last = recorder.reports[-1][3]
    assert {
        "l_g_charbonnier",
        "lr",
        "data_wait_fraction",
        "samples_per_s",
        "data_skipped",
        "val_psnr",
        "val_bicubic_psnr",
    } <= set(last)
    assert last["stopped_early"] == 0 and "val_psnr" not in recorder.reports[0][3]
    # each validation: its grid, and the stage's comparison page rewritten with one more checkpoint
    assert recorder.artifacts == [
        ("val_0000003.png", "comparisons"),
        ("validation.html", "compare"),
        ("val_0000006.png", "comparisons"),
        ("validation.html", "compare"),
    ]
    assert recorder.published and recorder.published[0] == 3  # the first validation is always the best so far


def test_save_img_false_makes_no_comparison_grid(val_folder):
    _, recorder = train(
        job(val_folder, val={"val_freq": 3, "save_img": False, "metrics": {"psnr": {"type": "calculate_psnr"}}})
    )
    assert recorder.artifacts == []
    assert [it for it, _, validated, m in recorder.reports if validated and "val_psnr" in m] == [3, 6]


def test_plateau_stops_every_rank_at_the_same_validation_with_a_checkpoint(val_folder):
    config = job(
        val_folder,
        srcluster={"plateau": {"patience": 1, "min_delta": 1000.0}},
        train={"total_iter": 20, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}]},
    )
    stage, recorder = train(config, n=20)
    assert stage.iteration == 6  # validations at 3 (the best) and 6 (not better by 1000 dB): stop
    it, save, validated, metrics = recorder.reports[-1]
    assert (it, save, validated, metrics["stopped_early"]) == (6, True, True, 1)


def test_a_stop_request_checkpoints_at_the_next_poll_and_stops(val_folder):
    """A preemption signal reaches the driver; rank 0 sees it at the next poll (every STOP_POLL_EVERY iterations),
    saves a checkpoint there and the loop ends, well before total_iter."""

    class Preempting(Recorder):
        def stop_requested(self):
            return "SIGUSR1" if self.reports and self.reports[-1][0] >= 12 else None

    config = job(val_folder, train={"total_iter": 100, "losses": [{"type": "charbonnierloss"}]}, val={"val_freq": 50})
    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    recorder = Preempting()
    run(stage, HRBatches(100), build_validator(config), recorder)
    assert STOP_POLL_EVERY == 10
    assert stage.iteration == 20  # asked after the report at 12: the poll at 20 stops it
    it, save, _, _ = recorder.reports[-1]
    assert (it, save) == (20, True)


def test_out_of_memory_names_the_batch_knobs(val_folder, monkeypatch):
    stage = build_stage(job(val_folder), torch.device("cpu"), log=lambda _: None)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("srcluster.train.loop.train_step", oom)
    advice = re.escape("lq_size 8, batch_size_per_gpu 2: lower datasets.train.lq_size")
    with pytest.raises(torch.OutOfMemoryError, match=advice):
        run(stage, HRBatches(1), None, Recorder())


def test_validation_upscales_on_the_jobs_tiles_through_the_inference_module(val_folder, monkeypatch):
    config = job(
        val_folder,
        val={"tile_size": 8, "tile_overlap": 4, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        srcluster={"val_tiling": "context"},  # default: redux's blended tiles (tests/unit/test_upscale.py)
    )
    validator = build_validator(config)
    assert (validator.tile_size, validator.tile_overlap, validator.tiling) == (8, 4, "context") and validator.save_img
    net = build_stage(config, torch.device("cpu"), log=lambda _: None).raw_g  # 3 convs 3x3: sees 3 LR pixels around
    calls = []
    real = upscaler.tiled_upscale
    monkeypatch.setattr("srcluster.train.validate.tiled_upscale", lambda *a, **k: calls.append(a[2:]) or real(*a, **k))
    shapes = []
    hook = net.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[-2:])))
    tiled = validator(net)
    hook.remove()
    assert calls == [(2, 8, 4)]  # scale, tile, overlap
    assert max(h for h, _ in shapes) <= 8 + 2 * 4 and len(shapes) == 3 * 3  # a 20x24 LR image in 8x8 tiles
    whole = Validator(validator.sets, validator.metrics, 2)(net)  # tile 0: one pass
    assert tiled["val_psnr"] == pytest.approx(whole["val_psnr"], abs=1e-9)  # overlap >= receptive field: exact


def test_validator_scores_model_and_bicubic_and_writes_the_grid(tmp_path):
    hr = torch.from_numpy(PHOTO[:32, :32]).permute(2, 0, 1).contiguous()
    images = prepare([("a", hr)], 2)
    assert isinstance(images[0], ValImage) and images[0].lr.shape == (3, 16, 16)

    class Nearest(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to run on

        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    metrics = build_metrics({"psnr": Metric(type="calculate_psnr")}, 2)
    validator = Validator([ValSet("val", "Val", images)], metrics, 2, save_img=False)
    scores = validator(Nearest(), tmp_path / "grid.png")
    assert set(scores) == {"val_psnr", "val_bicubic_psnr", "metrics/Val/psnr", "metrics/Val/bicubic_psnr"}
    assert not (tmp_path / "grid.png").exists()
    validator.save_img = True
    validator(Nearest(), tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
