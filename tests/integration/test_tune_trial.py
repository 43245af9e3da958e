"""The single-worker Tune trial (the kind PBT runs) trains through the one loop: a GAN stage with on-the-fly
degradations sees degraded LR, not bicubic, and the trial gains the loop's metrics, MLflow run and checkpoints.

`single_trial` runs here in the test's process with the three Tune session calls it makes stubbed (trial id, no
checkpoint to restore, reports recorded), so the LR its generator trains on can be looked at directly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from ray import tune

from helpers.images import PER_SHARD, PHOTO, photo_tiles, save
from srcluster.components import archs
from srcluster.data import stream
from srcluster.data.shards import write_shards
from srcluster.degrade.resize import imresize
from srcluster.tracking import tags
from srcluster.tracking.tracker import Tracker
from srcluster.tune.space import parse_search
from srcluster.tune.trial import TrialContext, single_trial

pytestmark = pytest.mark.usefixtures("single_thread")

OTF = {
    "high_order_degradation": True,
    "blur_prob": 0.8,
    "gaussian_noise_prob": 0.5,
    "noise_range": [1, 20],
    "jpeg_range": [40, 95],
    "blur_prob2": 0.5,
    "jpeg_range2": [40, 95],
}


@pytest.fixture
def search(tmp_path):
    shards = str(tmp_path / "shards")
    write_shards(photo_tiles(), shards, max_samples=PER_SHARD, progress=False)
    save(tmp_path / "val" / "a.png", PHOTO[:64, :64])
    job = {
        "name": "otfgan",
        "scale": 2,
        "manual_seed": 3,
        **OTF,
        "datasets": {
            "train": {
                "dataroot_gt": shards,
                "lq_size": 16,
                "batch_size_per_gpu": 2,
                "num_worker_per_gpu": 0,
                "kernel_range": [3, 11],
            },
            "val": {"dataroot_gt": str(tmp_path / "val")},
        },
        "network_g": {"type": "superultracompact"},
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {
            "total_iter": 4,
            "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}, {"type": "ganloss", "loss_weight": 0.1}],
        },
        "val": {"val_freq": 2, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
    }
    (tmp_path / "base.yml").write_text(yaml.safe_dump(job))
    spec = {
        "name": "otf",
        "base": {"job": str(tmp_path / "base.yml")},
        "metric": "val_psnr",
        "num_samples": 1,
        "trial": {"workers": 1},
        "space": {"train.optim_g.lr": {"grid": [1.0e-3]}},
    }
    return parse_search(spec, "otf.yml")


def test_single_worker_gan_trial_trains_on_degraded_lr(search, tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    parent = tracker.start_run("otf", "otf-search")
    ctx = TrialContext(search, parent, "otf", tracker.uri)

    reports = []
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t0001"))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))

    loaders, hrs = [], []  # what the trial's loader was asked for, and the HR of every item it yielded
    real_loader = stream.train_loader

    class Recorded:
        def __init__(self, inner):
            self.inner, self.dataset = inner, inner.dataset

        def counts(self):
            return self.inner.counts()

        def __iter__(self):
            for item in self.inner:
                hrs.append(item[0] if isinstance(item, tuple) else item)
                yield item

    def recording_loader(*args, **kwargs):
        loaders.append(kwargs)
        return Recorded(real_loader(*args, **kwargs))

    monkeypatch.setattr(stream, "train_loader", recording_loader)

    inputs = []  # the LR the generator trained on (validation runs it in eval mode)
    real_generator = archs.build_generator

    def recording_generator(*args, **kwargs):
        net = real_generator(*args, **kwargs)
        net.register_forward_pre_hook(
            lambda module, a: inputs.append(a[0].detach().clone()) if module.training else None
        )
        return net

    monkeypatch.setattr(archs, "build_generator", recording_generator)

    single_trial({"train.optim_g.lr": 1.0e-3}, ctx)

    assert len(loaders) == 1 and loaders[0]["degradations"] is not None
    assert len(inputs) == 4 and len(hrs) == 4  # one micro-batch per iteration
    for hr, lr in zip(hrs, inputs, strict=False):
        bicubic = imresize(hr.float() / 255, 0.5, kernel="bicubic").clamp(0, 1)
        assert lr.shape == bicubic.shape == (2, 3, 16, 16)
        assert (lr - bicubic).abs().mean() * 255 > 2  # degraded (blur, noise, JPEG), not bicubic

    # a report with a checkpoint at each validation, carrying the loop's metrics
    assert [m["iteration"] for m, _ in reports] == [2, 4] and all(c is not None for _, c in reports)
    assert {"val_psnr", "l_g_gan", "l_d_real", "lr", "lr_d", "data_wait_fraction", "data_skipped"} <= set(
        reports[-1][0]
    )
    run = tracker.find_run("otf", {tags.TUNE_TRIAL_ID: "t0001"})
    assert run.info.status == "FINISHED" and run.data.tags[tags.TUNE_SEARCH_RUN] == parent
    assert run.data.metrics["hp.train.optim_g.lr"] == 1.0e-3 and "data_wait_fraction" in run.data.metrics
