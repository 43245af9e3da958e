"""DWT (components/handwritten/dwt.py) against traiNNer-redux's dwt_arch.py (commit 686293190): the values below were
derived once by running redux's own network through the same helpers (and `_sharp_features` below)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from helpers.archs import fill, layout, probe
from srcluster.components import archs
from srcluster.components.handwritten import dwt
from srcluster.errors import ConfigError

# six groups of two blocks at 24 channels: every block kind of the presets (windows, shifted, dilated 2x2 and 1x1)
SMALL = {"embed_dim": 24, "num_heads": [2] * 6, "depths": [2] * 6}


@pytest.mark.parametrize(
    ("name", "expected"),
    [("dwt", (550, 33292839, "18918067732c90ec")), ("dwt_s", (550, 16766247, "bd12d030a6bcf66a"))],
)
def test_presets_have_reduxs_state_dict_layout(name, expected):
    with torch.device("meta"):  # shapes only: skips initialising 33M numbers (the stored masks included)
        assert layout(archs.build_generator(name, 4).state_dict()) == expected


def _assert_probe(actual, expected):
    assert actual[0] == expected[0]
    assert actual[1:3] == pytest.approx(expected[1:3], rel=1e-4)
    assert actual[3] == pytest.approx(expected[3], rel=1e-4)


@pytest.mark.parametrize(
    ("name", "scale", "side", "options", "expected"),
    [
        # the training size: the stored masks are used
        ("dwt", 4, 16, {"window_size": 4, "img_size": 16}, ((1, 3, 64, 64), 0.46269802656509756, 0.12457122624001325,
         [0.3152339458465576, 0.3160478472709656, 0.31427162885665894, 0.3162948489189148])),
        # padded from 20 to 32, masks built for that size
        ("dwt_s", 4, 20, {"img_size": 48}, ((1, 3, 80, 80), 0.46278143170444913, 0.12450372689890017,
         [0.3152339458465576, 0.3160480260848999, 0.3142716586589813, 0.31629478931427])),
        ("dwt", 3, 12, {"img_size": 12, "window_size": 3, "resi_connection": "3conv", "ape": True,
                        "patch_norm": False, "mlp_ratio": 1.5},
         ((1, 3, 36, 36), 1.0222081403428145, 1.072107495351409,
          [-0.7140971422195435, -0.3584752380847931, -0.27808573842048645, -0.3424619734287262])),
    ],
)  # fmt: skip
def test_output_equals_reduxs(name, scale, side, options, expected):
    _assert_probe(probe(archs.build_generator(name, scale, **SMALL, **options), side=side), expected)


@torch.no_grad()
def _sharp_features(net: dwt.DWT, side: int) -> tuple[tuple[int, ...], float, float, list[float]]:
    """Deep features of a noisy image with the filled weights and 30x query/key/value weights. The plain probe's
    output hardly depends on which tokens attend to which (smooth input, near-uniform attention); this does, so masks
    and window partitions show (dropping the masks moves these values by ~1e-3)."""
    fill(net)
    for name, parameter in net.named_parameters():
        if name.endswith("attn.qkv.weight"):
            parameter.mul_(30)
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    multiple = 2 * net.window_size
    image = F.pad(image, (0, -side % multiple, 0, -side % multiple), "reflect")
    out = net.forward_features(net.conv_first(image)).double()
    return tuple(out.shape), out.mean().item(), out.std().item(), out.flatten()[:4].tolist()


@pytest.mark.parametrize(
    ("side", "options", "expected"),
    [
        (20, SMALL, ((1, 24, 24, 24), 0.29379003842932727, 0.4248468068121396,
         [-0.2856670916080475, -0.26886293292045593, -0.26190945506095886, -0.25354957580566406])),
        (13, SMALL, ((1, 24, 16, 16), 0.29712072919482085, 0.42285404271409277,
         [-0.2729252278804779, -0.2596666216850281, -0.26106780767440796, -0.24652139842510223])),
        # every kind at both shift positions, three heads, an explicit query scale
        (20, {"layer_kinds": [[-1, 0, 2, 1, 1, 2]] * 2, "embed_dim": 24, "num_heads": [3, 3], "depths": [6, 6],
              "qk_scale": 0.2},
         ((1, 24, 24, 24), 0.14005030335669677, 0.46751475267092374,
          [0.6913449764251709, 0.7554615139961243, 0.7945646643638611, 0.8205788135528564])),
    ],
)  # fmt: skip
def test_attention_equals_reduxs(side, options, expected):
    net = archs.build_generator("dwt", 4, window_size=4, img_size=16, **options)
    assert isinstance(net, dwt.DWT)
    _assert_probe(_sharp_features(net, side), expected)


def test_trains_and_checkpoints_blocks_when_asked(monkeypatch):
    options = {"embed_dim": 12, "num_heads": [2, 2], "depths": [2, 2], "layer_kinds": [[0, -1], [0, 2]],
               "window_size": 2, "img_size": 8, "drop_path_rate": 0.0}  # fmt: skip
    plain = archs.build_generator("dwt_s", 2, **options)
    recomputed = archs.build_generator("dwt_s", 2, use_checkpoint=True, **options)
    recomputed.load_state_dict(plain.state_dict())
    checkpointed = []

    def counting_checkpoint(block, *args, **kwargs):
        checkpointed.append(block)
        return checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(dwt, "checkpoint", counting_checkpoint)
    image = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    gradients = []
    for net in (plain.train(), recomputed.train()):
        net(image).square().mean().backward()
        gradients.append({name: p.grad for name, p in net.named_parameters()})
    assert len(checkpointed) == 4  # every block of the checkpointed network, none of the plain one's
    for name, grad in gradients[0].items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        assert torch.allclose(grad, gradients[1][name], atol=1e-6), name


@pytest.mark.parametrize(
    ("scale", "options", "key"),
    [
        (4, {"upsampler": "pixelshuffledirect"}, "network_g.upsampler"),
        (4, {"resi_connection": "2conv"}, "network_g.resi_connection"),
        (4, {"layer_kinds": [[0, 3]] * 6, "depths": [2] * 6}, "network_g.layer_kinds"),
        (4, {"depths": [6] * 7}, "network_g.depths"),
        (4, {"num_heads": [7] * 6}, "network_g.num_heads"),
        (5, {}, "scale"),
    ],
)
def test_refuses_what_redux_cannot_run(scale, options, key):
    with pytest.raises(ConfigError, match=key):
        archs.build_generator("dwt_s", scale, **options)
