"""The process settings a job asks for (`train/backend.py`), as traiNNer-redux's train.py sets them, and redux's
channels_last layout of everything a stage trains under AMP."""

from __future__ import annotations

import os

import pytest
import torch

from srcluster.config import parse_job
from srcluster.train import backend
from srcluster.train.state import build_stage


def job(**top):
    return parse_job(
        {
            "name": "flags",
            "scale": 2,
            "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
            "train": {"total_iter": 2, "losses": [{"type": "l1loss"}, {"type": "ganloss", "loss_weight": 0.1}]},
            "srcluster": {"workers": 1},
            **top,
        }
    )


@pytest.fixture(autouse=True)
def restore_torch_settings(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    backend.configure(job())  # the defaults again, for the tests after this one


def test_defaults_are_redux_defaults():
    backend.configure(job())
    assert not torch.are_deterministic_algorithms_enabled() and not torch.is_anomaly_enabled()
    assert torch.backends.cudnn.benchmark  # redux autotunes unless deterministic
    assert torch.get_float32_matmul_precision() == "highest"


def test_deterministic_detect_anomaly_and_fast_matmul_act():
    backend.configure(job(deterministic=True, detect_anomaly=True, fast_matmul=True))
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.is_anomaly_enabled()
    assert torch.get_float32_matmul_precision() == "high"


def test_anomaly_detection_names_the_operation_that_made_a_nan():
    backend.configure(job(detect_anomaly=True))
    x = torch.zeros(1, requires_grad=True)
    with pytest.raises(RuntimeError, match="SqrtBackward0"), pytest.warns(UserWarning, match="anomaly"):
        (x.sqrt() * 0).sum().backward()  # d/dx sqrt(0) is inf; times 0 is NaN


def test_stage_built_from_a_job_applies_its_settings():
    build_stage(job(deterministic=True), torch.device("cpu"), log=lambda _: None)
    assert torch.are_deterministic_algorithms_enabled()


def conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.dim() == 4]


@pytest.mark.parametrize(("use_amp", "channels_last"), [(True, True), (True, False), (False, True)])
def test_channels_last_under_amp_for_g_d_and_loss_networks(use_amp, channels_last):
    stage = build_stage(job(use_amp=use_amp, use_channels_last=channels_last), torch.device("cpu"), log=lambda _: None)
    assert stage.raw_d is not None
    expected = use_amp and channels_last  # redux's rule: only with AMP
    for net in (stage.raw_g, stage.raw_d):
        for weight in conv_weights(net):
            assert weight.is_contiguous(memory_format=torch.channels_last) == expected or weight.shape[-2:] == (1, 1)
    assert backend.memory_format(job(use_amp=use_amp, use_channels_last=channels_last)) == (
        torch.channels_last if expected else torch.preserve_format
    )
