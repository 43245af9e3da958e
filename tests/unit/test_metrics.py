"""PSNR / SSIM as SR papers compute them: closed-form cases and scikit-image as an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from srcluster.components.metrics import psnr, quantize, rgb_to_y, ssim


def _images(seed: int, shape: tuple[int, ...] = (2, 3, 48, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded uint8 image pair with structure (smoothed noise) and a noisy, shifted copy of it."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(shape, generator=g, dtype=torch.float64)
    base = torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1, count_include_pad=False)
    other = base * 0.8 + 0.1 + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)
    return quantize(base), quantize(other)


def _skimage_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None) -> float:
    # skimage filters with reflection but then averages only the interior at least (win_size - 1) / 2 = 5 pixels
    # from the border, i.e. exactly the 'valid' region BasicSR uses.
    return float(
        structural_similarity(
            a.astype(np.float64),
            b.astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=channel_axis,
        )
    )


def test_identical_images() -> None:
    a, _ = _images(0)
    for x in (a, a.double() / 255):
        for y_only in (False, True):
            p = psnr(x, x.clone(), crop_border=2, test_y_channel=y_only)
            s = ssim(x, x.clone(), crop_border=2, test_y_channel=y_only)
            assert p.shape == s.shape == (2,)
            assert bool(torch.isinf(p).all()) and bool((p > 0).all())  # documented: +inf, no cap
            torch.testing.assert_close(s, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_psnr_of_constant_offset(offset: int) -> None:
    a = torch.randint(0, 200, (2, 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    b = a + offset
    # Every pixel differs by `offset`: MSE = offset^2.
    expected = 20 * math.log10(255 / offset)
    torch.testing.assert_close(psnr(a, b), torch.full((2,), expected, dtype=torch.float64))
    # On Y an equal offset on R, G and B moves Y by offset * 219 / 255.
    expected_y = 20 * math.log10(255 / (offset * 219 / 255))
    torch.testing.assert_close(psnr(a, b, test_y_channel=True), torch.full((2,), expected_y, dtype=torch.float64))


def test_psnr_hand_computed() -> None:
    a = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    b = torch.tensor([[[[0, 2], [4, 6]]]], dtype=torch.uint8)
    mse = (0 + 4 + 16 + 36) / 4
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)


def test_crop_border_ignores_the_border() -> None:
    a, _ = _images(2)
    b = a.clone()
    b[..., :3, :] = 0
    b[..., :, -3:] = 255
    assert bool(torch.isfinite(psnr(a, b, crop_border=2)).all())
    assert bool(torch.isinf(psnr(a, b, crop_border=3)).all())
    assert ssim(a, b, crop_border=3).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    with pytest.raises(ValueError, match="leaves nothing"):
        psnr(a, b, crop_border=20)


@pytest.mark.parametrize("seed", [3, 4])
def test_ssim_matches_skimage(seed: int) -> None:
    a, b = _images(seed)
    ours = ssim(a, b)
    assert ours.shape == (2,)
    for i in range(2):
        ref = _skimage_ssim(a[i].numpy(), b[i].numpy(), channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)
        assert 0.05 < ref < 0.95  # a pair that is neither identical nor unrelated
        # Gray and Y-channel paths against skimage on the same Y image.
        y_a, y_b = rgb_to_y(a[i].double()), rgb_to_y(b[i].double())
        ref_y = _skimage_ssim(y_a[0].numpy(), y_b[0].numpy(), channel_axis=None)
        assert ssim(a[i : i + 1], b[i : i + 1], test_y_channel=True).item() == pytest.approx(ref_y, abs=1e-3)
        ref_crop = _skimage_ssim(a[i, :, 4:-4, 4:-4].numpy(), b[i, :, 4:-4, 4:-4].numpy(), channel_axis=0)
        assert ssim(a[i : i + 1], b[i : i + 1], crop_border=4).item() == pytest.approx(ref_crop, abs=1e-3)


def test_ssim_agrees_with_skimage_much_closer_than_required() -> None:
    # Same window, constants and region: the two should agree to rounding error, not just to 1e-3.
    a, b = _images(5, (1, 1, 64, 64))
    ref = _skimage_ssim(a[0, 0].numpy(), b[0, 0].numpy(), channel_axis=None)
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-9)


def test_rgb_to_y_values() -> None:
    rgb = torch.tensor([[0, 255, 255, 0, 0], [0, 255, 0, 255, 0], [0, 255, 0, 0, 255]], dtype=torch.float64)
    y = rgb_to_y(rgb.view(1, 3, 1, 5)).flatten()
    expected = torch.tensor([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966], dtype=torch.float64)
    torch.testing.assert_close(y, expected)


def test_gray_is_treated_as_rgb_with_equal_channels() -> None:
    gray, other = _images(6, (2, 1, 32, 32))
    rgb, other_rgb = gray.expand(2, 3, 32, 32), other.expand(2, 3, 32, 32)
    torch.testing.assert_close(rgb_to_y(gray.double()), rgb_to_y(rgb.double()))
    torch.testing.assert_close(psnr(gray, other, 2, True), psnr(rgb, other_rgb, 2, True))
    torch.testing.assert_close(ssim(gray, other, 2, True), ssim(rgb, other_rgb, 2, True))
    # Without Y conversion a gray image is scored on its own single channel.
    ref = [_skimage_ssim(gray[i, 0].numpy(), other[i, 0].numpy(), None) for i in range(2)]
    assert ssim(gray, other).tolist() == pytest.approx(ref, abs=1e-9)


def test_float_and_uint8_inputs_agree() -> None:
    a, b = _images(7)
    fa, fb = a.float() / 255, b.float() / 255
    torch.testing.assert_close(psnr(fa, fb, 4, True), psnr(a, b, 4, True), rtol=0, atol=1e-4)
    torch.testing.assert_close(ssim(fa, fb, 4, True), ssim(a, b, 4, True), rtol=0, atol=1e-6)
    torch.testing.assert_close(psnr(a[0], b[0]), psnr(a, b)[:1])  # (C, H, W) is a batch of one


def test_batched_equals_per_image() -> None:
    a, b = _images(8, (4, 3, 30, 30))
    for metric in (psnr, ssim):
        batched = metric(a, b, 3, True)
        single = torch.cat([metric(a[i : i + 1], b[i : i + 1], 3, True) for i in range(4)])
        torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)


def test_quantize_rounds_like_tensor2img() -> None:
    x = torch.tensor([-0.2, 0.0, 0.4 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.3])
    assert quantize(x).tolist() == [0, 0, 0, 1, 2, 255, 255]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    a, b = _images(9)
    for metric in (psnr, ssim):
        gpu = metric(a.cuda(), b.cuda(), 4, True)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), metric(a, b, 4, True), rtol=0, atol=1e-9)
