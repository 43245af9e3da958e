"""Blur kernels and filters: shapes, normalisation, orientation, and agreement with the plain 2-D definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srcluster.degrade import kernels as K
from srcluster.degrade.filters import blur, gaussian_kernel1d, thicklines, usm_sharpen

pytestmark = pytest.mark.usefixtures("single_thread")


def _build(rows: list[tuple], full: int = 21) -> torch.Tensor:
    return K.build(K.KernelDraw.from_rows(rows), full)


def _variances(kernel: torch.Tensor) -> tuple[float, float]:
    """Spread of a kernel along rows (y) and columns (x)."""
    r = kernel.shape[-1] // 2
    axis = torch.arange(-r, r + 1, dtype=torch.float64)
    k = kernel.double()
    return float((k.sum(1) * axis**2).sum()), float((k.sum(0) * axis**2).sum())


def test_every_kind_sums_to_one_with_the_requested_size() -> None:
    nan = math.nan
    rows = [
        ("iso", 7, 1.5, 1.5, 0.0, nan, nan),
        ("aniso", 13, 3.0, 0.5, 0.7, nan, nan),
        ("generalized_iso", 9, 1.2, 1.2, 0.0, 0.6, nan),
        ("generalized_aniso", 15, 2.0, 0.7, -1.0, 3.0, nan),
        ("plateau_iso", 11, 1.0, 1.0, 0.0, 1.5, nan),
        ("plateau_aniso", 21, 2.5, 1.0, 2.0, 1.2, nan),
        ("sinc", 17, nan, nan, nan, nan, 1.1),
        K.OFF,
    ]
    kernels = _build(rows)
    assert kernels.shape == (8, 21, 21) and kernels.dtype == torch.float32
    torch.testing.assert_close(kernels.sum((1, 2)), torch.ones(8), rtol=0, atol=1e-5)
    for kernel, row in zip(kernels, rows, strict=True):
        r = row[1] // 2
        outside = kernel.clone()
        outside[10 - r : 11 + r, 10 - r : 11 + r] = 0
        assert not outside.any()  # zero outside its own size
        torch.testing.assert_close(kernel, kernel.flip(0).flip(1))  # point-symmetric: correlation == convolution
    assert kernels[-1, 10, 10] == 1 and kernels[-1].abs().sum() == 1  # "none" is the identity


def test_anisotropic_orientation_follows_basicsr() -> None:
    nan = math.nan
    flat, upright = _build([("aniso", 21, 3.0, 0.6, 0.0, nan, nan), ("aniso", 21, 3.0, 0.6, math.pi / 2, nan, nan)])
    var_y, var_x = _variances(flat)
    assert var_x > 10 * var_y  # sigma_x along x (columns): a horizontal streak
    torch.testing.assert_close(upright, flat.T, rtol=0, atol=1e-6)  # rotated by pi/2: the transpose
    # BasicSR's formula, written out for one point: exp(-0.5 [x y] Sigma^-1 [x y]^T), Sigma = U diag U^T
    theta, sx, sy = 0.5, 2.0, 0.7
    (kernel,) = _build([("aniso", 21, sx, sy, theta, nan, nan)])
    u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(u @ np.diag([sx**2, sy**2]) @ u.T)
    grid = np.stack(np.meshgrid(np.arange(-10, 11), np.arange(-10, 11)), -1).astype(float)
    expected = np.exp(-0.5 * np.einsum("...i,ij,...j->...", grid, inv, grid))
    np.testing.assert_allclose(kernel.numpy(), expected / expected.sum(), atol=1e-7)


def test_drawn_kernels_respect_the_options() -> None:
    rng = np.random.default_rng(0)
    options = K.KernelOptions(["iso", "aniso"], [1, 1], (7, 11), 0.0, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0))
    rows = [K.draw_blur(rng, options) for _ in range(200)]
    assert {r[1] for r in rows} == {7, 9, 11} and {r[0] for r in rows} == {"iso", "aniso"}
    assert all(0.2 <= r[2] <= 3.0 for r in rows)
    sinc = K.KernelOptions(["iso"], [1], (7, 21), 1.0, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0))
    assert all(K.draw_blur(rng, sinc)[0] == K.SINC for _ in range(20))
    assert K.KernelDraw.from_rows([K.draw_final_sinc(rng, (7, 21))]).separable.tolist() == [False]


def _laplacian_energy(x: torch.Tensor) -> float:
    lap = x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


def test_blur_is_basicsr_filter2d_and_lowers_high_frequencies() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 40, 40)
    nan = math.nan
    draw = K.KernelDraw.from_rows(
        [
            ("iso", 7, 1.0, 1.0, 0.0, nan, nan),
            ("aniso", 11, 2.0, 0.5, 0.3, nan, nan),
            ("iso", 21, 3.0, 3.0, 0.0, nan, nan),
            ("sinc", 9, nan, nan, nan, nan, 1.5),
        ]
    )
    kernels = K.build(draw, 21)
    out = blur(x, kernels, draw.sizes, draw.separable)  # size groups, one of them separable
    padded = F.pad(x, (10, 10, 10, 10), mode="reflect")  # BasicSR filter2D: reflect padding, then correlation
    expected = torch.cat([F.conv2d(padded[i : i + 1], kernels[i].expand(3, 1, 21, 21), groups=3) for i in range(4)])
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-6)
    for i in range(3):  # the three low-pass kernels
        assert _laplacian_energy(out[i]) < 0.5 * _laplacian_energy(x[i])


def test_usm_is_real_esrgans_and_sharpens() -> None:
    assert gaussian_kernel1d(5).tolist() == [0.0625, 0.25, 0.375, 0.25, 0.0625]  # OpenCV's fixed small kernel
    g = gaussian_kernel1d(51)
    sigma = 0.3 * ((51 - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel(51, 0)
    shape = np.exp(-((np.arange(51) - 25) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(g, shape / shape.sum(), rtol=1e-12)
    torch.manual_seed(1)
    x = F.avg_pool2d(torch.rand(2, 3, 72, 72), 3, 1, 1)  # some structure to sharpen
    out = usm_sharpen(x)  # Real-ESRGAN's USMSharp(): radius 50 -> a 51 x 51 Gaussian, weight 0.5, threshold 10
    # the 2-D definition: blur with the outer-product kernel (reflect padding), soft threshold mask
    k2 = torch.from_numpy(np.outer(g, g)).float().expand(3, 1, 51, 51)

    def filter2d(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(v, (25, 25, 25, 25), mode="reflect"), k2, groups=3)

    residual = x - filter2d(x)
    soft = filter2d((residual.abs() * 255 > 10).float())
    expected = soft * (x + 0.5 * residual).clamp(0, 1) + (1 - soft) * x
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert _laplacian_energy(out) > _laplacian_energy(x)


def test_thicklines_darkens_towards_the_local_minimum() -> None:
    x = torch.ones(1, 3, 9, 9)
    x[..., 4, :] = 0  # a one-pixel dark line
    out = thicklines(x)
    assert out[0, 0, 3, 4] == pytest.approx(0.75) and out[0, 0, 0, 4] == 1 and out[0, 0, 4, 4] == 0
