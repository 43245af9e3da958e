"""HR -> LR on the fly: `draw` a plan per batch (cheap, in the data workers), `apply` it on any device.

The order is traiNNer-redux's Real-ESRGAN pipeline (its `RealESRGANModel.feed_data`):

    [lq_usm] [thick lines] [blur] resize(up/down/keep) noise(gaussian|poisson) [jpeg]          first degradation
    [blur2] resize2(up/down/keep, around the LR size) noise2                                    second degradation
    either  resize to LR + [sinc] then [jpeg2]   or   [jpeg2] then resize to LR + [sinc]        (50/50 per sample)
    round to 8 bits, then srcluster's [video codec] on the LR image as a short clip

As traiNNer-redux, the pipeline degrades an HR crop 32 px larger than gt_size (`crop_size`; the data workers cut it,
padding smaller images with black at the bottom and right) and `pair` then cuts the (HR, LR) patches at a random
place inside it, so the patch borders are not the borders of the blurs, resizes and JPEG's 8 x 8 grid.

With `high_order_degradation` off the LR is the MATLAB bicubic downscale (as srcluster trains fidelity stages), then
the video codec if one is configured.

Real-ESRGAN (and traiNNer-redux) draw resize factors, noise kinds and the JPEG switch once per *batch* and need a
pool of past batches to mix them; so does srcluster by default (`otf_draws: per_batch`: `drawing`, with the
training-pair pool in `pool`): every sample of a batch has one size at every step, the groups below are the whole
batch, and the noise has one stream per batch. With `otf_draws: per_sample` every sample draws all of its own
parameters from its own seed (see `seeds.sample_seed`), so a sample's LR does not depend on its batch, its rank or the
number of workers.

The steps at the HR size (USM, thick lines, first blur) and at the LR size (sinc, final JPEG) run on the whole batch.
Between the first and the final resize every sample has its own size: samples go through in groups of one size (a resize
call per distinct size and mode, the other steps once per group), and every step computes each sample alone, so the same
seed gives bit-identical LR however batches are cut. The random resizes are traiNNer-redux's (`resize.otf_resize`:
F.interpolate, antialiased for bilinear and bicubic, its own Lanczos-3 for "lanczos"); the plain bicubic LR stays
MATLAB's imresize. JPEG is redux's DiffJPEG by default (`jpeg.diff_jpeg`, batched on any device). All sizes are known on
the host from the plan, so `apply` never waits for the device (no `.item()`). The real codecs (libjpeg when chosen,
video) code one image at a time by nature.

The plan's fields and `describe` live in `plan`, the drawing in `drawing`; this module applies a plan, and
`Plan`, `draw` and `describe` are importable from here too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from srcluster.degrade.drawing import crop_size, draw
from srcluster.degrade.filters import blur, depthwise, reflect_pad, thicklines, usm_sharpen, usm_taps
from srcluster.degrade.host import to_device
from srcluster.degrade.jpeg import diff_jpeg, from_uint8, jpeg_codec, libjpeg_model, to_uint8
from srcluster.degrade.noise import add_noise
from srcluster.degrade.plan import Codec, Jpeg, Plan, describe
from srcluster.degrade.resize import imresize, otf_resize
from srcluster.degrade.video import encode_clip

__all__ = ["Plan", "apply", "crop_size", "cut", "describe", "draw", "pair"]


def _index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_device(np.asarray(rows, dtype=np.int64), device)


def _backend(plan: Plan, device: torch.device) -> str:
    if plan.jpeg_backend == "libjpeg":
        return "libjpeg_codec" if device.type == "cpu" else "libjpeg_model"
    return plan.jpeg_backend


JPEG_MODELS = {"diffjpeg": diff_jpeg, "libjpeg_model": libjpeg_model}  # batched on the device; else the codec


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
    if backend in JPEG_MODELS:
        part = JPEG_MODELS[backend](part, to_device(jpeg.quality[rows[local]], z.device, torch.float32))
    else:
        arrays = to_uint8(part)  # one conversion for the group; the codec then codes one image at a time
        for j, b in enumerate(rows[local]):
            arrays[j] = jpeg_codec(arrays[j], float(jpeg.quality[b]))
        part = from_uint8(arrays, z)
    if index is None:
        return part
    z[index] = part
    return z


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """One random resize, as traiNNer-redux's `resize_pt` (see `resize.otf_resize`); "keep" is no resize at all."""
    if mode == "keep":
        return x
    if x.shape[-1] == size:
        return x.clamp(0, 1)  # every mode is the identity at the same size, but redux still clips
    return otf_resize(x, (size, size), mode)


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


def pair(hr: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pair, as traiNNer-redux makes it: the whole HR crop (B, 3, crop, crop) degraded (`apply`), then
    the (HR, LR) patches of gt_size and gt_size / scale cut at each sample's `offsets` (its `paired_random_crop`).
    HR keeps its dtype (uint8 from the data workers stays uint8); LR is float in [0, 1]."""
    return cut(hr, plan.offsets * plan.scale, plan.gt_size), cut(apply(hr, plan), plan.offsets, plan.lq_size)


def cut(x: torch.Tensor, corners: np.ndarray, side: int) -> torch.Tensor:
    """The side x side window of each image of x (B, C, H, W) at its (top, left) corner, in one gather."""
    if side == x.shape[-1] == x.shape[-2]:
        return x
    if len(corners) and (corners == corners[0]).all():  # one window for the batch (per-batch draws): a slice
        top, left = (int(v) for v in corners[0])
        return x[..., top : top + side, left : left + side].contiguous()
    steps = np.arange(side)
    rows, cols = corners[:, :1] + steps, corners[:, 1:] + steps  # (B, side) each
    b = _index(np.arange(len(x)), x.device).view(-1, 1, 1)
    window = x[b, :, _index(rows, x.device)[:, :, None], _index(cols, x.device)[:, None, :]]  # (B, side, side, C)
    return window.permute(0, 3, 1, 2).contiguous()


def apply(hr: torch.Tensor, plan: Plan) -> torch.Tensor:
    """LR (B, 3, crop/scale, crop/scale) float in [0, 1] on hr's device, from hr (B, 3, crop, crop) float in [0, 1]
    (uint8 is accepted too): the whole crop, before `pair` cuts the patches. Real JPEG and video codecs run on the
    CPU; everything else where hr is."""
    if hr.dtype == torch.uint8:
        hr = hr.float().div_(255)
    if hr.shape[0] != len(plan) or tuple(hr.shape[-2:]) != (plan.crop_size, plan.crop_size):
        raise ValueError(f"plan is for {len(plan)} x {plan.crop_size}x{plan.crop_size} crops, got {tuple(hr.shape)}")
    if not plan.high_order:
        return _codec(imresize(hr, 1 / plan.scale, kernel="bicubic").clamp_(0, 1), plan.codec)
    device, lq, everyone = hr.device, plan.crop_lq, np.arange(len(plan))
    backend = _backend(plan, device)
    x = _first_at_hr(hr, plan)
    if x is hr:  # the steps below work in place, and hr is the caller's
        x = hr.clone()

    # Between the first resize and the final one every sample has its own size: the steps run once per group of
    # samples that share a size (see the module docstring).
    pieces = _resize_pieces([(everyone, x)], plan.resize1.size, plan.resize1.mode)
    for i, (rows, piece) in enumerate(pieces):
        z = add_noise(piece, plan.noise1, rows, plan.resize1.size)
        z = _jpeg(z, rows, plan.jpeg1, backend)
        pieces[i] = (rows, _second_blur(z, rows, plan))
    pieces = _resize_pieces(pieces, plan.resize2.size, plan.resize2.mode)
    for i, (rows, piece) in enumerate(pieces):
        z = add_noise(piece, plan.noise2, rows, plan.resize2.size)
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
