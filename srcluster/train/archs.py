"""Generators (through spandrel) and discriminators, by traiNNer-redux's `network_g.type` / `network_d.type` names.

Generators are spandrel's classes with traiNNer-redux's presets, so an exported state dict is recognised by spandrel's
`ModelLoader` without any srcluster code. Each builder takes the job's `scale` plus the user's options.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from srcluster.registry import Registry

GENERATORS: Registry[nn.Module] = Registry("generator")
DISCRIMINATORS: Registry[nn.Module] = Registry("discriminator")


def _spandrel(module: str, cls: str, scale_key: str, presets: dict, scale: int, **options) -> nn.Module:
    import importlib

    arch = getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls)
    return arch(**{**presets, **options, scale_key: scale})


def _add(name: str, module: str, cls: str, scale_key: str, **presets) -> None:
    GENERATORS.register(name)(partial(_spandrel, module, cls, scale_key, presets))


_add("compact", "Compact", "Compact", "upscale")
_add("ultracompact", "Compact", "Compact", "upscale", num_feat=64, num_conv=8)
_add("superultracompact", "Compact", "Compact", "upscale", num_feat=24, num_conv=8)
_add("span", "SPAN", "SPAN", "upscale", num_in_ch=3, num_out_ch=3, feature_channels=48)
_add("span_s", "SPAN", "SPAN", "upscale", num_in_ch=3, num_out_ch=3, feature_channels=32)
_add("esrgan", "ESRGAN", "ESRGAN", "scale")
_add("esrgan_lite", "ESRGAN", "ESRGAN", "scale", num_filters=32, num_blocks=12)
_add("realplksr", "PLKSR", "RealPLKSR", "upscaling_factor")
_add("plksr", "PLKSR", "PLKSR", "upscaling_factor")
_DAT = dict(in_chans=3, img_size=64, img_range=1.0, expansion_factor=2)
_add("dat", "DAT", "DAT", "upscale")
_add("dat_2", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 32], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
     resi_connection="1conv")
_add("dat_s", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 16], depth=[6] * 6, embed_dim=180, num_heads=[6] * 6,
     resi_connection="1conv")
_add("dat_light", "DAT", "DAT", "upscale", **_DAT, split_size=[8, 32], depth=[18], embed_dim=60, num_heads=[6],
     resi_connection="3conv", upsampler="pixelshuffledirect")


def build_generator(name: str, scale: int, **options) -> nn.Module:
    return GENERATORS.build(name, scale=scale, **options)


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


def build_discriminator(name: str, **options) -> nn.Module:
    return DISCRIMINATORS.build(name, **options)
