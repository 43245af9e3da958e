"""Validation the way SR papers measure it: full images, LR made by MATLAB-compatible bicubic, PSNR/SSIM with a border
crop, plus a comparison grid (bicubic | model | HR) that a person can look at (`val.save_img`).

The model upscales through the one inference path, `srcluster.infer.upscaler.tiled_upscale`, on `val.tile_size` tiles
with `val.tile_overlap` pixels of context (0: whole images), so large validation images fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from srcluster.components import perceptual
from srcluster.config import Job, Metric
from srcluster.data.stream import iter_images
from srcluster.degrade.resize import bicubic_downscale, imresize
from srcluster.infer.upscaler import tiled_upscale


@dataclass
class ValImage:
    name: str
    hr: torch.Tensor  # uint8 (3, H, W), mod-cropped to a multiple of the scale
    lr: torch.Tensor  # uint8 (3, H/s, W/s)


def prepare(images, scale: int) -> list[ValImage]:
    out = []
    for name, image in images:
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        h, w = (rgb.shape[1] // scale) * scale, (rgb.shape[2] // scale) * scale
        hr = rgb[:3, :h, :w].contiguous()
        out.append(ValImage(name, hr, bicubic_downscale(hr, scale)))
    return out


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


@torch.no_grad()
def upscale(net: nn.Module, lr: torch.Tensor, scale: int, tile: int = 0, overlap: int = 8) -> torch.Tensor:
    """(3,h,w) uint8 -> (3,h*s,w*s) uint8, run on the model's device in `tile` x `tile` blocks (0: in one pass)."""
    device = next(net.parameters()).device
    return to_uint8(tiled_upscale(net, to_float(lr, device)[None], scale, tile, overlap))[0].cpu()


def build_metrics(specs: dict[str, Metric], scale: int) -> dict[str, perceptual.Metric]:
    """The job's `val.metrics`, built once; a missing weights file fails here, not at the first validation."""
    built = {}
    for name, spec in specs.items():
        kind = spec.type.removeprefix("calculate_")
        options = {"crop_border": scale if spec.crop_border is None else spec.crop_border, **spec.options()}
        if kind in perceptual.Y_CHANNEL_METRICS:
            options["test_y_channel"] = spec.test_y_channel
        built[name] = perceptual.build_metric(kind, **options)
    return built


def score(sr: torch.Tensor, hr: torch.Tensor, metrics: dict[str, perceptual.Metric]) -> dict[str, float]:
    return {name: float(metric(sr[None], hr[None])[0]) for name, metric in metrics.items()}


def validate(
    net: nn.Module,
    images: list[ValImage],
    metrics: dict[str, perceptual.Metric],
    scale: int,
    grid_path: Path | None = None,
    grid_size: int = 96,
    tile: int = 0,
    overlap: int = 8,
) -> dict[str, float]:
    """Mean of each metric over the images, for the model and (as `bicubic_<name>`) for plain bicubic upscaling;
    the comparison grid is written to `grid_path` when one is given."""
    was_training = net.training
    net.eval()
    totals: dict[str, float] = {}
    rows = []
    for image in images:
        sr = upscale(net, image.lr, scale, tile, overlap)
        bicubic = to_uint8(imresize(image.lr.float()[None] / 255, scale, kernel="bicubic"))[0]
        for name, value in score(sr, image.hr, metrics).items():
            totals[name] = totals.get(name, 0.0) + value
        for name, value in score(bicubic, image.hr, metrics).items():
            totals[f"bicubic_{name}"] = totals.get(f"bicubic_{name}", 0.0) + value
        if grid_path is not None:
            rows.append(torch.cat([centre_crop(t, grid_size) for t in (bicubic, sr, image.hr)], dim=2))
    net.train(was_training)
    if grid_path is not None and rows:
        save_png(torch.cat(rows, dim=1), grid_path)
    return {name: total / len(images) for name, total in totals.items()}


@dataclass
class Validator:
    """A stage's validation: its images and metrics, built once (on rank 0), and how the job asks to run it."""

    images: list[ValImage]
    metrics: dict[str, perceptual.Metric]
    scale: int
    tile_size: int = 0
    tile_overlap: int = 8
    save_img: bool = True  # False: no comparison grid is made

    def __call__(self, net: nn.Module, grid_path: Path | None = None) -> dict[str, float]:
        """`val_<metric>` (and `val_bicubic_<metric>`) for `net`; the grid goes to `grid_path` when save_img is on."""
        scores = validate(
            net,
            self.images,
            self.metrics,
            self.scale,
            grid_path=grid_path if self.save_img else None,
            tile=self.tile_size,
            overlap=self.tile_overlap,
        )
        return {f"val_{name}": value for name, value in scores.items()}

    def higher_is_better(self, key: str) -> bool:
        """Whether a larger value of the reported `val_<metric>` is better (PSNR, SSIM) or worse (LPIPS, DISTS)."""
        return self.metrics[key.removeprefix("val_")].better == "higher"


def build_validator(job: Job) -> Validator | None:
    """The job's validation (`datasets.val`, `val:`), its images read and its metrics built; None when it does not
    validate. Only the rank that validates (0) builds it."""
    if job.datasets.val is None or not job.val.val_enabled:
        return None
    gt = job.datasets.val.dataroot_gt
    images = prepare(iter_images(gt if isinstance(gt, str) else gt[0]), job.scale)
    metrics = build_metrics(job.val.metrics if job.val.metrics_enabled else {}, job.scale)
    return Validator(images, metrics, job.scale, job.val.tile_size, job.val.tile_overlap, job.val.save_img)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[1:]
    size_h, size_w = min(size, h), min(size, w)
    top, left = (h - size_h) // 2, (w - size_w) // 2
    crop = x[:, top : top + size_h, left : left + size_w]
    if crop.shape[1:] != (size, size):  # pad small images so the grid stays rectangular
        crop = nn.functional.pad(crop, (0, size - size_w, 0, size - size_h))
    return crop


def save_png(x: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(x.permute(1, 2, 0).numpy()).save(path)
    return path
