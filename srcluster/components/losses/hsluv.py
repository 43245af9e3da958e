"""The HSLuv colour space (differentiable, float32) and traiNNer-redux's `hsluvloss`."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from srcluster.components.losses.base import LOSSES, MultiTermLoss, elementwise, full_precision

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
# The float32 thresholds of traiNNer-redux's port (the reference's 1e-8 ones only separate grays in float64):
# chroma below this is a gray (halfway between the largest float32 gray chroma, 6.7e-5, and the smallest chroma of a
# barely saturated 8-bit colour, 0.02897); lightness outside [0.01, 99.99] is black or white (saturation 0).
_GRAY_CHROMA = 0.028972067
_BLACK_L, _WHITE_L = 0.01, 99.99


def _away_from_zero(x: torch.Tensor, floor: float) -> torch.Tensor:
    """x with its magnitude raised to at least `floor`, keeping its sign (0 becomes +floor): a safe divisor."""
    return torch.where(x == 0, floor, torch.sign(x) * x.abs().clamp(min=floor))


def _max_chroma(lightness: torch.Tensor, hue_deg: torch.Tensor) -> torch.Tensor:
    """The largest CIELUV chroma that stays inside sRGB at this lightness and hue: the nearest of the six gamut
    boundary lines (each RGB channel at 0 and at 1) along the ray at the hue angle."""
    hue_rad = torch.deg2rad(hue_deg)
    sin, cos = torch.sin(hue_rad), torch.cos(hue_rad)
    sub1 = (lightness + 16) ** 3 / 1560896
    sub2 = torch.where(sub1 > _EPSILON, sub1, lightness / _KAPPA)
    lengths = []
    for m1, m2, m3 in _XYZ_TO_RGB:
        for t in (0, 1):
            top1 = (284517 * m1 - 94839 * m3) * sub2
            top2 = (838422 * m3 + 769860 * m2 + 731718 * m1) * lightness * sub2 - 769860 * t * lightness
            bottom = _away_from_zero((632260 * m3 - 126452 * m2) * sub2 + 126452 * t, 1e-3)
            slope, intercept = top1 / bottom, top2 / bottom
            lengths.append(intercept / _away_from_zero(sin - slope * cos, 1e-3))
    stacked = torch.stack(lengths)
    # a line behind the ray does not bound it; traiNNer-redux stands in the largest length of the whole batch
    return torch.where(stacked >= 0, stacked, stacked.max()).min(dim=0).values


def rgb_to_hsluv(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> HSLuv (hue 0..360, saturation 0..100, lightness 0..100), differentiable.

    traiNNer-redux's float32 port of the reference implementation, step for step, so values and gradients match its
    `hsluvloss` in float32: grays (chroma below `_GRAY_CHROMA`) get hue 0, black and white saturation 0, and every
    divisor is kept away from zero so no NaN gradient leaks through `torch.where`.
    """
    rgb = rgb.clamp(1e-12, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    x, y, z = torch.einsum("ij,bjhw->bihw", to_xyz, linear).unbind(1)
    lightness = torch.where(y > _EPSILON, 116 * y ** (1 / 3) - 16, y * _KAPPA)
    divider = (x + 15 * y + 3 * z).clamp(min=1e-6)
    dark = lightness < 1e-4
    u = torch.where(dark, 0.0, 13 * lightness * (4 * x / divider - _REF_U))
    v = torch.where(dark, 0.0, 13 * lightness * (9 * y / divider - _REF_V))
    # u = 0 or v = 0 becomes 1e-12: sqrt and atan2 stay differentiable at black
    u, v = torch.where(u == 0, 1e-12, u), torch.where(v == 0, 1e-12, v)
    chroma = torch.sqrt(u**2 + v**2)
    hue = torch.rad2deg(torch.atan2(v, u))
    hue = torch.where(hue < 0, hue + 360, hue)
    hue = torch.where(chroma < _GRAY_CHROMA, 0.0, hue)
    saturation = chroma / _max_chroma(lightness, hue).clamp(min=1e-2) * 100
    saturation = torch.where((lightness > _WHITE_L) | (lightness < _BLACK_L), 0.0, saturation)
    return torch.stack([hue, saturation.clamp(0, 100), lightness.clamp(0, 100)], dim=1)


@LOSSES.register("hsluvloss")
class HSLuvLoss(MultiTermLoss):
    """Hue, saturation and lightness differences in HSLuv, each normalised to [0, 1] (traiNNer-redux's `hsluvloss`).

    Hue is the shorter way round the circle, times 2; it counts 0 between two grays and between two near-black or two
    near-white pixels, and the larger saturation between a gray and a colour. Saturation differences are weighted by
    how far each lightness is from black/white (saturation means little there). `criterion` applies to saturation
    and lightness. `blur_strength` > 0 blurs both images first (Gaussian, sigma `blur_strength`, kernel
    4 * blur_strength + 1, reflected borders, as torchvision's GaussianBlur). Computed in float32 under any autocast.

    `components` gives the three weighted terms, which the training log shows as `l_g_hsluv_hue`, `_saturation` and
    `_lightness`, as traiNNer-redux does.
    """

    def __init__(
        self,
        hue_weight: float = 1 / 3,
        saturation_weight: float = 1 / 3,
        lightness_weight: float = 1 / 3,
        criterion: str = "l1",
        downscale_factor: int = 1,
        blur_strength: int = 0,
    ):
        super().__init__()
        self.weights = {"hue": hue_weight, "saturation": saturation_weight, "lightness": lightness_weight}
        self.criterion = elementwise(criterion, "hsluvloss.criterion")
        self.downscale_factor = downscale_factor
        if blur_strength < 0:
            raise ValueError(f"hsluvloss.blur_strength: {blur_strength} is negative")
        self.blur_strength = blur_strength

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blur_strength:
            return x
        size, sigma = 4 * self.blur_strength + 1, float(self.blur_strength)
        return gaussian_blur(x, [size, size], [sigma, sigma])

    def _hsl(self, x: torch.Tensor) -> torch.Tensor:
        if self.downscale_factor > 1:
            x = F.interpolate(x, scale_factor=1 / self.downscale_factor, mode="bicubic", antialias=True).clamp(0, 1)
        return rgb_to_hsluv(x) / torch.tensor([360.0, 100.0, 100.0], device=x.device).view(1, 3, 1, 1)

    def components(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted hue, saturation and lightness terms; a term whose weight is 0 is left out."""
        with full_precision(sr):
            sr, gt = self._blur(sr.float()), self._blur(gt.float())
            (h1, s1, l1), (h2, s2, l2) = self._hsl(sr).unbind(1), self._hsl(gt).unbind(1)
            eps = 0.1
            d = (h1 - h2).abs()
            hue = torch.minimum(d, 1 - d) * 2
            hue = torch.where((s1 < eps) & (s2 < eps), 0.0, hue)
            one_gray = ((s1 < eps) & (s2 > eps)) | ((s1 > eps) & (s2 < eps))
            hue = torch.where(one_gray, torch.maximum(s1, s2), hue)
            hue = torch.where((l1 < eps) & (l2 < eps), 0.0, hue)
            hue = torch.where((l1 > 1 - eps) & (l2 > 1 - eps), 0.0, hue)
            # 1 at mid lightness, 0 at black or white, summed over both images
            weight = torch.minimum(l1, 1 - l1).clamp(0, 0.5) + torch.minimum(l2, 1 - l2).clamp(0, 0.5)
            terms = {
                "hue": hue.mean(),
                "saturation": (self.criterion(s1, s2) * weight).mean(),
                "lightness": self.criterion(l1, l2).mean(),
            }
            return {name: term * self.weights[name] for name, term in terms.items() if self.weights[name]}
