"""Generators from resselt, spandrel-extra-arches and spandrel's newer families, and the hand-written ones: each builds
at traiNNer-redux's preset with redux's state-dict layout (so its pretrains load strictly), upscales, takes redux's
options, and trains in the loop."""

from __future__ import annotations

import hashlib
from typing import Any, cast

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers.batches import HRBatches, Recorder
from helpers.images import PHOTO, save
from srcluster.components import archs, weights
from srcluster.config import parse_job
from srcluster.errors import ConfigError
from srcluster.train import best
from srcluster.train.loop import run
from srcluster.train.state import build_stage
from srcluster.train.validate import build_validator

pytestmark = pytest.mark.usefixtures("single_thread")


def layout(state: dict[str, torch.Tensor]) -> tuple[int, int, str]:
    """(tensors, numbers, digest of every `name:shape`): equal layouts are what a strict load needs."""
    lines = "\n".join(f"{name}:{tuple(tensor.shape)}" for name, tensor in sorted(state.items()))
    return len(state), sum(t.numel() for t in state.values()), hashlib.sha256(lines.encode()).hexdigest()[:16]


# The layouts of traiNNer-redux's own networks (its `traiNNer/archs/*_arch.py` preset functions, built at x4 and x2 in a
# scratch environment from its source at commit 686293190), by the same `layout` function.
REDUX_LAYOUT_X4 = {
    "artcnn_r16f96": (102, 4113168, "836a4c80dc77829a"),
    "artcnn_r3f24": (24, 63168, "798d151163e167fa"),
    "artcnn_r5f48": (36, 354672, "fb6536b989e0ceed"),
    "artcnn_r8f24": (54, 141288, "5a1ac8265ed72139"),
    "artcnn_r8f48": (54, 541728, "7db0e995ccfa3c3d"),
    "artcnn_r8f64": (54, 952688, "4f4a61c9c32328bd"),
    "craft": (844, 762404, "c3393d7a3d10c687"),
    "dctlsa": (546, 890656, "7aa652ca00869180"),
    "ditn_real": (122, 444112, "75d2c86f18f82ef7"),
    "drct": (508, 28688571, "be800ee2cb668066"),
    "drct_l": (1000, 56678703, "ddcf888628fa526b"),
    "drct_xl": (1164, 66008747, "b9f65dc243578cd5"),
    "eimn": (708, 1006624, "557f3a90c1c045fd"),
    "eimn_a": (620, 884482, "2ecc38d89a370487"),
    "eimn_l": (708, 1006624, "557f3a90c1c045fd"),
    "fdat": (376, 4160602, "08145d74b1b74e71"),
    "fdat_large": (494, 11121586, "b69a94d856f9a2c2"),
    "fdat_light": (193, 1909474, "be0baea0b4c9c1c3"),
    "fdat_medium": (374, 4030630, "d8e614f194d60fa8"),
    "fdat_medium_aligned": (374, 4551438, "2ff223e7fe3585e5"),
    "fdat_tiny": (132, 1009354, "8960332f6ab4c259"),
    "fdat_xl": (1096, 23118826, "04df8a790ed88626"),
    "flexnet": (875, 3045137, "f30f2a9405080277"),
    "gaterv3": (710, 22441869, "c6ef5709b77b3d07"),
    "gaterv3_r": (710, 22441869, "c6ef5709b77b3d07"),
    "gaterv3_s": (530, 6152845, "04fc2595818d6fd3"),
    "grl_b": (1390, 20201299, "0a5a3213fd94a8eb"),
    "grl_s": (440, 3487715, "635125d701a87eae"),
    "grl_t": (434, 906192, "6a840f9208502b2b"),
    "metaflexnet": (979, 67205425, "cc568f5bf4e399eb"),
    "moesr2": (860, 16547015, "7c536ed483b48406"),
    "mosr": (208, 4287600, "61e4c493d35b08bd"),
    "mosr_t": (56, 609888, "326ee31a4081a668"),
    "mosrv2": (323, 4179895, "bad69a8db539fb89"),
    "plksr_tiny": (100, 2370544, "2744c2d329e49994"),
    "rcan": (1630, 15592355, "40e3e9c0b2812e86"),
    "rcan_l": (1630, 35049843, "b3b5b56523b9eb3a"),
    "rcan_unshuffle": (1630, 15592355, "40e3e9c0b2812e86"),
    "realcugan": (62, 1406812, "3f8026796a9e82e5"),
    "realplksr_large": (340, 16594896, "fef706ad88cab1ab"),
    "realplksr_tiny": (124, 2372080, "1d1a590631af1704"),
    "rgt": (2024, 41767815, "3981c761b53816bb"),
    "rgt_s": (1522, 31500471, "b85fd9896be46017"),
    "rtmosr": (188, 2962128, "235a7dd514e32046"),
    "rtmosr_l": (188, 2962128, "235a7dd514e32046"),
    "rtmosr_ul": (154, 2214154, "78863a1a546c7191"),
    "safmn": (148, 239520, "a75d04d9040f795b"),
    "safmn_l": (292, 5600816, "99e994d5f64a01d0"),
    "sebica": (255, 42501, "ff9183053e6405dd"),
    "sebica_mini": (255, 12389, "af8b77ed4bc760f8"),
    "seemore_t": (386, 231804, "a04419af2cb57f8c"),
    "spanplus": (208, 2228635, "a508f60dcd8a3d39"),
    "spanplus_s": (148, 687835, "d75e254ffe2e6994"),
    "spanplus_st": (204, 2236728, "b932cc1900c94dfe"),
    "spanplus_sts": (144, 693160, "338a531d2046094b"),
    "srformer": (694, 19501455, "a139ee4bb9a5a1eb"),
    "srformer_light": (462, 10433892, "3039f8e99f88e6b8"),
    "swin2sr_l": (1149, 36109231, "7f6f3f77fc06c918"),
    "swin2sr_m": (744, 17121531, "06293d3653ad0942"),
    "swin2sr_s": (496, 4279656, "1fef7e7b73bedc64"),
    "plksr": (284, 7386096, "b52cf93382b46aed"),
}
REDUX_LAYOUT_X2 = {
    "realcugan": (60, 1284598, "8a3602be6701c0c5"),
    "rcan_unshuffle": (1630, 15597539, "d4e49369c0bfb905"),
    "rtmosr_l": (188, 2981424, "eb7796c11435ea55"),
    "fdat_tiny": (130, 861802, "873ecafddf8aced0"),
}

# Inputs big enough for each network's padding (reflect padding must be smaller than the image)
INPUT_SIDE = {"metaflexnet": 40, "realcugan": 24}
# GRL at full depth takes 7-32 s per forward on a small CPU (its 64-pixel stripes pad a tiny input to 64x64): its
# forward pass runs one block per stage; its full-depth layout is still checked above it.
SHALLOW_FORWARD = {"grl_b": {"depths": [1] * 7}, "grl_s": {"depths": [1] * 4}, "grl_t": {"depths": [1] * 4}}


@pytest.mark.parametrize("name", sorted(REDUX_LAYOUT_X4))
def test_builds_at_redux_preset_with_its_layout_and_upscales(name):
    torch.manual_seed(0)
    net = archs.build_generator(name, 4)
    assert layout(net.state_dict()) == REDUX_LAYOUT_X4[name]
    if name in SHALLOW_FORWARD:
        net = archs.build_generator(name, 4, **SHALLOW_FORWARD[name])
    side = INPUT_SIDE.get(name, 16)
    with torch.inference_mode():
        out = net.eval()(torch.rand(1, 3, side, side))
    assert out.shape == (1, 3, 4 * side, 4 * side) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(REDUX_LAYOUT_X2))
def test_x2_layouts_match_redux(name):
    """Where the scale changes more than the upsampler (pixel-unshuffled inputs, a class per scale)."""
    assert layout(archs.build_generator(name, 2).state_dict()) == REDUX_LAYOUT_X2[name]


def test_a_redux_artcnn_state_dict_loads_strictly(tmp_path):
    """Key names and shapes of redux's `artcnn_r3f24` at x2, as its ArtCNN names its modules."""
    block = {"conv.0.0": (24, 24, 3, 3), "conv.1.0": (24, 24, 3, 3), "conv.2": (24, 24, 3, 3)}
    convs = {
        "conv0": (24, 3, 3, 3),
        **{f"res_block.{i}.{name}": shape for i in range(3) for name, shape in block.items()},
        "res_block.3": (24, 24, 3, 3),
        "depth_to_space.upscale.0": (12, 24, 3, 3),  # 3 channels x 2 x 2, then the pixel shuffle
    }
    state = {}
    for name, shape in convs.items():
        state[f"{name}.weight"] = torch.randn(shape) * 0.05
        state[f"{name}.bias"] = torch.zeros(shape[0])
    save_file(state, tmp_path / "artcnn.safetensors")
    net = archs.build_generator("artcnn_r3f24", 2)
    report = weights.load_pretrain(net, str(tmp_path / "artcnn.safetensors"), strict=True)
    assert report.loaded == len(state) == 24
    torch.testing.assert_close(net.state_dict()["res_block.3.weight"], state["res_block.3.weight"])


def test_hat_use_checkpoint_recomputes_each_group_while_training(monkeypatch):
    tiny: dict[str, Any] = dict(embed_dim=16, num_heads=[2, 2], depths=[1, 1], compress_ratio=2, squeeze_factor=4)
    tiny.update(num_feat=16, drop_path_rate=0.0)  # no drop path: the same forward in both nets
    torch.manual_seed(0)
    plain = archs.build_generator("hat_s", 2, **tiny)
    torch.manual_seed(0)
    checkpointed = archs.build_generator("hat_s", 2, use_checkpoint=True, **tiny)
    calls = []
    real_checkpoint = archs.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(function)
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(archs, "checkpoint", counting_checkpoint)
    x = torch.rand(1, 3, 16, 16)
    for net in (plain, checkpointed):
        net.train()(x).square().mean().backward()
    assert calls == list(cast(nn.ModuleList, checkpointed.layers))  # each residual group once, and the plain net never
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    calls.clear()
    with torch.no_grad():
        checkpointed.eval()(x)
    assert not calls  # nothing to recompute without a backward pass


@pytest.mark.parametrize("name", sorted(archs.VIDEO_GENERATORS))
def test_video_generators_are_refused_in_one_line(name):
    with pytest.raises(ConfigError, match=f"network_g.type: {name} is a video architecture") as error:
        archs.check_generator_options(name, 4, {})
    assert "\n" not in str(error.value)


def test_clip_datasets_are_refused_by_key():
    job = {
        "name": "video",
        "scale": 4,
        "datasets": {"train": {"dataroot_gt": "memory://none", "clip_size": 5}},
        "network_g": {"type": "tscunet"},
    }
    with pytest.raises(ConfigError, match=r"datasets\.train\.clip_size: clip datasets .* not supported"):
        parse_job(job)


def test_realcugan_picks_redux_class_by_scale_and_refuses_what_redux_refuses():
    assert type(archs.build_generator("realcugan", 2, fast=True)).__name__ == "UpCunet2x_fast"
    assert type(archs.build_generator("realcugan", 3, pro=True)).__name__ == "UpCunet3x"
    with pytest.raises(ConfigError, match=r"network_g\.fast: .* only at scale 2"):
        archs.check_generator_options("realcugan", 4, {"fast": True})
    with pytest.raises(ConfigError, match="scales 2, 3 and 4"):
        archs.check_generator_options("realcugan", 1, {})


def test_redux_option_spellings_act_and_unknown_options_are_named():
    # MoSR's upsampler as redux spells it (a template's value)
    mosr = archs.build_generator("mosr_t", 4, upsampler="geoensemblepixelshuffle", drop_path=0)
    assert type(mosr.upsampler).__name__ == "GPS"
    with pytest.raises(ConfigError, match=r"network_g\.upsampler"):
        archs.check_generator_options("mosr", 4, {"upsampler": "bicubic"})
    # GaterV3's `sisr_blocks` is resselt's `span_blocks`; its `flash` is not an option resselt has
    assert len(cast(nn.Sequential, archs.build_generator("gaterv3_s", 2, sisr_blocks=2).span_n_b)) == 2
    with pytest.raises(ConfigError, match=r"network_g: gaterv3_r has no option 'flash'"):
        archs.check_generator_options("gaterv3_r", 4, {"flash": False})
    # resselt's GateRV3 takes **kwargs, which would swallow a misspelt option
    with pytest.raises(ConfigError, match="'enc_block'"):
        archs.check_generator_options("gaterv3", 4, {"enc_block": [1]})


def test_sebica_matches_its_bilinear_base_when_the_tail_is_zero():
    net = archs.build_generator("sebica_mini", 2).eval()
    tail = cast(nn.Conv2d, cast(nn.Sequential, net.tail)[0])
    nn.init.zeros_(tail.weight)
    nn.init.zeros_(cast(torch.Tensor, tail.bias))
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(net(x), expected)


def test_a_resselt_generator_trains_a_2x_fidelity_stage(tmp_path):
    save(tmp_path / "val" / "a.png", PHOTO[:24, :32])
    config = parse_job(
        {
            "name": "resselt",
            "scale": 2,
            "manual_seed": 1,
            "datasets": {
                "train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2},
                "val": {"dataroot_gt": str(tmp_path / "val")},
            },
            "network_g": {"type": "spanplus_sts"},
            "train": {"total_iter": 4, "losses": [{"type": "charbonnierloss"}]},
            "val": {"val_freq": 4, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
            "logger": {"print_freq": 2, "save_checkpoint_freq": 4},
            "srcluster": {"workers": 1},
        }
    )
    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    assert type(stage.net_g).__name__ == "SpanPlus"
    before = {name: p.detach().clone() for name, p in stage.net_g.named_parameters()}
    validator = build_validator(config)
    assert validator is not None and config.best_metric is not None
    stage.best = best.for_job(config, validator.higher_is_better(config.best_metric))
    recorder = Recorder()
    run(stage, HRBatches(4), validator, recorder)
    assert stage.iteration == 4
    last = recorder.reports[-1][3]
    assert torch.isfinite(torch.tensor(last["l_g_charbonnier"])) and "val_psnr" in last
    moved = [name for name, p in stage.net_g.named_parameters() if not torch.equal(p, before[name])]
    assert moved  # the optimiser stepped the resselt network
