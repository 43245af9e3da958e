"""The one inference path: a generator loaded weights-only from a path, fsspec URL or `models:/` URI, run on
overlapping tiles on any device (bf16 autocast on CUDA where the architecture supports it).

Validation, `srcluster evaluate`, `srcluster upscale`, the pipeline report and the registered pyfunc model all upscale
through here. spandrel recognises the architecture from the weights; when it cannot, the arch name, options and scale
that srcluster's export wrote in the safetensors header (`weights.generator_metadata`), or that the registry recorded,
build it. `tiled_upscale` keeps large images (DAT/HAT validation sets, 4K photos) in memory,
in one of two tilings (`Tiling`): srcluster's context tiles (`upscale`, `evaluate`, `compare`) or traiNNer-redux's
blended tiles (validation, so its numbers are redux's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

from srcluster.components.archs import build_generator
from srcluster.components.weights import read_generator_metadata, read_state_dict
from srcluster.degrade.resize import imresize
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.tracking.models import is_model_uri, resolve_model_uri

Network = Callable[[torch.Tensor], torch.Tensor]  # float (B, C, h, w) in [0, 1] -> (B, C, h*s, w*s)

# "context": each tile runs with `overlap` pixels of the image around it and keeps only its own part (exact for a
# receptive field within the overlap). "redux": traiNNer-redux's validation tiling (reflection padding, tiles at a
# stride of tile - overlap blended with tent weights), so tiled validation scores equal redux's.
Tiling = Literal["context", "redux"]  # the schema's srcluster.val_tiling


@dataclass
class Upscaler:
    """A loaded generator: float (B, 3, h, w) in [0, 1] -> (B, 3, h*scale, w*scale)."""

    net: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    name: str
    device: torch.device
    bf16: bool = True

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr)


def load_upscaler(
    source: str,
    device: torch.device | str | None = None,
    *,
    arch: str | None = None,
    options: dict[str, Any] | None = None,
    scale: int | None = None,
    settings: StorageSettings | None = None,
) -> Upscaler:
    """A generator from a path, fsspec URL or `models:/` URI, loaded weights-only onto `device`. `settings`: the
    process's storage settings (default: resolved from the environment, as a command's entry point does)."""
    settings = settings or StorageSettings.resolve()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = source
    if is_model_uri(source):
        path, arch, options, scale = resolve_model_uri(source)
    else:
        fs, inner = settings.filesystem(source)
        if not fs.exists(inner):
            raise SrclusterError(f"model {source} does not exist")
    state = read_state_dict(path, settings=settings)
    try:
        model = ModelLoader(device).load_from_state_dict(state)
    except UnsupportedModelError:
        model = None
    if isinstance(model, ImageModelDescriptor):
        return Upscaler(model.eval(), model.scale, model.architecture.name, device, model.supports_bfloat16)
    if model is not None:
        raise SrclusterError(f"model {source} is a {model.architecture.name} model, not an image-to-image one")
    if (arch is None or scale is None) and (recorded := read_generator_metadata(path, settings)):
        arch, scale, options = recorded  # an srcluster export of a family spandrel does not know
    if arch is None or scale is None:
        raise SrclusterError(
            f"model {source}: spandrel does not recognise its architecture (a registry model, "
            "models:/NAME@ALIAS, carries its arch)"
        )
    net = build_generator(arch, scale, **(options or {}))
    try:
        net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    except RuntimeError as exc:
        raise SrclusterError(
            f"model {source} does not match its recorded arch {arch}: {str(exc).splitlines()[0]}"
        ) from None
    net = net.eval().to(device)
    return Upscaler(lambda x: net(x).clamp_(0, 1), scale, arch, device)


def upscale_tensor(
    model: Upscaler, lr: torch.Tensor, tile: int = 512, overlap: int = 32, tiling: Tiling = "context"
) -> torch.Tensor:
    """float (B, 3, h, w) in [0, 1] on any device -> float32 (B, 3, h*s, w*s) on the model's device."""
    lr = lr.to(model.device, torch.float32)
    autocast = model.device.type == "cuda" and model.bf16
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        return tiled_upscale(model, lr, model.scale, tile, overlap, tiling).float().clamp_(0, 1)


def upscale_array(model: Upscaler, rgb: np.ndarray, tile: int = 512, overlap: int = 32) -> np.ndarray:
    """uint8 H x W x 3 RGB -> uint8 (H*s) x (W*s) x 3 RGB."""
    lr = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float().div_(255)
    sr = upscale_tensor(model, lr, tile, overlap)
    return sr[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def tiled_upscale(
    net: Network, lr: torch.Tensor, scale: int, tile: int, overlap: int = 8, tiling: Tiling = "context"
) -> torch.Tensor:
    """Upscale `lr` (B, C, h, w) on `tile` x `tile` blocks in the given tiling (see `Tiling`); `tile <= 0`, or an
    image no larger than one tile, runs in one pass in both."""
    h, w = lr.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return net(lr)
    if tiling == "redux":
        return blended_upscale(net, lr, scale, tile, overlap)
    return context_upscale(net, lr, scale, tile, overlap)


def context_upscale(net: Network, lr: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """Each `tile` x `tile` block is run with `overlap` pixels of the image around it as context, and only the block's
    own part of the output is kept (no blending).

    Output pixels near a tile edge then see the same input as in one whole-image pass, so a model whose receptive
    field reaches at most `overlap` LR pixels gives the untiled result exactly; for larger receptive fields the
    difference shrinks as the overlap grows.
    """
    h, w = lr.shape[-2:]
    out: torch.Tensor | None = None
    for top in range(0, h, tile):
        for left in range(0, w, tile):
            bottom, right = min(top + tile, h), min(left + tile, w)
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(bottom + overlap, h), min(right + overlap, w)
            sr = net(lr[..., t0:t1, l0:l1])
            if out is None:
                out = sr.new_zeros(*sr.shape[:-2], h * scale, w * scale)
            out[..., top * scale : bottom * scale, left * scale : right * scale] = sr[
                ..., (top - t0) * scale : (bottom - t0) * scale, (left - l0) * scale : (right - l0) * scale
            ]
    assert out is not None
    return out


def blended_upscale(net: Network, lr: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """traiNNer-redux's validation tiling (its `infer_tiled`), for an image larger than one tile.

    A side longer than `tile` is reflection-padded at its end to a multiple of `tile`; tiles start every
    `tile - overlap` pixels, a tile cut short by the padded edge is reflection-padded back towards `tile` (by at most
    its size - 1), and each tile's output is weighted by a tent that peaks at the tile's centre and is 0 on its first
    and last output rows and columns. The blend is the weighted sum over the weight sum, in float32. As in redux,
    output pixels that only tile borders cover (the image's first row and column, the seams when `overlap` is 0) get
    weight 0 and come out black.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and smaller than the tile size {tile}")
    h, w = lr.shape[-2:]
    padded = torch.nn.functional.pad(lr, (0, -w % tile if w > tile else 0, 0, -h % tile if h > tile else 0), "reflect")
    padded_h, padded_w = padded.shape[-2:]
    weight = tent_weight(tile * scale, lr.device)
    out = torch.zeros(*lr.shape[:-2], padded_h * scale, padded_w * scale, device=lr.device)
    weight_sum = torch.zeros_like(out)
    for top in tile_starts(padded_h, tile, overlap):
        for left in tile_starts(padded_w, tile, overlap):
            patch = padded[..., top : top + tile, left : left + tile]
            patch_h, patch_w = patch.shape[-2:]
            if patch_h < tile or patch_w < tile:
                short_h, short_w = tile - patch_h, tile - patch_w
                patch = torch.nn.functional.pad(
                    patch, (0, min(short_w, patch_w - 1), 0, min(short_h, patch_h - 1)), "reflect"
                )
            region = (..., slice(top * scale, (top + patch_h) * scale), slice(left * scale, (left + patch_w) * scale))
            tile_weight = weight[: patch_h * scale, : patch_w * scale]
            out[region] += net(patch)[..., : patch_h * scale, : patch_w * scale] * tile_weight
            weight_sum[region] += tile_weight
    return (out / weight_sum.clamp(min=1e-6))[..., : h * scale, : w * scale]


def tile_starts(size: int, tile: int, overlap: int) -> range:
    """Where redux's tiles start along a (padded) side: every `tile - overlap` pixels, at least one tile."""
    stride = tile - overlap
    return range(0, max(1, (size - overlap + stride - 1) // stride) * stride, stride)


def tent_weight(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) blending weights: 1 - |2t - 1| along each axis for t evenly spaced over [0, 1], multiplied."""
    ramp = 1 - (torch.linspace(0, 1, size, device=device) - 0.5).abs() * 2
    return torch.outer(ramp, ramp)


def load_model(source: str, scale: int, device: torch.device):
    """A generator from a .safetensors/.pth path, any fsspec URL or a `models:/` URI, loaded weights-only, that must
    upscale by `scale`."""
    model = load_upscaler(source, device)
    if model.scale != scale:
        raise SrclusterError(f"model {source} is a x{model.scale} model ({model.name}), not x{scale}")
    return model


def bicubic_upscaler(scale: int) -> Network:
    return lambda lr: imresize(lr, scale, kernel="bicubic")
