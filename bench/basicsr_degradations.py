"""The baseline for bench/degrade_throughput.py: Real-ESRGAN's second-order degradations one image at a time with
NumPy and OpenCV, in the style of BasicSR's `basicsr/data/degradations.py` (the functions below follow it), in
traiNNer-redux's step order and option names, so both sides of the benchmark do the same work.

It is meant to be a fair, efficient per-image implementation, not a straw man: cv2.filter2D (which switches to a DFT
for large kernels), cv2.resize, cv2.imencode for JPEG, numpy's fast Generator for noise, kernels built by the same
closed forms. Images are float32 HxWx3 RGB in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from scipy import special

CV2_MODES = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest-exact": cv2.INTER_NEAREST_EXACT,
}


# --- kernels (BasicSR: mesh_grid, sigma_matrix2, bivariate_*, random_mixed_kernels, circular_lowpass_kernel) ---------


def mesh_grid(k: int) -> np.ndarray:
    ax = np.arange(-k // 2 + 1.0, k // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix2(sx: float, sy: float, theta: float) -> np.ndarray:
    d = np.array([[sx**2, 0], [0, sy**2]])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def bivariate_kernel(kind: str, k: int, sx: float, sy: float, theta: float, beta: float) -> np.ndarray:
    grid = mesh_grid(k)
    inv = np.linalg.inv(sigma_matrix2(sx, sy, theta))
    q = np.sum((grid @ inv) * grid, axis=2)
    if kind in ("iso", "aniso"):
        kernel = np.exp(-0.5 * q)
    elif kind.startswith("generalized"):
        kernel = np.exp(-0.5 * np.power(q, beta))
    else:
        kernel = np.reciprocal(np.power(q, beta) + 1)
    return kernel / np.sum(kernel)


def circular_lowpass_kernel(cutoff: float, k: int, pad_to: int = 0) -> np.ndarray:
    c = (k - 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.fromfunction(
            lambda x, y: (
                cutoff
                * special.j1(cutoff * np.sqrt((x - c) ** 2 + (y - c) ** 2))
                / (2 * np.pi * np.sqrt((x - c) ** 2 + (y - c) ** 2))
            ),
            [k, k],
        )
    kernel[k // 2, k // 2] = cutoff**2 / (4 * np.pi)
    kernel = kernel / np.sum(kernel)
    if pad_to > k:
        p = (pad_to - k) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
    return kernel


def random_mixed_kernel(rng: np.random.Generator, kinds, probs, k: int, sigma, betag, betap) -> np.ndarray:
    kind = kinds[rng.choice(len(kinds), p=np.asarray(probs) / np.sum(probs))]
    sx = rng.uniform(*sigma)
    sy, theta = (
        (sx, 0.0)
        if kind.endswith("iso") and not kind.endswith("aniso")
        else (rng.uniform(*sigma), rng.uniform(-math.pi, math.pi))
    )
    beta = 1.0
    if kind.startswith(("generalized", "plateau")):
        lo, hi = betag if kind.startswith("generalized") else betap
        beta = rng.uniform(lo, 1) if rng.uniform() < 0.5 else rng.uniform(1, hi)
    return bivariate_kernel(kind, k, sx, sy, theta, beta)


def draw_kernel(rng: np.random.Generator, opt: dict[str, Any], suffix: str, pad_to: int) -> np.ndarray:
    lo, hi = opt["kernel_range" + suffix]
    k = int(rng.choice(np.arange(lo, hi + 1, 2)))
    if rng.uniform() < opt["sinc_prob" + suffix]:
        omega = rng.uniform(np.pi / 3, np.pi) if k < 13 else rng.uniform(np.pi / 5, np.pi)
        kernel = circular_lowpass_kernel(omega, k)
    else:
        kernel = random_mixed_kernel(
            rng,
            opt["kernel_list" + suffix],
            opt["kernel_prob" + suffix],
            k,
            opt["blur_sigma" + suffix],
            opt["betag_range" + suffix],
            opt["betap_range" + suffix],
        )
    p = (pad_to - k) // 2
    return np.pad(kernel, ((p, p), (p, p)))


# --- noise, JPEG, USM (BasicSR's numpy versions) ----------------------------------------------------------------------


def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float, gray: bool) -> np.ndarray:
    shape = img.shape[:2] + ((1,) if gray else (3,))
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255)
    return np.clip(img + noise, 0, 1)


def add_poisson_noise(img: np.ndarray, rng: np.random.Generator, scale: float, gray: bool) -> np.ndarray:
    src = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None] if gray else img
    src = np.clip((src * 255.0).round(), 0, 255) / 255.0
    vals = 2 ** np.ceil(np.log2(len(np.unique(src))))
    noise = (rng.poisson(src * vals) / vals - src).astype(np.float32) * np.float32(scale)
    return np.clip(img + noise, 0, 1)


def add_jpeg(img: np.ndarray, quality: float) -> np.ndarray:
    bgr = cv2.cvtColor((np.clip(img, 0, 1) * 255.0).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), round(quality)])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def usm_sharp(img: np.ndarray, radius: int, weight: float = 0.5, threshold: float = 10) -> np.ndarray:
    radius += 1 - radius % 2
    blur = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (radius, radius), 0)
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * img


def _chance(rng: np.random.Generator, p: float) -> bool:
    return rng.uniform() < p


def _resize(img: np.ndarray, rng: np.random.Generator, opt: dict[str, Any], suffix: str, size_of) -> np.ndarray:
    probs = np.asarray(opt["resize_prob" + suffix], dtype=np.float64)
    updown = rng.choice(3, p=probs / probs.sum())
    lo, hi = opt["resize_range" + suffix]
    if updown == 2:
        return img
    factor = rng.uniform(1, hi) if updown == 0 else rng.uniform(lo, 1)
    modes, weights = opt["resize_mode_list" + suffix], np.asarray(opt["resize_mode_prob" + suffix], dtype=np.float64)
    mode = modes[rng.choice(len(modes), p=weights / weights.sum())]
    size = size_of(factor)
    return np.clip(cv2.resize(img, (size, size), interpolation=CV2_MODES[mode]), 0, 1)


def _noise(img: np.ndarray, rng: np.random.Generator, opt: dict[str, Any], suffix: str) -> np.ndarray:
    gray = None
    if _chance(rng, opt["gaussian_noise_prob" + suffix]):
        sigma = rng.uniform(*opt["noise_range" + suffix])
        gray = _chance(rng, opt["gray_noise_prob" + suffix])
        return add_gaussian_noise(img, rng, sigma, gray) if sigma > 0 else img
    scale = rng.uniform(*opt["poisson_scale_range" + suffix])
    gray = _chance(rng, opt["gray_noise_prob" + suffix])
    return add_poisson_noise(img, rng, scale, gray) if scale > 0 else img


def degrade(img: np.ndarray, rng: np.random.Generator, opt: dict[str, Any], scale: int) -> np.ndarray:
    """One HR image (H, W, 3) float32 RGB -> its LR (H/scale, W/scale, 3), traiNNer-redux's OTF step order."""
    h = img.shape[0]
    lq = h // scale
    out = img
    if opt.get("lq_usm"):
        out = usm_sharp(out, int(rng.integers(*opt["lq_usm_radius_range"], endpoint=True)))
    if _chance(rng, opt.get("thicklines_prob", 0)):
        out = out * 0.75 + cv2.erode(out, np.ones((3, 3), np.uint8)) * 0.25
    # first degradation
    if _chance(rng, opt["blur_prob"]):
        out = cv2.filter2D(out, -1, draw_kernel(rng, opt, "", opt["kernel_range"][1]))
    out = _resize(out, rng, opt, "", lambda f: max(1, round(h * f)))
    out = _noise(out, rng, opt, "")
    if _chance(rng, opt["jpeg_prob"]):
        out = add_jpeg(out, rng.uniform(*opt["jpeg_range"]))
    # second degradation
    if _chance(rng, opt["blur_prob2"]):
        out = cv2.filter2D(out, -1, draw_kernel(rng, opt, "2", opt["kernel_range2"][1]))
    out = _resize(out, rng, opt, "2", lambda f: max(1, int(h / scale * f)))
    out = _noise(out, rng, opt, "2")
    # final: [resize back + sinc] and JPEG, in random order
    modes, weights = opt["resize_mode_list3"], np.asarray(opt["resize_mode_prob3"], dtype=np.float64)
    mode = modes[rng.choice(len(modes), p=weights / weights.sum())]
    sinc = None
    if _chance(rng, opt["final_sinc_prob"]):
        lo, hi = opt["final_kernel_range"]
        k = int(rng.choice(np.arange(lo, hi + 1, 2)))
        sinc = circular_lowpass_kernel(rng.uniform(np.pi / 3, np.pi), k, pad_to=hi)
    jpeg_first = rng.uniform() >= 0.5
    do_jpeg, quality = _chance(rng, opt["jpeg_prob2"]), rng.uniform(*opt["jpeg_range2"])

    def resize_back(x: np.ndarray) -> np.ndarray:
        x = np.clip(cv2.resize(x, (lq, lq), interpolation=CV2_MODES[mode]), 0, 1)
        return cv2.filter2D(x, -1, sinc) if sinc is not None else x

    if jpeg_first:
        out = resize_back(add_jpeg(out, quality) if do_jpeg else out)
    else:
        out = resize_back(out)
        out = add_jpeg(out, quality) if do_jpeg else out
    return np.clip((out * 255.0).round(), 0, 255) / 255.0
