"""Training from a teacher generator as traiNNer-redux does (`network_g_teacher`, `train.eco`): the ECO schedule and
mix against values derived from redux's `traiNNer/utils/eco.py`, distillation targets, and the config rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from helpers.jobs import tiny_job
from srcluster.components import archs
from srcluster.config import parse_job
from srcluster.degrade.pipeline import draw, pair
from srcluster.errors import ConfigError
from srcluster.train.batch import to_batch
from srcluster.train.eco import eco_alpha, eco_mix, end_iteration
from srcluster.train.stage import run_identity, run_key
from srcluster.train.state import build_stage
from srcluster.train.step import step_values, train_step


class Upscaler(nn.Module):
    """A stand-in teacher: nearest x2 upscaling plus 0.1, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.interpolate(x, scale_factor=2, mode="nearest") + 0.1


def test_alpha_ramps_linearly_to_one_over_end_ratio_of_the_run() -> None:
    end = end_iteration(1000, 0.75)
    assert end == 750  # int(total_iter * end_ratio), as redux
    assert [eco_alpha(i, end) for i in (0, 75, 375, 750, 900)] == [0.0, 0.1, 0.5, 1.0, 1.0]
    assert eco_alpha(5, 0) == 1.0


def test_full_mode_mixes_input_and_target_with_the_teacher() -> None:
    generator = torch.Generator().manual_seed(0)
    lr, hr = torch.rand(2, 3, 8, 8, generator=generator) * 0.8, torch.rand(2, 3, 16, 16, generator=generator)
    teacher = Upscaler()
    mixed_lr, target = eco_mix(teacher, lr, hr, 0.25, 2, "full")
    sr = (F.interpolate(lr, scale_factor=2, mode="nearest") + 0.1).clamp(0, 1)
    sr_lr = F.interpolate(sr, size=(8, 8), mode="bicubic", antialias=True).clamp(0, 1)  # redux's resize_pt
    assert torch.allclose(target, 0.75 * sr + 0.25 * hr, atol=1e-6)
    assert torch.allclose(mixed_lr, 0.75 * sr_lr + 0.25 * lr, atol=1e-6)
    # alpha 0: the teacher's pair alone
    only_lr, only_target = eco_mix(teacher, lr, hr, 0.0, 2, "full")
    assert torch.allclose(only_target, sr) and torch.allclose(only_lr, sr_lr)


def test_hr_only_mode_keeps_the_real_input() -> None:
    lr, hr = torch.rand(1, 3, 8, 8) * 0.8, torch.rand(1, 3, 16, 16)
    mixed_lr, target = eco_mix(Upscaler(), lr, hr, 0.5, 2, "hr_only")
    sr = (F.interpolate(lr, scale_factor=2, mode="nearest") + 0.1).clamp(0, 1)
    assert mixed_lr is lr and torch.allclose(target, 0.5 * sr + 0.5 * hr, atol=1e-6)


def test_at_alpha_one_the_teacher_is_not_run() -> None:
    teacher, lr, hr = Upscaler(), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    assert eco_mix(teacher, lr, hr, 1.0, 2, "full") == (lr, hr) and teacher.calls == 0


def test_a_teacher_of_another_scale_is_named() -> None:
    with pytest.raises(ValueError, match="teacher's output"):
        eco_mix(Upscaler(), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32), 0.5, 4, "full")


def teacher_job(**train) -> dict:
    job = tiny_job(network_g_teacher={"type": "superultracompact"})
    job["path"] = {"pretrain_network_g_teacher": "/weights/teacher.safetensors"}
    job["train"] = {**job["train"], **train}
    return job


def hr_batch() -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_without_eco_the_teacher_output_is_every_target_of_given_lr() -> None:
    job, teacher = parse_job(teacher_job()), Upscaler()
    batch = to_batch(hr_batch(), job, torch.device("cpu"), teacher=teacher)
    sr = (F.interpolate(batch.lr, scale_factor=2, mode="nearest") + 0.1).clamp(0, 1)
    assert torch.equal(batch.pixel_gt, sr) and torch.equal(batch.gan_gt, sr)  # redux: gt = teacher(lq), D's real too


def test_on_the_fly_lr_keeps_its_hr_target_without_eco() -> None:
    job = parse_job({**teacher_job(), "high_order_degradation": True})
    hr = hr_batch()
    plan = draw(job.datasets.train.degradations, list(range(2)), 2, 32, crop=32)
    batch = to_batch((hr, plan), job, torch.device("cpu"), teacher=Upscaler())
    expected_hr, _ = pair(hr.float().div(255), plan)
    assert torch.equal(batch.pixel_gt, expected_hr)


def test_eco_mixes_at_the_steps_alpha_and_d_sees_the_real_hr() -> None:
    job = parse_job(teacher_job(total_iter=100, eco={"enabled": True, "end_ratio": 0.5}))
    hr = hr_batch()
    real_hr = hr.float().div(255)
    plain = to_batch(hr, parse_job(tiny_job()), torch.device("cpu"))  # the pair before ECO
    batch = to_batch(hr, job, torch.device("cpu"), teacher=Upscaler(), iteration=25)  # alpha 25 / 50
    sr = (F.interpolate(plain.lr, scale_factor=2, mode="nearest") + 0.1).clamp(0, 1)
    assert torch.allclose(batch.pixel_gt, 0.5 * sr + 0.5 * real_hr, atol=1e-6)
    assert torch.equal(batch.gan_gt, real_hr)
    late = to_batch(hr, job, torch.device("cpu"), teacher=Upscaler(), iteration=50)
    assert torch.equal(late.pixel_gt, real_hr) and torch.equal(late.lr, plain.lr)


def test_teacher_rules_are_redux_asserts_in_one_line() -> None:
    no_weights = tiny_job(network_g_teacher={"type": "superultracompact"})
    with pytest.raises(ConfigError, match=r"network_g_teacher: needs its weights in path\.pretrain_network_g_teacher"):
        parse_job(no_weights, source="t")
    eco_alone = tiny_job()
    eco_alone["train"] = {**eco_alone["train"], "eco": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"train\.eco\.enabled: ECO mixes in a teacher.s output"):
        parse_job(eco_alone, source="t")


def test_the_teacher_is_part_of_the_run_identity() -> None:
    assert run_key(parse_job(teacher_job())) != run_key(parse_job(tiny_job()))
    assert "network_g_teacher.type" not in run_identity(parse_job(tiny_job()))


def test_a_stage_trains_with_its_frozen_teacher_and_logs_eco_alpha(tmp_path) -> None:
    torch.manual_seed(3)
    weights = archs.build_generator("superultracompact", 2).state_dict()
    save_file(weights, str(tmp_path / "teacher.safetensors"))
    config = teacher_job(total_iter=8, eco={"enabled": True, "end_ratio": 0.5})
    config["path"] = {"pretrain_network_g_teacher": str(tmp_path / "teacher.safetensors")}
    stage = build_stage(parse_job(config), torch.device("cpu"))
    assert stage.teacher is not None and not stage.teacher.training
    assert all(torch.equal(a, weights[k]) for k, a in stage.teacher.state_dict().items())  # strictly its file
    batches = iter([hr_batch(), hr_batch()])
    alphas = [step_values(stage, train_step(stage, batches, 1))["eco_alpha"] for _ in range(2)]
    assert alphas == [0.25, 0.5]  # iterations 1 and 2 of end_iteration 4
    assert all(torch.equal(a, weights[k]) for k, a in stage.teacher.state_dict().items())  # never trained
