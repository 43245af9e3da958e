"""One loader item -> what a training step needs, on the training device: the LR input and each loss's target.

The loader yields uint8 HR (LR = MATLAB bicubic, made here), `(hr, lr)` (paired data, or degradations already applied
in the data workers), or `(hr, plan)` (degradations drawn in the workers, applied here on the device in one batched
call: `degrade.pipeline.apply` never waits for the device). Real-ESRGAN's `l1_gt_usm` / `percep_gt_usm` / `gan_gt_usm`
choose whether the pixel losses, the perceptual losses and the discriminator's real input see the sharpened GT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from srcluster.config import Job
from srcluster.degrade.filters import usm_sharpen
from srcluster.degrade.pipeline import Plan, apply
from srcluster.degrade.resize import imresize

# Losses that compare features rather than pixels: they take `percep_gt_usm`'s target; every other loss `l1_gt_usm`'s.
PERCEPTUAL_LOSSES = frozenset({"perceptualloss", "distsloss"})


@dataclass
class Batch:
    lr: torch.Tensor
    pixel_gt: torch.Tensor
    percep_gt: torch.Tensor
    gan_gt: torch.Tensor  # the discriminator's "real"

    def target(self, loss: str) -> torch.Tensor:
        return self.percep_gt if loss in PERCEPTUAL_LOSSES else self.pixel_gt


def _float(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True).float().div_(255)


def to_batch(item, job: Job, device: torch.device) -> Batch:
    """LR and targets, float in [0, 1] on `device`, from one loader item (see the module docstring)."""
    if isinstance(item, tuple) and isinstance(item[1], Plan):
        hr = _float(item[0], device)
        lr = apply(hr, item[1])
    elif isinstance(item, tuple):
        hr, lr = _float(item[0], device), _float(item[1], device)
    else:
        hr = _float(item, device)
        lr = imresize(hr, 1 / job.scale, kernel="bicubic").clamp_(0, 1)
    cfg = job.datasets.train.degradations
    if cfg is None or not cfg.sharpens_gt:
        return Batch(lr, hr, hr, hr)
    sharp = usm_sharpen(hr)  # Real-ESRGAN's USMSharp: radius 50, weight 0.5, threshold 10

    def pick(on: bool) -> torch.Tensor:
        return sharp if on else hr

    return Batch(lr, pick(cfg.l1_gt_usm), pick(cfg.percep_gt_usm), pick(cfg.gan_gt_usm))
