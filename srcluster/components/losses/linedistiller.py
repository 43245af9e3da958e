"""traiNNer-redux's `linedistillerloss`: the distance between the sketch lines that a pretrained line extractor draws
from the SR and from the HR image (weights: `components.hub` "line_distiller", checked by their git blob id)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from srcluster.components import hub
from srcluster.components.losses.base import LOSSES, criterion_mean, full_precision
from srcluster.errors import SrclusterError

Resample = Literal["same", "down", "up"]

# The network halves the size four times (a strided stem, then three down stages) and doubles it four times, adding
# each encoder output to the decoder output of the same size: sides must be multiples of this to line up.
SIDE_MULTIPLE = 16


class Bottleneck(nn.Module):
    """Pre-activation bottleneck: (BN, ReLU, conv) three times, 1x1 -> middle -> 1x1, plus a shortcut. `resample`
    "down" / "up" makes the middle conv and the shortcut a stride-2 4x4 conv / transposed conv; "same" keeps the size
    with a 3x3 middle conv and an identity shortcut. Module names (`left.<i>`, `shortcut`) are the weight file's."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, resample: Resample = "same"):
        super().__init__()
        if resample == "same":
            middle: nn.Module = nn.Conv2d(mid_channels, mid_channels, 3, 1, 1, bias=False)
            self.shortcut: nn.Module = nn.Identity()
        elif resample == "down":
            middle = nn.Conv2d(mid_channels, mid_channels, 4, 2, 1, bias=False)
            self.shortcut = nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)
        else:
            middle = nn.ConvTranspose2d(mid_channels, mid_channels, 4, 2, 1, bias=False)
            self.shortcut = nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)
        self.left = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, mid_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
            middle,
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.shortcut(x)


def resampling_stage(in_channels: int, mid_channels: int, out_channels: int, resample: Resample, repeats: int):
    """One resampling bottleneck, then `repeats` that keep size and width."""
    blocks = [Bottleneck(in_channels, mid_channels, out_channels, resample)]
    blocks += [Bottleneck(out_channels, mid_channels, out_channels) for _ in range(repeats)]
    return nn.Sequential(*blocks)


class LineDistiller(nn.Module):
    """RGB in [-1, 1] -> one line channel at the input's size: a U-shaped stack of bottlenecks (widths 64 ... 512 ...
    32), `conv1` ... `conv8` as the weight file names them. Sides must be multiples of `SIDE_MULTIPLE`."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        stem = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.conv1 = nn.Sequential(stem, *(Bottleneck(64, 16, 64) for _ in range(3)))
        self.conv2 = resampling_stage(64, 32, 128, "down", 5)
        self.conv3 = resampling_stage(128, 64, 256, "down", 8)
        self.conv4 = resampling_stage(256, 128, 512, "down", 11)
        self.conv5 = resampling_stage(512, 64, 256, "up", 8)
        self.conv6 = resampling_stage(256, 32, 128, "up", 5)
        self.conv7 = resampling_stage(128, 16, 64, "up", 3)
        # the last stage narrows its bottlenecks (8) below its up-block's (16), then draws the single line channel
        self.conv8 = nn.Sequential(
            Bottleneck(64, 16, 32, "up"),
            Bottleneck(32, 8, 32),
            Bottleneck(32, 8, 32),
            nn.Conv2d(32, 1, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.conv1(x)
        quarter = self.conv2(half)
        eighth = self.conv3(quarter)
        sixteenth = self.conv4(eighth)
        up = eighth + self.conv5(sixteenth)
        up = quarter + self.conv6(up)
        up = half + self.conv7(up)
        return self.conv8(up)


def load_line_distiller() -> LineDistiller:
    """The extractor with traiNNer-redux's weights from the hub, every tensor of the file in its place (a strict load,
    reported in one line), frozen and in eval mode."""
    file = hub.locate("line_distiller")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that holds code
        raise SrclusterError(f"{file} is not a weights-only torch checkpoint ({exc.__class__.__name__})") from None
    with torch.device("meta"):  # every tensor comes from the file
        net = LineDistiller()
    own = net.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong = [key for key in own if key in state and state[key].shape != own[key].shape]
    problems = (("lacks", missing), ("has the unexpected key", unexpected), ("has the wrong shape at", wrong))
    for problem, keys in problems:
        if keys:
            raise SrclusterError(f"{file} is not traiNNer-redux's line distiller: it {problem} {keys[0]}")
    net.load_state_dict(state, assign=True)
    return net.eval().requires_grad_(False)


class LineDistillerLoss(nn.Module):
    """`criterion` ("l1" or "charbonnier", averaged over every pixel) between the line maps the extractor draws from SR
    and HR, both mapped from [0, 1] to [-1, 1]. Float32 under any autocast; BatchNorm stays in eval mode.

    traiNNer-redux's `debug` (line images written to ./debug/linedistillerloss on every call) is refused when true
    rather than silently skipped: srcluster writes no such files."""

    def __init__(self, criterion: str = "l1", debug: bool = False):
        super().__init__()
        if debug:
            raise ValueError(
                "linedistillerloss.debug: true writes traiNNer-redux's line images on every step, which srcluster does "
                "not do; set it to false"
            )
        if criterion not in ("l1", "charbonnier"):
            raise ValueError(f"linedistillerloss.criterion: {criterion!r} is not one of l1, charbonnier")
        self.criterion = criterion_mean(criterion, "linedistillerloss")
        self.model = load_line_distiller()

    def train(self, mode: bool = True) -> LineDistillerLoss:
        return super().train(False)  # BatchNorm must keep its running statistics

    def lines(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image.float() - 0.5) / 0.5)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        height, width = sr.shape[-2:]
        if height % SIDE_MULTIPLE or width % SIDE_MULTIPLE:
            raise ValueError(
                f"linedistillerloss: image sides must be multiples of {SIDE_MULTIPLE}, got {height}x{width} "
                "(set datasets.train.gt_size to one)"
            )
        with full_precision(sr):
            sr_lines = self.lines(sr)
            with torch.no_grad():  # HR is the target: no gradient flows into it
                gt_lines = self.lines(gt)
            return self.criterion(sr_lines, gt_lines)


LOSSES.register("linedistillerloss")(LineDistillerLoss)
