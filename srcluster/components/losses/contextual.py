"""Contextual loss (Mechrez et al. 2018, https://arxiv.org/abs/1803.02077): compares two images as sets of VGG19
feature vectors, so it tolerates misalignment. traiNNer-redux's `contextualloss`, with its options and defaults."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components import perceptual
from srcluster.components.losses.base import LOSSES, full_precision

DISTANCE_TYPES = ("cosine", "l1", "l2")
CALC_TYPES = ("regular", "bilateral", "symetric")  # traiNNer-redux's spelling of "symmetric"
CONTEXTUAL_LAYER_WEIGHTS = {"conv3_2": 1.0, "conv4_2": 1.0}
SPATIAL_WEIGHT = 0.1  # share of the spatial term in calc_type "bilateral"


def vgg_layer_name(name: str) -> str:
    """A VGG19 layer name as srcluster spells it: redux's contextual loss spells them "conv_3_2" (an underscore in
    the first five characters), srcluster "conv3_2"; both are accepted."""
    head = name[:5]
    return head.replace("_", "") + name[5:] if "_" in head else name


def _pairwise_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C, P) x (N, C, P) -> (N, P, P) squared Euclidean distances, clamped at 0 (the expansion can dip below)."""
    square_a, square_b = (a * a).sum(1), (b * b).sum(1)
    return (square_a.unsqueeze(2) + square_b.unsqueeze(1) - 2 * a.transpose(1, 2) @ b).clamp(min=0)


def _pairwise_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.unsqueeze(3) - b.unsqueeze(2)).abs().sum(1)


def _pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1 - cosine similarity) / 2, both sets centred on the target's mean feature (over the whole batch)."""
    centre = b.mean(dim=(0, 2), keepdim=True)
    a, b = F.normalize(a - centre, dim=1), F.normalize(b - centre, dim=1)
    return ((1 - a.transpose(1, 2) @ b) / 2).clamp(min=0)


PAIRWISE = {"cosine": _pairwise_cosine, "l1": _pairwise_l1, "l2": _pairwise_l2}


def crop_quarters(x: torch.Tensor) -> torch.Tensor:
    """The four quarters of each map stacked along the batch (the middle rounds as Python's round())."""
    h, w = round(x.shape[-2] / 2), round(x.shape[-1] / 2)
    return torch.cat([x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]], dim=0)


def random_positions(x: torch.Tensor, side: int) -> torch.Tensor:
    """side * side positions of the map drawn at random (without replacement), as a side x side map."""
    n, c, h, w = x.shape
    keep = torch.randperm(h * w)[: side * side].to(x.device)
    return x.flatten(2)[:, :, keep].view(n, c, side, side)


class ContextualLoss(nn.Module):
    """-log of the contextual similarity between the SR's and the HR's VGG19 features, summed over `layer_weights`.

    For every HR feature vector, its best match among the SR's vectors (after normalising each distance by the
    smallest one from the same SR vector, Eq. 2, and turning it into an affinity exp((b - d) / band_width), Eq. 3,
    normalised over the HR vectors, Eq. 4); the loss is -log of the mean best match (Eq. 5), averaged over images.

    `distance_type` is the feature distance (cosine, l1, l2); `calc_type` "symetric" averages both directions and
    "bilateral" mixes in 10 % of the same affinity between pixel positions. Maps larger than `max_1d_size`^2 are
    sub-sampled to that many random positions (independently in SR and HR: the loss compares sets, not places);
    `crop_quarter` scores the four quarters of each map as separate images. `z_norm` feeds VGG ImageNet-normalised
    input, otherwise [-1, 1] as traiNNer-redux does; zero padding. `use_vgg: false` compares the pixels themselves.

    traiNNer-redux only keeps layer names spelt "conv_3_2" (it drops "conv3_2", its own default, and then fails in
    its forward); here both spellings name the layer. Computed in float32 under any autocast; VGG19 weights as
    `perceptualloss` (`vgg_weights_path`, else `components.hub`).
    """

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        crop_quarter: bool = False,
        max_1d_size: int = 100,
        distance_type: str = "cosine",
        b: float = 1.0,
        band_width: float = 0.5,
        use_vgg: bool = True,
        net: str = "vgg19",
        calc_type: str = "regular",
        z_norm: bool = False,
        vgg_weights_path: str | None = None,
    ):
        super().__init__()
        if band_width <= 0:
            raise ValueError(f"contextualloss.band_width: {band_width} must be positive")
        if distance_type not in PAIRWISE:
            raise ValueError(f"contextualloss.distance_type: {distance_type!r} is not one of {', '.join(PAIRWISE)}")
        if calc_type not in CALC_TYPES:
            raise ValueError(f"contextualloss.calc_type: {calc_type!r} is not one of {', '.join(CALC_TYPES)}")
        if net != "vgg19":
            raise ValueError(f"contextualloss.net: {net!r} is not supported (only 'vgg19')")
        if max_1d_size < 1:
            raise ValueError(f"contextualloss.max_1d_size: {max_1d_size} is below 1")
        given = CONTEXTUAL_LAYER_WEIGHTS if layer_weights is None else layer_weights
        self.layer_weights = {vgg_layer_name(name): weight for name, weight in given.items()}
        unknown = [name for name in self.layer_weights if name not in perceptual.VGG19_LAYERS]
        if unknown:
            raise ValueError(f"contextualloss.layer_weights: unknown VGG19 layer {unknown[0]!r}")
        if use_vgg and not self.layer_weights:
            raise ValueError("contextualloss.layer_weights: no layer given")
        self.crop_quarter, self.max_1d_size, self.b, self.band_width = crop_quarter, max_1d_size, b, band_width
        self.distance, self.calc_type, self.z_norm = PAIRWISE[distance_type], calc_type, z_norm
        self.vgg = None
        if use_vgg:
            self.vgg = perceptual.VGGFeatures(
                list(self.layer_weights), use_input_norm=False, weights_path=vgg_weights_path
            )
            conv1_1 = self.vgg.body[0]
            assert isinstance(conv1_1, nn.Conv2d)
            conv1_1.padding_mode = "zeros"  # traiNNer-redux's contextual loss keeps VGG's zero padding

    def _vgg_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.z_norm:  # traiNNer-redux maps from [-1, 1] to [0, 1] first, then ImageNet's mean/std
            assert self.vgg is not None
            return ((x + 1) / 2 - self.vgg.mean) / self.vgg.std
        return (x - 0.5) / 0.5

    def _affinity(self, raw: torch.Tensor) -> torch.Tensor:
        """Eq. 2-4 on (N, P_sr, P_hr) distances: relative to each SR vector's nearest, exponentiated, normalised."""
        relative = raw / (raw.min(dim=-1, keepdim=True).values + 1e-5)
        # not softmax: its max-shift turns the underflow of a far-off vector into a finite value, unlike the paper's
        # (and traiNNer-redux's) plain exp / sum
        affinity = torch.exp((self.b - relative) / self.band_width)
        return affinity / affinity.sum(dim=-1, keepdim=True)

    def _one_way(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        affinity = self._affinity(self.distance(sr.flatten(2), gt.flatten(2)))
        best = affinity.max(dim=1).values  # for each HR vector, its best SR match
        return -torch.log(best.mean(dim=1)).mean()

    def _bilateral(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        n, _, h, w = sr.shape
        rows = torch.arange(h, dtype=sr.dtype, device=sr.device) / (h + 1)
        cols = torch.arange(w, dtype=sr.dtype, device=sr.device) / (w + 1)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).flatten(1).expand(n, -1, -1)
        spatial = self._affinity(_pairwise_l2(grid, grid))
        combined = (1 - SPATIAL_WEIGHT) * self._affinity(self.distance(sr.flatten(2), gt.flatten(2)))
        combined = (combined + SPATIAL_WEIGHT * spatial).view(n, h, w, h * w)
        # as traiNNer-redux: the best match along each row of SR positions, then the mean over rows and HR vectors
        best = combined.max(dim=2).values.mean(dim=1)
        return -torch.log(best + 1e-5).mean()

    def _layer(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if self.crop_quarter:
            sr, gt = crop_quarters(sr), crop_quarters(gt)
        if sr.shape[-2] * sr.shape[-1] > self.max_1d_size**2:
            sr, gt = random_positions(sr, self.max_1d_size), random_positions(gt, self.max_1d_size)
        if self.calc_type == "bilateral":
            return self._bilateral(sr, gt)
        if self.calc_type == "symetric":
            return (self._one_way(gt, sr) + self._one_way(sr, gt)) / 2
        return self._one_way(sr, gt)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            sr, gt = sr.float(), gt.float()
            if self.vgg is None:
                return self._layer(sr, gt)
            sr_features = self.vgg(self._vgg_input(sr))
            with torch.no_grad():
                gt_features = self.vgg(self._vgg_input(gt))
            per_layer = [
                self._layer(sr_features[name], gt_features[name]) * weight
                for name, weight in self.layer_weights.items()
            ]
            return torch.stack(per_layer).sum()


LOSSES.register("contextualloss")(ContextualLoss)
