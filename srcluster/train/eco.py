"""Training from a teacher generator, as traiNNer-redux does it (`network_g_teacher`, `train.eco`).

Distillation: with a teacher and no ECO, the target of data whose LR is given (paired data, and srcluster's bicubic LR
of HR-only data, which stands for it) is the teacher's output for that LR, not the HR (redux's SRModel.feed_data).

ECO (Empirical Centroid-oriented Optimization), the last step of every batch however its LR was made: with alpha
ramping linearly from 0 to 1 over the first `end_ratio` of total_iter, the target becomes lerp(teacher SR, HR, alpha)
and, in `full` mode, the input lerp(bicubic(teacher SR), LR, alpha) (`hr_only` keeps the real LR). The discriminator
keeps seeing the real HR. At alpha >= 1 - 1e-4 the batch is left alone and the teacher is not run.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from srcluster.degrade.resize import otf_resize

ALPHA_EPS = 1e-4  # redux's: closer than this to 0 or 1 counts as 0 or 1


def eco_alpha(iteration: int, end_iteration: int) -> float:
    """The mix weight of the real pair at `iteration` (1-based, the step being made): iteration / end_iteration in
    [0, 1]; 1 from the start when end_iteration is 0."""
    if end_iteration <= 0:
        return 1.0
    return min(1.0, max(0.0, iteration / end_iteration))


def end_iteration(total_iter: int, end_ratio: float) -> int:
    return int(total_iter * end_ratio)


@torch.inference_mode()
def teacher_sr(teacher: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """The teacher's output for `lr`, clipped to [0, 1], outside autograd (a plain tensor the step can use)."""
    return teacher(lr).clamp_(0, 1).clone()


def eco_mix(
    teacher: nn.Module, lr: torch.Tensor, hr: torch.Tensor, alpha: float, scale: int, mode: Literal["full", "hr_only"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, target) of ECO at `alpha` (see the module docstring)."""
    if alpha >= 1.0 - ALPHA_EPS:
        return lr, hr
    sr = teacher_sr(teacher, lr)
    if sr.shape != hr.shape:
        raise ValueError(f"ECO: the teacher's output {tuple(sr.shape)} does not match the HR {tuple(hr.shape)}")
    if mode == "hr_only":
        return lr, sr if alpha <= ALPHA_EPS else torch.lerp(sr, hr, alpha)
    sr_lr = otf_resize(sr, (sr.shape[-2] // scale, sr.shape[-1] // scale), "bicubic")  # redux's resize_pt bicubic
    if alpha <= ALPHA_EPS:
        return sr_lr, sr
    return torch.lerp(sr_lr, lr, alpha), torch.lerp(sr, hr, alpha)
