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
does not depend on its batch, its rank or the number of workers. The steps at the HR size (USM, thick lines, first
blur) and at the LR size (sinc, final JPEG) run on the whole batch. Between the first and the final resize every
sample has its own size: samples go through in groups of one size (a resize call per distinct size and mode, the
other steps once per group), and every step computes each sample alone, so the same seed gives bit-identical LR
however batches are cut. The random resizes are F.interpolate, as Real-ESRGAN's (antialiased when bilinear or bicubic
shrink; MATLAB's Lanczos-3 for "lanczos"); the plain bicubic LR stays MATLAB's imresize. All sizes are known on the
host from the plan, so `apply` never waits for the device (no `.item()`). The real codecs (libjpeg on CPU, video)
code one image at a time by nature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srcluster.degrade import kernels as K
from srcluster.degrade.config import Degradations
from srcluster.degrade.filters import blur, depthwise, reflect_pad, thicklines, usm_sharpen, usm_taps
from srcluster.degrade.host import to_device
from srcluster.degrade.jpeg import diff_jpeg, from_uint8, jpeg_codec, pil_quality, to_uint8
from srcluster.degrade.noise import GAUSSIAN, NONE, POISSON, Noise, add_noise
from srcluster.degrade.resize import imresize
from srcluster.degrade.seeds import child_seed, sample_rng
from srcluster.degrade.video import CODECS, encode_clip

UP, DOWN, KEEP = 0, 1, 2


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


def _draw_resize(
    rng: np.random.Generator,
    probs: Sequence[float],
    bounds: tuple[float, float],
    modes: Sequence[str],
    mode_probs: Sequence[float],
) -> tuple[int, float, str]:
    updown = int(_pick(rng, [UP, DOWN, KEEP], probs))
    if updown == KEEP:
        return KEEP, 1.0, "keep"
    factor = rng.uniform(1, bounds[1]) if updown == UP else rng.uniform(bounds[0], 1)
    return updown, float(factor), _pick(rng, list(modes), mode_probs)


def _noise(
    rng: np.random.Generator, p_gauss: float, sigma: tuple[float, float], poisson: tuple[float, float], p_gray: float
) -> tuple[int, float, bool, int]:
    # traiNNer: Gaussian with probability p, Poisson otherwise; a zero range adds nothing, so it is skipped
    kind, strength = (GAUSSIAN, rng.uniform(*sigma)) if _chance(rng, p_gauss) else (POISSON, rng.uniform(*poisson))
    gray = _chance(rng, p_gray)
    return (kind if strength > 0 else NONE), float(strength), gray, child_seed(rng)


def _kernel_options(cfg: Degradations, second: bool) -> K.KernelOptions:
    s = "2" if second else ""
    return K.KernelOptions(
        getattr(cfg, "kernel_list" + s),
        getattr(cfg, "kernel_prob" + s),
        getattr(cfg, "kernel_range" + s),
        getattr(cfg, "sinc_prob" + s),
        getattr(cfg, "blur_sigma" + s),
        getattr(cfg, "betag_range" + s),
        getattr(cfg, "betap_range" + s),
    )


def _draw_sample(rng: np.random.Generator, cfg: Degradations, scale: int, gt: int) -> dict:
    """All of one sample's choices, in pipeline order, from its own generator."""
    row: dict = {}
    if cfg.high_order_degradation:
        lo, hi = cfg.lq_usm_radius_range
        row["usm"] = int(rng.integers(lo, hi, endpoint=True)) if cfg.lq_usm else 0
        row["thick"] = _chance(rng, cfg.thicklines_prob)
        row["blur1"] = _chance(rng, cfg.blur_prob)
        row["kernel1"] = K.draw_blur(rng, _kernel_options(cfg, False)) if row["blur1"] else K.OFF
        row["resize1"] = _draw_resize(
            rng, cfg.resize_prob, cfg.resize_range, cfg.resize_mode_list, cfg.resize_mode_prob
        )
        row["size1"] = max(1, round(gt * row["resize1"][1]))  # traiNNer's resize_pt: round(H * factor)
        row["noise1"] = _noise(
            rng, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob
        )
        row["jpeg1"] = (_chance(rng, cfg.jpeg_prob), float(rng.uniform(*cfg.jpeg_range)))
        row["blur2"] = _chance(rng, cfg.blur_prob2)
        row["kernel2"] = K.draw_blur(rng, _kernel_options(cfg, True)) if row["blur2"] else K.OFF
        row["resize2"] = _draw_resize(
            rng, cfg.resize_prob2, cfg.resize_range2, cfg.resize_mode_list2, cfg.resize_mode_prob2
        )
        # traiNNer: the second resize is relative to the LR size, and "keep" keeps the current size
        keep = row["resize2"][0] == KEEP
        row["size2"] = row["size1"] if keep else max(1, int(gt / scale * row["resize2"][1]))
        row["noise2"] = _noise(
            rng, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2, cfg.gray_noise_prob2
        )
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
    row["codec"] = (
        on,
        name,
        quality,
        bpp,
        str(rng.choice(cfg.video_preset_list)),
        str(rng.choice(cfg.video_chroma_list)),
        motion,
    )
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
        updown, factor, mode = zip(*(r[key] for r in rows), strict=False) if rows else ((), (), ())
        return Resize(np.asarray(updown, dtype=np.int8), np.asarray(factor), list(mode), col(size_key, np.int64))

    def noise(key: str) -> Noise:
        kind, strength, gray, seed = zip(*(r[key] for r in rows), strict=False) if rows else ((), (), (), ())
        return Noise(
            np.asarray(kind, dtype=np.int8),
            np.asarray(strength),
            np.asarray(gray, dtype=bool),
            np.asarray(seed, dtype=np.int64),
        )

    def jpeg(key: str) -> Jpeg:
        on, quality = zip(*(r[key] for r in rows), strict=False) if rows else ((), ())
        return Jpeg(np.asarray(on, dtype=bool), np.asarray(quality))

    def kernel(key: str, full: int) -> tuple[K.KernelDraw, torch.Tensor]:
        params = K.KernelDraw.from_rows([r[key] for r in rows])
        return params, K.build(params, full)

    on, name, quality, bpp, preset, chroma, motion = zip(*(r["codec"] for r in rows), strict=False) if rows else ((),) * 7
    codec = Codec(
        np.asarray(on, dtype=bool),
        list(name),
        np.asarray(quality),
        np.asarray(bpp),
        list(preset),
        list(chroma),
        np.asarray(motion, dtype=np.int64).reshape(n, 2),
        cfg.video_clip_frames,
    )
    if not cfg.high_order_degradation:
        off = np.zeros(n, dtype=bool)
        none = K.KernelDraw.from_rows([K.OFF] * n)
        keep = Resize(np.full(n, KEEP, dtype=np.int8), np.ones(n), ["keep"] * n, np.full(n, gt_size))
        quiet = Noise(np.zeros(n, dtype=np.int8), np.zeros(n), off, np.zeros(n, dtype=np.int64))
        final = Resize(np.full(n, DOWN, dtype=np.int8), np.full(n, 1 / scale), ["bicubic"] * n, np.full(n, lq))
        empty = torch.zeros(n, 1, 1)
        return Plan(
            scale,
            gt_size,
            False,
            cfg.jpeg_backend,
            seeds,
            np.zeros(n, dtype=np.int64),
            1,
            off,
            off,
            none,
            empty,
            keep,
            quiet,
            Jpeg(off, np.zeros(n)),
            off,
            none,
            empty,
            keep,
            quiet,
            final,
            off,
            none,
            empty,
            Jpeg(off, np.zeros(n)),
            off,
            codec,
        )

    kernel1, kernels1 = kernel("kernel1", cfg.kernel_range[1])
    kernel2, kernels2 = kernel("kernel2", cfg.kernel_range2[1])
    kernel3, kernels3 = kernel("kernel3", cfg.final_kernel_range[1])
    mode3 = [r["mode3"] for r in rows]
    final = Resize(
        np.full(n, DOWN, dtype=np.int8), lq / col("size2", np.float64), mode3, np.full(n, lq, dtype=np.int64)
    )
    _lo, hi = cfg.lq_usm_radius_range
    return Plan(
        scale=scale,
        gt_size=gt_size,
        high_order=True,
        jpeg_backend=cfg.jpeg_backend,
        seeds=seeds,
        usm_radius=col("usm", np.int64),
        usm_length=hi if hi % 2 else hi + 1,
        thick=col("thick", bool),
        blur1=col("blur1", bool),
        kernel1=kernel1,
        kernels1=kernels1,
        resize1=resize("resize1", "size1"),
        noise1=noise("noise1"),
        jpeg1=jpeg("jpeg1"),
        blur2=col("blur2", bool),
        kernel2=kernel2,
        kernels2=kernels2,
        resize2=resize("resize2", "size2"),
        noise2=noise("noise2"),
        resize3=final,
        sinc=col("sinc", bool),
        kernel3=kernel3,
        kernels3=kernels3,
        jpeg2=jpeg("jpeg2"),
        jpeg2_first=col("jpeg2_first", bool),
        codec=codec,
    )


# --- applying -------------------------------------------------------------------------------------------------------


def _index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_device(np.asarray(rows, dtype=np.int64), device)


def _backend(plan: Plan, device: torch.device) -> str:
    if plan.jpeg_backend == "auto":
        return "pil" if device.type == "cpu" else "diffjpeg"
    return plan.jpeg_backend


def _jpeg(
    z: torch.Tensor, rows: np.ndarray, jpeg: Jpeg, backend: str, select: np.ndarray | None = None
) -> torch.Tensor:
    """JPEG, in place, the images of z (samples `rows`, all of one size) whose step is on (and `select`ed)."""
    on = jpeg.on[rows] if select is None else jpeg.on[rows] & select[rows]
    local = np.flatnonzero(on)
    if not len(local):
        return z
    index = None if len(local) == len(rows) else _index(local, z.device)
    part = z if index is None else z[index]
    if backend == "diffjpeg":
        part = diff_jpeg(part, to_device(jpeg.quality[rows[local]], z.device, torch.float32))
    else:
        arrays = to_uint8(part)  # one conversion for the group; the codec then codes one image at a time
        for j, b in enumerate(rows[local]):
            arrays[j] = jpeg_codec(arrays[j], jpeg.quality[b])
        part = from_uint8(arrays, z)
    if index is None:
        return part
    z[index] = part
    return z


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """One random resize: F.interpolate, as Real-ESRGAN resizes, but antialiased when bilinear or bicubic shrink
    (as MATLAB's imresize and PIL do; unfiltered, a 4x shrink keeps the noise of one pixel in 16 at full strength);
    MATLAB's Lanczos-3 for traiNNer's "lanczos" (F.interpolate has none). Clipped to [0, 1] as traiNNer clips."""
    if mode == "keep" or (x.shape[-1] == size and mode != "lanczos"):
        return x
    if mode == "lanczos":
        out = imresize(x, size=(size, size), kernel="lanczos3")
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=size < x.shape[-1])
    else:  # area, nearest-exact
        out = F.interpolate(x, size=(size, size), mode=mode)
    return out.clamp_(0, 1)


Piece = tuple[np.ndarray, torch.Tensor]  # samples (plan rows) and their images, all of one size


def _resize_pieces(pieces: list[Piece], sizes: np.ndarray, modes: list[str]) -> list[Piece]:
    """Resize every sample to its own size with its own mode, one call per (piece, size, mode), and gather the results
    by size: the next steps then run once per size, whatever piece the samples came from."""
    by_size: dict[int, list[Piece]] = {}
    for rows, z in pieces:
        keys = [(int(sizes[b]), modes[b]) for b in rows]
        for key in sorted(set(keys)):
            local = np.flatnonzero([k == key for k in keys])
            part = z if len(local) == len(rows) else z[_index(local, z.device)]
            by_size.setdefault(key[0], []).append((rows[local], _resize(part, *key)))
    return [
        (np.concatenate([r for r, _ in parts]), torch.cat([p for _, p in parts]) if len(parts) > 1 else parts[0][1])
        for _, parts in sorted(by_size.items())
    ]


def apply(hr: torch.Tensor, plan: Plan) -> torch.Tensor:
    """LR (B, 3, gt/scale, gt/scale) float in [0, 1] on hr's device, from hr (B, 3, gt, gt) float in [0, 1] (uint8
    is accepted too). Real JPEG and video codecs run on the CPU; everything else where hr is."""
    if hr.dtype == torch.uint8:
        hr = hr.float().div_(255)
    if hr.shape[0] != len(plan) or tuple(hr.shape[-2:]) != (plan.gt_size, plan.gt_size):
        raise ValueError(f"plan is for {len(plan)} x {plan.gt_size}x{plan.gt_size} crops, got {tuple(hr.shape)}")
    if not plan.high_order:
        return _codec(imresize(hr, 1 / plan.scale, kernel="bicubic").clamp_(0, 1), plan.codec)
    device, lq, everyone = hr.device, plan.lq_size, np.arange(len(plan))
    backend = _backend(plan, device)
    x = _first_at_hr(hr, plan)
    if x is hr:  # the steps below work in place, and hr is the caller's
        x = hr.clone()

    # Between the first resize and the final one every sample has its own size: the steps run once per group of
    # samples that share a size (see the module docstring).
    pieces = _resize_pieces([(everyone, x)], plan.resize1.size, plan.resize1.mode)
    for i, (rows, z) in enumerate(pieces):
        z = add_noise(z, plan.noise1, rows, plan.resize1.size)
        z = _jpeg(z, rows, plan.jpeg1, backend)
        pieces[i] = (rows, _second_blur(z, rows, plan))
    pieces = _resize_pieces(pieces, plan.resize2.size, plan.resize2.mode)
    for i, (rows, z) in enumerate(pieces):
        z = add_noise(z, plan.noise2, rows, plan.resize2.size)
        pieces[i] = (rows, _jpeg(z, rows, plan.jpeg2, backend, select=plan.jpeg2_first))
    lr = x.new_empty(len(plan), 3, lq, lq)
    for rows, z in _resize_pieces(pieces, plan.resize3.size, plan.resize3.mode):
        lr[_index(rows, device)] = z

    # final, at the LR size for the whole batch again
    if plan.sinc.any():  # the whole batch in one convolution of a fixed shape; "no sinc" is the identity kernel
        lr = blur(lr, plan.kernels3, plan.kernel3.sizes, plan.kernel3.separable, full=True)
    lr = _jpeg(lr, everyone, plan.jpeg2, backend, select=~plan.jpeg2_first)
    lr = (lr.clamp_(0, 1) * 255).round_() / 255  # traiNNer: clamp and round the LR to 8 bits
    return _codec(lr, plan.codec)


# Canvas sides for the second blur, 8 per octave: images of any size are blurred in a canvas from this short list, so
# the convolutions have a few shapes that recur (oneDNN builds each new shape once, at a cost of many convolutions).
LADDER = sorted({round(m * 2**e) for e in range(4, 14) for m in np.linspace(1, 2, 9)[:-1]})


def _second_blur(z: torch.Tensor, rows: np.ndarray, plan: Plan) -> torch.Tensor:
    """The second blur of the samples of z (all of one size) that have it: mirrored around by the largest kernel's
    radius as BasicSR's filter2D pads, placed in a canvas of a LADDER side (zeros beyond, never read by the output),
    one convolution at the largest kernel size."""
    local = np.flatnonzero(plan.blur2[rows])
    if not len(local):
        return z
    index = None if len(local) == len(rows) else _index(local, z.device)
    part = z if index is None else z[index]
    kernels = plan.kernels2[rows[local]]
    r, s = kernels.shape[-1] // 2, z.shape[-1]
    canvas = next((c for c in LADDER if c >= s + 2 * r), s + 2 * r)
    padded = F.pad(reflect_pad(part, r), (0, canvas - s - 2 * r, 0, canvas - s - 2 * r))
    part = depthwise(padded, to_device(kernels, z.device))[..., :s, :s]
    if index is None:
        return part.contiguous()
    z[index] = part
    return z


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
    x = _update(
        x,
        np.flatnonzero(plan.usm_radius > 0),
        lambda v, rows: usm_sharpen(v, usm_taps(plan.usm_radius[rows], plan.usm_length)),
    )
    x = _update(x, np.flatnonzero(plan.thick), lambda v, rows: thicklines(v))
    return _update(
        x,
        np.flatnonzero(plan.blur1),
        lambda v, rows: blur(v, plan.kernels1[rows], plan.kernel1.sizes[rows], plan.kernel1.separable[rows], full=True),
    )


def _codec(lr: torch.Tensor, codec: Codec) -> torch.Tensor:
    rows = np.flatnonzero(codec.on)
    if not len(rows):
        return lr
    images = (lr[_index(rows, lr.device)].clamp(0, 1) * 255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    coded = np.stack(
        [
            encode_clip(
                image,
                codec.name[b],
                codec.quality[b],
                preset=codec.preset[b],
                chroma=codec.chroma[b],
                motion=tuple(codec.motion[b]),
                frames=codec.frames,
                bpp=None if np.isnan(codec.bpp[b]) else float(codec.bpp[b]),
            )
            for image, b in zip(images, rows, strict=False)
        ]
    )
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
        final = ([jpeg2, *final]) if plan.jpeg2_first[i] else ([*final, jpeg2])
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
