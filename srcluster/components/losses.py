"""Losses by traiNNer-redux's `train.losses[].type` names. `loss_weight` scales each; weight 0 turns it off.

Pixel losses are called as `loss(sr, gt)` with float (B, 3, H, W) images in [0, 1] and return a scalar. The GAN loss is
called as `loss(logits, target_is_real, is_disc)`. Options are traiNNer-redux's keyword names and defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components import perceptual
from srcluster.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # elementwise, no reduction


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + eps)


ELEMENTWISE: dict[str, Criterion] = {
    "l1": lambda a, b: (a - b).abs(),
    "l2": lambda a, b: (a - b) ** 2,
    "charbonnier": charbonnier,
}


def elementwise(name: str, key: str) -> Criterion:
    if name not in ELEMENTWISE:
        raise ValueError(f"{key}: criterion {name!r} is not one of {', '.join(ELEMENTWISE)}")
    return ELEMENTWISE[name]


def full_precision(x: torch.Tensor):
    """Inside the loop's autocast, compute this loss in float32: SSIM statistics and colour conversions lose too much
    in bfloat16/float16."""
    return torch.autocast(x.device.type, enabled=False)


@LOSSES.register("charbonnierloss")
class CharbonnierLoss(nn.Module):
    """sqrt((x - y)^2 + eps): L1 that stays differentiable at zero; traiNNer-redux's fidelity loss."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return charbonnier(sr, gt, self.eps).mean()


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


# --- MS-SSIM ----------------------------------------------------------------------------------------------------------

# Luma of each colour space traiNNer-redux offers for `color_space`, on [0, 1] RGB: (weights, offset).
LUMA: dict[str, tuple[tuple[float, float, float], float]] = {
    "yiq": ((0.299, 0.587, 0.114), 0.0),
    "ycbcr": ((65.481 / 255, 128.553 / 255, 24.966 / 255), 16 / 255),  # BT.601 studio swing
    "lhm": ((0.2989, 0.587, 0.114), 0.0),
}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def luma(x: torch.Tensor, color_space: str) -> torch.Tensor:
    weights, offset = LUMA[color_space]
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) + offset


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # MATLAB's fspecial('gaussian', 11, 1.5) is the outer product of this normalised 1-D window with itself.
    r = (SSIM_WINDOW - 1) // 2
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gaussian filter per channel: 'valid' (no padding) as MATLAB's SSIM, or zero-padded 'same' once the image is
    smaller than the window (the coarse MS-SSIM scales of a training crop)."""
    c = x.shape[1]
    pad = 0 if min(x.shape[-2:]) >= SSIM_WINDOW else SSIM_WINDOW // 2
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(pad, 0), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, pad), groups=c)


def ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, include_luminance: bool, downsample: bool, data_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (SSIM, contrast-structure) means, shape (B,) each, in pyiqa's formulation that traiNNer-redux uses:
    the contrast-structure map is clamped at 0, and luminance only enters when `include_luminance`."""
    if downsample:  # the official MATLAB code averages large images down to about 256 px first
        f = max(1, round(min(x.shape[-2:]) / 256))
        if f > 1:
            x, y = F.avg_pool2d(x, f), F.avg_pool2d(y, f)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian_window(x.dtype, x.device)
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    var_x = _filter(x * x, g) - mu_x**2
    var_y = _filter(y * y, g) - mu_y**2
    cov = _filter(x * y, g) - mu_x * mu_y
    cs_map = F.relu((2 * cov + c2) / (var_x + var_y + c2))
    ssim_map = cs_map * (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) if include_luminance else cs_map
    return ssim_map.mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ms_ssim(
    x: torch.Tensor, y: torch.Tensor, *, is_prod: bool = True, include_luminance: bool = False, downsample: bool = False
) -> torch.Tensor:
    """Per-image multi-scale SSIM of images in [0, 1], shape (B,): contrast-structure at the 4 finer scales, SSIM at
    the coarsest, combined as a weighted product (`is_prod`) or a normalised weighted sum."""
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    cs_levels = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim_val, cs = ssim_and_cs(x, y, include_luminance, downsample)
        cs_levels.append(cs)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            pad = (x.shape[-2] % 2, x.shape[-1] % 2)  # odd sizes keep their last row/column
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    cs = torch.stack(cs_levels[:-1])  # (4, B)
    if is_prod:
        # x ** w has an infinite gradient at 0: keep the (clamped-at-0) terms a hair above it
        return (cs.clamp(min=1e-12) ** weights[:-1, None]).prod(dim=0) * ssim_val.clamp(min=1e-12) ** weights[-1]
    w = weights / weights.sum()
    return (cs * w[:-1, None]).sum(dim=0) + ssim_val * w[-1]


@LOSSES.register("mssimloss")
class MSSIMLoss(nn.Module):
    """1 - MS-SSIM, traiNNer-redux's structural loss (its `mssimloss`, after pyiqa's MS-SSIM).

    By default on the luma of YIQ (`test_y_channel`, `color_space`), without the luminance term, as a weighted
    product over 5 scales; inputs are clamped to [0, 1] first. `channels` is accepted for traiNNer-redux configs (the
    window follows the input's channels).
    """

    def __init__(
        self,
        channels: int = 3,
        downsample: bool = False,
        test_y_channel: bool = True,
        is_prod: bool = True,
        color_space: str = "yiq",
        include_luminance: bool = False,
    ):
        super().__init__()
        if color_space not in LUMA:
            raise ValueError(f"mssimloss.color_space: {color_space!r} is not one of {', '.join(LUMA)}")
        self.channels, self.downsample, self.test_y_channel = channels, downsample, test_y_channel
        self.is_prod, self.color_space, self.include_luminance = is_prod, color_space, include_luminance

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0, 1)
        return luma(x, self.color_space) if self.test_y_channel and x.shape[1] == 3 else x

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            score = ms_ssim(
                self._prepare(sr),
                self._prepare(gt),
                is_prod=self.is_prod,
                include_luminance=self.include_luminance,
                downsample=self.downsample,
            )
        return 1 - score.mean().clamp(0, 1)


# --- HSLuv ------------------------------------------------------------------------------------------------------------

# sRGB (D65) <-> CIE XYZ and the CIELUV constants of the HSLuv reference implementation (hsluv.org, v4+).
_XYZ_TO_RGB = (
    (3.240969941904521, -1.537383177570093, -0.498610760293),
    (-0.96924363628087, 1.87596750150772, 0.041555057407175),
    (0.055630079696993, -0.20397695888897, 1.056971514242878),
)
_RGB_TO_XYZ = (
    (0.41239079926595, 0.35758433938387, 0.18048078840183),
    (0.21263900587151, 0.71516867876775, 0.072192315360733),
    (0.019330818715591, 0.11919477979462, 0.95053215224966),
)
_REF_U, _REF_V = 0.19783000664283, 0.46831999493879
_KAPPA, _EPSILON = 903.2962962, 0.0088564516


def _max_chroma(lightness: torch.Tensor, hue_rad: torch.Tensor) -> torch.Tensor:
    """The largest CIELUV chroma that stays inside sRGB at this lightness and hue: the nearest of the six gamut
    boundary lines (each RGB channel at 0 and at 1) along the ray at `hue_rad`."""
    sub1 = (lightness + 16) ** 3 / 1560896
    sub2 = torch.where(sub1 > _EPSILON, sub1, lightness / _KAPPA)
    sin, cos = torch.sin(hue_rad), torch.cos(hue_rad)
    best = torch.full_like(lightness, math.inf)
    for m1, m2, m3 in _XYZ_TO_RGB:
        for t in (0, 1):
            top1 = (284517 * m1 - 94839 * m3) * sub2
            top2 = (838422 * m3 + 769860 * m2 + 731718 * m1) * lightness * sub2 - 769860 * t * lightness
            bottom = (632260 * m3 - 126452 * m2) * sub2 + 126452 * t
            slope, intercept = top1 / bottom, top2 / bottom
            denom = sin - slope * cos
            denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
            length = intercept / denom
            best = torch.minimum(best, torch.where(length >= 0, length, torch.full_like(length, math.inf)))
    return best


def rgb_to_hsluv(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> HSLuv (hue 0..360, saturation 0..100, lightness 0..100), differentiable.

    Grays get hue 0 and saturation 0, black and white saturation 0, as in the reference implementation. Every branch
    is computed on safe inputs so no NaN gradient leaks through `torch.where`.
    """
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    x, y, z = torch.einsum("ij,bjhw->bihw", to_xyz, linear).unbind(1)
    lightness = torch.where(y <= _EPSILON, y * _KAPPA, 116 * y.clamp(min=_EPSILON) ** (1 / 3) - 16)
    divider = (x + 15 * y + 3 * z).clamp(min=1e-12)
    u = 13 * lightness * (4 * x / divider - _REF_U)
    v = 13 * lightness * (9 * y / divider - _REF_V)
    gray = u**2 + v**2 < 1e-16
    chroma = torch.sqrt((u**2 + v**2).clamp(min=1e-16))
    hue_rad = torch.atan2(torch.where(gray, 0.0, v), torch.where(gray, 1.0, u))
    hue = torch.remainder(torch.rad2deg(hue_rad), 360)
    extreme = (lightness > 99.9999999) | (lightness < 1e-8)
    max_chroma = _max_chroma(lightness.clamp(1e-8, 99.9999999), hue_rad)
    saturation = torch.where(extreme | gray, 0.0, chroma / max_chroma.clamp(min=1e-8) * 100)
    return torch.stack([hue, saturation, lightness.clamp(0, 100)], dim=1)


@LOSSES.register("hsluvloss")
class HSLuvLoss(nn.Module):
    """Hue, saturation and lightness differences in HSLuv, each normalised to [0, 1] (traiNNer-redux's `hsluvloss`).

    Hue is the shorter way round the circle, times 2; it counts 0 between two grays and between two near-black or two
    near-white pixels, and the larger saturation between a gray and a colour. Saturation differences are weighted by
    how far each lightness is from black/white (saturation means little there). `criterion` applies to saturation
    and lightness. Where traiNNer-redux's white test compares against `eps - 1` (always true), this uses both-white,
    which is what its comment describes. Its `blur_strength` option is not supported.
    """

    def __init__(
        self,
        hue_weight: float = 1 / 3,
        saturation_weight: float = 1 / 3,
        lightness_weight: float = 1 / 3,
        criterion: str = "l1",
        downscale_factor: int = 1,
    ):
        super().__init__()
        self.weights = (hue_weight, saturation_weight, lightness_weight)
        self.criterion = elementwise(criterion, "hsluvloss.criterion")
        self.downscale_factor = downscale_factor

    def _hsl(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.downscale_factor > 1:
            x = F.interpolate(x, scale_factor=1 / self.downscale_factor, mode="bicubic", antialias=True).clamp(0, 1)
        return rgb_to_hsluv(x) / torch.tensor([360.0, 100.0, 100.0], device=x.device).view(1, 3, 1, 1)

    def components(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        with full_precision(sr):
            (h1, s1, l1), (h2, s2, l2) = self._hsl(sr).unbind(1), self._hsl(gt).unbind(1)
            eps = 0.1
            d = (h1 - h2).abs()
            hue = torch.minimum(d, 1 - d) * 2
            gray1, gray2 = s1 < eps, s2 < eps
            hue = torch.where(gray1 & gray2, 0.0, hue)
            hue = torch.where(gray1 ^ gray2, torch.maximum(s1, s2), hue)
            hue = torch.where((l1 < eps) & (l2 < eps), 0.0, hue)
            hue = torch.where((l1 > 1 - eps) & (l2 > 1 - eps), 0.0, hue)
            # 1 at mid lightness, 0 at black or white, summed over both images
            weight = torch.minimum(l1, 1 - l1).clamp(0, 0.5) + torch.minimum(l2, 1 - l2).clamp(0, 0.5)
            hue_w, sat_w, light_w = self.weights
            return {
                "hue": hue.mean() * hue_w,
                "saturation": (self.criterion(s1, s2) * weight).mean() * sat_w,
                "lightness": self.criterion(l1, l2).mean() * light_w,
            }

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.components(sr, gt).values())).sum()


# --- perceptual -------------------------------------------------------------------------------------------------------

# traiNNer-redux's default layers: the deep layers carry texture, the shallow ones are damped to 0.1.
CONV_LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
RELU_LAYER_WEIGHTS = {"relu1_2": 0.1, "relu2_2": 0.1, "relu3_4": 1.0, "relu4_4": 1.0, "relu5_4": 1.0}
# criterion -> (point-wise criterion, distribution distance)
PERCEPTUAL_CRITERIA: dict[str, tuple[str | None, str | None]] = {
    "l1": ("l1", None),
    "l2": ("l2", None),
    "charbonnier": ("charbonnier", None),
    "pd": (None, "pd"),
    "fd": (None, "fd"),
    "pd+l1": ("l1", "pd"),
    "fd+l1": ("l1", "fd"),
}


def pd_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image distance between the spatial distributions of each channel (traiNNer-redux's "pd"): each channel is
    normalised to sum 1 over its pixels, and the L1 distance of the cumulative sums is summed, then averaged over
    channels."""
    a = a / (a.sum(dim=(2, 3), keepdim=True) + 1e-14)
    b = b / (b.sum(dim=(2, 3), keepdim=True) + 1e-14)
    cdf = (a.flatten(2).cumsum(-1) - b.flatten(2).cumsum(-1)).abs().sum(-1)
    return cdf.mean(dim=1)


class FourierDistance(nn.Module):
    """traiNNer-redux's "fd": sliced Wasserstein distance between the Fourier amplitude (and phase, times
    `phase_weight`) of two feature maps, along `num_proj` fixed random 5x5 projections per layer."""

    def __init__(self, channels: Mapping[str, int], num_proj: int = 256, phase_weight: float = 1.0, stride: int = 1):
        super().__init__()
        self.phase_weight, self.stride = phase_weight, stride
        generator = torch.Generator().manual_seed(0)  # the same projections on every rank and every run
        for name, c in channels.items():
            rand = torch.randn(num_proj, c, 5, 5, generator=generator)
            self.register_buffer(f"proj_{name}", rand / rand.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    def _sliced(self, a: torch.Tensor, b: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        # deep layers of a small crop can be smaller than the 5x5 projections: zero-pad them up to it
        short_h, short_w = max(0, proj.shape[-2] - a.shape[-2]), max(0, proj.shape[-1] - a.shape[-1])
        if short_h or short_w:
            a, b = (F.pad(t, (0, short_w, 0, short_h)) for t in (a, b))
        pa = F.conv2d(a, proj, stride=self.stride).flatten(2).sort(dim=-1).values
        pb = F.conv2d(b, proj, stride=self.stride).flatten(2).sort(dim=-1).values
        return (pa - pb).abs().mean(dim=(1, 2))

    def forward(self, a: torch.Tensor, b: torch.Tensor, layer: str) -> torch.Tensor:
        proj = getattr(self, f"proj_{layer}")
        fa, fb = torch.fft.fftn(a.float(), dim=(-2, -1)), torch.fft.fftn(b.float(), dim=(-2, -1))
        amplitude = self._sliced(fa.abs(), fb.abs(), proj)
        phase = self._sliced(torch.angle(fa), torch.angle(fb), proj)
        return amplitude + phase * self.phase_weight


@LOSSES.register("perceptualloss")
class PerceptualLoss(nn.Module):
    """Distance between VGG19 features of SR and HR, summed over `layer_weights` (layer name -> weight).

    `criterion` is traiNNer-redux's: "l1", "l2" or "charbonnier" compare features point by point; "pd" and "fd"
    compare feature distributions (times `w_lambda`); "pd+l1" and "fd+l1" use L1 on conv* layers and the
    distribution distance on relu* layers. Without `layer_weights` the layers follow the criterion (conv1_2..conv5_4
    for point-wise, relu1_2..relu5_4 for distributions, both for the mixes).

    VGG19 weights are torchvision's `vgg19-dcbb9e9d.pth`, read from `vgg_weights_path` or torch's hub cache
    ($TORCH_HOME/hub/checkpoints); nothing is downloaded. `use_input_norm` applies ImageNet's mean/std first.
    """

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        criterion: str = "charbonnier",
        w_lambda: float = 0.01,
        use_input_norm: bool = True,
        vgg_weights_path: str | None = None,
        num_proj_fd: int = 256,
        phase_weight_fd: float = 1.0,
        stride_fd: int = 1,
    ):
        super().__init__()
        if criterion not in PERCEPTUAL_CRITERIA:
            raise ValueError(f"perceptualloss.criterion: {criterion!r} is not one of {', '.join(PERCEPTUAL_CRITERIA)}")
        pointwise, distribution = PERCEPTUAL_CRITERIA[criterion]
        mixed = bool(pointwise and distribution)
        if layer_weights is None:
            layer_weights = {
                **(CONV_LAYER_WEIGHTS if pointwise else {}),
                **(RELU_LAYER_WEIGHTS if distribution else {}),
            }
        unknown = [name for name in layer_weights if name not in perceptual.VGG19_LAYERS]
        if unknown:
            raise ValueError(
                f"perceptualloss.layer_weights: unknown VGG19 layer {unknown[0]!r} "
                f"(layers are named like conv1_2, relu3_4, pool5)"
            )
        self.layer_weights = dict(layer_weights)
        self.w_lambda = w_lambda
        self.pointwise = ELEMENTWISE[pointwise] if pointwise else None
        # In a mix, conv* layers take the point-wise term and every other layer the distribution term.
        self.distribution_layers = {
            name for name in self.layer_weights if distribution and not (mixed and name.startswith("conv"))
        }
        self.vgg = perceptual.VGGFeatures(
            list(self.layer_weights), use_input_norm=use_input_norm, weights_path=vgg_weights_path
        )
        self.fd = None
        if distribution == "fd":
            channels = {name: perceptual.vgg19_channels(name) for name in self.distribution_layers}
            self.fd = FourierDistance(channels, num_proj_fd, phase_weight_fd, stride_fd)

    def _distance(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if name not in self.distribution_layers:
            assert self.pointwise is not None  # a layer without the distribution term has the point-wise one
            return self.pointwise(a, b).mean()
        per_image = self.fd(a, b, name) if self.fd is not None else pd_distance(a, b)
        return per_image.mean() * self.w_lambda

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        sr_features = self.vgg(sr)
        with torch.no_grad():
            gt_features = self.vgg(gt)
        per_layer = [
            self._distance(name, sr_features[name], gt_features[name]) * weight
            for name, weight in self.layer_weights.items()
        ]
        return torch.stack(per_layer).sum()


@LOSSES.register("distsloss")
class DISTSLoss(nn.Module):
    """1 - DISTS similarity (lower is closer), with the DISTS network of srcluster.components.perceptual."""

    def __init__(self, vgg_weights_path: str | None = None, dists_weights_path: str | None = None):
        super().__init__()
        self.net = perceptual.DISTS(vgg_weights_path=vgg_weights_path, weights_path=dists_weights_path)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.net(sr, gt).mean()


def build_loss(name: str, **options) -> nn.Module:
    return LOSSES.build(name, **options)
