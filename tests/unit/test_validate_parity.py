"""Validation as traiNNer-redux runs it (issue #14, item 5): the model sees each set's own LR (`dataroot_lq`, paired by
name; bicubic of the HR only without one), every folder of a set, every set (`val`, `val_2`, ...) logged under its own
names, under the training's autocast, and LPIPS-type metrics score whole images (no border crop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.fake_weights import fake_torch_home
from helpers.images import PHOTO, save
from srcluster.config import ConfigError, Metric, parse_job
from srcluster.degrade.resize import bicubic_downscale
from srcluster.errors import SrclusterError
from srcluster.train import best
from srcluster.train.loop import run
from srcluster.train.reporters import Reporter
from srcluster.train.state import build_stage
from srcluster.train.validate import Validator, build_metrics, build_validator

pytestmark = pytest.mark.usefixtures("single_thread")

SCALE = 2


def job(datasets: dict, **overrides):
    data = {
        "name": "parity",
        "scale": SCALE,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}, **datasets},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 2, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}]},
        "val": {"val_freq": 2, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2},
        "srcluster": {"workers": 1},
    }
    data.update(overrides)
    return parse_job(data)


def validator(config) -> Validator:
    built = build_validator(config)
    assert built is not None, "the job validates"
    return built


class Batches(list):
    """The same uint8 HR batch again and again; nothing skipped."""

    def counts(self) -> dict[str, int]:
        return {"data_skipped": 0}


class Recording(torch.nn.Module):
    """Nearest-neighbour x2 that records every input it is given and whether autocast was on for it."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to run on
        self.seen: list[torch.Tensor] = []
        self.autocast: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return F.interpolate(x, scale_factor=SCALE, mode="nearest")


def noise(shape, seed: int) -> np.ndarray:
    """An LR image that is nothing like any downscale of its HR."""
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def as_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.fixture
def paired(tmp_path):
    """Two HR/LR folder pairs; the LR images are noise, so they are not the bicubic of their HR."""
    folders = {}
    for index, (name, top) in enumerate((("a", 0), ("b", 100))):
        hr, lr = tmp_path / f"hr{index + 1}", tmp_path / f"lr{index + 1}"
        save(hr / f"{name}.png", PHOTO[top : top + 40, :48])
        save(lr / f"{name}.png", noise((20, 24), seed=index))
        folders[name] = (hr, lr)
    return folders


def test_the_model_sees_the_paired_lr_not_the_bicubic_of_the_hr(paired):
    hr, lr = paired["a"]
    validation = validator(job({"val": {"dataroot_gt": str(hr), "dataroot_lq": str(lr)}}))
    net = Recording()
    validation(net)
    assert len(net.seen) == 1
    assert torch.equal(net.seen[0], as_input(noise((20, 24), seed=0)))
    bicubic = bicubic_downscale(torch.from_numpy(PHOTO[:40, :48]).permute(2, 0, 1).contiguous(), SCALE)
    assert not torch.allclose(net.seen[0], bicubic[None].float() / 255, atol=0.1)


def test_without_dataroot_lq_the_lr_is_the_bicubic_of_the_hr(paired):
    hr, _ = paired["a"]
    net = Recording()
    validator(job({"val": {"dataroot_gt": str(hr)}}))(net)
    bicubic = bicubic_downscale(torch.from_numpy(PHOTO[:40, :48]).permute(2, 0, 1).contiguous(), SCALE)
    assert torch.equal(net.seen[0], bicubic[None].float() / 255)


def test_every_folder_of_a_set_is_validated(paired):
    (hr1, lr1), (hr2, lr2) = paired["a"], paired["b"]
    config = job({"val": {"dataroot_gt": [str(hr1), str(hr2)], "dataroot_lq": [str(lr1), str(lr2)]}})
    net = Recording()
    validator(config)(net)
    assert [torch.equal(seen, as_input(noise((20, 24), seed=i))) for i, seen in enumerate(net.seen)] == [True, True]

    hr_only = Recording()
    validator(job({"val": {"dataroot_gt": [str(hr1), str(hr2)]}}))(hr_only)
    assert len(hr_only.seen) == 2


def test_an_hr_larger_than_scale_times_its_lr_is_cut_from_the_top_left(tmp_path):
    save(tmp_path / "hr" / "a.png", PHOTO[:43, :51])  # 2 x (20, 24) is (40, 48): 3 rows and columns too many
    save(tmp_path / "lr" / "a.png", noise((20, 24), seed=0))
    config = job({"val": {"dataroot_gt": str(tmp_path / "hr"), "dataroot_lq": str(tmp_path / "lr")}})
    image = validator(config).sets[0].images[0]
    assert torch.equal(image.hr, torch.from_numpy(PHOTO[:40, :48]).permute(2, 0, 1))


def test_a_second_validation_set_is_validated_and_logged_under_its_own_names(paired, tmp_path):
    (hr1, lr1), (hr2, lr2) = paired["a"], paired["b"]
    config = job(
        {
            "val": {"name": "Set A", "dataroot_gt": str(hr1), "dataroot_lq": str(lr1)},
            "val_2": {"name": "Set B", "dataroot_gt": str(hr2), "dataroot_lq": str(lr2)},
        }
    )
    net = Recording()
    scores = validator(config)(net, tmp_path / "grids" / "val_0000002.png")
    assert len(net.seen) == 2
    expected = {}
    for label, name, seed in (("Set A", "a", 0), ("Set B", "b", 1)):
        hr = torch.from_numpy(PHOTO[(0 if name == "a" else 100) :][:40, :48]).permute(2, 0, 1)
        sr = F.interpolate(torch.from_numpy(noise((20, 24), seed)).permute(2, 0, 1)[None], scale_factor=SCALE)
        expected[label] = build_metrics({"psnr": Metric(type="calculate_psnr")}, SCALE)["psnr"](sr, hr[None]).item()
        assert scores[f"metrics/{label}/psnr"] == pytest.approx(expected[label], abs=1e-9)
    assert expected["Set A"] != pytest.approx(expected["Set B"])
    assert scores["val_psnr"] == scores["metrics/Set A/psnr"]  # the first set keeps the key best/plateau/Tune read
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["val_0000002.png", "val_0000002_val_2.png"]


def test_the_loop_logs_every_sets_metrics_and_grid(paired):
    (hr1, lr1), (hr2, lr2) = paired["a"], paired["b"]
    config = job(
        {
            "val": {"dataroot_gt": str(hr1), "dataroot_lq": str(lr1)},
            "val_2": {"dataroot_gt": str(hr2), "dataroot_lq": str(lr2)},
        }
    )

    class Recorder(Reporter):
        def __init__(self):
            super().__init__(tracker=None, run_id="r")
            self.metrics, self.artifacts = {}, []

        def report(self, stage, metrics, *, save, validated):
            self.metrics |= metrics

        def log(self, metrics, step):
            pass

        def log_artifact(self, path, folder):
            self.artifacts.append(path.name)

        def publish_best(self, stage):
            pass

    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    validation = validator(config)
    assert config.best_metric == "val_psnr"
    stage.best = best.for_job(config, validation.higher_is_better("val_psnr"))
    recorder = Recorder()
    g = torch.Generator().manual_seed(0)
    run(
        stage,
        Batches([torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8)] * 2),
        validation,
        recorder,
    )
    # both sets are named "val" (the default): the second gets its key appended so their metrics stay apart
    assert {"val_psnr", "metrics/val/psnr", "metrics/val_val_2/psnr"} <= set(recorder.metrics)
    grids = [name for name in recorder.artifacts if name.startswith("val_")]
    assert grids == ["val_0000002.png", "val_0000002_val_2.png"]


def test_validation_runs_under_the_trainings_autocast(paired):
    hr, lr = paired["a"]
    datasets = {"val": {"dataroot_gt": str(hr), "dataroot_lq": str(lr)}}
    net = Recording()
    validator(job(datasets, use_amp=True, amp_bf16=True))(net)
    assert net.autocast == [(True, torch.bfloat16)]
    plain = Recording()
    validator(job(datasets))(plain)
    assert [enabled for enabled, _ in plain.autocast] == [False]


def test_lpips_scores_the_border_that_psnr_crops(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(fake_torch_home(tmp_path / "torch", ("alexnet",), seed=2, bias_std=0.01)))
    metrics = build_metrics(
        {"psnr": Metric(type="calculate_psnr"), "lpips": Metric(type="calculate_lpips", crop_border=4)}, scale=4
    )
    hr = torch.from_numpy(PHOTO[:64, :64]).permute(2, 0, 1)[None].contiguous()
    sr = hr.clone()
    sr[..., :3, :] = 0  # wrong only inside the 4-pixel border
    assert metrics["psnr"](sr, hr).item() == float("inf")  # PSNR crops the border (crop_border = scale)
    assert metrics["lpips"](sr, hr).item() > 0  # LPIPS scores the whole image, as traiNNer-redux does
    assert metrics["lpips"](hr, hr).item() == 0


def test_crop_border_on_a_perceptual_metric_is_named_as_ignored(paired):
    hr, _ = paired["a"]
    config = job(
        {"val": {"dataroot_gt": str(hr)}},
        val={"metrics": {"lpips": {"type": "calculate_lpips", "crop_border": 4}, "psnr": {"type": "calculate_psnr"}}},
    )
    assert any("val.metrics.lpips.crop_border: ignored" in warning for warning in config.warnings)


def test_dataset_phases_are_train_val_and_val_suffixes(paired):
    hr, _ = paired["a"]
    only_second = job({"val_set14": {"dataroot_gt": str(hr)}})
    assert list(only_second.datasets.validation_sets) == ["val_set14"] and only_second.best_metric == "val_psnr"
    with pytest.raises(ConfigError, match=r"datasets: 'test_1' is not a dataset phase: use train, val or val_<suffix>"):
        job({"test_1": {"dataroot_gt": str(hr)}})
    with pytest.raises(ConfigError, match=r"datasets.val_2.dataroot_g: unknown key"):
        job({"val_2": {"dataroot_g": str(hr)}})


def test_a_set_without_usable_images_is_one_line_naming_it(paired, tmp_path):
    hr, _ = paired["a"]
    (tmp_path / "empty-lr").mkdir()
    config = job(
        {"val": {"dataroot_gt": str(hr)}, "val_2": {"dataroot_gt": str(hr), "dataroot_lq": str(tmp_path / "empty-lr")}}
    )
    with pytest.raises(SrclusterError, match=r"datasets.val_2: no usable validation image in .*hr1 with an LR partner"):
        validator(config)
