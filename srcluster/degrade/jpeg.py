"""JPEG compression, three ways: traiNNer-redux's DiffJPEG (the default), the real codec, and a model of the codec.

* `diff_jpeg`: what traiNNer-redux's OTF pipeline does (its `DiffJPEG(differentiable=False)`): continuous quality
  (the drawn float quality scales the tables, no rounding or clamping of the tables), float YCbCr without 8-bit
  rounding, 4:2:0 by 2 x 2 averaging, nearest chroma upsampling, zero padding to 16 x 16 macroblocks, round half to
  even, and the quantisation tables indexed transposed, as redux's are (its tables are the standard ones `.T`). About
  0.6-1.0 dB harsher than libjpeg at the same quality. Batched torch on any device: the default in the data workers
  and in the step (`jpeg_backend: diffjpeg`).
* `jpeg_codec` / `jpeg_pil`: libjpeg-turbo itself through OpenCV (as BasicSR's cv2.imencode), one image at a time.
* `libjpeg_model`: libjpeg's baseline path step by step as batched torch (8-bit YCbCr, 4:2:0 by averaging, integer
  tables scaled and clamped as `jpeg_quality_scaling` does, rounding half away from zero, range-limited IDCT,
  triangular "fancy" chroma upsampling): within a few levels of the codec, on the device.

`jpeg_backend: libjpeg` runs the codec on CPU and its model on GPUs; `libjpeg_codec` / `libjpeg_model` force one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np
import torch

# ITU T.81 Annex K tables (libjpeg's std_luminance_quant_tbl / std_chrominance_quant_tbl), row-major.
_LUMA = [
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
]
_CHROMA = [
    17,
    18,
    24,
    47,
    99,
    99,
    99,
    99,
    18,
    21,
    26,
    66,
    99,
    99,
    99,
    99,
    24,
    26,
    56,
    99,
    99,
    99,
    99,
    99,
    47,
    66,
    99,
    99,
    99,
    99,
    99,
    99,
] + [99] * 32


def pil_quality(q: float) -> int:
    return int(min(100, max(1, round(q))))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 numpy, rounded as cv2.imencode rounds a float image."""
    return (images.detach().clamp(0, 1) * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8(arrays: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).to(like.device, like.dtype).div_(255)


def jpeg_codec(image: np.ndarray, quality: float) -> np.ndarray:
    """Encode and decode one (H, W, 3) uint8 RGB image with libjpeg-turbo (OpenCV's, 4:2:0, as BasicSR's
    cv2.imencode; the same bytes as PIL's at the same quality, at half the overhead)."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, pil_quality(quality)]
    )
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode a {image.shape} image")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError(f"OpenCV could not decode its own JPEG of a {image.shape} image")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def jpeg_pil(images: torch.Tensor, qualities: Sequence[float]) -> torch.Tensor:
    """JPEG each (3, H, W) image in [0, 1] through the codec; same shape, device and dtype back."""
    arrays = to_uint8(images)
    for i, q in enumerate(qualities):
        arrays[i] = jpeg_codec(arrays[i], q)
    return from_uint8(arrays, images)


# --- libjpeg's baseline path, batched ---------------------------------------------------------------------------------


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's tables for integer quality 1..100 (jpeg_set_quality with force_baseline): (B, 8, 8) each."""
    q = quality.round().clamp(1, 100).view(-1, 1, 1)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)

    def table(base: list[int]) -> torch.Tensor:
        t = torch.tensor(base, dtype=quality.dtype, device=quality.device).view(1, 8, 8)
        return torch.floor((t * scale + 50) / 100).clamp(1, 255)

    return table(_LUMA), table(_CHROMA)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device, dtype)  # orthonormal DCT-II: JPEG's F(u, v) is m @ block @ m.T


def _round(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    hard = torch.sign(x) * torch.floor(x.abs() + 0.5)  # libjpeg rounds half away from zero
    return x + (hard - x).detach() if differentiable else hard


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    b, h, w = plane.shape
    return plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    b, hb, wb = blocks.shape[:3]
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, hb * 8, wb * 8)


def _code(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """Level shift, DCT, quantise, dequantise, IDCT and range-limit one 8-bit plane (B, H, W), sides multiples of 8."""
    blocks = _blocks(plane - 128)
    coeff = dct @ blocks @ dct.T
    t = table.view(-1, 1, 1, 8, 8)
    coeff = _round(coeff / t, differentiable) * t
    return _round(_unblocks(dct.T @ coeff @ dct) + 128, differentiable).clamp(0, 255)


def _fancy_upsample(c: torch.Tensor) -> torch.Tensor:
    """libjpeg's h2v2 "fancy" upsampling: each output sample is 3/4 of the nearer and 1/4 of the farther input."""

    def axis(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)

    return axis(axis(c, 1), 2)


def libjpeg_model(images: torch.Tensor, quality: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """libjpeg's JPEG (baseline, 4:2:0) of (B, 3, H, W) in [0, 1] at per-sample quality (B,), on the images' device.

    With `differentiable`, rounding passes gradients straight through; otherwise it is libjpeg's rounding exactly.
    """
    _b, _, h, w = images.shape
    dtype = torch.float32 if images.dtype in (torch.float16, torch.bfloat16) else images.dtype
    x = _round(images.to(dtype).clamp(0, 1) * 255, differentiable)
    # libjpeg fills a partial MCU by repeating the last row and column
    ph, pw = -h % 16, -w % 16
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    r, g, bl = x.unbind(1)
    y = _round(0.299 * r + 0.587 * g + 0.114 * bl, differentiable).clamp(0, 255)
    cb = _round(-0.168736 * r - 0.331264 * g + 0.5 * bl + 128, differentiable).clamp(0, 255)
    cr = _round(0.5 * r - 0.418688 * g - 0.081312 * bl + 128, differentiable).clamp(0, 255)
    cb, cr = (_round(torch.nn.functional.avg_pool2d(c.unsqueeze(1), 2).squeeze(1), differentiable) for c in (cb, cr))
    luma_table, chroma_table = quant_tables(quality.to(images.device, dtype))
    dct = _dct_matrix(images.device, dtype)
    y = _code(y, luma_table, dct, differentiable)
    cb = _fancy_upsample(_code(cb, chroma_table, dct, differentiable))
    cr = _fancy_upsample(_code(cr, chroma_table, dct, differentiable))
    rgb = torch.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], 1
    )
    rgb = _round(rgb, differentiable).clamp(0, 255)[..., :h, :w]
    return (rgb / 255).to(images.dtype)


# --- traiNNer-redux's DiffJPEG ----------------------------------------------------------------------------------------


def redux_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """traiNNer-redux's quantisation tables for a float quality per sample: (B, 8, 8) luma and chroma.

    The quality is not rounded and the scaled tables are neither floored nor clamped (redux's `quality_to_factor`),
    and redux indexes its tables transposed (vertical frequency by the standard's column); both change the artifacts,
    so both are kept. Quality 100 gives a zero table: there the coefficients pass unquantised (redux divides by zero).
    """
    q = quality.view(-1, 1, 1)
    factor = torch.where(q < 50, 5000.0 / q, 200.0 - q * 2) / 100.0
    luma, chroma, _ = _redux_constants(quality.device, quality.dtype)
    return luma * factor, chroma * factor


@lru_cache(maxsize=16)
def _redux_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transposed base tables (1, 8, 8) and the (64, 64) 2-D DCT on `device`, made once (no copy per call)."""

    def table(base: list[int]) -> torch.Tensor:
        return torch.tensor(base, dtype=dtype).view(1, 8, 8).transpose(1, 2).contiguous().to(device)

    dct = _dct_matrix(torch.device("cpu"), torch.float64)
    dct64 = torch.kron(dct, dct).to(device, dtype)  # vec(D X D^T) = (D kron D) vec(X), row-major
    return table(_LUMA), table(_CHROMA), dct64


def _redux_round(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    hard = torch.round(x)  # half to even, as torch.round
    return hard + (x - hard) ** 3 if differentiable else hard  # redux's diff_round when differentiable


def _redux_code(plane: torch.Tensor, table: torch.Tensor, dct64: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """DCT, quantise, dequantise and inverse DCT one float plane (B, H, W) (sides multiples of 8), not rounded.

    Each 8 x 8 block is a row of 64 and the 2-D DCT one (64, 64) matrix (`dct64`): one large matrix product per
    plane, as redux's tensordot computes it, rather than many tiny ones."""
    blocks = _blocks(plane - 128)
    shape = blocks.shape
    coeff = blocks.reshape(shape[0], -1, 64) @ dct64.T
    t = table.reshape(-1, 1, 64)
    safe = torch.where(t > 0, t, torch.ones_like(t))
    coeff = torch.where(t > 0, _redux_round(coeff / safe, differentiable) * t, coeff)
    return _unblocks((coeff @ dct64).view(shape)) + 128


def diff_jpeg(images: torch.Tensor, quality: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """traiNNer-redux's JPEG (its DiffJPEG as its OTF pipeline calls it) of (B, 3, H, W) at per-sample float quality
    (B,), on the images' device; clamped to [0, 1] first, as redux's pipeline clamps before its jpeger.

    With `differentiable`, rounding is redux's differentiable `round(x) + (x - round(x))**3`."""
    _b, _, h, w = images.shape
    dtype = torch.float32 if images.dtype in (torch.float16, torch.bfloat16) else images.dtype
    x = images.to(dtype).clamp(0, 1) * 255
    x = torch.nn.functional.pad(x, (0, -w % 16, 0, -h % 16))  # zeros, to whole 16 x 16 macroblocks
    r, g, bl = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128
    cb, cr = (torch.nn.functional.avg_pool2d(c.unsqueeze(1), 2).squeeze(1) for c in (cb, cr))
    luma_table, chroma_table = redux_tables(quality.to(images.device, dtype))
    dct64 = _redux_constants(images.device, dtype)[2]
    y = _redux_code(y, luma_table, dct64, differentiable)
    cb, cr = (
        _redux_code(c, chroma_table, dct64, differentiable).repeat_interleave(2, 1).repeat_interleave(2, 2)
        for c in (cb, cr)
    )  # nearest chroma upsampling
    cb, cr = cb - 128, cr - 128
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (rgb.clamp(0, 255)[..., :h, :w] / 255).to(images.dtype)
