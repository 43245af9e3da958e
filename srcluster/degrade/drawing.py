"""Drawing a batch's plan: each sample draws all of its parameters from its own generator (cheap, numpy, in the data
workers), then the blur kernels of the whole batch are built at once.

`otf_draws: per_batch` draws as traiNNer-redux does instead (`_share_batch_draws`): the switches, the resize factors and
modes, the noise kind, the JPEG on/off, the order of the final steps and the crop window once per batch, from a
generator seeded by the batch's sample seeds; blur kernels, noise strengths and gray choices, JPEG qualities and the
final sinc stay per sample, as redux's dataset and noise functions draw them. Every sample of a batch then has the same
size at every step, so the pipeline runs as one fixed-shape batch with no per-sample loop (noise included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from srcluster.degrade import kernels as K
from srcluster.degrade.config import Degradations
from srcluster.degrade.noise import GAUSSIAN, NONE, POISSON, Noise
from srcluster.degrade.plan import DOWN, KEEP, UP, Codec, Jpeg, Plan, Resize
from srcluster.degrade.seeds import child_seed, sample_rng
from srcluster.degrade.video import CODECS


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


def _noise_strength(rng: np.random.Generator, kind: int, sigma: tuple[float, float], poisson: tuple[float, float]):
    """(kind, strength) of one sample whose batch drew `kind`: its own sigma or scale, as redux's `*_noise_pt` draw."""
    if kind == NONE:
        return NONE, 0.0
    strength = float(rng.uniform(*(sigma if kind == GAUSSIAN else poisson)))
    return (kind if strength > 0 else NONE), strength


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


# traiNNer-redux's RealESRGANDataset crops gt_size + 32 pixels, degrades that and then cuts the (HR, LR) patch pair
# from it (`paired_random_crop`), so that no patch border is a border of the degradations.
OTF_BORDER = 32


def crop_size(cfg: Degradations | None, gt_size: int, scale: int) -> int:
    """The side of the HR crops to degrade for `gt_size` patches: gt_size + 32 with high-order degradations, as
    traiNNer-redux (rounded up to a multiple of the scale: redux itself stops on a scale that does not divide it),
    else gt_size."""
    if cfg is None or not cfg.high_order_degradation:
        return gt_size
    return gt_size + -(-OTF_BORDER // scale) * scale


def _draw_sample(rng: np.random.Generator, cfg: Degradations, scale: int, gt: int) -> dict:
    """All of one sample's choices, in pipeline order, from its own generator (`gt`: the side degraded)."""
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


# Tags the batch-wide draws of `otf_draws: per_batch` apart from every sample's own streams.
BATCH_STREAM = 0x6261746368
# Tag of the per-sample stream that fills in what the sample's own draw left out under a batch's choice.
SAMPLE_FILL = 6


def _share_batch_draws(
    rows: list[dict], seeds: np.ndarray, cfg: Degradations, scale: int, crop: int, room: int
) -> dict:
    """traiNNer-redux's draws (`RealESRGANModel.feed_data`), in place on the per-sample rows: one draw per batch of
    every switch and size, each sample keeping what redux draws per sample (see the module docstring). Returns the
    batch's own row, with "offset" (the crop window, `room` the largest corner: redux's `paired_random_crop` cuts one
    for the batch) and "noise_seeds" (one pixel-noise stream per noise step for the whole batch)."""
    rng = np.random.default_rng([BATCH_STREAM, *(int(s) for s in seeds)])
    shared = _draw_sample(rng, cfg, scale, crop)
    options = {"kernel1": _kernel_options(cfg, False), "kernel2": _kernel_options(cfg, True)}
    noise_ranges = {
        "noise1": (cfg.noise_range, cfg.poisson_scale_range),
        "noise2": (cfg.noise_range2, cfg.poisson_scale_range2),
    }
    for seed, row in zip(seeds, rows, strict=True):
        fill = np.random.default_rng([int(seed), SAMPLE_FILL])
        for key in ("usm", "thick", "blur1", "resize1", "size1", "blur2", "resize2", "size2", "jpeg2_first", "mode3"):
            row[key] = shared[key]
        for switch, kernel in (("blur1", "kernel1"), ("blur2", "kernel2")):
            if not row[switch]:
                row[kernel] = K.OFF
            elif row[kernel] == K.OFF:  # the sample's own draw had no blur: its kernel comes from its fill stream
                row[kernel] = K.draw_blur(fill, options[kernel])
        for key, (sigma, poisson) in noise_ranges.items():
            _kind, _strength, gray, noise_seed = row[key]
            row[key] = (*_noise_strength(fill, shared[key][0], sigma, poisson), gray, noise_seed)
        for key in ("jpeg1", "jpeg2"):
            row[key] = (shared[key][0], row[key][1])  # on/off for the batch, the quality per sample
    shared["offset"] = rng.integers(0, room, size=2, endpoint=True) if room else np.zeros(2, dtype=np.int64)
    shared["noise_seeds"] = (child_seed(rng), child_seed(rng))
    return shared


def draw(cfg: Degradations, seeds: Sequence[int], scale: int, gt_size: int, crop: int | None = None) -> Plan:
    """Draw every sample's degradation parameters (numpy, per-sample generators) and build its kernels (batched).

    The plan degrades HR crops of side `crop` (default `crop_size(cfg, gt_size, scale)`, traiNNer-redux's) and then
    cuts a `gt_size` patch pair at a random place (`pipeline.pair`)."""
    crop = crop_size(cfg, gt_size, scale) if crop is None else crop
    if gt_size % scale or crop % scale or crop < gt_size:
        raise ValueError(f"gt_size {gt_size} and crop {crop} must be multiples of scale {scale}, crop >= gt_size")
    seed_array = np.asarray([int(s) for s in seeds], dtype=np.int64)
    rows = [_draw_sample(sample_rng(int(s)), cfg, scale, crop) for s in seed_array]
    n, lq = len(rows), crop // scale
    room = (crop - gt_size) // scale
    offsets = np.zeros((n, 2), dtype=np.int64)
    if room:  # from a stream of its own (the crop's flips use [seed, 1]), so the other choices stay as they were
        for i, s in enumerate(seed_array):
            offsets[i] = np.random.default_rng([int(s), 2]).integers(0, room, size=2, endpoint=True)
    noise_seeds: tuple[int | None, int | None] = (None, None)
    if cfg.otf_draws == "per_batch" and cfg.high_order_degradation and n:
        shared = _share_batch_draws(rows, seed_array, cfg, scale, crop, room)
        offsets[:] = shared["offset"]
        noise_seeds = shared["noise_seeds"]

    def col(key: str, dtype=None) -> np.ndarray:
        return np.asarray([r[key] for r in rows], dtype=dtype)

    def resize(key: str, size_key: str) -> Resize:
        updown, factor, mode = zip(*(r[key] for r in rows), strict=False) if rows else ((), (), ())
        return Resize(np.asarray(updown, dtype=np.int8), np.asarray(factor), list(mode), col(size_key, np.int64))

    def noise(key: str, batch_seed: int | None) -> Noise:
        kind, strength, gray, seed = zip(*(r[key] for r in rows), strict=False) if rows else ((), (), (), ())
        return Noise(
            np.asarray(kind, dtype=np.int8),
            np.asarray(strength),
            np.asarray(gray, dtype=bool),
            np.asarray(seed, dtype=np.int64),
            batch_seed,
        )

    def jpeg(key: str) -> Jpeg:
        on, quality = zip(*(r[key] for r in rows), strict=False) if rows else ((), ())
        return Jpeg(np.asarray(on, dtype=bool), np.asarray(quality))

    def kernel(key: str, full: int) -> tuple[K.KernelDraw, torch.Tensor]:
        params = K.KernelDraw.from_rows([r[key] for r in rows])
        return params, K.build(params, full)

    on, name, quality, bpp, preset, chroma, motion = (
        zip(*(r["codec"] for r in rows), strict=False) if rows else ((),) * 7
    )
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
        keep = Resize(np.full(n, KEEP, dtype=np.int8), np.ones(n), ["keep"] * n, np.full(n, crop))
        quiet = Noise(np.zeros(n, dtype=np.int8), np.zeros(n), off, np.zeros(n, dtype=np.int64))
        final = Resize(np.full(n, DOWN, dtype=np.int8), np.full(n, 1 / scale), ["bicubic"] * n, np.full(n, lq))
        empty = torch.zeros(n, 1, 1)
        return Plan(
            scale,
            crop,
            gt_size,
            offsets,
            False,
            cfg.jpeg_backend,
            seed_array,
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
        crop_size=crop,
        gt_size=gt_size,
        offsets=offsets,
        high_order=True,
        jpeg_backend=cfg.jpeg_backend,
        seeds=seed_array,
        usm_radius=col("usm", np.int64),
        usm_length=hi if hi % 2 else hi + 1,
        thick=col("thick", bool),
        blur1=col("blur1", bool),
        kernel1=kernel1,
        kernels1=kernels1,
        resize1=resize("resize1", "size1"),
        noise1=noise("noise1", noise_seeds[0]),
        jpeg1=jpeg("jpeg1"),
        blur2=col("blur2", bool),
        kernel2=kernel2,
        kernels2=kernels2,
        resize2=resize("resize2", "size2"),
        noise2=noise("noise2", noise_seeds[1]),
        resize3=final,
        sinc=col("sinc", bool),
        kernel3=kernel3,
        kernels3=kernels3,
        jpeg2=jpeg("jpeg2"),
        jpeg2_first=col("jpeg2_first", bool),
        codec=codec,
    )
