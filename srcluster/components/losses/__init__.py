"""Losses by traiNNer-redux's `train.losses[].type` names. `loss_weight` scales each; weight 0 turns it off.

Pixel losses are called as `loss(sr, gt)` with float (B, 3, H, W) images in [0, 1] and return a scalar. The GAN loss is
called as `loss(logits, target_is_real, is_disc)`. Options are traiNNer-redux's keyword names and defaults.

The registry and shared plumbing live in `base`; each family of losses in its own module, imported here so that every
loss is registered once this package is imported.
"""

from srcluster.components.losses.adists import ADISTSLoss
from srcluster.components.losses.aesop import AESOPLoss, AutoEncoder
from srcluster.components.losses.anime import ANIME_LAYER_WEIGHTS, PerceptualAnimeLoss, PerceptualAnimeTerms
from srcluster.components.losses.base import (
    ELEMENTWISE,
    LOSSES,
    NETWORK_LOSSES,
    REDUCTIONS,
    Criterion,
    MultiTermLoss,
    build_loss,
    charbonnier,
    check_values,
    criterion_mean,
    elementwise,
    full_precision,
    log_label,
    needs_ema,
    reducer,
    weighted_terms,
)
from srcluster.components.losses.contextual import ContextualLoss
from srcluster.components.losses.features import (
    CONV_LAYER_WEIGHTS,
    PERCEPTUAL_CRITERIA,
    RELU_LAYER_WEIGHTS,
    DISTSLoss,
    FourierDistance,
    PerceptualFP16Loss,
    PerceptualLoss,
    StructureTextureLoss,
    pd_distance,
)
from srcluster.components.losses.flip import FLIPLoss
from srcluster.components.losses.frequency import FFLoss, FFTLoss
from srcluster.components.losses.gan import GAN_LOSSES, GAN_TYPES, GANLoss, MultiScaleGANLoss
from srcluster.components.losses.hsluv import HSLuvLoss, rgb_to_hsluv
from srcluster.components.losses.images import LUMA, cielab_lightness, luma, sobel, ycbcr
from srcluster.components.losses.linedistiller import LineDistiller, LineDistillerLoss
from srcluster.components.losses.pixel import (
    AverageLoss,
    BCEWithLogitsDiceLoss,
    BicubicLoss,
    CharbonnierLoss,
    ColorLoss,
    CosimLoss,
    GradientVarianceLoss,
    L1Loss,
    LDLLoss,
    LumaLoss,
    MSELoss,
    NCCLoss,
    PSNRLoss,
    SobelEdgeLoss,
    artifact_map,
)
from srcluster.components.losses.ssim import (
    MS_SSIM_WEIGHTS,
    SSIM_SIGMA,
    SSIM_WINDOW,
    MSSIMLoss,
    MSSSIML1Loss,
    SSIMLoss,
    ms_ssim,
    ssim_and_cs,
    weighted_ms_ssim,
)

__all__ = [
    "ANIME_LAYER_WEIGHTS",
    "CONV_LAYER_WEIGHTS",
    "ELEMENTWISE",
    "GAN_LOSSES",
    "GAN_TYPES",
    "LOSSES",
    "LUMA",
    "MS_SSIM_WEIGHTS",
    "NETWORK_LOSSES",
    "PERCEPTUAL_CRITERIA",
    "REDUCTIONS",
    "RELU_LAYER_WEIGHTS",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "ADISTSLoss",
    "AESOPLoss",
    "AutoEncoder",
    "AverageLoss",
    "BCEWithLogitsDiceLoss",
    "BicubicLoss",
    "CharbonnierLoss",
    "ColorLoss",
    "ContextualLoss",
    "CosimLoss",
    "Criterion",
    "DISTSLoss",
    "FFLoss",
    "FFTLoss",
    "FLIPLoss",
    "FourierDistance",
    "GANLoss",
    "GradientVarianceLoss",
    "HSLuvLoss",
    "L1Loss",
    "LDLLoss",
    "LineDistiller",
    "LineDistillerLoss",
    "LumaLoss",
    "MSELoss",
    "MSSIMLoss",
    "MSSSIML1Loss",
    "MultiScaleGANLoss",
    "MultiTermLoss",
    "NCCLoss",
    "PSNRLoss",
    "PerceptualAnimeLoss",
    "PerceptualAnimeTerms",
    "PerceptualFP16Loss",
    "PerceptualLoss",
    "SSIMLoss",
    "SobelEdgeLoss",
    "StructureTextureLoss",
    "artifact_map",
    "build_loss",
    "charbonnier",
    "check_values",
    "cielab_lightness",
    "criterion_mean",
    "elementwise",
    "full_precision",
    "log_label",
    "luma",
    "ms_ssim",
    "needs_ema",
    "pd_distance",
    "reducer",
    "rgb_to_hsluv",
    "sobel",
    "ssim_and_cs",
    "weighted_ms_ssim",
    "weighted_terms",
    "ycbcr",
]
