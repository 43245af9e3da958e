"""Losses on the features of pretrained networks: perceptual (VGG19), DISTS, structure/texture."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components import perceptual
from srcluster.components.losses.base import ELEMENTWISE, LOSSES, MultiTermLoss, full_precision
from srcluster.components.losses.images import LUMA, luma, sobel
from srcluster.components.losses.ssim import weighted_ms_ssim

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


class PerceptualLoss(nn.Module):
    """Distance between VGG19 features of SR and HR, summed over `layer_weights` (layer name -> weight).

    `criterion` is traiNNer-redux's: "l1", "l2" or "charbonnier" compare features point by point; "pd" and "fd"
    compare feature distributions (times `w_lambda`); "pd+l1" and "fd+l1" use L1 on conv* layers and the
    distribution distance on relu* layers. Without `layer_weights` the layers follow the criterion (conv1_2..conv5_4
    for point-wise, relu1_2..relu5_4 for distributions, both for the mixes).

    `alpha` (one value per layer, in VGG19's order, as traiNNer-redux) blends the two per layer:
    (1 - alpha) * point-wise + alpha * w_lambda * distribution; its default is 0 on conv* layers and 1 elsewhere.
    `clip_min` is a floor on the total.

    VGG19 weights are torchvision's `vgg19-dcbb9e9d.pth`, read from `vgg_weights_path`, else found, staged or
    downloaded by `components.hub.locate`. `use_input_norm` applies ImageNet's mean/std first. Computed in float32
    under any autocast (`perceptualfp16loss` computes in the autocast's dtype).
    """

    loss_type = "perceptualloss"

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        criterion: str = "charbonnier",
        w_lambda: float = 0.01,
        alpha: list[float] | None = None,
        clip_min: float = 0,
        use_input_norm: bool = True,
        vgg_weights_path: str | None = None,
        num_proj_fd: int = 256,
        phase_weight_fd: float = 1.0,
        stride_fd: int = 1,
    ):
        super().__init__()
        key = self.loss_type
        if criterion not in PERCEPTUAL_CRITERIA:
            raise ValueError(f"{key}.criterion: {criterion!r} is not one of {', '.join(PERCEPTUAL_CRITERIA)}")
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
                f"{key}.layer_weights: unknown VGG19 layer {unknown[0]!r} "
                "(layers are named like conv1_2, relu3_4, pool5)"
            )
        self.layer_weights = dict(layer_weights)
        self.w_lambda, self.clip_min = w_lambda, clip_min
        self.pointwise = ELEMENTWISE[pointwise] if pointwise else None
        self.alpha = self._alpha_by_layer(alpha, pointwise, distribution, key)
        # Without alpha: in a mix, conv* layers take the point-wise term and every other layer the distribution term.
        if self.alpha is None:
            self.distribution_layers = {
                name for name in self.layer_weights if distribution and not (mixed and name.startswith("conv"))
            }
        else:
            self.distribution_layers = {name for name, a in self.alpha.items() if a > 0}
        self.vgg = perceptual.VGGFeatures(
            list(self.layer_weights), use_input_norm=use_input_norm, weights_path=vgg_weights_path
        )
        self.fd = None
        if distribution == "fd":
            channels = {name: perceptual.vgg19_channels(name) for name in self.distribution_layers}
            self.fd = FourierDistance(channels, num_proj_fd, phase_weight_fd, stride_fd)

    def _alpha_by_layer(
        self, alpha: list[float] | None, pointwise: str | None, distribution: str | None, key: str
    ) -> dict[str, float] | None:
        if alpha is None:
            return None
        ordered = sorted(self.layer_weights, key=perceptual.VGG19_LAYERS.index)  # traiNNer-redux's stage order
        if len(alpha) != len(ordered):
            raise ValueError(f"{key}.alpha: {len(alpha)} values for {len(ordered)} layers ({', '.join(ordered)})")
        if any(a < 1 for a in alpha) and pointwise is None:
            raise ValueError(f"{key}.alpha: values below 1 need a point-wise criterion (l1, charbonnier, pd+l1, fd+l1)")
        if any(a > 0 for a in alpha) and distribution is None:
            raise ValueError(f"{key}.alpha: values above 0 need a distribution criterion (pd, fd, pd+l1, fd+l1)")
        return dict(zip(ordered, alpha, strict=True))

    def _distribution(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        per_image = self.fd(a, b, name) if self.fd is not None else pd_distance(a, b)
        return per_image.mean() * self.w_lambda

    def _distance(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            blend = self.alpha[name]
            terms = []
            if blend < 1:
                assert self.pointwise is not None  # _alpha_by_layer checked it
                terms.append(self.pointwise(a, b).mean() * (1 - blend))
            if blend > 0:
                terms.append(self._distribution(name, a, b) * blend)
            return torch.stack(terms).sum()
        if name not in self.distribution_layers:
            assert self.pointwise is not None  # a layer without the distribution term has the point-wise one
            return self.pointwise(a, b).mean()
        return self._distribution(name, a, b)

    def _total(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        sr_features = self.vgg(sr)
        with torch.no_grad():
            gt_features = self.vgg(gt)
        per_layer = [
            self._distance(name, sr_features[name], gt_features[name]) * weight
            for name, weight in self.layer_weights.items()
        ]
        return torch.stack(per_layer).sum().clamp(min=self.clip_min)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            return self._total(sr.float(), gt.float())


LOSSES.register("perceptualloss")(PerceptualLoss)  # registered apart, as mssimloss


@LOSSES.register("perceptualfp16loss")
class PerceptualFP16Loss(PerceptualLoss):
    """traiNNer-redux's perceptual loss without the float32 cast: VGG runs in the training autocast's dtype (faster,
    less exact); same options as `perceptualloss`."""

    loss_type = "perceptualfp16loss"

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self._total(sr, gt)


@LOSSES.register("distsloss")
class DISTSLoss(nn.Module):
    """1 - DISTS similarity (lower is closer), with the DISTS network of srcluster.components.perceptual; computed in
    float32 under any autocast."""

    def __init__(self, vgg_weights_path: str | None = None, dists_weights_path: str | None = None):
        super().__init__()
        self.net = perceptual.DISTS(vgg_weights_path=vgg_weights_path, weights_path=dists_weights_path)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            return self.net(sr.float(), gt.float()).mean()


class StructureTextureLoss(MultiTermLoss):
    """Structure where the HR has edges, texture elsewhere (traiNNer-redux's `structuretextureloss`). An edge weight
    w_s = sigmoid(structure_k * (|Sobel(luma(HR))| - structure_t)) (Sobel / 4, 0.299/0.587/0.114 luma) and a texture
    weight 1 - w_s + sigmoid(-structure_k * structure_t); "structure" is `pixel_weight` * (1 - MS-SSIM weighted by
    w_s, on the luma like `mssimloss`), "texture" is `perceptual_weight` * the sum over `layer_weights` of the
    channel-mean L1 between VGG19 features, weighted by the resized texture weight. `texture_k`/`texture_t` are
    accepted as traiNNer-redux accepts them (it does not use them either). Computed in float32."""

    def __init__(
        self,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        layer_weights: dict[str, float] | None = None,
        structure_k: float = 10.0,
        structure_t: float = 0.1,
        texture_k: float = 10.0,
        texture_t: float = 0.1,
        test_y_channel: bool = True,
        color_space: str = "yiq",
        include_luminance: bool = False,
        vgg_weights_path: str | None = None,
    ):
        super().__init__()
        if color_space not in LUMA:
            raise ValueError(f"structuretextureloss.color_space: {color_space!r} is not one of {', '.join(LUMA)}")
        self.pixel_weight, self.perceptual_weight = pixel_weight, perceptual_weight
        self.structure_k, self.structure_t = structure_k, structure_t
        self.texture_k, self.texture_t = texture_k, texture_t
        self.test_y_channel, self.color_space, self.include_luminance = test_y_channel, color_space, include_luminance
        self.layer_weights = dict(layer_weights if layer_weights is not None else CONV_LAYER_WEIGHTS)
        unknown = [name for name in self.layer_weights if name not in perceptual.VGG19_LAYERS]
        if unknown:
            raise ValueError(f"structuretextureloss.layer_weights: unknown VGG19 layer {unknown[0]!r}")
        self.vgg = perceptual.VGGFeatures(list(self.layer_weights), weights_path=vgg_weights_path)

    def edge_weights(self, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(structure weight, texture weight) of the HR, each (B, 1, H, W)."""
        gradient = sobel(luma(gt, "yiq")) / 4
        magnitude = torch.sqrt((gradient**2).sum(1, keepdim=True) + 1e-8)
        structure = torch.sigmoid(self.structure_k * (magnitude - self.structure_t))
        floor = 1 / (1 + math.exp(self.structure_k * self.structure_t))
        return structure, 1 - structure + floor

    def _luma(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1)
        return luma(x, self.color_space) if self.test_y_channel and x.shape[1] == 3 else x

    def components(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        with full_precision(sr):
            sr, gt = sr.float(), gt.float().detach()
            w_structure, w_texture = self.edge_weights(gt)
            score = weighted_ms_ssim(self._luma(sr), self._luma(gt), w_structure, self.include_luminance)
            sr_features = self.vgg(sr)
            with torch.no_grad():
                gt_features = self.vgg(gt)
            texture = []
            for name, weight in self.layer_weights.items():
                diff = (sr_features[name] - gt_features[name]).abs().mean(dim=1, keepdim=True)
                w = F.interpolate(w_texture, size=diff.shape[-2:], mode="bilinear", align_corners=False)
                texture.append(weight * (w * diff).mean())
            return {
                "structure": self.pixel_weight * (1 - score.mean()),
                "texture": self.perceptual_weight * torch.stack(texture).sum(),
            }


LOSSES.register("structuretextureloss")(StructureTextureLoss)  # registered apart, as mssimloss
