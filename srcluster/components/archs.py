"""Generators (through spandrel) and discriminators, by traiNNer-redux's `network_g.type` / `network_d.type` names.

Generators are spandrel's classes with traiNNer-redux's presets, so an exported state dict is recognised by spandrel's
`ModelLoader` without any srcluster code; families spandrel lacks come from resselt and spandrel-extra-arches, and
the rest from `handwritten/` (ArtCNN, Sebica, ...), each with redux's state-dict layout (its pretrains load strictly).
Each builder takes the job's `scale` plus the user's options; an option the
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
from resselt.archs.spanplus.arch import SpanPlus as ResseltSpanPlus
from resselt.utilities.dysample import DySample as ResseltDySample
from spandrel.architectures.__arch_helpers.dysample import DySample  # where redux's DUnet takes it from
from spandrel.architectures.HAT import HAT
from torch import nn
from torch.nn.utils import spectral_norm
from torch.nn.utils.parametrizations import spectral_norm as parametrized_spectral_norm
from torch.utils.checkpoint import checkpoint

from srcluster.components import handwritten
from srcluster.errors import ConfigError
from srcluster.registry import Registry

GENERATORS: Registry[nn.Module] = Registry("generator")
DISCRIMINATORS: Registry[nn.Module] = Registry("discriminator")

Adapter = Callable[[int, dict[str, Any]], dict[str, Any]]
ClassChooser = Callable[[int, dict[str, Any]], str]  # (scale, options) -> class name, where the scale picks the class


@dataclass(frozen=True)
class SpandrelPreset:
    """One traiNNer-redux generator name: a spandrel class, the keyword its scale goes to, and preset options.

    `adapt` translates traiNNer-redux option names that the spandrel class spells differently (it gets the scale and
    the merged options and returns the class's keyword arguments).
    """

    name: str
    module: str
    cls: str | ClassChooser
    scale_key: str
    presets: dict[str, Any] = field(default_factory=dict)
    adapt: Adapter | None = None

    def arch_class(self, scale: int = 4, options: dict[str, Any] | None = None) -> type[nn.Module]:
        """The class; `module` is a spandrel architecture folder (`DAT`) or a dotted module path (`resselt.archs.x`)."""
        module = self.module if "." in self.module else f"spandrel.architectures.{self.module}"
        cls = self.cls if isinstance(self.cls, str) else self.cls(scale, options or {})
        return getattr(importlib.import_module(module), cls)

    def kwargs(self, scale: int, options: dict[str, Any]) -> dict[str, Any]:
        """The class's keyword arguments for this scale and these user options; unknown options are a ConfigError."""
        merged = {**self.presets, **options, self.scale_key: scale}
        kwargs = merged if self.adapt is None else self.adapt(scale, merged)
        arch_class = self.arch_class(scale, merged)
        parameters = inspect.signature(arch_class.__init__).parameters.values()
        # a class's **kwargs swallows anything, so only named parameters count as options
        accepted = [p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ConfigError(
                f"network_g: {self.name} has no option {', '.join(map(repr, unknown))} "
                f"(it takes: {', '.join(p for p in accepted if p != self.scale_key)})"
            )
        return kwargs

    def __call__(self, scale: int, **options: Any) -> nn.Module:
        return self.arch_class(scale, {**self.presets, **options})(**self.kwargs(scale, options))


PRESETS: dict[str, SpandrelPreset] = {}


def _add(
    name: str, module: str, cls: str | ClassChooser, scale_key: str, adapt: Adapter | None = None, **presets: Any
) -> None:
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


def _realcugan_class(scale: int, options: dict[str, Any]) -> str:
    """redux's `realcugan` picks the class by scale (2, 3, 4), `fast` only at 2."""
    return "UpCunet2x_fast" if scale == 2 and options.get("fast") else f"UpCunet{scale}x"


def _realcugan_options(scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """redux's `realcugan(scale, pro, fast)`: refuse what it refuses; the class takes no scale and no `fast`."""
    kwargs = dict(kwargs)
    fast = kwargs.pop("fast", False)
    if scale not in (2, 3, 4):
        raise ConfigError(f"network_g: realcugan has scales 2, 3 and 4, not {scale}")
    if fast and scale != 2:
        raise ConfigError(f"network_g.fast: realcugan is fast only at scale 2, not {scale}")
    if fast and kwargs.get("pro"):
        raise ConfigError("network_g.pro: realcugan has no pro model with fast: true")
    kwargs.pop("scale")
    if fast:
        kwargs.pop("pro", None)
    return kwargs


_MOSR_UPSAMPLERS = {"pixelshuffle": "ps", "dysample": "dys", "geoensemblepixelshuffle": "gps"}


def _mosr_upsampler(scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """redux spells MoSR's upsamplers out (`geoensemblepixelshuffle`); spandrel takes its short names (`gps`)."""
    kwargs = dict(kwargs)
    upsampler = kwargs.get("upsampler", "pixelshuffle")
    if upsampler not in _MOSR_UPSAMPLERS:
        raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of {', '.join(_MOSR_UPSAMPLERS)}")
    kwargs["upsampler"] = _MOSR_UPSAMPLERS[upsampler]
    return kwargs


def _gaterv3_options(scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """redux's `sisr_blocks` is resselt's `span_blocks` (the SPAN blocks after the U-Net)."""
    kwargs = dict(kwargs)
    if "sisr_blocks" in kwargs:
        kwargs["span_blocks"] = kwargs.pop("sisr_blocks")
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
_add("plksr", "PLKSR", "PLKSR", "upscaling_factor", ccm_type="DCCM")  # redux: 3x3 channel mixers (DCCM)
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

_THIS = __name__  # classes defined below, in this module
_HAT: dict[str, Any] = dict(in_chans=3, img_size=64, window_size=16, conv_scale=0.01, overlap_ratio=0.5, img_range=1.0,
                            mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
_add("hat_s", _THIS, "CheckpointedHAT", "upscale", **_HAT, compress_ratio=24, squeeze_factor=24, depths=[6] * 6,
     embed_dim=144, num_heads=[6] * 6)
_add("hat_m", _THIS, "CheckpointedHAT", "upscale", **_HAT, compress_ratio=3, squeeze_factor=30, depths=[6] * 6,
     embed_dim=180, num_heads=[6] * 6)
_add("hat_l", _THIS, "CheckpointedHAT", "upscale", **_HAT, compress_ratio=3, squeeze_factor=30, depths=[6] * 12,
     embed_dim=180, num_heads=[6] * 12)

_add("atd", "ATD", "ATD", "upscale", in_chans=3, img_size=96, embed_dim=210, depths=[6] * 6, num_heads=[6] * 6,
     window_size=16, category_size=256, num_tokens=128, reducted_dim=20, convffn_kernel_size=5, img_range=1.0,
     mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
_add("atd_light", "ATD", "ATD", "upscale", in_chans=3, img_size=64, embed_dim=48, depths=[6] * 4, num_heads=[4] * 4,
     window_size=16, category_size=128, num_tokens=64, reducted_dim=8, convffn_kernel_size=7, img_range=1.0,
     mlp_ratio=1, upsampler="pixelshuffledirect", resi_connection="1conv")

# --- from spandrel, spandrel-extra-arches and resselt: redux's presets (options that equal the class's defaults are
# left out), so its state dicts load strictly (tests/unit/test_archs_families.py checks key names and shapes) ----------
_add("plksr_tiny", "PLKSR", "PLKSR", "upscaling_factor", n_blocks=12, kernel_size=13, use_ea=False, ccm_type="DCCM")
_add("realplksr_tiny", "PLKSR", "RealPLKSR", "upscaling_factor", _realplksr_upsampler, n_blocks=12, kernel_size=13,
     use_ea=False, layer_norm=True)
_add("realplksr_large", "PLKSR", "RealPLKSR", "upscaling_factor", _realplksr_upsampler, dim=96, layer_norm=True)
_add("safmn", "SAFMN", "SAFMN", "upscaling_factor", dim=36)
_add("safmn_l", "SAFMN", "SAFMN", "upscaling_factor", dim=128, n_blocks=16)
_add("dctlsa", "DCTLSA", "DCTLSA", "upscale")
_add("ditn_real", "DITN", "DITN", "upscale")
_add("seemore_t", "SeemoRe", "SeemoRe", "scale", num_experts=3, embedding_dim=36, lr_space="exp")
_add("realcugan", "RealCUGAN", _realcugan_class, "scale", _realcugan_options)
_RCAN: dict[str, Any] = dict(norm=False)  # redux's RCAN has no mean shift (spandrel's default has)
_add("rcan", "RCAN", "RCAN", "scale", **_RCAN)
_add("rcan_unshuffle", "RCAN", "RCAN", "scale", **_RCAN, unshuffle_mod=True)
_add("rcan_l", "RCAN", "RCAN", "scale", **_RCAN, n_feats=96)
_add("mosr", "MoSR", "MoSR", "upscale", _mosr_upsampler)
_add("mosr_t", "MoSR", "MoSR", "upscale", _mosr_upsampler, n_block=5, dim=48)
_add("moesr2", "MoESR", "MoESR", "scale")
_add("craft", "CRAFT", "CRAFT", "upscale")
_add("rgt", "RGT", "RGT", "upscale", split_size=[8, 32], depth=[6] * 8, num_heads=[6] * 8, mlp_ratio=2.0)
_add("rgt_s", "RGT", "RGT", "upscale", split_size=[8, 32], depth=[6] * 6, num_heads=[6] * 6, mlp_ratio=2.0)
_add("drct", "DRCT", "DRCT", "upscale", upsampler="pixelshuffle")
_add("drct_l", "DRCT", "DRCT", "upscale", depths=[6] * 12, num_heads=[6] * 12, upsampler="pixelshuffle")
_add("drct_xl", "DRCT", "DRCT", "upscale", depths=[6] * 14, num_heads=[6] * 14, upsampler="pixelshuffle")
_add("fdat", "FDAT", "FDAT", "scale", upsampler_type="pixelshuffle")
_add("fdat_tiny", "FDAT", "FDAT", "scale", embed_dim=96, num_groups=2, depth_per_group=2, num_heads=3,
     ffn_expansion_ratio=1.5, drop_path_rate=0.05)
_add("fdat_light", "FDAT", "FDAT", "scale", embed_dim=108, num_groups=3, depth_per_group=2, drop_path_rate=0.08)
_add("fdat_medium", "FDAT", "FDAT", "scale")
_add("fdat_medium_aligned", "FDAT", "FDAT", "scale", embed_dim=128)
_add("fdat_large", "FDAT", "FDAT", "scale", embed_dim=180, depth_per_group=4, num_heads=6)
_add("fdat_xl", "FDAT", "FDAT", "scale", embed_dim=180, num_groups=6, depth_per_group=6, num_heads=6)
_GRL: dict[str, Any] = dict(window_size=32, stripe_size=[64, 64], mlp_ratio=2.0, anchor_window_down_factor=4,
                            depths=[4] * 4, num_heads_window=[2] * 4, num_heads_stripe=[2] * 4)
_add("grl_b", "GRL", "GRL", "upscale", **{**_GRL, "depths": [4, 4, 8, 8, 8, 4, 4], "num_heads_window": [3] * 7,
     "num_heads_stripe": [3] * 7}, embed_dim=180, upsampler="pixelshuffle", local_connection=True)
_add("grl_s", "GRL", "GRL", "upscale", **_GRL, embed_dim=128, upsampler="pixelshuffle")
_add("grl_t", "GRL", "GRL", "upscale", **_GRL, embed_dim=64, upsampler="pixelshuffledirect")
_SWIN2SR: dict[str, Any] = dict(window_size=8, mlp_ratio=2.0)
_add("swin2sr_s", "Swin2SR", "Swin2SR", "upscale", **_SWIN2SR, embed_dim=60, upsampler="pixelshuffledirect")
_add("swin2sr_m", "Swin2SR", "Swin2SR", "upscale", **_SWIN2SR, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6,
     upsampler="pixelshuffle")
_add("swin2sr_l", "Swin2SR", "Swin2SR", "upscale", **_SWIN2SR, embed_dim=240, depths=[6] * 9, num_heads=[8] * 9,
     upsampler="nearest+conv", resi_connection="3conv")
_SRFORMER = "spandrel_extra_arches.architectures.SRFormer"
_add("srformer", _SRFORMER, "SRFormer", "upscale", img_size=48, window_size=24, depths=[6] * 6, embed_dim=180,
     num_heads=[6] * 6, mlp_ratio=2.0, upsampler="pixelshuffle")
_add("srformer_light", _SRFORMER, "SRFormer", "upscale", window_size=16, embed_dim=180, mlp_ratio=2.0,
     upsampler="pixelshuffledirect")
_SPANPLUS = _THIS  # resselt's, with spandrel's DySample (see SpanPlus below)
_add("spanplus", _SPANPLUS, "SpanPlus", "upscale")  # redux: blocks None means [4]
_add("spanplus_s", _SPANPLUS, "SpanPlus", "upscale", blocks=[2], feature_channels=32)
_add("spanplus_st", _SPANPLUS, "SpanPlus", "upscale", upsampler="ps")
_add("spanplus_sts", _SPANPLUS, "SpanPlus", "upscale", blocks=[2], feature_channels=32, upsampler="ps")
_add("mosrv2", "resselt.archs.mosrv2.arch", "MoSRv2", "scale")
_add("rtmosr", "resselt.archs.rtmosr.arch", "RTMoSR", "scale")
_add("rtmosr_l", "resselt.archs.rtmosr.arch", "RTMoSR", "scale", unshuffle_mod=True)
_add("rtmosr_ul", "resselt.archs.rtmosr.arch", "RTMoSR", "scale", ffn_expansion=1.5, unshuffle_mod=True, dccm=False)
_add("eimn", "resselt.archs.eimn.arch", "eimn", "scale")
_add("eimn_a", "resselt.archs.eimn.arch", "eimn", "scale", num_stages=14)
_add("eimn_l", "resselt.archs.eimn.arch", "eimn", "scale")
_GATERV3: dict[str, Any] = dict(enc_blocks=[2, 2, 4, 6], num_latent=8, upsample_mid_dim=48)  # redux's class defaults
_add("gaterv3", "resselt.archs.gaterv3.arch", "GateRV3", "scale", _gaterv3_options, **_GATERV3)
_add("gaterv3_r", "resselt.archs.gaterv3.arch", "GateRV3", "scale", _gaterv3_options, **_GATERV3)
_add("gaterv3_s", "resselt.archs.gaterv3.arch", "GateRV3", "scale", _gaterv3_options,
     **{**_GATERV3, "enc_blocks": [2, 2, 4]}, dec_blocks=[2, 2, 2])
_add("flexnet", "resselt.archs.flexnet.arch", "FlexNet", "scale", upsampler="pixelshuffle")
_add("metaflexnet", "resselt.archs.flexnet.arch", "FlexNet", "scale", num_blocks=[4, 6, 6, 8], pipeline_type="meta",
     upsampler="pixelshuffle")

# --- written here (components/handwritten/, one module per family): no maintained library has them ------------------
for _name, _module, _cls, _options in handwritten.presets():
    _add(_name, _module, _cls, "scale", **_options)
# fmt: on


class CheckpointedHAT(HAT):
    """spandrel's HAT, which takes `use_checkpoint` but never checkpoints, running each residual group under
    torch.utils.checkpoint while training when `use_checkpoint` is true (redux's option: activations recomputed in the
    backward pass instead of kept). Same modules, so the same state-dict keys and spandrel still recognises exports."""

    def __init__(self, *, use_checkpoint: bool = False, **kwargs: Any):
        super().__init__(use_checkpoint=use_checkpoint, **kwargs)
        self.checkpoint_groups = use_checkpoint

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpoint_groups and self.training and torch.is_grad_enabled()):
            return super().forward_features(x)
        x_size = (x.shape[2], x.shape[3])
        params = {
            "attn_mask": self.calculate_mask(x_size, dtype=x.dtype).to(x.device),
            "rpi_sa": self.relative_position_index_SA,
            "rpi_oca": self.relative_position_index_OCA,
        }
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = checkpoint(layer, x, x_size, params, use_reentrant=False)
        return self.patch_unembed(self.norm(x), x_size)


class SpanPlus(ResseltSpanPlus):
    """resselt's SpanPlus with redux's DySample (spandrel's): resselt's own pins host memory in every forward, which
    fails on a machine without CUDA. The same modules, so the same state-dict keys."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(self.upsampler, ResseltDySample):
            upsampler = self.upsampler
            self.upsampler = DySample(upsampler.offset.in_channels, upsampler.end_conv.out_channels, upsampler.scale)


# The subclasses take their parents' options (what `SpandrelPreset.kwargs` checks a user's options against)
CheckpointedHAT.__init__.__signature__ = inspect.signature(HAT.__init__)  # pyright: ignore[reportFunctionMemberAccess]
SpanPlus.__init__.__signature__ = inspect.signature(ResseltSpanPlus.__init__)  # pyright: ignore[reportFunctionMemberAccess]


# The architectures traiNNer-redux marks fp16-unsafe (`ARCHS_WITHOUT_FP16` in its arch_info.py): with use_amp and fp16
# they train under bf16 instead (or without AMP where the GPU has no bf16). Redux's whole list, so an architecture added
# here later inherits its entry.
FP16_UNSAFE = frozenset(
    {
        *("atd_light", "atd", "dat_2", "dat_2_l", "dat_2_l_aligned", "dat_2_aligned", "dat_light", "dat_s", "dat"),
        *("dctlsa", "drct_l", "drct_xl", "drct", "dwt_s", "dwt", "elan_light", "elan", "emt"),
        *("fdat_light", "fdat_medium", "fdat_medium_aligned", "fdat_large", "fdat_xl", "grl_b", "grl_s", "grl_t"),
        *("hat_l", "hat_l_aligned", "hat_m", "hat_s", "rhat_l", "rhat_m", "rhat_s", "hit_sir", "hit_sng", "hit_srf"),
        *("rcan", "rcan_unshuffle", "rcan_l", "moesr2", "rgt_s", "rgt", "seemore_t", "srformer_light", "srformer"),
        *("srhcnet", "sst_large_plus", "swin2sr_l", "swin2sr_m", "swin2sr_s", "swinir_l", "swinir_m", "swinir_s"),
        "tscunet",
    }
)


# traiNNer-redux's video generators: they take a clip of frames per sample (its `clip_size`), which srcluster's
# datasets (single images) do not make.
VIDEO_GENERATORS = frozenset({"tscunet", "tfdat", "temporalspan", "temporalspanv2"})


def _refuse_video(name: str) -> None:
    if name.lower() in VIDEO_GENERATORS:
        raise ConfigError(
            f"network_g.type: {name} is a video architecture (clips of frames); srcluster has no clip datasets"
        )


def build_generator(name: str, scale: int, **options: Any) -> nn.Module:
    _refuse_video(name)
    return GENERATORS.build(name, scale=scale, **options)


def check_generator_options(name: str, scale: int, options: dict[str, Any], key: str = "network_g") -> None:
    """Raise the ConfigError that building would, without building (for validating a job before anything starts);
    `key` names the job's section (network_g, network_g_teacher)."""
    _refuse_video(name)
    GENERATORS.check(name, f"{key}.type")
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


@DISCRIMINATORS.register("patchgandiscriminatorsn")
class PatchGANDiscriminatorSN(nn.Module):
    """traiNNer-redux's PatchGAN (pix2pixHD) discriminator: one score per overlapping patch.

    Every convolution (with its bias) is spectrally normalised with the old `spectral_norm` API, as in redux, so its
    `model.<i>.weight_orig/_u/_v` state dicts load here; options keep redux's names (input_nc, ndf, n_layers).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_sigmoid: bool = False):
        super().__init__()

        def conv(channels_in: int, channels_out: int, stride: int) -> nn.Module:
            return spectral_norm(nn.Conv2d(channels_in, channels_out, kernel_size=4, stride=stride, padding=1))

        channels = ndf
        layers: list[nn.Module] = [conv(input_nc, channels, 2), nn.LeakyReLU(0.2, True)]
        for _ in range(1, n_layers):
            previous, channels = channels, min(channels * 2, 512)
            layers += [conv(previous, channels, 2), nn.LeakyReLU(0.2, True)]
        previous, channels = channels, min(channels * 2, 512)
        layers += [conv(previous, channels, 1), nn.LeakyReLU(0.2, True), conv(channels, 1, 1)]
        if use_sigmoid:
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@DISCRIMINATORS.register("docres_discriminator")
class DocResDiscriminator(nn.Module):
    """traiNNer-redux's `docres_discriminator` (from its test registry; the DocRes GAN template names it): one 3x3 conv
    + LeakyReLU per entry of `num_blocks` (only its length counts), all at `dim` channels and full resolution, then a
    3x3 conv to `out_channels` scores per pixel. `heads`, `ffn_expansion_factor` and `LayerNorm_type` are taken and
    ignored, as in redux."""

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 1,
        dim: int = 64,
        num_blocks: list[int] | None = None,
        heads: list[int] | None = None,
        ffn_expansion_factor: float = 2.0,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # redux's option name
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = inp_channels
        for _ in [1, 2, 2, 3] if num_blocks is None else num_blocks:
            layers += [nn.Conv2d(channels, dim, 3, padding=1, bias=bias), nn.LeakyReLU(0.2, True)]
            channels = dim
        layers.append(nn.Conv2d(dim, out_channels, 3, padding=1, bias=bias))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@DISCRIMINATORS.register("dunet")
class DUnet(nn.Module):
    """traiNNer-redux's default GAN discriminator: a U-Net with spectral norm, Mish, and DySample upsampling.

    Three stride-2 encoder stages double the channels; three decoder stages (DySample x2, then a conv halving the
    channels) add the matching encoder features back; the head gives one realness logit per pixel. Height and width
    must be multiples of 8. Built as redux builds it, module by module in the same order: torch's `parametrizations`
    spectral norm (15 power iterations at construction, one per training forward) and spandrel's DySample, so the same
    seed gives the same initial weights and estimates, and redux's `net_d` state dicts load strictly.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64):
        super().__init__()
        self.in_to_dim = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.e_x1, self.e_x2, self.e_x3 = (self._down(num_feat * 2**i) for i in range(3))
        self.up1, self.up2, self.up3 = (self._up(num_feat * 2**i) for i in (3, 2, 1))
        self.end_conv = nn.Sequential(
            parametrized_spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            parametrized_spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)),
            nn.Mish(True),
            nn.Conv2d(num_feat, 1, 3, 1, 1),
        )

    @staticmethod
    def _down(dim: int) -> nn.Sequential:
        return nn.Sequential(parametrized_spectral_norm(nn.Conv2d(dim, dim * 2, 3, 2, 1)), nn.Mish(True))

    @staticmethod
    def _up(dim: int) -> nn.Sequential:
        # x2, 4 groups, no end convolution: redux's `DySample(dim, dim, 2, 4, False)`
        return nn.Sequential(
            DySample(dim, dim, 2, 4, False), parametrized_spectral_norm(nn.Conv2d(dim, dim // 2, 3, 1, 1))
        )

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
