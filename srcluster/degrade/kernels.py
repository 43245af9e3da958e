"""Real-ESRGAN's random blur kernels (BasicSR's `degradations.py`), drawn per sample and built for a whole batch.

Drawing is scalar work on the sample's own numpy generator (a handful of uniforms); building evaluates every kernel of
the batch at once on one K x K grid, K being the largest size the config allows. A kernel of size k < K is the k x k
kernel normalised and zero-padded to K, as Real-ESRGAN pads its kernels to 21 x 21.

Orientation follows BasicSR: x is the column offset, y the row offset, and `theta` rotates the (sigma_x, sigma_y)
axes, so theta = 0 with sigma_x > sigma_y is a horizontal streak and theta = pi/2 is its transpose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from srcluster.registry import Registry

Profile = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (quadratic form, beta) -> unnormalised weights


@dataclass(frozen=True)
class KernelShape:
    isotropic: bool
    beta: str | None  # which shape range draws beta: "betag" (generalized), "betap" (plateau) or none
    profile: Profile


BLUR_KERNELS: Registry[KernelShape] = Registry("blur kernel")


def _shape(name: str, isotropic: bool, beta: str | None, profile: Profile) -> None:
    BLUR_KERNELS.register(name)(lambda: KernelShape(isotropic, beta, profile))


def _gaussian(q: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * q)


def _generalized(q: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * q.pow(beta))


def _plateau(q: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return 1 / (q.pow(beta) + 1)


_shape("iso", True, None, _gaussian)
_shape("aniso", False, None, _gaussian)
_shape("generalized_iso", True, "betag", _generalized)
_shape("generalized_aniso", False, "betag", _generalized)
_shape("plateau_iso", True, "betap", _plateau)
_shape("plateau_aniso", False, "betap", _plateau)

SINC = "sinc"  # the circular low-pass filter; chosen by sinc_prob / final_sinc_prob rather than from kernel_list
NONE = "none"  # no blur: the identity (Real-ESRGAN's "pulse tensor")
OFF = (NONE, 1, math.nan, math.nan, math.nan, math.nan, math.nan)  # the parameters of "no blur"


@dataclass(frozen=True)
class KernelOptions:
    """One blur's options, as the config spells them for the first or second degradation."""

    kinds: Sequence[str]
    weights: Sequence[float]
    size_range: tuple[int, int]
    sinc_prob: float
    sigma: tuple[float, float]
    betag: tuple[float, float]
    betap: tuple[float, float]

    @property
    def sizes(self) -> list[int]:
        return list(range(self.size_range[0], self.size_range[1] + 1, 2))


@dataclass
class KernelDraw:
    """The parameters of one kernel per sample (NaN where a parameter does not apply)."""

    kind: list[str]
    size: np.ndarray
    sigma_x: np.ndarray
    sigma_y: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    omega: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> KernelDraw:
        if not rows:
            return cls([], *(np.zeros(0) for _ in range(6)))
        kind, *numbers = zip(*rows, strict=False)
        return cls(list(kind), *(np.asarray(column, dtype=np.float64) for column in numbers))

    @property
    def separable(self) -> np.ndarray:
        """Which kernels are outer products g g^T: isotropic Gaussians (and the identity)."""
        return np.asarray([kind in ("iso", NONE) for kind in self.kind], dtype=bool)

    @property
    def sizes(self) -> np.ndarray:
        return self.size.astype(np.int64)

    def describe(self, i: int) -> str:
        kind, size = self.kind[i], int(self.size[i])
        if kind == NONE:
            return "none"
        if kind == SINC:
            return f"sinc {size}x{size} cutoff {self.omega[i]:.2f}"
        text = f"{kind} {size}x{size} sigma {self.sigma_x[i]:.2f}"
        if not BLUR_KERNELS.build(kind).isotropic:
            text += f"/{self.sigma_y[i]:.2f} rot {math.degrees(self.theta[i]):.0f}deg"
        if not math.isnan(self.beta[i]):
            text += f" beta {self.beta[i]:.2f}"
        return text


def _beta(rng: np.random.Generator, low: float, high: float) -> float:
    # traiNNer-redux (BasicSR): half the time from [low, 1], half from [1, high], whatever the range; so with the
    # plateau's default [1, 2] half the kernels have beta exactly 1, and a range above 1 gives values below its start.
    return float(rng.uniform(low, 1) if rng.uniform() < 0.5 else rng.uniform(1, high))


def draw_blur(rng: np.random.Generator, options: KernelOptions) -> tuple:
    """One sample's kernel parameters: (kind, size, sigma_x, sigma_y, theta, beta, omega)."""
    size = int(rng.choice(options.sizes))
    nan = math.nan
    if rng.uniform() < options.sinc_prob:
        # Real-ESRGAN's rule: small sinc kernels only get mild cut-offs.
        omega = rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi)
        return SINC, size, nan, nan, nan, nan, float(omega)
    weights = np.asarray(options.weights, dtype=np.float64)
    kind = str(options.kinds[int(rng.choice(len(weights), p=weights / weights.sum()))])
    shape = BLUR_KERNELS.build(kind)
    sigma_x = float(rng.uniform(*options.sigma))
    sigma_y, theta = (
        (sigma_x, 0.0)
        if shape.isotropic
        else (float(rng.uniform(*options.sigma)), float(rng.uniform(-math.pi, math.pi)))
    )
    beta = nan if shape.beta is None else _beta(rng, *(options.betag if shape.beta == "betag" else options.betap))
    return kind, size, sigma_x, sigma_y, theta, beta, nan


def draw_final_sinc(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple:
    size = int(rng.choice(list(range(size_range[0], size_range[1] + 1, 2))))
    nan = math.nan
    return SINC, size, nan, nan, nan, nan, float(rng.uniform(math.pi / 3, math.pi))


def build(draw: KernelDraw, full: int) -> torch.Tensor:
    """(B, full, full) float32 kernels, each summing to 1, evaluated for the whole batch at once (float64 math)."""
    count = len(draw.kind)
    r = full // 2
    axis = torch.arange(-r, r + 1, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # y: row offset, x: column offset
    out = torch.zeros(count, full, full, dtype=torch.float64)
    if count == 0:
        return out.float()

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.nan_to_num(values, nan=1.0)).view(-1, 1, 1)

    # Inverse covariance of the rotated Gaussian, Sigma = U diag(sx^2, sy^2) U^T: q = [x y] Sigma^-1 [x y]^T.
    sx, sy, theta = column(draw.sigma_x), column(draw.sigma_y), column(draw.theta)
    c, s = torch.cos(theta), torch.sin(theta)
    a = c**2 / sx**2 + s**2 / sy**2
    b = c * s * (1 / sx**2 - 1 / sy**2)
    d = s**2 / sx**2 + c**2 / sy**2
    q = a * x**2 + 2 * b * x * y + d * y**2
    beta = column(draw.beta)
    for kind in sorted(set(draw.kind)):
        rows = torch.tensor([i for i, k in enumerate(draw.kind) if k == kind])
        if kind == NONE:
            out[rows] = 1  # masked to 1 x 1 below: the identity
        elif kind == SINC:
            out[rows] = _circular_lowpass(column(draw.omega)[rows], x, y)
        else:
            out[rows] = BLUR_KERNELS.build(kind).profile(q[rows], beta[rows])
    half = torch.from_numpy(draw.size // 2).view(-1, 1, 1)
    out = out * ((x.abs() <= half) & (y.abs() <= half))  # a size-k kernel padded to full x full
    out = (out / out.sum(dim=(1, 2), keepdim=True)).float()
    # Gaussian tails below float32's normal range are denormals, which x86 multiplies many times slower; as taps
    # they add nothing a float32 sum can hold
    return out.masked_fill_(out.abs() < torch.finfo(torch.float32).tiny, 0)


def _circular_lowpass(omega: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BasicSR's 2-D sinc: omega J1(omega r) / (2 pi r), omega^2 / (4 pi) at the centre."""
    radius = torch.sqrt(x**2 + y**2)
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = omega * torch.special.bessel_j1(omega * safe) / (2 * math.pi * safe)
    return torch.where(radius == 0, omega**2 / (4 * math.pi), kernel)
