"""SSIM-family losses: SSIM, MS-SSIM, MS-SSIM + L1, and the edge-weighted MS-SSIM of structuretextureloss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components.losses.base import LOSSES, full_precision
from srcluster.components.losses.images import LUMA, luma

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


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


# registered apart: type checkers cannot subclass a class the registry decorated
LOSSES.register("mssimloss")(MSSIMLoss)


@LOSSES.register("ssimloss")
class SSIMLoss(MSSIMLoss):
    """1 - SSIM (single scale, with the luminance term), on the luma of YIQ by default as `mssimloss`; `crop_border`
    pixels are left out on each side. traiNNer-redux's `ssimloss` returns the SSIM score itself, per image, which
    would train towards dissimilar images (and cannot be back-propagated with a batch larger than 1); srcluster
    minimises 1 - SSIM, as its name and `mssimloss` intend."""

    def __init__(
        self,
        channels: int = 3,
        downsample: bool = False,
        test_y_channel: bool = True,
        color_space: str = "yiq",
        crop_border: int = 0,
    ):
        super().__init__(channels, downsample, test_y_channel, color_space=color_space, include_luminance=True)
        if crop_border < 0:
            raise ValueError(f"ssimloss.crop_border: {crop_border} is negative")
        self.crop_border = int(crop_border)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if self.crop_border:
            c = self.crop_border
            sr, gt = sr[..., c:-c, c:-c], gt[..., c:-c, c:-c]
        with full_precision(sr):
            score, _ = ssim_and_cs(self._prepare(sr), self._prepare(gt), True, self.downsample)
        return 1 - score.mean()


@LOSSES.register("msssiml1loss")
class MSSSIML1Loss(nn.Module):
    """Zhao et al.'s mix of MS-SSIM and Gaussian-weighted L1 (`alpha` * (1 - MS-SSIM) + (1 - alpha) * L1 / data_range),
    as traiNNer-redux computes it: one grouped convolution with 5 Gaussian windows per channel (sigmas
    `gaussian_sigmas` repeated 3 times, split in order across R, G, B, so each channel sees its own mix of sigmas),
    zero padding 2 * max sigma; the luminance term is the product of the last three windows (B at the largest
    sigma), contrast-structure the product of all 15; L1 weighted by the largest window."""

    def __init__(
        self,
        gaussian_sigmas: list[float] | None = None,
        data_range: float = 1.0,
        k: tuple[float, float] = (0.01, 0.03),
        alpha: float = 0.1,
    ):
        super().__init__()
        sigmas = list(gaussian_sigmas or (0.5, 1.0, 2.0, 4.0, 8.0))
        self.data_range, self.alpha = data_range, alpha
        self.c1, self.c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
        self.pad = int(2 * sigmas[-1])
        size = int(4 * sigmas[-1] + 1)
        windows = [_gaussian_2d(size, sigma) for sigma in sigmas for _ in range(3)]
        self.register_buffer("windows", torch.stack(windows).unsqueeze(1), persistent=False)

    def _blur(self, x: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, windows, groups=3, padding=self.pad)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        windows: torch.Tensor = self.windows  # pyright: ignore[reportAssignmentType]
        with full_precision(sr):
            x, y = sr.float(), gt.float()
            mu_x, mu_y = self._blur(x, windows), self._blur(y, windows)
            var_x = self._blur(x * x, windows) - mu_x**2
            var_y = self._blur(y * y, windows) - mu_y**2
            cov = self._blur(x * y, windows) - mu_x * mu_y
            luminance = (2 * mu_x * mu_y + self.c1) / (mu_x**2 + mu_y**2 + self.c1)
            cs = (2 * cov + self.c2) / (var_x + var_y + self.c2)
            ms_ssim_loss = 1 - luminance[:, -3:].prod(dim=1) * cs.prod(dim=1)
            l1 = self._blur((x - y).abs(), windows[-3:]).mean(1)
            return (self.alpha * ms_ssim_loss + (1 - self.alpha) * l1 / self.data_range).mean()


def _gaussian_2d(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def weighted_ms_ssim(
    x: torch.Tensor, y: torch.Tensor, weight_map: torch.Tensor, include_luminance: bool = False
) -> torch.Tensor:
    """Per-image MS-SSIM whose maps are averaged with `weight_map` (resized bilinearly to each scale's map, halved
    with the images), weighted product over 5 scales (traiNNer-redux's structure term of `structuretextureloss`)."""
    c1, c2 = 0.01**2, 0.03**2
    g = _gaussian_window(x.dtype, x.device)
    values = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        mu_x, mu_y = _filter(x, g), _filter(y, g)
        var_x, var_y = _filter(x * x, g) - mu_x**2, _filter(y * y, g) - mu_y**2
        cov = _filter(x * y, g) - mu_x * mu_y
        score = F.relu((2 * cov + c2) / (var_x + var_y + c2))
        if level == len(MS_SSIM_WEIGHTS) - 1 and include_luminance:
            score = score * (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
        w = F.interpolate(weight_map, size=score.shape[-2:], mode="bilinear", align_corners=False)
        values.append((w * score).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) + 1e-8))
        pad = (x.shape[-2] % 2, x.shape[-1] % 2)
        x, y, weight_map = (F.avg_pool2d(t, 2, padding=pad) for t in (x, y, weight_map))
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device).view(-1, 1)
    return (torch.stack(values).clamp(min=1e-8) ** weights).prod(dim=0)
