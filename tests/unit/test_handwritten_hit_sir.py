"""HiT-SIR (`hit_sir`) against traiNNer-redux's own network (its source at commit 686293190): the same state-dict
layout, and the same output for the same weights, at the preset's window sizes and on reduced nets that reach the other
code paths.
Reference numbers come from redux's `hit_sir_arch.py` through `helpers.archs.probe`."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe, probe_input
from srcluster.components import archs
from srcluster.errors import ConfigError

# redux's hit_sir at x4: (tensors, numbers, digest of names and shapes)
PRESET_LAYOUT = (834, 791540, "68c4049bae0daec5")

# (scale, options, input side) -> redux's probe: (shape, mean, std, first values)
PROBES = [
    pytest.param(  # one residual group of the preset's six window sizes (4..64); 36 is no multiple of them, so every
        # block pads
        4, dict(depths=[6], num_heads=[6]), 36,
        ((1, 3, 144, 144), 0.4410187481632341, 0.36443619624484264,
         [0.6389037370681763, 0.8095738887786865, 0.902507483959198, 0.9271457195281982]),
        id="preset-windows",
    ),
    pytest.param(  # windows below and above the base window: values pooled in 2x2 and 4x4 cells
        4, dict(depths=[3], num_heads=[3], embed_dim=30, base_win_size=[4, 4], hier_win_ratios=[0.5, 2, 4]), 20,
        ((1, 3, 80, 80), 0.45619507564619804, 0.35198626109022885,
         [0.041199952363967896, 0.1493692398071289, 0.28982120752334595, 0.4478166699409485]),
        id="pooled-windows",
    ),
    pytest.param(  # non-square windows, the x3 pixelshuffle upsampler and the 3conv residual connection
        3, dict(depths=[2], num_heads=[3], embed_dim=30, base_win_size=[4, 2], hier_win_ratios=[1, 3],
                upsampler="pixelshuffle", resi_connection="3conv"), 12,
        ((1, 3, 36, 36), -0.550395784102411, 0.9708057935070978,
         [-0.5417839288711548, -1.4424824714660645, -1.2559505701065063, -1.216360330581665]),
        id="pixelshuffle-3conv",
    ),
]  # fmt: skip


def test_the_preset_has_redux_layout():
    assert layout(archs.build_generator("hit_sir", 4).state_dict()) == PRESET_LAYOUT


@pytest.mark.parametrize(("scale", "options", "side", "expected"), PROBES)
def test_it_computes_what_redux_computes(scale, options, side, expected):
    shape, mean, std, values = probe(archs.build_generator("hit_sir", scale, **options), side)
    assert shape == expected[0]
    assert (mean, std) == pytest.approx(expected[1:3], rel=1e-4)
    assert values == pytest.approx(expected[3], rel=1e-4)


def test_it_trains():
    net = archs.build_generator("hit_sir", 2, depths=[2], num_heads=[2], embed_dim=20, hier_win_ratios=[0.5, 1]).train()
    out = net(probe_input(10))
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert out.shape == (1, 3, 20, 20)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (dict(upsampler="pixelshufle"), "network_g.upsampler"),
        (dict(resi_connection="2conv"), "network_g.resi_connection"),
        (dict(embed_dim=64), "network_g.embed_dim"),
        (dict(hier_win_ratios=[0.5, 1.5]), "network_g.hier_win_ratios"),
        (dict(hier_win_ratios=[0.5]), "network_g.hier_win_ratios"),
    ],
)
def test_bad_options_name_their_key(options, key):
    with pytest.raises(ConfigError, match=key):
        archs.build_generator("hit_sir", 4, depths=[2], **options)
