"""Generators by traiNNer-redux name (spandrel classes with its presets) and the discriminators."""

import os

import pytest
import torch
from spandrel import ModelLoader
from torch.nn.utils import parametrize

from srcluster.components import archs, weights
from srcluster.errors import ConfigError

# Small versions of each preset for the build/forward/export tests (the real sizes are checked below).
TINY_TRANSFORMER = {"embed_dim": 16, "num_heads": [2]}
TINY = {
    "span": {"feature_channels": 16},  # spandrel's SPAN re-fuses its convs on every eval forward: slow at full width
    "span_s": {"feature_channels": 16},
    "esrgan": {"num_blocks": 1},
    "esrgan_lite": {"num_blocks": 1},
    "realplksr": {"n_blocks": 2},
    "plksr": {"n_blocks": 2},
    "omnisr": {"res_num": 1},
    # DAT's position-bias MLP is embed_dim / 32 wide: 32 is the smallest width without empty layers
    **{name: {**TINY_TRANSFORMER, "embed_dim": 32, "depth": [1]} for name in ("dat", "dat_s", "dat_2", "dat_light")},
    **{name: {**TINY_TRANSFORMER, "depths": [1]} for name in ("swinir_s", "swinir_m", "swinir_l")},
    # the channel attention divides embed_dim by compress_ratio and then squeeze_factor: keep >= 1 channel
    **{
        name: {**TINY_TRANSFORMER, "depths": [1], "compress_ratio": 2, "squeeze_factor": 4, "num_feat": 16}
        for name in ("hat_s", "hat_m", "hat_l")
    },
    # ATD's last block of a group differs from the others, so a group needs 2 blocks to have every key spandrel wants
    **{name: {**TINY_TRANSFORMER, "depths": [2], "num_tokens": 8, "reducted_dim": 4} for name in ("atd", "atd_light")},
}

REQUIRED = {
    "dat",
    "dat_2",
    "dat_s",
    "dat_light",
    "span",
    "span_s",
    "esrgan",
    "esrgan_lite",
    "compact",
    "ultracompact",
    "superultracompact",
    "realplksr",
    "plksr",
    "swinir_s",
    "swinir_m",
    "swinir_l",
    "hat_s",
    "hat_m",
    "hat_l",
    "omnisr",
    "atd",
    "atd_light",
}


def test_every_traiNNer_redux_name_we_promise_is_registered():
    assert set(archs.GENERATORS.names()) >= REQUIRED
    assert {"unetdiscriminatorsn", "patchgandiscriminatorsn", "dunet"} <= set(archs.DISCRIMINATORS.names())


# The families from libraries other than spandrel, and the newer spandrel ones, are in test_archs_families.py.
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_generator_upscales_and_exports_to_spandrel(name, tmp_path):
    preset = archs.PRESETS[name]
    x = torch.rand(1, 3, 12, 12)
    for scale in (2, 4):
        torch.manual_seed(0)
        net = archs.build_generator(name, scale, **TINY.get(name, {})).eval()
        with torch.inference_mode():
            out = net(x)
        assert out.shape == (1, 3, 12 * scale, 12 * scale)
        path = weights.export_generator(net, tmp_path / f"{name}_x{scale}.safetensors")
        loaded = ModelLoader().load_from_file(path)
        assert issubclass(preset.arch_class(), type(loaded.model))  # HAT is spandrel's HAT with checkpointing
        assert loaded.scale == scale
    if preset.module != "ATD":  # ATD's category_size is not in its state dict; spandrel assumes the preset's
        with torch.inference_mode():
            torch.testing.assert_close(loaded.model.eval()(x), out, atol=1e-5, rtol=1e-4)


# Parameter counts at x4 of the published models these presets reproduce (papers' tables, in millions).
PUBLISHED_PARAMS = {
    "esrgan": 16.70,
    "realplksr": 7.39,
    "atd_light": 0.769,
    "dat": 14.80,
    "dat_s": 11.21,
    "dat_2": 11.21,
    "swinir_m": 11.90,
    "hat_s": 9.62,
    "hat_m": 20.77,
    "hat_l": 40.85,
    "atd": 20.26,
}
# Building these at full size takes seconds each on a small CPU: checked when SRCLUSTER_FULL_ARCH_TESTS=1.
HEAVY = {"dat", "dat_s", "dat_2", "dat_light", "swinir_m", "swinir_l", "hat_s", "hat_m", "hat_l", "atd", "plksr"}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_presets_build_at_their_real_size(name):
    if name in HEAVY and not os.environ.get("SRCLUSTER_FULL_ARCH_TESTS"):
        pytest.skip("full-size transformer: set SRCLUSTER_FULL_ARCH_TESTS=1 to build it")
    count = sum(p.numel() for p in archs.build_generator(name, 4).parameters()) / 1e6
    if name in PUBLISHED_PARAMS:
        assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=5e-3)
    assert count > 0.05


def test_traiNNer_redux_presets_that_differ_from_spandrel_defaults():
    span = archs.build_generator("span_s", 4)
    assert span.conv_1.sk.out_channels == 48 and not span.is_norm  # traiNNer-redux: 48 channels, no input norm
    assert archs.build_generator("span", 4).conv_1.sk.out_channels == 52
    lite = archs.build_generator("esrgan_lite", 4)
    assert lite.model[0].out_channels == 32 and len(lite.model[1].sub) == 12 + 1  # 12 RRDBs, then the trunk conv


def test_esrgan_pixel_unshuffles_at_small_scales():
    two = archs.build_generator("esrgan", 2, num_blocks=1)
    assert two.model[0].in_channels == 12 and two.shuffle_factor == 2  # 3 channels x 2x2 unshuffle
    one = archs.build_generator("esrgan_lite", 1, num_blocks=1)
    assert one.model[0].in_channels == 48 and one.shuffle_factor == 4
    assert one(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    plain = archs.build_generator("esrgan", 2, num_blocks=1, use_pixel_unshuffle=False)
    assert plain.model[0].in_channels == 3 and not plain.shuffle_factor


def test_realplksr_takes_traiNNer_redux_option_spellings():
    net = archs.build_generator("realplksr", 2, n_blocks=1, upsampler="dysample", layer_norm=True)
    assert type(net.to_img).__name__ == "DySample"
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="upsampler"):
        archs.build_generator("realplksr", 2, upsampler="nearest")


def test_template_options_are_accepted_and_unknown_ones_named():
    # options the traiNNer-redux templates set
    assert archs.build_generator("dat_2", 2, use_chk=True, **TINY["dat_2"]).use_chk
    assert archs.build_generator("span", 2, norm=False) is not None
    with pytest.raises(ConfigError, match=r"network_g: dat has no option 'use_chek' \(it takes: .*use_chk"):
        archs.build_generator("dat", 2, use_chek=True)
    # the same check without building, for validating a job before anything starts
    archs.check_generator_options("dat", 4, {"use_chk": True})
    with pytest.raises(ConfigError, match="use_chek"):
        archs.check_generator_options("dat", 4, {"use_chek": True})
    with pytest.raises(ConfigError, match="upsampler"):
        archs.check_generator_options("realplksr", 4, {"upsampler": "bilinear"})


def spectral_normed(net):
    """Modules with a spectral norm, in either of torch's APIs (redux's DUnet uses `parametrizations`, the others the
    old hook)."""
    return [
        name
        for name, module in net.named_modules()
        if hasattr(module, "weight_orig") or (parametrize.is_parametrized(module, "weight"))
    ]


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("unetdiscriminatorsn", {"num_feat": 8}, 32),
        ("patchgandiscriminatorsn", {"ndf": 8}, 64),
        ("dunet", {"num_feat": 8}, 32),
    ],
)
def test_discriminators_score_images_with_spectral_norm(name, options, size):
    net = archs.build_discriminator(name, **options)
    out = net(torch.rand(2, 3, size, size))
    assert out.shape[:2] == (2, 1)
    if name in ("unetdiscriminatorsn", "dunet"):
        assert out.shape[-2:] == (size, size)  # one logit per pixel
    assert spectral_normed(net)


def test_dunet_matches_traiNNer_redux_layout():
    net = archs.build_discriminator("dunet", num_feat=8)
    # every conv but the input and output ones is spectrally normalised
    assert sorted(spectral_normed(net)) == sorted(
        [f"e_x{i}.0" for i in (1, 2, 3)] + [f"up{i}.1" for i in (1, 2, 3)] + ["end_conv.0", "end_conv.2"]
    )
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["up1.0.offset.weight"] == (32, 64, 1, 1)  # 2 coords x 4 groups x 2x2 sub-pixels, from 8 * 8 channels
    assert shapes["up3.1.parametrizations.weight.original"] == (8, 16, 3, 3)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 3, 20, 20))


def test_patchgan_is_redux_network():
    net = archs.build_discriminator("patchgandiscriminatorsn", ndf=8)
    # spectral norm on every convolution, the first and last included, each with a bias
    assert spectral_normed(net) == [f"model.{i}" for i in (0, 2, 4, 6, 8)]
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["model.0.weight_orig"] == (8, 3, 4, 4) and shapes["model.8.weight_orig"] == (1, 64, 4, 4)
    assert all(f"model.{i}.bias" in shapes for i in (0, 2, 4, 6, 8))
