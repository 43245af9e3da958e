"""HiT-SNG written here against traiNNer-redux's `hit_sng` (hit_sng_arch.py at redux 686293190): state-dict layouts
and probe outputs were derived by running redux's network through `helpers.archs` (reduced depths keep probes fast)."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError


def test_the_preset_has_redux_layout():
    """redux's hit_sng at full size (1.03M parameters at x4, the paper's HiT-SNG); the scale changes only the
    upsampler's last conv."""
    assert layout(archs.build_generator("hit_sng", 4).state_dict()) == (1074, 1032444, "001ebb87dfa11d91")


# (scale, LR side, options, redux's probe): each side is not a multiple of some block's pair of windows, so blocks pad
PROBES = [
    pytest.param(
        4, 20, {"depths": [2], "num_heads": [6]},
        ((1, 3, 80, 80), 0.4256005794989566, 0.36748614311479844,
         [0.15819182991981506, 0.009731024503707886, -0.04958820343017578, -0.028310924768447876]),
        id="pixelshuffledirect",
    ),
    pytest.param(  # 12 -> 32 for the 16-pixel windows: more than one reflection can add, so two
        4, 12,
        {"depths": [2], "num_heads": [2], "upsampler": "nearest+conv", "embed_dim": 32, "hier_win_ratios": [1, 2]},
        ((1, 3, 48, 48), 0.8348130377923587, 0.09195177338990598,
         [0.9398115873336792, 0.9364572763442993, 0.9364469051361084, 0.9364478588104248]),
        id="nearest+conv-two-step-padding",
    ),
    pytest.param(
        2, 20,
        {"depths": [2, 1], "num_heads": [6, 3], "embed_dim": 48, "resi_connection": "3conv",
         "upsampler": "pixelshuffle"},
        ((1, 3, 40, 40), 0.0349259638103346, 0.10932342711149348,
         [0.1823941469192505, 0.18276408314704895, 0.18077802658081055, 0.18273195624351501]),
        id="pixelshuffle-3conv-two-groups",
    ),
    pytest.param(
        3, 13,
        {"depths": [2], "num_heads": [6], "upsampler": "pixelshuffle", "base_win_size": [4, 4], "img_range": 255.0},
        ((1, 3, 39, 39), 0.43131216780517073, 0.020381274454579983,
         [0.4521382749080658, 0.4555731415748596, 0.45463863015174866, 0.45454561710357666]),
        id="x3-small-base-window",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("scale", "side", "options", "expected"), PROBES)
def test_it_computes_what_redux_computes(scale, side, options, expected):
    shape, mean, std, values = probe(archs.build_generator("hit_sng", scale, **options), side=side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert values == pytest.approx(expected[3], rel=1e-4, abs=1e-6)


def test_it_trains():
    torch.manual_seed(0)
    net = archs.build_generator("hit_sng", 2, depths=[2], num_heads=[2], embed_dim=16).train()
    out = net(torch.rand(2, 3, 10, 10))
    assert out.shape == (2, 3, 20, 20)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


def test_an_input_smaller_than_redux_can_pad_still_runs():
    """Side 5 padded to 32 needs three reflections (redux stops after two and fails)."""
    net = archs.build_generator("hit_sng", 2, depths=[2], num_heads=[2], embed_dim=16, hier_win_ratios=[1, 2]).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"embed_dim": 50}, "network_g.embed_dim"),  # not 2 x 6 heads
        ({"depths": [7], "num_heads": [6]}, "network_g.depths"),  # more blocks than window ratios
        ({"num_heads": [6]}, "network_g.num_heads"),
        ({"base_win_size": [8, 16]}, "network_g.base_win_size"),
        ({"depths": [1], "num_heads": [6], "hier_win_ratios": [1.5]}, "network_g.hier_win_ratios"),
        ({"upsampler": "pixelshufle"}, "network_g.upsampler"),
        ({"resi_connection": "2conv"}, "network_g.resi_connection"),
        ({"window_size": 8}, "network_g"),  # not one of redux's hit_sng options
    ],
)
def test_options_redux_cannot_run_are_refused_by_name(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        archs.build_generator("hit_sng", 4, **options)
