"""Losses computed directly on the pixels: Charbonnier/L1/MSE, PSNR, cosine, colour, luma, downscaled, Sobel edges,
gradient variance, NCC, LDL and BCE+Dice."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components.losses.base import LOSSES, charbonnier, criterion_mean, full_precision, reducer
from srcluster.components.losses.images import cielab_lightness, luma, sobel, ycbcr


@LOSSES.register("charbonnierloss")
class CharbonnierLoss(nn.Module):
    """sqrt((x - y)^2 + eps): L1 that stays differentiable at zero; traiNNer-redux's fidelity loss."""

    def __init__(self, eps: float = 1e-12, reduction: str = "mean"):
        super().__init__()
        self.eps = eps
        self.reduce = reducer(reduction, "charbonnierloss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.reduce(charbonnier(sr, gt, self.eps))


@LOSSES.register("l1loss")
class L1Loss(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduce = reducer(reduction, "l1loss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.reduce((sr - gt).abs())


@LOSSES.register("mseloss")
class MSELoss(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduce = reducer(reduction, "mseloss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.reduce((sr - gt) ** 2)


@LOSSES.register("bcewithlogitsdiceloss")
class BCEWithLogitsDiceLoss(nn.Module):
    """`weight_bce` * BCE-with-logits + `weight_dice` * (1 - Dice) of sigmoid(output) against the target (averaged
    over its channels when the channel counts differ): traiNNer-redux's loss for mask outputs."""

    def __init__(self, weight_bce: float = 1.0, weight_dice: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.weight_bce, self.weight_dice, self.eps = weight_bce, weight_dice, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != logits.shape[1]:
            target = target.mean(dim=1, keepdim=True)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        probs = torch.sigmoid(logits)
        overlap = 2 * (probs * target).sum(dim=(1, 2, 3))
        total = probs.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + self.eps
        return self.weight_bce * bce + self.weight_dice * (1 - (overlap / total).mean())


@LOSSES.register("psnrloss")
class PSNRLoss(nn.Module):
    """-PSNR in dB, averaged over the images: 10 / ln(10) * mean(ln(MSE + 1e-8)) (negative; lower is better). With
    `to_y`, on the BT.601 luma. traiNNer-redux accepts only reduction "mean"."""

    def __init__(self, reduction: str = "mean", to_y: bool = False):
        super().__init__()
        if reduction != "mean":
            raise ValueError(f"psnrloss.reduction: {reduction!r} is not supported (only 'mean')")
        self.to_y = to_y

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if self.to_y:
            sr, gt = luma(sr, "ycbcr"), luma(gt, "ycbcr")
        mse = ((sr - gt) ** 2).mean(dim=(1, 2, 3))
        return 10 / math.log(10) * torch.log(mse + 1e-8).mean()


@LOSSES.register("cosimloss")
class CosimLoss(nn.Module):
    """cosim_lambda * (1 - mean cosine similarity of each pixel's RGB vectors), on images clamped to [1e-12, 1]."""

    def __init__(self, cosim_lambda: float = 5):
        super().__init__()
        self.cosim_lambda = cosim_lambda

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            sr, gt = sr.float().clamp(1e-12, 1), gt.float().clamp(1e-12, 1)
            return self.cosim_lambda * (1 - F.cosine_similarity(sr, gt, dim=1, eps=1e-20).mean())


@LOSSES.register("sobeledgeloss")
class SobelEdgeLoss(nn.Module):
    """MSE between the Sobel gradients (x and y, normalised by 4, zero-padded) of the two images' luma
    (0.299 R + 0.587 G + 0.114 B)."""

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(sobel(luma(sr, "yiq")) / 4, sobel(luma(gt, "yiq")) / 4)


@LOSSES.register("colorloss")
class ColorLoss(nn.Module):
    """`criterion` between the chroma (Cb, Cr of BT.601 YCbCr) of the two images, each averaged over scale x scale
    blocks first."""

    def __init__(self, criterion: str = "l1", scale: int = 4):
        super().__init__()
        self.criterion = criterion_mean(criterion, "colorloss")
        self.scale = int(scale)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.criterion(*(F.avg_pool2d(ycbcr(x)[:, 1:], self.scale) for x in (sr, gt)))


@LOSSES.register("lumaloss")
class LumaLoss(nn.Module):
    """`criterion` between the CIELAB lightness of the two images (traiNNer-redux's `rgb_to_luma`)."""

    def __init__(self, criterion: str = "l1"):
        super().__init__()
        self.criterion = criterion_mean(criterion, "lumaloss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.criterion(cielab_lightness(sr), cielab_lightness(gt))


@LOSSES.register("averageloss")
class AverageLoss(nn.Module):
    """`criterion` between the two images averaged over scale x scale blocks (the box-filter downscale)."""

    def __init__(self, criterion: str = "l1", scale: int = 4):
        super().__init__()
        self.criterion = criterion_mean(criterion, "averageloss")
        self.scale = int(scale)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.criterion(F.avg_pool2d(sr, self.scale), F.avg_pool2d(gt, self.scale))


@LOSSES.register("bicubicloss")
class BicubicLoss(nn.Module):
    """`criterion` between the two images downscaled by `scale` (torch's antialiased bicubic)."""

    def __init__(self, criterion: str = "l1", scale: int = 4):
        super().__init__()
        self.criterion = criterion_mean(criterion, "bicubicloss")
        self.scale = scale

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=1 / self.scale, mode="bicubic", antialias=True)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.criterion(self._down(sr), self._down(gt))


@LOSSES.register("gradientvarianceloss")
class GradientVarianceLoss(nn.Module):
    """`criterion` between the variances of the Sobel gradients (x and y, of the grayscale image) over
    non-overlapping `patch_size` patches, summed over both directions (Abrahamyan et al. 2022)."""

    def __init__(self, patch_size: int = 16, criterion: str = "charbonnier"):
        super().__init__()
        self.patch_size = patch_size
        self.criterion = criterion_mean(criterion, "gradientvarianceloss")

    def _variances(self, x: torch.Tensor) -> torch.Tensor:
        gray = luma(x, "lhm")  # 0.2989 R + 0.587 G + 0.114 B
        gradients = sobel(gray)  # the sign of the y kernel does not change a variance
        patches = F.unfold(gradients, self.patch_size, stride=self.patch_size)  # (B, 2 * p * p, L)
        b, _, n = patches.shape
        return patches.view(b, 2, -1, n).var(dim=2)  # (B, 2, L), unbiased as torch.var

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        v_sr, v_gt = self._variances(sr), self._variances(gt)
        return self.criterion(v_gt[:, 0], v_sr[:, 0]) + self.criterion(v_gt[:, 1], v_sr[:, 1])


@LOSSES.register("nccloss")
class NCCLoss(nn.Module):
    """(1 - normalised cross-correlation) / 2. As traiNNer-redux, the batch is reshaped to (C, -1) as stored, so each
    "band" is a run of pixels through the batch rather than one colour channel; kept so the loss is redux's."""

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        bands = sr.shape[1]
        a, b = sr.reshape(bands, -1), gt.reshape(bands, -1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        cc = (a * b).sum(1) / torch.sqrt((a**2).sum(1) * (b**2).sum(1))
        return 1 - (cc.mean() + 1) * 0.5


@LOSSES.register("ldlloss")
class LDLLoss(nn.Module):
    """Locally discriminative learning (Liang et al., CVPR 2022): `criterion` between SR and HR, each weighted by an
    artifact map (local variance of the SR residual in a 7x7 window times the residual's global variance ** 0.2),
    zero where the EMA generator's residual is larger than G's. Needs the EMA generator's output (`ema_decay` > 0):
    called as `loss(sr, gt, sr_ema)`."""

    needs_ema = True

    def __init__(self, criterion: str = "l1"):
        super().__init__()
        self.criterion = criterion_mean(criterion, "ldlloss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor, sr_ema: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            sr, gt, sr_ema = sr.float(), gt.float(), sr_ema.float()
            weight = artifact_map(gt, sr, sr_ema)
            return self.criterion(weight * sr, weight * gt)


def artifact_map(gt: torch.Tensor, sr: torch.Tensor, sr_ema: torch.Tensor, window: int = 7) -> torch.Tensor:
    residual = (gt - sr).abs().sum(1, keepdim=True)
    residual_ema = (gt - sr_ema).abs().sum(1, keepdim=True)
    patch_weight = residual.var(dim=(1, 2, 3), keepdim=True) ** (1 / 5)
    pad = (window - 1) // 2
    padded = F.pad(residual, (pad, pad, pad, pad), mode="reflect")
    pixel_weight = padded.unfold(2, window, 1).unfold(3, window, 1).var(dim=(-2, -1))
    return torch.where(residual < residual_ema, 0.0, patch_weight * pixel_weight)
