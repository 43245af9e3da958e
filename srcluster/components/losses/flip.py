"""LDR-FLIP (NVIDIA's perceptual difference evaluator) as a loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components.losses.base import LOSSES, full_precision

# --- FLIP -------------------------------------------------------------------------------------------------------------

# linear sRGB <-> CIE XYZ (D65) as FLIP writes them, and its reference white
_FLIP_RGB_TO_XYZ = (
    (10135552 / 24577794, 8788810 / 24577794, 4435075 / 24577794),
    (2613072 / 12288897, 8788810 / 12288897, 887015 / 12288897),
    (1425312 / 73733382, 8788810 / 73733382, 70074185 / 73733382),
)
_FLIP_XYZ_TO_RGB = (
    (3.241003275, -1.537398934, -0.498615861),
    (-0.969224334, 1.875930071, 0.041554224),
    (0.055639423, -0.204011202, 1.057148933),
)
_FLIP_WHITE = (0.950428545, 1.0, 1.088900371)
# contrast sensitivity of the achromatic, red-green and blue-yellow channels: (a1, b1, a2, b2) of FLIP's two Gaussians
_FLIP_CSF = ((1.0, 0.0047, 0.0, 1e-5), (1.0, 0.0053, 0.0, 1e-5), (34.1, 0.04, 13.5, 0.025))


def _matrix(x: torch.Tensor, rows) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.tensor(rows, dtype=x.dtype, device=x.device), x)


def _white(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    white = torch.tensor(_FLIP_WHITE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return 1 / white if inverse else white


def _srgb_to_ycxcz(x: torch.Tensor) -> torch.Tensor:
    linear = torch.where(x > 0.04045, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _matrix(linear, _FLIP_RGB_TO_XYZ) * _white(x, inverse=True)
    return torch.cat([116 * xyz[:, 1:2] - 16, 500 * (xyz[:, 0:1] - xyz[:, 1:2]), 200 * (xyz[:, 1:2] - xyz[:, 2:3])], 1)


def _ycxcz_to_linear_rgb(x: torch.Tensor) -> torch.Tensor:
    y = (x[:, 0:1] + 16) / 116
    xyz = torch.cat([y + x[:, 1:2] / 500, y, y - x[:, 2:3] / 200], 1) * _white(x)
    return _matrix(xyz, _FLIP_XYZ_TO_RGB)


def _hunt_lab(linear_rgb: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> Hunt-adjusted L*a*b* (a*, b* scaled by L* / 100)."""
    xyz = _matrix(linear_rgb, _FLIP_RGB_TO_XYZ) * _white(linear_rgb, inverse=True)
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp(min=delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    lightness = 116 * f[:, 1:2] - 16
    a, b = 500 * (f[:, 0:1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([lightness, 0.01 * lightness * a, 0.01 * lightness * b], 1)


def _hyab(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    delta = a - b
    return delta[:, 0:1].abs() + torch.sqrt((delta[:, 1:3] ** 2).sum(1, keepdim=True) + eps)


def _csf_kernels(pixels_per_degree: float) -> tuple[torch.Tensor, int]:
    """The three channels' contrast sensitivity filters, (3, 1, k, k), and their radius."""
    widest = max(max(b1, b2) for _, b1, _, b2 in _FLIP_CSF)
    radius = math.ceil(3 * math.sqrt(widest / (2 * math.pi**2)) * pixels_per_degree)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64) / pixels_per_degree
    z = t.view(-1, 1) ** 2 + t.view(1, -1) ** 2
    kernels = []
    for a1, b1, a2, b2 in _FLIP_CSF:
        g = a1 * math.sqrt(math.pi / b1) * torch.exp(-(math.pi**2) * z / b1)
        g = g + a2 * math.sqrt(math.pi / b2) * torch.exp(-(math.pi**2) * z / b2)
        kernels.append(g / g.sum())
    return torch.stack(kernels).unsqueeze(1).float(), radius


def _feature_kernels(pixels_per_degree: float) -> tuple[torch.Tensor, int]:
    """FLIP's edge (first derivative) and point (second derivative) detectors along x, (2, 1, k, k), each with its
    positive and negative weights normalised to sum 1 / -1, and their radius."""
    sd = 0.5 * 0.082 * pixels_per_degree
    radius = math.ceil(3 * sd)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    x, y = t.view(1, -1).expand(len(t), -1), t.view(-1, 1).expand(-1, len(t))
    g = torch.exp(-(x**2 + y**2) / (2 * sd * sd))
    kernels = [
        torch.where(k < 0, k / -k[k < 0].sum(), k / k[k > 0].sum()) for k in (-x * g, (x**2 / (sd * sd) - 1) * g)
    ]
    return torch.stack(kernels).unsqueeze(1).float(), radius


@LOSSES.register("fliploss")
class FLIPLoss(nn.Module):
    """Mean LDR-FLIP error (Andersson et al. 2020, NVIDIA's difference evaluator) between images clamped to [0, 1],
    viewed at `pixels_per_degree` (default: a 0.7 m wide 4K monitor at 0.7 m): YCxCz images filtered by the
    contrast sensitivity of each opponent channel (replicated borders), a HyAB colour difference in Hunt-adjusted
    L*a*b* redistributed to [0, 1], raised to 1 - the edge/point feature difference. With traiNNer-redux's
    training epsilon 1e-4 (inside the HyAB square root, and as the feature difference's floor). Float32."""

    def __init__(self, pixels_per_degree: float = 0.7 * 3840 / 0.7 * math.pi / 180):
        super().__init__()
        self.qc, self.qf, self.pc, self.pt, self.eps = 0.7, 0.5, 0.4, 0.95, 1e-4
        csf, self.csf_radius = _csf_kernels(pixels_per_degree)
        features, self.feature_radius = _feature_kernels(pixels_per_degree)
        self.register_buffer("csf", csf, persistent=False)
        self.register_buffer("features", features, persistent=False)
        green, blue = torch.eye(3)[1].view(1, 3, 1, 1), torch.eye(3)[2].view(1, 3, 1, 1)
        self.cmax = _hyab(_hunt_lab(green), _hunt_lab(blue), self.eps).pow(self.qc).item()

    def _filtered(self, ycxcz: torch.Tensor, csf: torch.Tensor) -> torch.Tensor:
        r = self.csf_radius
        filtered = F.conv2d(F.pad(ycxcz, (r, r, r, r), mode="replicate"), csf, groups=3)
        return _hunt_lab(_ycxcz_to_linear_rgb(filtered).clamp(0, 1))

    def _feature_norms(self, ycxcz: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.feature_radius
        y = F.pad((ycxcz[:, 0:1] + 16) / 116, (r, r, r, r), mode="replicate")
        along_x = F.conv2d(y, features)  # (B, 2, H, W): edge, point
        along_y = F.conv2d(y, features.transpose(2, 3))
        norms = torch.sqrt(along_x**2 + along_y**2)
        return norms[:, 0:1], norms[:, 1:2]

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        csf: torch.Tensor = self.csf  # pyright: ignore[reportAssignmentType]
        features: torch.Tensor = self.features  # pyright: ignore[reportAssignmentType]
        with full_precision(sr):
            test, reference = _srgb_to_ycxcz(sr.float().clamp(0, 1)), _srgb_to_ycxcz(gt.float().clamp(0, 1))
            color = _hyab(self._filtered(reference, csf), self._filtered(test, csf), self.eps).pow(self.qc)
            knee = self.pc * self.cmax
            color = torch.where(
                color < knee,
                self.pt / knee * color,
                self.pt + (color - knee) / (self.cmax - knee) * (1 - self.pt),
            )
            edges_ref, points_ref = self._feature_norms(reference, features)
            edges_test, points_test = self._feature_norms(test, features)
            feature = torch.maximum((edges_ref - edges_test).abs(), (points_test - points_ref).abs())
            feature = (feature.clamp(min=self.eps) / math.sqrt(2)) ** self.qf
            return color.pow(1 - feature).mean()
