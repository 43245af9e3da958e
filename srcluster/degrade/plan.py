"""The plan of a batch's degradations: every random choice per sample (`drawing.draw` makes it, `pipeline.apply` runs
it), and `describe`, which reads one sample's steps back for humans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from srcluster.degrade import kernels as K
from srcluster.degrade.noise import Noise
from srcluster.degrade.video import CODECS

UP, DOWN, KEEP = 0, 1, 2


@dataclass
class Resize:
    updown: np.ndarray  # UP, DOWN or KEEP
    factor: np.ndarray
    mode: list[str]  # traiNNer-redux's resize mode names
    size: np.ndarray  # output side length

    def describe(self, i: int, name: str) -> str | None:
        if self.updown[i] == KEEP:
            return None
        way = "up" if self.updown[i] == UP else "down"
        return f"{name} {way} x{self.factor[i]:.2f} {self.mode[i]} -> {self.size[i]}px"


@dataclass
class Jpeg:
    on: np.ndarray
    quality: np.ndarray

    def describe(self, i: int, name: str) -> str | None:
        return f"{name} q{self.quality[i]:.1f}" if self.on[i] else None


@dataclass
class Codec:
    on: np.ndarray
    name: list[str]
    quality: np.ndarray  # CRF or qscale (unused when bpp is set)
    bpp: np.ndarray  # NaN: quality mode
    preset: list[str]
    chroma: list[str]
    motion: np.ndarray  # (B, 2) dy, dx of the first clip frame
    frames: int

    def describe(self, i: int) -> str | None:
        if not self.on[i]:
            return None
        spec = CODECS.build(self.name[i])
        rate = f"{self.bpp[i]:.2f} bpp" if not np.isnan(self.bpp[i]) else f"{spec.quality} {int(self.quality[i])}"
        preset = f" {self.preset[i]}" if spec.presets else ""
        clip = f", {self.frames}-frame clip moving {tuple(int(v) for v in self.motion[i])}" if self.frames > 1 else ""
        return f"{self.name[i]} {rate}{preset} {self.chroma[i][0]}:{self.chroma[i][1]}:{self.chroma[i][2]}{clip}"


@dataclass
class Plan:
    """Every random choice for a batch, per sample; numpy arrays and CPU tensors, so it pickles from data workers."""

    scale: int
    crop_size: int  # side of the HR crops the pipeline degrades (traiNNer-redux: gt_size + 32 with high-order OTF)
    gt_size: int  # side of the HR patch trained on, cut with its LR from the degraded pair (`offsets`)
    offsets: np.ndarray  # (B, 2) top, left of each sample's LR patch in the degraded crop's LR
    high_order: bool
    jpeg_backend: str
    seeds: np.ndarray
    usm_radius: np.ndarray  # 0: no lq_usm
    usm_length: int  # taps of every sample's USM Gaussian (the config's largest radius), for batch independence
    thick: np.ndarray
    blur1: np.ndarray
    kernel1: K.KernelDraw
    kernels1: torch.Tensor  # (B, K1, K1)
    resize1: Resize
    noise1: Noise
    jpeg1: Jpeg
    blur2: np.ndarray
    kernel2: K.KernelDraw
    kernels2: torch.Tensor
    resize2: Resize
    noise2: Noise
    resize3: Resize
    sinc: np.ndarray
    kernel3: K.KernelDraw
    kernels3: torch.Tensor
    jpeg2: Jpeg
    jpeg2_first: np.ndarray  # True: JPEG before the final resize + sinc, False: after
    codec: Codec

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def crop_lq(self) -> int:
        """Side of the LR the pipeline makes (from the whole degraded crop)."""
        return self.crop_size // self.scale

    @property
    def lq_size(self) -> int:
        """Side of the LR patch trained on."""
        return self.gt_size // self.scale


def describe(plan: Plan, i: int) -> list[str]:
    """The steps applied to sample i, in order, for humans (the preview's captions)."""
    steps: list[str | None]
    if not plan.high_order:
        steps = [f"bicubic x1/{plan.scale}"]
    else:
        final = [f"resize {plan.resize3.mode[i]} -> {plan.crop_lq}px"]
        if plan.sinc[i]:
            final.append(plan.kernel3.describe(i))
        jpeg2 = plan.jpeg2.describe(i, "jpeg2")
        final = ([jpeg2, *final]) if plan.jpeg2_first[i] else ([*final, jpeg2])
        steps = [
            f"usm radius {plan.usm_radius[i]}" if plan.usm_radius[i] else None,
            "thick lines" if plan.thick[i] else None,
            f"blur {plan.kernel1.describe(i)}" if plan.blur1[i] else None,
            plan.resize1.describe(i, "resize"),
            plan.noise1.describe(i),
            plan.jpeg1.describe(i, "jpeg"),
            f"blur2 {plan.kernel2.describe(i)}" if plan.blur2[i] else None,
            plan.resize2.describe(i, "resize2"),
            plan.noise2.describe(i),
            *final,
        ]
    steps.append(plan.codec.describe(i))
    if plan.crop_size != plan.gt_size:
        top, left = (int(v) * plan.scale for v in plan.offsets[i])
        steps.append(f"crop {plan.gt_size}px at ({top}, {left})")
    return [s for s in steps if s]
