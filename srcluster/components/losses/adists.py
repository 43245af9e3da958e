"""A-DISTS (Ding et al. 2021, https://github.com/dingkeyan93/A-DISTS): DISTS made local and adaptive, as
traiNNer-redux's `adistsloss`. It has no learned weights of its own: torchvision's VGG16 (`components.hub` "vgg16")."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components import perceptual
from srcluster.components.losses.base import LOSSES, full_precision

STAGE_TAPS = (3, 8, 15, 22, 29)  # VGG16 `features` indices whose outputs are the five stages (relu1_2 ... relu5_3)
CHANNELS = (3, 64, 128, 256, 512, 512)  # the image itself, then the five stages
EPS = 1e-12


def gaussian_window(size: int, sigma: float, channels: int) -> torch.Tensor:
    """(channels, 1, size, size): the normalised 2-D Gaussian, one copy per channel for a depthwise convolution."""
    g = torch.tensor([math.exp(-((x - size // 2) ** 2) / (2 * sigma**2)) for x in range(size)])
    g = g / g.sum()  # float32 throughout, as traiNNer-redux builds it
    return torch.outer(g, g).expand(channels, 1, size, size).contiguous()


def spatial_unit(x: torch.Tensor) -> torch.Tensor:
    """Each map divided by its L2 norm over its pixels (F.normalize over dims 2 and 3)."""
    return x / torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).clamp(min=EPS)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Each map rescaled to [0, 1] over its pixels."""
    low = x.flatten(2).min(dim=-1).values[..., None, None]
    high = x.flatten(2).max(dim=-1).values[..., None, None]
    return (x - low) / (high - low + EPS)


class ADISTSLoss(nn.Module):
    """1 - A-DISTS between SR and HR, averaged over images (lower is closer).

    Per stage (the image, then VGG16's five stages with L2 pooling as DISTS), local means, variances and covariance in
    a Gaussian window (`window_size`, sigma window_size // 3, no padding) give a texture (mean) and a structure
    (correlation) similarity of the spatially normalised features. A map smaller than the window uses its global
    statistics; so does one exactly the window's size when it sets the texture probability (traiNNer-redux's loss is
    NaN there, e.g. for 84 or 168 px crops). The two similarities are mixed per position by the probability that the
    SR is texture there (from the dispersion index of its features, coarse stages gating finer ones), and weighted
    per channel by the entropy of the SR's features (clamped to mean +- half a standard deviation). As traiNNer-redux,
    those weights come from the SR and carry gradients. `resize_input` is accepted for traiNNer-redux configs (it does
    not act on it either). Float32 under any autocast. VGG16 weights from `vgg_weights_path`, else `components.hub`.
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, window_size: int = 21, resize_input: bool = False, vgg_weights_path: str | None = None):
        super().__init__()
        if window_size < 3 or window_size % 3:
            raise ValueError(f"adistsloss.window_size: {window_size} must be a positive multiple of 3")
        self.window_size, self.resize_input = window_size, resize_input
        features = perceptual.pretrained_features("vgg16", STAGE_TAPS[-1] + 1, vgg_weights_path, "vgg_weights_path")
        channels = 3
        for i in range(len(features)):
            module = features[i]
            if isinstance(module, nn.Conv2d):
                channels = module.out_channels
            elif isinstance(module, nn.MaxPool2d):  # pools what the conv before it made
                features[i] = perceptual.L2Pooling(channels)
        self.features = features.eval().requires_grad_(False)
        for k, c in enumerate(CHANNELS):
            self.register_buffer(f"window{k}", gaussian_window(window_size, window_size // 3, c), persistent=False)
        self.register_buffer("mean", torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(perceptual.IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ADISTSLoss:
        return super().train(False)  # a loss network

    def _window(self, k: int) -> torch.Tensor:
        return getattr(self, f"window{k}")

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [x], (x - self.mean) / self.std
        for i, module in enumerate(self.features):
            h = module(h)
            if i in STAGE_TAPS:
                out.append(h)
        return out

    def _fits(self, x: torch.Tensor) -> bool:
        return min(x.shape[-2:]) >= self.window_size

    def _local(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return F.conv2d(x, self._window(k), groups=x.shape[1])

    def _texture_probability(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage, (B, 1, h, w): how likely each position is texture, coarsest stage first multiplied in."""
        gate = torch.ones_like(stages[0][:, :1])
        out = []
        for k in range(len(stages) - 1, -1, -1):
            x = stages[k]
            # a map exactly the window's size leaves one windowed value, whose standard deviation is NaN (and so was
            # traiNNer-redux's loss, e.g. for 84 or 168 px crops): such a map takes the global branch, as a smaller one
            if self._fits(x) and max(x.shape[-2:]) > self.window_size:
                mean = self._local(x, k)
                var = self._local(x * x, k) - mean**2
                dispersion = (var / (mean + EPS)).mean(dim=1, keepdim=True)
                z = (dispersion - dispersion.mean(dim=(2, 3), keepdim=True)) / (
                    dispersion.std(dim=(2, 3), keepdim=True) + EPS
                )
                p = minmax(torch.sigmoid(z.clamp(min=-50)))
                gate = minmax(p * F.interpolate(gate, size=p.shape[-2:], mode="bilinear", align_corners=True))
            else:
                mean = x.mean(dim=(2, 3), keepdim=True)
                var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
                p = torch.sigmoid((var / (mean + EPS)).mean(dim=1, keepdim=True))
                gate = p * F.interpolate(gate, size=(1, 1), mode="bilinear", align_corners=True)
            out.append(gate)
        return out[::-1]

    @staticmethod
    def _entropy(x: torch.Tensor) -> torch.Tensor:
        """(B, C, 1): each channel's spatial entropy (of its normalised ReLU), as a share of the stage's, times C."""
        b, c = x.shape[:2]
        p = spatial_unit(F.relu(x)).reshape(b, c, -1)
        p = p / (p.sum(dim=2, keepdim=True) + EPS)
        entropy = (-p * torch.log2(p + EPS)).sum(dim=2, keepdim=True)
        return entropy / (entropy.sum(dim=1, keepdim=True) + EPS) * c

    def _channel_weights(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        weight = torch.cat([self._entropy(x) for x in stages], dim=1)
        weight = weight / weight.sum(dim=(1, 2), keepdim=True)
        centre = weight.mean(dim=(1, 2), keepdim=True)
        spread = ((weight - centre) ** 2).mean(dim=(1, 2), keepdim=True).sqrt()
        weight = weight.clamp(min=centre - 0.5 * spread, max=centre + 0.5 * spread)
        weight = weight / weight.sum(dim=(1, 2), keepdim=True)
        return torch.split(weight, list(CHANNELS), dim=1)

    def _statistics(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        if self._fits(x):
            mean_x, mean_y = self._local(x, k), self._local(y, k)
            var_x = self._local(x * x, k) - mean_x**2
            var_y = self._local(y * y, k) - mean_y**2
            cov = self._local(x * y, k) - mean_x * mean_y
        else:
            mean_x, mean_y = x.mean(dim=(2, 3), keepdim=True), y.mean(dim=(2, 3), keepdim=True)
            var_x = ((x - mean_x) ** 2).mean(dim=(2, 3), keepdim=True)
            var_y = ((y - mean_y) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (x * y).mean(dim=(2, 3), keepdim=True) - mean_x * mean_y
        return mean_x, mean_y, var_x, var_y, cov

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if sr.shape != gt.shape:
            raise ValueError(f"adistsloss: SR {tuple(sr.shape)} and HR {tuple(gt.shape)} differ in shape")
        with full_precision(sr):
            sr, gt = sr.float(), gt.float()
            stages_sr, stages_gt = self._stages(sr), self._stages(gt)
            texture_p = self._texture_probability(stages_sr)
            weights = self._channel_weights(stages_sr)
            score = sr.new_zeros(sr.shape[0])
            for k in range(len(CHANNELS) - 1, -1, -1):
                x, y = spatial_unit(stages_sr[k]), spatial_unit(stages_gt[k])
                mean_x, mean_y, var_x, var_y, cov = self._statistics(x, y, k)
                texture = (2 * mean_x * mean_y + 1e-6) / (mean_x**2 + mean_y**2 + 1e-6)
                structure = (2 * cov + 1e-6) / (var_x + var_y + 1e-6)
                p = texture_p[k]
                mixed = ((1 - p) * texture + p * structure) * weights[k].unsqueeze(3)
                score = score + mixed.mean(dim=(2, 3)).sum(dim=1)
            return 1 - score.mean()


LOSSES.register("adistsloss")(ADISTSLoss)
