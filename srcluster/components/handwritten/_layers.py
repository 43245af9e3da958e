"""Layers several hand-written families share, with the parameter names redux's families give them (`weight`, `bias`),
so each family's state dict still loads strictly. Not a family: `presets()` skips modules named with a leading `_`."""

from __future__ import annotations

import torch
from spandrel.util.timm import trunc_normal_
from torch import nn
from torch.nn import functional as F

# the mean colours the EDSR-lineage networks subtract from their input and add back at the end
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
DF2K_MEAN = (0.4690, 0.4490, 0.4036)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of an NCHW map (biased variance, eps inside the square root), with a per-channel
    `weight` and `bias`: redux's LayerNorm2d / channels-first LayerNorm of CascadedGaze, LMLT, MAN and ESCRealM."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2).contiguous()


class MeanShift(nn.Conv2d):
    """A frozen 1x1 convolution adding `sign * scale * mean` to each colour channel (sign -1 at the input, +1 at the
    output); a Conv2d so its `weight` and `bias` sit in the state dict where redux's do."""

    def __init__(self, mean: tuple[float, float, float], scale: float, sign: int):
        super().__init__(3, 3, kernel_size=1)
        assert self.bias is not None  # a Conv2d made with bias=True
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * scale * torch.tensor(mean))
        self.requires_grad_(False)


def swin_init(module: nn.Module) -> None:
    """The Swin lineage's initialisation (DWT, HiT-SR): truncated-normal linear weights (std 0.02), zero biases, unit
    layer norms; convolutions keep torch's. For `net.apply`."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
