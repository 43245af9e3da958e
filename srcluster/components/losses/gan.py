"""The adversarial loss in traiNNer-redux's flavours."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components.losses.base import LOSSES
from srcluster.components.specs import GAN_LOSS_TYPES

GAN_TYPES = ("vanilla", "lsgan", "wgan", "wgan_softplus", "hinge")


class GANLoss(nn.Module):
    """The adversarial loss in traiNNer-redux's flavours: vanilla (BCE on logits), lsgan (MSE against the labels),
    wgan (the critic's mean score, negated for real), wgan_softplus (StyleGAN2's logistic / non-saturating loss:
    softplus of the negated score for real, of the score for fake), hinge. The labels only matter to vanilla and
    lsgan; the generator's loss is the "real" one, except with hinge (minus the critic's mean score)."""

    def __init__(self, gan_type: str = "vanilla", real_label_val: float = 1.0, fake_label_val: float = 0.0):
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"ganloss.gan_type: {gan_type!r} is not one of {', '.join(GAN_TYPES)}")
        self.gan_type = gan_type
        self.real_label_val, self.fake_label_val = real_label_val, fake_label_val

    def forward(self, logits: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        if self.gan_type == "hinge":
            if not is_disc:  # the generator simply maximises the critic's score
                return -logits.mean()
            return F.relu(1 - logits).mean() if target_is_real else F.relu(1 + logits).mean()
        if self.gan_type == "wgan":
            return -logits.mean() if target_is_real else logits.mean()
        if self.gan_type == "wgan_softplus":
            return F.softplus(-logits).mean() if target_is_real else F.softplus(logits).mean()
        target = torch.full_like(logits, self.real_label_val if target_is_real else self.fake_label_val)
        if self.gan_type == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


LOSSES.register("ganloss")(GANLoss)  # registered apart: type checkers cannot subclass a class the registry decorated


class MultiScaleGANLoss(GANLoss):
    """`ganloss` over a multi-scale discriminator's outputs: a list of logit maps (one per scale; an entry that is
    itself a list, a scale's intermediate features, counts by its last element, the logits), each scored as
    `ganloss` and averaged. A single tensor is scored as `ganloss` does. traiNNer-redux's `multiscaleganloss`, whose
    list branch adds into an integer tensor and so fails; the average here is what it means to compute."""

    def forward(self, logits: torch.Tensor | list, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        if not isinstance(logits, list):
            return super().forward(logits, target_is_real, is_disc)
        if not logits:
            raise ValueError("multiscaleganloss: the discriminator returned an empty list")
        scales = [scale[-1] if isinstance(scale, list) else scale for scale in logits]
        return torch.stack([GANLoss.forward(self, scale, target_is_real, is_disc) for scale in scales]).mean()


LOSSES.register("multiscaleganloss")(MultiScaleGANLoss)

GAN_LOSSES = GAN_LOSS_TYPES  # the adversarial losses: called with D's logits, and they make a stage train D
