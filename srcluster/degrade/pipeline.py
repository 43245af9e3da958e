"""HR -> LR on the fly: `draw` a plan per batch (cheap, in the data workers), `apply` it on any device.

The order is traiNNer-redux's Real-ESRGAN pipeline (its `RealESRGANModel.feed_data`):

    [lq_usm] [thick lines] [blur] resize(up/down/keep) noise(gaussian|poisson) [jpeg]          first degradation
    [blur2] resize2(up/down/keep, around the LR size) noise2                                    second degradation
    either  resize to LR + [sinc] then [jpeg2]   or   [jpeg2] then resize to LR + [sinc]        (50/50 per sample)
    round to 8 bits, then srcluster's [video codec] on the LR image as a short clip

With `high_order_degradation` off the LR is the MATLAB bicubic downscale (as srcluster trains fidelity stages), then
the video codec if one is configured.

Real-ESRGAN draws resize factors, noise and JPEG qualities once per *batch* and needs a pool of past batches to mix
them; here every sample draws all of its own parameters from its own seed (see `seeds.sample_seed`), so a sample's LR
does not depend on its batch, its rank or the number of workers. Between the first and the final resize samples
have different sizes: they go through in groups that need the same canvas (sides on a ladder of 4 per octave; see
`resample` for the layouts), a handful of groups per batch rather than one call per sample, and a sample's arithmetic
depends only on its own sizes, so the same seed gives bit-identical LR however batches are cut. All sizes are known on
the host from the plan, so `apply` never waits for the device (no `.item()`). The only per-sample loops are drawing
each sample's noise from its own stream, and the real codecs (libjpeg on CPU, video), which code one image at a time
by nature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from srcluster.degrade import kernels as K
from srcluster.degrade.config import Degradations
from srcluster.degrade.filters import blur, blur_canvas, thicklines, usm_sharpen, usm_taps
from srcluster.degrade.host import to_device
from srcluster.degrade.jpeg import diff_jpeg, from_uint8, jpeg_codec, pil_quality, to_uint8
from srcluster.degrade.noise import GAUSSIAN, NONE, POISSON, Noise, add_noise
from srcluster.degrade.resample import MODE_KERNELS, axis_tables, dense_matrices, resample, resample_dense
from srcluster.degrade.resize import contributions
from srcluster.degrade.resize import imresize
from srcluster.degrade.seeds import child_seed, sample_rng
from srcluster.degrade.video import CODECS, encode_clip

UP, DOWN, KEEP = 0, 1, 2
MCU = 16  # JPEG's 4:2:0 macroblock: canvas offsets are multiples of it so DiffJPEG's blocks line up with the image


@dataclass
class Resize:
    updown: np.ndarray  # UP, DOWN or KEEP
    factor: np.ndarray
    mode: list[str]  # traiNNer-redux's resize mode names
    size: np.ndarray  # output side length

    def describe(self, i: int, name: str) -> str | None:
        if self.updown[i] == KEEP:
            return None
        way = "up" if self.updown[i] == UP else "down"
        return f"{name} {way} x{self.factor[i]:.2f} {self.mode[i]} -> {self.size[i]}px"


@dataclass
class Jpeg:
    on: np.ndarray
    quality: np.ndarray

    def describe(self, i: int, name: str) -> str | None:
        return f"{name} q{pil_quality(self.quality[i])}" if self.on[i] else None


@dataclass
class Codec:
    on: np.ndarray
    name: list[str]
    quality: np.ndarray  # CRF or qscale (unused when bpp is set)
    bpp: np.ndarray  # NaN: quality mode
    preset: list[str]
    chroma: list[str]
    motion: np.ndarray  # (B, 2) dy, dx of the first clip frame
    frames: int

    def describe(self, i: int) -> str | None:
        if not self.on[i]:
            return None
        spec = CODECS.build(self.name[i])
        rate = f"{self.bpp[i]:.2f} bpp" if not np.isnan(self.bpp[i]) else f"{spec.quality} {int(self.quality[i])}"
        preset = f" {self.preset[i]}" if spec.presets else ""
        clip = f", {self.frames}-frame clip moving {tuple(int(v) for v in self.motion[i])}" if self.frames > 1 else ""
        return f"{self.name[i]} {rate}{preset} {self.chroma[i][0]}:{self.chroma[i][1]}:{self.chroma[i][2]}{clip}"


@dataclass
class Plan:
    """Every random choice for a batch, per sample; numpy arrays and CPU tensors, so it pickles from data workers."""

    scale: int
    gt_size: int
    high_order: bool
    jpeg_backend: str
    seeds: np.ndarray
    usm_radius: np.ndarray  # 0: no lq_usm
    usm_length: int  # taps of every sample's USM Gaussian (the config's largest radius), for batch independence
    thick: np.ndarray
    blur1: np.ndarray
    kernel1: K.KernelDraw
    kernels1: torch.Tensor  # (B, K1, K1)
    resize1: Resize
    noise1: Noise
    jpeg1: Jpeg
    blur2: np.ndarray
    kernel2: K.KernelDraw
    kernels2: torch.Tensor
    resize2: Resize
    noise2: Noise
    resize3: Resize
    sinc: np.ndarray
    kernel3: K.KernelDraw
    kernels3: torch.Tensor
    jpeg2: Jpeg
    jpeg2_first: np.ndarray  # True: JPEG before the final resize + sinc, False: after
    codec: Codec

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def lq_size(self) -> int:
        return self.gt_size // self.scale


# --- drawing ----------------------------------------------------------------------------------------------------------


def _chance(rng: np.random.Generator, p: float) -> bool:
    return p >= 1 or (p > 0 and rng.uniform() < p)


def _pick(rng: np.random.Generator, items: Sequence, weights: Sequence[float]):
    w = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(w), p=w / w.sum()))]


def _draw_resize(rng: np.random.Generator, probs: Sequence[float], bounds: tuple[float, float], modes: Sequence[str],
            mode_probs: Sequence[float]) -> tuple[int, float, str]:
    updown = int(_pick(rng, [UP, DOWN, KEEP], probs))
    if updown == KEEP:
        return KEEP, 1.0, "keep"
    factor = rng.uniform(1, bounds[1]) if updown == UP else rng.uniform(bounds[0], 1)
    return updown, float(factor), _pick(rng, list(modes), mode_probs)


def _noise(rng: np.random.Generator, p_gauss: float, sigma: tuple[float, float], poisson: tuple[float, float],
           p_gray: float) -> tuple[int, float, bool, int]:
    # traiNNer: Gaussian with probability p, Poisson otherwise; a zero range adds nothing, so it is skipped
    kind, strength = (GAUSSIAN, rng.uniform(*sigma)) if _chance(rng, p_gauss) else (POISSON, rng.uniform(*poisson))
    gray = _chance(rng, p_gray)
    return (kind if strength > 0 else NONE), float(strength), gray, child_seed(rng)


def _kernel_options(cfg: Degradations, second: bool) -> K.KernelOptions:
    s = "2" if second else ""
    return K.KernelOptions(getattr(cfg, "kernel_list" + s), getattr(cfg, "kernel_prob" + s),
                           getattr(cfg, "kernel_range" + s), getattr(cfg, "sinc_prob" + s),
                           getattr(cfg, "blur_sigma" + s), getattr(cfg, "betag_range" + s),
                           getattr(cfg, "betap_range" + s))


def _draw_sample(rng: np.random.Generator, cfg: Degradations, scale: int, gt: int) -> dict:
    """All of one sample's choices, in pipeline order, from its own generator."""
    row: dict = {}
    if cfg.high_order_degradation:
        lo, hi = cfg.lq_usm_radius_range
        row["usm"] = int(rng.integers(lo, hi, endpoint=True)) if cfg.lq_usm else 0
        row["thick"] = _chance(rng, cfg.thicklines_prob)
        row["blur1"] = _chance(rng, cfg.blur_prob)
        row["kernel1"] = K.draw_blur(rng, _kernel_options(cfg, False)) if row["blur1"] else K.OFF
        row["resize1"] = _draw_resize(rng, cfg.resize_prob, cfg.resize_range, cfg.resize_mode_list,
                                      cfg.resize_mode_prob)
        row["size1"] = max(1, round(gt * row["resize1"][1]))  # traiNNer's resize_pt: round(H * factor)
        row["noise1"] = _noise(rng, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range,
                               cfg.gray_noise_prob)
        row["jpeg1"] = (_chance(rng, cfg.jpeg_prob), float(rng.uniform(*cfg.jpeg_range)))
        row["blur2"] = _chance(rng, cfg.blur_prob2)
        row["kernel2"] = K.draw_blur(rng, _kernel_options(cfg, True)) if row["blur2"] else K.OFF
        row["resize2"] = _draw_resize(rng, cfg.resize_prob2, cfg.resize_range2, cfg.resize_mode_list2,
                                 cfg.resize_mode_prob2)
        # traiNNer: the second resize is relative to the LR size, and "keep" keeps the current size
        keep = row["resize2"][0] == KEEP
        row["size2"] = row["size1"] if keep else max(1, int(gt / scale * row["resize2"][1]))
        row["noise2"] = _noise(rng, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
                               cfg.gray_noise_prob2)
        row["jpeg2_first"] = bool(rng.uniform() >= 0.5)
        row["mode3"] = _pick(rng, list(cfg.resize_mode_list3), cfg.resize_mode_prob3)
        row["sinc"] = _chance(rng, cfg.final_sinc_prob)
        row["kernel3"] = K.draw_final_sinc(rng, cfg.final_kernel_range) if row["sinc"] else K.OFF
        row["jpeg2"] = (_chance(rng, cfg.jpeg_prob2), float(rng.uniform(*cfg.jpeg_range2)))
    on = _chance(rng, cfg.video_codec_prob)
    name = _pick(rng, cfg.video_codec_list, cfg.video_codec_prob_list)
    spec = CODECS.build(name)
    if cfg.video_bpp_range is not None:
        quality, bpp = np.nan, float(rng.uniform(*cfg.video_bpp_range))
    else:
        bounds = cfg.video_crf_range if spec.quality == "crf" else cfg.video_qscale_range
        quality, bpp = float(rng.integers(bounds[0], bounds[1], endpoint=True)), np.nan
    m = cfg.video_clip_motion if cfg.video_clip_frames > 1 else 0
    motion = tuple(int(v) for v in rng.integers(-m, m, size=2, endpoint=True))
    row["codec"] = (on, name, quality, bpp, str(rng.choice(cfg.video_preset_list)),
                    str(rng.choice(cfg.video_chroma_list)), motion)
    return row


def draw(cfg: Degradations, seeds: Sequence[int], scale: int, gt_size: int) -> Plan:
    """Draw every sample's degradation parameters (numpy, per-sample generators) and build its kernels (batched)."""
    if gt_size % scale:
        raise ValueError(f"gt_size {gt_size} is not a multiple of scale {scale}")
    seeds = np.asarray([int(s) for s in seeds], dtype=np.int64)
    rows = [_draw_sample(sample_rng(int(s)), cfg, scale, gt_size) for s in seeds]
    n, lq = len(rows), gt_size // scale

    def col(key: str, dtype=None) -> np.ndarray:
        return np.asarray([r[key] for r in rows], dtype=dtype)

    def resize(key: str, size_key: str) -> Resize:
        updown, factor, mode = zip(*(r[key] for r in rows)) if rows else ((), (), ())
        return Resize(np.asarray(updown, dtype=np.int8), np.asarray(factor), list(mode), col(size_key, np.int64))

    def noise(key: str) -> Noise:
        kind, strength, gray, seed = zip(*(r[key] for r in rows)) if rows else ((), (), (), ())
        return Noise(np.asarray(kind, dtype=np.int8), np.asarray(strength), np.asarray(gray, dtype=bool),
                     np.asarray(seed, dtype=np.int64))

    def jpeg(key: str) -> Jpeg:
        on, quality = zip(*(r[key] for r in rows)) if rows else ((), ())
        return Jpeg(np.asarray(on, dtype=bool), np.asarray(quality))

    def kernel(key: str, full: int) -> tuple[K.KernelDraw, torch.Tensor]:
        params = K.KernelDraw.from_rows([r[key] for r in rows])
        return params, K.build(params, full)

    on, name, quality, bpp, preset, chroma, motion = zip(*(r["codec"] for r in rows)) if rows else ((),) * 7
    codec = Codec(np.asarray(on, dtype=bool), list(name), np.asarray(quality), np.asarray(bpp), list(preset),
                  list(chroma), np.asarray(motion, dtype=np.int64).reshape(n, 2), cfg.video_clip_frames)
    if not cfg.high_order_degradation:
        off = np.zeros(n, dtype=bool)
        none = K.KernelDraw.from_rows([K.OFF] * n)
        keep = Resize(np.full(n, KEEP, dtype=np.int8), np.ones(n), ["keep"] * n, np.full(n, gt_size))
        quiet = Noise(np.zeros(n, dtype=np.int8), np.zeros(n), off, np.zeros(n, dtype=np.int64))
        final = Resize(np.full(n, DOWN, dtype=np.int8), np.full(n, 1 / scale), ["bicubic"] * n, np.full(n, lq))
        empty = torch.zeros(n, 1, 1)
        return Plan(scale, gt_size, False, cfg.jpeg_backend, seeds, np.zeros(n, dtype=np.int64), 1, off, off, none,
                    empty, keep, quiet, Jpeg(off, np.zeros(n)), off, none, empty, keep, quiet, final, off, none, empty,
                    Jpeg(off, np.zeros(n)), off, codec)

    kernel1, kernels1 = kernel("kernel1", cfg.kernel_range[1])
    kernel2, kernels2 = kernel("kernel2", cfg.kernel_range2[1])
    kernel3, kernels3 = kernel("kernel3", cfg.final_kernel_range[1])
    mode3 = [r["mode3"] for r in rows]
    final = Resize(np.full(n, DOWN, dtype=np.int8), lq / col("size2", np.float64), mode3,
                   np.full(n, lq, dtype=np.int64))
    lo, hi = cfg.lq_usm_radius_range
    return Plan(
        scale=scale, gt_size=gt_size, high_order=True, jpeg_backend=cfg.jpeg_backend, seeds=seeds,
        usm_radius=col("usm", np.int64), usm_length=hi if hi % 2 else hi + 1, thick=col("thick", bool),
        blur1=col("blur1", bool), kernel1=kernel1, kernels1=kernels1, resize1=resize("resize1", "size1"),
        noise1=noise("noise1"), jpeg1=jpeg("jpeg1"), blur2=col("blur2", bool), kernel2=kernel2, kernels2=kernels2,
        resize2=resize("resize2", "size2"), noise2=noise("noise2"), resize3=final, sinc=col("sinc", bool),
        kernel3=kernel3, kernels3=kernels3, jpeg2=jpeg("jpeg2"), jpeg2_first=col("jpeg2_first", bool), codec=codec,
    )


# --- applying -------------------------------------------------------------------------------------------------------


def _index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_device(np.asarray(rows, dtype=np.int64), device)


def _backend(plan: Plan, device: torch.device) -> str:
    if plan.jpeg_backend == "auto":
        return "pil" if device.type == "cpu" else "diffjpeg"
    return plan.jpeg_backend


def _jpeg(z: torch.Tensor, rows: np.ndarray, jpeg: Jpeg, sizes: np.ndarray, offset: int, backend: str,
          select: np.ndarray | None = None) -> torch.Tensor:
    """JPEG, in place, the images of canvas z (holding samples `rows`) whose step is on (and `select`ed)."""
    on = jpeg.on[rows] if select is None else jpeg.on[rows] & select[rows]
    local = np.flatnonzero(on)
    if not len(local):
        return z
    if backend == "diffjpeg":  # the whole canvas: offsets are MCU-aligned, so the image's blocks are its own
        index = _index(local, z.device)
        quality = to_device(jpeg.quality[rows[local]], z.device, torch.float32)
        z[index] = diff_jpeg(z[index], quality)
        return z
    index = _index(local, z.device)
    arrays = to_uint8(z[index])  # one conversion for the group; the codec then codes one image at a time
    for j, b in enumerate(rows[local]):
        s = int(sizes[b])
        region = arrays[j, offset : offset + s, offset : offset + s]
        region[...] = jpeg_codec(np.ascontiguousarray(region), jpeg.quality[b])
    z[index] = from_uint8(arrays, z)  # outside the images: only rounded to 8 bits, and never read as image
    return z


DENSE_TAPS = 12  # above this many taps a sample's resize runs as a matmul (BLAS), at or below as per-tap copies


def _resize(z: torch.Tensor, resize: Resize, rows: np.ndarray, in_sizes: np.ndarray, out_sizes: np.ndarray,
            canvas: int, out_offset: int, in_offset: int, exact: bool = False) -> torch.Tensor:
    """Resize the images of canvas z (samples `rows`) into a new canvas, clipped to [0, 1] as traiNNer clips after
    each resize. "keep" samples are only moved (one exact tap of weight 1); the others are MATLAB's imresize, as a
    matmul when they have many taps (strong downscales) and tap by tap otherwise, whichever is cheaper. A matmul's
    rounding may depend on its shapes, so when the canvases depend on the group (`exact`), only taps are used."""
    modes = ["nearest-exact" if resize.mode[b] == "keep" else resize.mode[b] for b in rows]
    taps = np.asarray([contributions(int(i), int(o), MODE_KERNELS[m])[0].shape[1]
                       for i, o, m in zip(in_sizes, out_sizes, modes)])
    out = None
    threshold = np.inf if exact else DENSE_TAPS
    for dense, local in ((False, np.flatnonzero(taps <= threshold)), (True, np.flatnonzero(taps > threshold))):
        if not len(local):
            continue
        part = z if len(local) == len(rows) else z[_index(local, z.device)]
        chosen = [modes[j] for j in local]
        if dense:
            part = resample_dense(part, dense_matrices(in_sizes[local], out_sizes[local], chosen, canvas, z.shape[-1],
                                                       out_offset, in_offset))
        else:
            tables = axis_tables(in_sizes[local], out_sizes[local], chosen, canvas, out_offset, in_offset)
            part = resample(part, tables, tables)
        if len(local) == len(rows):
            return part.clamp_(0, 1)
        if out is None:
            out = z.new_empty(len(rows), z.shape[1], canvas, canvas)
        out[_index(local, z.device)] = part
    return out.clamp_(0, 1)


# Canvas sides, 4 per octave: samples are grouped by the canvases their images need, so a small image is not
# processed in a big one's canvas, and a sample's canvas (hence its arithmetic) depends only on its own sizes.
LADDER = sorted(int(m * 2**e) for e in range(3, 14) for m in (1, 1.25, 1.5, 1.75))


def _canvas(n: int) -> int:
    return next((c for c in LADDER if c >= n), -(-n // 1024) * 1024)


def apply(hr: torch.Tensor, plan: Plan) -> torch.Tensor:
    """LR (B, 3, gt/scale, gt/scale) float in [0, 1] on hr's device, from hr (B, 3, gt, gt) float in [0, 1] (uint8
    is accepted too). Real JPEG and video codecs run on the CPU; everything else where hr is."""
    if hr.dtype == torch.uint8:
        hr = hr.float().div_(255)
    if hr.shape[0] != len(plan) or tuple(hr.shape[-2:]) != (plan.gt_size, plan.gt_size):
        raise ValueError(f"plan is for {len(plan)} x {plan.gt_size}x{plan.gt_size} crops, got {tuple(hr.shape)}")
    if not plan.high_order:
        return _codec(imresize(hr, 1 / plan.scale, kernel="bicubic").clamp_(0, 1), plan.codec)
    device, lq = hr.device, plan.lq_size
    backend = _backend(plan, device)
    x = _first_at_hr(hr, plan)  # out of place: hr is the caller's

    # Between the first resize and the final one every sample has its own sizes. Samples go through in groups that
    # need the same canvas: by the first size for the first degradation, by the second size for the second. Canvas
    # layouts: first, image at [pad, pad + size1), mirrored around (the padding of the second blur; MCU-aligned for
    # DiffJPEG); second, image at [0, size2); final, LR at [r, r + lq), mirrored around (the padding of the sinc).
    size1, size2 = plan.resize1.size, plan.resize2.size
    pad = plan.kernels2.shape[-1] // 2
    if backend == "diffjpeg":
        pad = -(-pad // MCU) * MCU
    r = plan.kernels3.shape[-1] // 2
    c1 = np.asarray([_canvas(int(s) + 2 * pad) for s in size1])
    c2 = np.asarray([_canvas(int(s)) for s in size2])
    second = {n: x.new_empty(int((c2 == n).sum()), 3, n, n) for n in np.unique(c2).tolist()}
    slot = np.zeros(len(plan), dtype=np.int64)  # each sample's place in its second-degradation group
    for n in second:
        slot[c2 == n] = np.arange(int((c2 == n).sum()))

    for n1 in np.unique(c1).tolist():  # size groups, not samples: see the module docstring
        rows = np.flatnonzero(c1 == n1)
        hr_sizes = np.full(len(rows), plan.gt_size)
        z = _resize(x if len(rows) == len(plan) else x[_index(rows, device)], plan.resize1, rows, hr_sizes,
                    size1[rows], n1, pad, 0)
        z = add_noise(z, plan.noise1, rows, size1, pad)
        z = _jpeg(z, rows, plan.jpeg1, size1, pad, backend)
        z = _second_blur(z, plan, rows, pad)
        # into a canvas as large as the largest second canvas of this group (per-tap resampling: exact whatever the
        # canvas), then each sample to its second group
        z = _resize(z, plan.resize2, rows, size1[rows], size2[rows], int(c2[rows].max()), 0, pad, exact=True)
        for n2 in np.unique(c2[rows]).tolist():
            local = np.flatnonzero(c2[rows] == n2)
            second[n2][_index(slot[rows[local]], device)] = z[_index(local, device), :, :n2, :n2]

    z3 = x.new_empty(len(plan), 3, lq + 2 * r, lq + 2 * r)
    for n2, z in second.items():
        rows = np.flatnonzero(c2 == n2)
        z = add_noise(z, plan.noise2, rows, size2, 0)
        z = _jpeg(z, rows, plan.jpeg2, size2, 0, backend, select=plan.jpeg2_first)
        z3[_index(rows, device)] = _resize(z, plan.resize3, rows, size2[rows], np.full(len(rows), lq), lq + 2 * r,
                                           r, 0)

    # final, at the LR size for the whole batch again
    lr = z3[..., r : r + lq, r : r + lq].contiguous()
    sinc = np.flatnonzero(plan.sinc)
    if len(sinc):
        index = _index(sinc, device)
        lr[index] = blur_canvas(z3[index], plan.kernels3[sinc], plan.kernel3.sizes[sinc],
                                plan.kernel3.separable[sinc], (r, lq))
    everyone = np.arange(len(plan))
    lr = _jpeg(lr, everyone, plan.jpeg2, np.full(len(plan), lq), 0, backend, select=~plan.jpeg2_first)
    lr = (lr.clamp_(0, 1) * 255).round_() / 255  # traiNNer: clamp and round the LR to 8 bits
    return _codec(lr, plan.codec)


def _update(x: torch.Tensor, rows: np.ndarray, fn) -> torch.Tensor:
    """A new tensor: x with fn (out of place) applied to the samples `rows`; no gather or scatter if that is all."""
    if len(rows) == len(x):
        return fn(x, rows)
    if len(rows):
        index = _index(rows, x.device)
        x = x.clone()
        x[index] = fn(x[index], rows)
    return x


def _first_at_hr(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """lq_usm, thick lines and the first blur: all at the HR size, batched over the samples that have them."""
    x = _update(x, np.flatnonzero(plan.usm_radius > 0),
                lambda v, rows: usm_sharpen(v, usm_taps(plan.usm_radius[rows], plan.usm_length)))
    x = _update(x, np.flatnonzero(plan.thick), lambda v, rows: thicklines(v))
    return _update(x, np.flatnonzero(plan.blur1), lambda v, rows: blur(v, plan.kernels1[rows], plan.kernel1.sizes[rows],
                                                                       plan.kernel1.separable[rows]))


def _second_blur(z: torch.Tensor, plan: Plan, rows: np.ndarray, pad: int) -> torch.Tensor:
    """Blur, in the first canvas, the samples of `rows` whose second blur is on: mirror the (noisy, compressed)
    images into the padding again, then convolve the inside of the canvas."""
    local = np.flatnonzero(plan.blur2[rows])
    if not len(local):
        return z
    index = _index(local, z.device)
    sizes = plan.resize1.size[rows[local]]
    n = z.shape[-1]
    mirror = axis_tables(sizes, sizes, ["nearest-exact"] * len(local), n, pad, pad)  # one tap of weight 1: exact
    b = rows[local]
    z[index, :, pad : n - pad, pad : n - pad] = blur_canvas(resample(z[index], mirror, mirror), plan.kernels2[b],
                                                            plan.kernel2.sizes[b], plan.kernel2.separable[b],
                                                            (pad, n - 2 * pad))
    return z


def _codec(lr: torch.Tensor, codec: Codec) -> torch.Tensor:
    rows = np.flatnonzero(codec.on)
    if not len(rows):
        return lr
    images = (lr[_index(rows, lr.device)].clamp(0, 1) * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    coded = np.stack([
        encode_clip(image, codec.name[b], codec.quality[b], preset=codec.preset[b], chroma=codec.chroma[b],
                    motion=tuple(codec.motion[b]), frames=codec.frames,
                    bpp=None if np.isnan(codec.bpp[b]) else float(codec.bpp[b]))
        for image, b in zip(images, rows)])
    lr[_index(rows, lr.device)] = torch.from_numpy(coded).permute(0, 3, 1, 2).to(lr.device, lr.dtype) / 255
    return lr


# --- describing -----------------------------------------------------------------------------------------------------


def describe(plan: Plan, i: int) -> list[str]:
    """The steps applied to sample i, in order, for humans (the preview's captions)."""
    steps: list[str | None]
    if not plan.high_order:
        steps = [f"bicubic x1/{plan.scale}"]
    else:
        final = [f"resize {plan.resize3.mode[i]} -> {plan.lq_size}px"]
        if plan.sinc[i]:
            final.append(plan.kernel3.describe(i))
        jpeg2 = plan.jpeg2.describe(i, "jpeg2")
        final = ([jpeg2] + final) if plan.jpeg2_first[i] else (final + [jpeg2])
        steps = [
            f"usm radius {plan.usm_radius[i]}" if plan.usm_radius[i] else None,
            "thick lines" if plan.thick[i] else None,
            f"blur {plan.kernel1.describe(i)}" if plan.blur1[i] else None,
            plan.resize1.describe(i, "resize"),
            plan.noise1.describe(i),
            plan.jpeg1.describe(i, "jpeg"),
            f"blur2 {plan.kernel2.describe(i)}" if plan.blur2[i] else None,
            plan.resize2.describe(i, "resize2"),
            plan.noise2.describe(i),
            *final,
        ]
    steps.append(plan.codec.describe(i))
    return [s for s in steps if s]
