"""Noise, JPEG (libjpeg, its batched model and traiNNer-redux's DiffJPEG) and video codecs: each moves the image the
way it should, by the right amount."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from srcluster.degrade.jpeg import diff_jpeg, jpeg_pil, libjpeg_model
from srcluster.degrade.noise import GAUSSIAN, POISSON, Noise, add_noise
from srcluster.degrade.poisson import poisson_from_uniform
from srcluster.degrade.video import CODECS, encode_clip

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """(2, 3, 64, 72) in [0, 1]: two real photo crops (JPEG and codecs need real content to be meaningful)."""
    crops = [data.astronaut()[60:124, 180:252], data.coffee()[100:164, 200:272]]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _noise(kind: int, strength: float, gray: bool, count: int = 1) -> Noise:
    return Noise(
        np.full(count, kind, dtype=np.int8),
        np.full(count, strength),
        np.full(count, gray),
        np.arange(count, dtype=np.int64) + 7,
    )


def test_gaussian_noise_has_the_requested_sigma_inside_the_image_only() -> None:
    canvas = torch.full((1, 3, 80, 80), 0.5)
    out = add_noise(canvas.clone(), _noise(GAUSSIAN, 20.0, False), np.array([0]), np.array([64]), offset=8)
    inside, outside = out[..., 8:72, 8:72], out.clone()
    outside[..., 8:72, 8:72] = 0.5
    assert float((inside - 0.5).std()) * 255 == pytest.approx(20, rel=0.05)
    assert torch.equal(outside, canvas)  # the canvas around the image is untouched
    gray = add_noise(canvas.clone(), _noise(GAUSSIAN, 20.0, True), np.array([0]), np.array([64]), offset=8)
    assert torch.equal(gray[0, 0], gray[0, 1]) and torch.equal(gray[0, 1], gray[0, 2])


def test_poisson_noise_follows_basicsr() -> None:
    # a flat image at level 200 with 256 distinct levels elsewhere: counts ~ Poisson(200/255 * 256) / 256
    image = torch.linspace(0, 1, 256).repeat(3, 256, 1).unsqueeze(0)
    image[..., :128, :] = 200 / 255
    out = add_noise(image.clone(), _noise(POISSON, 1.0, False), np.array([0]), np.array([256]))
    flat = (out - image)[..., 4:124, 4:252] * 256  # noise in counts
    rate = 200 / 255 * 256
    assert float(flat.var()) == pytest.approx(rate, rel=0.05)  # shot noise: variance = rate
    assert abs(float(flat.mean())) < 0.5
    # the sampler itself: mean and variance of Poisson, exactly zero for rate 0
    levels = torch.tensor([0.0, 3.0, 200.0]).repeat_interleave(100_000)
    counts = poisson_from_uniform(levels, torch.tensor([4.0]), torch.rand(levels.shape), torch.rand(levels.shape))
    for i, level in enumerate((0, 3, 200)):
        part, rate = counts[i * 100_000 : (i + 1) * 100_000], level / 255 * 4
        assert float(part.mean()) == pytest.approx(rate, abs=0.01 + 0.02 * rate)
        assert float(part.var()) == pytest.approx(rate, abs=0.01 + 0.03 * rate)


def test_jpeg_psnr_falls_monotonically_with_quality(photo: torch.Tensor) -> None:
    qualities = [95, 75, 50, 25, 10, 5]
    for codec in (
        lambda x, q: jpeg_pil(x, [q] * len(x)),
        lambda x, q: libjpeg_model(x, torch.full((len(x),), float(q))),
        lambda x, q: diff_jpeg(x, torch.full((len(x),), float(q))),
    ):
        psnrs = [_psnr(codec(photo, q), photo) for q in qualities]
        assert psnrs == sorted(psnrs, reverse=True), psnrs
        assert psnrs[0] - psnrs[-1] > 8


def test_libjpeg_model_is_close_to_libjpeg(photo: torch.Tensor) -> None:
    for q in (10, 50, 90):
        real = jpeg_pil(photo, [q, q])
        model = libjpeg_model(photo, torch.tensor([q, q], dtype=torch.float32))
        assert _psnr(model, real) > 38  # a few levels apart at most, against 27-40 dB of JPEG loss itself
        assert abs(_psnr(model, photo) - _psnr(real, photo)) < 0.3
    odd = photo[..., :37, :45]  # sizes that are not multiples of the 16 x 16 macroblock
    assert libjpeg_model(odd, torch.tensor([50.0, 50.0])).shape == odd.shape
    assert diff_jpeg(odd, torch.tensor([50.0, 50.0])).shape == odd.shape


@pytest.mark.parametrize(
    ("model", "least"),
    [(libjpeg_model, 0.5), (diff_jpeg, 0.1)],  # redux's round(x) + (x - round(x))**3 passes less than straight-through
)
def test_jpeg_models_pass_gradients_when_asked(photo: torch.Tensor, model, least: float) -> None:
    x = photo.clone().requires_grad_(True)
    model(x, torch.tensor([50.0, 50.0]), differentiable=True).sum().backward()
    assert x.grad is not None and bool(x.grad.isfinite().all()) and float(x.grad.abs().mean()) > least


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_h264_psnr_falls_monotonically_with_crf(photo: torch.Tensor) -> None:
    image = _u8(photo[0])
    psnrs = []
    for crf in (5, 20, 35, 51):
        out = encode_clip(image, "h264", crf, preset="medium", motion=(1, -2), frames=2)
        assert out.shape == image.shape and out.dtype == np.uint8
        psnrs.append(_psnr(torch.from_numpy(out).float() / 255, torch.from_numpy(image).float() / 255))
    assert psnrs == sorted(psnrs, reverse=True) and psnrs[0] - psnrs[-1] > 10, psnrs


@pytest.mark.parametrize("codec", sorted(CODECS.names()))
def test_every_codec_round_trips_odd_sizes(photo: torch.Tensor, codec: str) -> None:
    image = _u8(photo[1])[:37, :45]  # odd sizes: padded to even for 4:2:0 and cropped back
    spec = CODECS.build(codec)
    low, high = (5, 45) if spec.quality == "crf" else (2, 28)
    good = encode_clip(image, codec, low, chroma=spec.chroma[0], frames=3, motion=(2, 1))
    bad = encode_clip(image, codec, high, chroma=spec.chroma[0], frames=3, motion=(2, 1))
    ref = torch.from_numpy(image).float() / 255
    assert good.shape == image.shape == bad.shape
    assert _psnr(torch.from_numpy(good).float() / 255, ref) > _psnr(torch.from_numpy(bad).float() / 255, ref) + 2
    assert encode_clip(image, codec, 0, bpp=0.5).shape == image.shape  # bitrate mode
    rng = np.random.default_rng(0)
    for h, w in rng.integers(3, 70, size=(6, 2)):  # tiny and odd frames (x265 has a 16-pixel minimum; we pad)
        small = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert encode_clip(small, codec, low, frames=2, motion=(1, 1)).shape == (h, w, 3)
