"""Losses by traiNNer-redux's `train.losses[].type` names. `loss_weight` scales each; weight 0 turns it off.

Pixel losses are called as `loss(sr, gt)`. The GAN loss is called as `loss(logits, target_is_real, is_disc)`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


@LOSSES.register("charbonnierloss")
class CharbonnierLoss(nn.Module):
    """sqrt((x - y)^2 + eps): L1 that stays differentiable at zero; traiNNer-redux's fidelity loss."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((sr - gt) ** 2 + self.eps).mean()


@LOSSES.register("l1loss")
class L1Loss(nn.Module):
    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sr, gt)


@LOSSES.register("mseloss")
class MSELoss(nn.Module):
    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(sr, gt)


@LOSSES.register("ganloss")
class GANLoss(nn.Module):
    """The adversarial loss in traiNNer-redux's three flavours: vanilla (BCE on logits), lsgan (MSE), hinge."""

    def __init__(self, gan_type: str = "vanilla", real_label_val: float = 1.0, fake_label_val: float = 0.0):
        super().__init__()
        if gan_type not in ("vanilla", "lsgan", "hinge"):
            raise ValueError(f"ganloss.gan_type: {gan_type!r} is not one of vanilla, lsgan, hinge")
        self.gan_type = gan_type
        self.real_label_val, self.fake_label_val = real_label_val, fake_label_val

    def forward(self, logits: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        if self.gan_type == "hinge":
            if not is_disc:  # the generator simply maximises the critic's score
                return -logits.mean()
            return F.relu(1 - logits).mean() if target_is_real else F.relu(1 + logits).mean()
        target = torch.full_like(logits, self.real_label_val if target_is_real else self.fake_label_val)
        if self.gan_type == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


def build_loss(name: str, **options) -> nn.Module:
    return LOSSES.build(name, **options)
