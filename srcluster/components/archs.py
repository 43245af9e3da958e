"""Generators (through spandrel) and discriminators, by traiNNer-redux's `network_g.type` / `network_d.type` names.

Generators are spandrel's classes with traiNNer-redux's presets, so an exported state dict is recognised by spandrel's
`ModelLoader` without any srcluster code. Each builder takes the job's `scale` plus the user's options; an option the
class does not take is a one-line error naming the options it does take.

Presets follow traiNNer-redux's `traiNNer/archs/*_arch.py` (checked against its source; parameter counts at x4 match
the papers: DAT 14.80M, DAT-S/DAT-2 11.21M, SwinIR-M 11.90M, HAT-S 9.62M, HAT 20.77M, HAT-L 40.85M, ATD 20.26M,
ATD-light 0.77M, RRDBNet 16.70M, RealPLKSR 7.39M). Where traiNNer-redux differs from the paper it is followed:
`span` is 52 channels and `span_s` 48, both without input normalisation; `dat_light` uses a pixel-shuffle upsampler
(the paper's DAT-light is `upsampler: pixelshuffledirect`); `esrgan`/`esrgan_lite` pixel-unshuffle the input at
scales 1 and 2 (`use_pixel_unshuffle`, default true).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from srcluster.errors import ConfigError
from srcluster.registry import Registry

GENERATORS: Registry[nn.Module] = Registry("generator")
DISCRIMINATORS: Registry[nn.Module] = Registry("discriminator")

Adapter = Callable[[int, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SpandrelPreset:
    """One traiNNer-redux generator name: a spandrel class, the keyword its scale goes to, and preset options.

    `adapt` translates traiNNer-redux option names that the spandrel class spells differently (it gets the scale and
    the merged options and returns the class's keyword arguments).
    """

    name: str
    module: str
    cls: str
    scale_key: str
    presets: dict[str, Any] = field(default_factory=dict)
    adapt: Adapter | None = None

    def arch_class(self) -> type[nn.Module]:
        return getattr(importlib.import_module(f"spandrel.architectures.{self.module}"), self.cls)

    def kwargs(self, scale: int, options: dict[str, Any]) -> dict[str, Any]:
        """The class's keyword arguments for this scale and these user options; unknown options are a ConfigError."""
        kwargs = {**self.presets, **options, self.scale_key: scale}
        if self.adapt is not None:
            kwargs = self.adapt(scale, kwargs)
        accepted = [p for p in inspect.signature(self.arch_class().__init__).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"network_g: {self.name} has no option {', '.join(map(repr, unknown))} "
                f"(it takes: {', '.join(p for p in accepted if p != self.scale_key)})"
            )
        return kwargs

    def __call__(self, scale: int, **options: Any) -> nn.Module:
        return self.arch_class()(**self.kwargs(scale, options))


PRESETS: dict[str, SpandrelPreset] = {}


def _add(name: str, module: str, cls: str, scale_key: str, adapt: Adapter | None = None, **presets: Any) -> None:
    PRESETS[name] = SpandrelPreset(name, module, cls, scale_key, presets, adapt)
    GENERATORS.register(name)(PRESETS[name])


def _esrgan_pixel_unshuffle(scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """traiNNer-redux's `use_pixel_unshuffle`: at scales 1 and 2 the input is pixel-unshuffled by 4/scale and the net
    runs as a x4 RRDBNet on the smaller, deeper input (much less compute); spandrel's `shuffle_factor` does that."""
    kwargs = dict(kwargs)
    if kwargs.pop("use_pixel_unshuffle", True) and scale in (1, 2):
        factor = 4 // scale
        kwargs.update(scale=4, shuffle_factor=factor, in_nc=kwargs.get("in_nc", 3) * factor**2)
    return kwargs


def _realplksr_upsampler(scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """traiNNer-redux spells the upsampler `upsampler: pixelshuffle | dysample`; spandrel takes `dysample: bool`."""
    kwargs = dict(kwargs)
    upsampler = kwargs.pop("upsampler", "pixelshuffle")
    if upsampler not in ("pixelshuffle", "dysample"):
        raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of pixelshuffle, dysample")
    kwargs.setdefault("dysample", upsampler == "dysample")
    return kwargs


# The presets stay one table (a row per name, wrapped by hand) rather than one keyword per line.
# fmt: off
# --- CNNs -------------------------------------------------------------------------------------------------------------
_add("compact", "Compact", "Compact", "upscale")
_add("ultracompact", "Compact", "Compact", "upscale", num_feat=64, num_conv=8)
_add("superultracompact", "Compact", "Compact", "upscale", num_feat=24, num_conv=8)
_add("span", "SPAN", "SPAN", "upscale", num_in_ch=3, num_out_ch=3, feature_channels=52, norm=False)
_add("span_s", "SPAN", "SPAN", "upscale", num_in_ch=3, num_out_ch=3, feature_channels=48, norm=False)
_add("esrgan", "ESRGAN", "ESRGAN", "scale", _esrgan_pixel_unshuffle)
_add("esrgan_lite", "ESRGAN", "ESRGAN", "scale", _esrgan_pixel_unshuffle, num_filters=32, num_blocks=12)
_add("realplksr", "PLKSR", "RealPLKSR", "upscaling_factor", _realplksr_upsampler, layer_norm=True)
_add("plksr", "PLKSR", "PLKSR", "upscaling_factor")
_add("omnisr", "OmniSR", "OmniSR", "up_scale", res_num=5, block_num=1, bias=True, window_size=8, pe=True)

# --- transformers -----------------------------------------------------------------------------------------------------
_DAT: dict[str, Any] = dict(in_chans=3, img_size=64, img_range=1.0)
_add("dat", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 32], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
     expansion_factor=4, resi_connection="1conv")
_add("dat_s", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 16], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
     expansion_factor=2, resi_connection="1conv")
_add("dat_2", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 32], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
     expansion_factor=2, resi_connection="1conv")
_add("dat_light", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 32], depth=[18], embed_dim=60, num_heads=[6],
     expansion_factor=2, resi_connection="3conv", upsampler="pixelshuffle")

_SWINIR: dict[str, Any] = dict(window_size=8, mlp_ratio=2, img_range=1.0)
_add("swinir_s", "SwinIR", "SwinIR", "upscale", **_SWINIR, img_size=64, embed_dim=60, depths=[6] * 4,
     num_heads=[6] * 4, upsampler="pixelshuffledirect", resi_connection="1conv")
_add("swinir_m", "SwinIR", "SwinIR", "upscale", **_SWINIR, img_size=48, embed_dim=180, depths=[6] * 6,
     num_heads=[6] * 6, upsampler="pixelshuffle", resi_connection="1conv")
_add("swinir_l", "SwinIR", "SwinIR", "upscale", **_SWINIR, img_size=64, embed_dim=240, depths=[6] * 9,
     num_heads=[8] * 9, upsampler="nearest+conv", resi_connection="3conv")

_HAT: dict[str, Any] = dict(in_chans=3, img_size=64, window_size=16, conv_scale=0.01, overlap_ratio=0.5, img_range=1.0,
                            mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
_add("hat_s", "HAT", "HAT", "upscale", **_HAT, compress_ratio=24, squeeze_factor=24, depths=[6] * 6, embed_dim=144,
     num_heads=[6] * 6)
_add("hat_m", "HAT", "HAT", "upscale", **_HAT, compress_ratio=3, squeeze_factor=30, depths=[6] * 6, embed_dim=180,
     num_heads=[6] * 6)
_add("hat_l", "HAT", "HAT", "upscale", **_HAT, compress_ratio=3, squeeze_factor=30, depths=[6] * 12, embed_dim=180,
     num_heads=[6] * 12)

_add("atd", "ATD", "ATD", "upscale", in_chans=3, img_size=96, embed_dim=210, depths=[6] * 6, num_heads=[6] * 6,
     window_size=16, category_size=256, num_tokens=128, reducted_dim=20, convffn_kernel_size=5, img_range=1.0,
     mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
_add("atd_light", "ATD", "ATD", "upscale", in_chans=3, img_size=64, embed_dim=48, depths=[6] * 4, num_heads=[4] * 4,
     window_size=16, category_size=128, num_tokens=64, reducted_dim=8, convffn_kernel_size=7, img_range=1.0,
     mlp_ratio=1, upsampler="pixelshuffledirect", resi_connection="1conv")
# fmt: on


def build_generator(name: str, scale: int, **options: Any) -> nn.Module:
    return GENERATORS.build(name, scale=scale, **options)


def check_generator_options(name: str, scale: int, options: dict[str, Any]) -> None:
    """Raise the ConfigError that building would, without building (for validating a job before anything starts)."""
    GENERATORS.check(name, "network_g.type")
    PRESETS[name.lower()].kwargs(scale, options)


# --- discriminators ---------------------------------------------------------------------------------------------------


@DISCRIMINATORS.register("unetdiscriminatorsn")
class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral norm: a realness score per pixel, not per image."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        sn = spectral_norm
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = partial(nn.functional.leaky_relu, negative_slope=0.2, inplace=True)
        up = partial(nn.functional.interpolate, scale_factor=2, mode="bilinear", align_corners=False)
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        x4 = x4 + x2 if self.skip_connection else x4
        x5 = act(self.conv5(up(x4)))
        x5 = x5 + x1 if self.skip_connection else x5
        x6 = act(self.conv6(up(x5)))
        x6 = x6 + x0 if self.skip_connection else x6
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)


@DISCRIMINATORS.register("patchgan")
class PatchGANDiscriminatorSN(nn.Module):
    """A PatchGAN (pix2pix) discriminator with spectral norm: one score per overlapping patch."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = num_feat
        for i in range(1, num_layers + 1):
            out = num_feat * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride, 1, bias=False)), nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DySample(nn.Module):
    """x2 learned upsampling by resampling (DySample, arXiv:2308.15085, "lp" style, no end convolution).

    A 1x1 conv predicts, for each output pixel, an offset from its regular sub-pixel position in the input (`init_pos`),
    gated by a second 1x1 conv (`scope`, starting at zero); the output is the input sampled bilinearly there. With
    zero offsets it is a plain bilinear x2 upsample. Parameter names match traiNNer-redux's DUnet.
    """

    def __init__(self, channels: int, scale: int = 2, groups: int = 4):
        super().__init__()
        if channels % groups:
            raise ValueError(f"DySample: {channels} channels do not split into {groups} groups")
        self.scale, self.groups = scale, groups
        offsets = 2 * groups * scale**2  # an (x, y) offset per group and output sub-pixel
        self.offset = nn.Conv2d(channels, offsets, 1)
        self.scope = nn.Conv2d(channels, offsets, 1, bias=False)
        nn.init.trunc_normal_(self.offset.weight, std=0.02)
        nn.init.zeros_(self.scope.weight)
        # the centres of the scale x scale sub-pixels of an input pixel, in input-pixel units
        h = (torch.arange(scale) - (scale - 1) / 2) / scale
        grid = torch.stack(torch.meshgrid(h, h, indexing="ij")).transpose(1, 2)  # (2: x, y; scale, scale)
        self.register_buffer("init_pos", grid.repeat(1, groups, 1).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, g = self.scale, self.groups
        offset = self.offset(x) * self.scope(x).sigmoid() * 0.5 + self.init_pos
        offset = offset.view(b, 2, -1, h, w)
        # input pixel centres (x then y), shifted by the offsets, normalised to grid_sample's [-1, 1]
        ys, xs = torch.meshgrid(
            torch.arange(h, device=x.device, dtype=x.dtype) + 0.5,
            torch.arange(w, device=x.device, dtype=x.dtype) + 0.5,
            indexing="ij",
        )
        base = torch.stack([xs, ys]).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1, 1)
        coords = 2 * (base + offset) / size - 1
        coords = (
            F.pixel_shuffle(coords.reshape(b, -1, h, w), s)  # sub-pixel offsets become output pixels
            .view(b, 2, -1, s * h, s * w)
            .permute(0, 2, 3, 4, 1)
            .contiguous()
            .flatten(0, 1)
        )
        out = F.grid_sample(
            x.reshape(b * g, -1, h, w), coords, mode="bilinear", align_corners=False, padding_mode="border"
        )
        return out.view(b, -1, s * h, s * w)


@DISCRIMINATORS.register("dunet")
class DUnet(nn.Module):
    """traiNNer-redux's default GAN discriminator: a U-Net with spectral norm, Mish, and DySample upsampling.

    Three stride-2 encoder stages double the channels; three decoder stages (DySample x2, then a conv halving the
    channels) add the matching encoder features back; the head gives one realness logit per pixel. Height and width
    must be multiples of 8. Module names match traiNNer-redux's, so its pretrained discriminators load.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64):
        super().__init__()
        self.in_to_dim = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.e_x1, self.e_x2, self.e_x3 = (self._down(num_feat * 2**i) for i in range(3))
        self.up1, self.up2, self.up3 = (self._up(num_feat * 2**i) for i in (3, 2, 1))
        self.end_conv = nn.Sequential(
            spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            nn.Conv2d(num_feat, 1, 3, 1, 1),
        )

    @staticmethod
    def _down(dim: int) -> nn.Sequential:
        return nn.Sequential(spectral_norm(nn.Conv2d(dim, dim * 2, 3, 2, 1)), nn.Mish(True))

    @staticmethod
    def _up(dim: int) -> nn.Sequential:
        return nn.Sequential(DySample(dim), spectral_norm(nn.Conv2d(dim, dim // 2, 3, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"dunet needs height and width that are multiples of 8, got {tuple(x.shape[-2:])}")
        x0 = self.in_to_dim(x)
        x1 = self.e_x1(x0)
        x2 = self.e_x2(x1)
        x3 = self.e_x3(x2)
        x = self.up1(x3) + x2
        x = self.up2(x) + x1
        x = self.up3(x) + x0
        return self.end_conv(x)


def build_discriminator(name: str, **options: Any) -> nn.Module:
    return DISCRIMINATORS.build(name, **options)
