"""HiT-SRF (`hit_srf`) against traiNNer-redux's own network (its source at commit 686293190): the same state-dict
layout, and the same output for the same weights, at the preset's window sizes and on reduced nets that reach the other
code paths.
Reference numbers come from redux's `hit_srf_arch.py` through `helpers.archs.probe`."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe, probe_input
from srcluster.components import archs
from srcluster.errors import ConfigError

# redux's hit_srf at x4: (tensors, numbers, digest of names and shapes)
PRESET_LAYOUT = (882, 866420, "1adbaa504f35944e")

# (scale, options, input side) -> redux's probe: (shape, mean, std, first values)
PROBES = [
    pytest.param(  # one residual group of the preset's six window sizes (4..64); at 24 the 32..64 windows need pads
        # over the side (reflected twice)
        4, dict(depths=[6], num_heads=[6]), 24,
        ((1, 3, 96, 96), 0.4538139693586682, 0.35580909560155666,
         [0.36919716000556946, 0.5550186038017273, 0.702583372592926, 0.8227951526641846]),
        id="preset-windows",
    ),
    pytest.param(  # non-square windows: a 24x12 window on a 10x10 map pads one side and crops the other
        4, dict(depths=[2], num_heads=[3], embed_dim=30, base_win_size=[4, 2], hier_win_ratios=[2, 6]), 10,
        ((1, 3, 40, 40), 0.4422192837763578, 0.3652278090460827,
         [0.6067566871643066, 0.7898566722869873, 0.9209694862365723, 0.9791016578674316]),
        id="double-reflect",
    ),
    pytest.param(  # the nearest+conv upsampler and a 0..255 image range
        4, dict(depths=[1], num_heads=[2], embed_dim=20, upsampler="nearest+conv", img_range=255.0), 8,
        ((1, 3, 32, 32), 0.4315545651964688, 0.019260832846240916,
         [0.4507254660129547, 0.45071226358413696, 0.4507122039794922, 0.4507122039794922]),
        id="nearest-conv",
    ),
]  # fmt: skip


def test_the_preset_has_redux_layout():
    assert layout(archs.build_generator("hit_srf", 4).state_dict()) == PRESET_LAYOUT


@pytest.mark.parametrize(("scale", "options", "side", "expected"), PROBES)
def test_it_computes_what_redux_computes(scale, options, side, expected):
    shape, mean, std, values = probe(archs.build_generator("hit_srf", scale, **options), side)
    assert shape == expected[0]
    assert (mean, std) == pytest.approx(expected[1:3], rel=1e-4)
    assert values == pytest.approx(expected[3], rel=1e-4)


def test_it_trains():
    net = archs.build_generator("hit_srf", 2, depths=[2], num_heads=[2], embed_dim=20, hier_win_ratios=[0.5, 2]).train()
    out = net(probe_input(6))
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert out.shape == (1, 3, 12, 12)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_nearest_conv_is_x4_only():
    with pytest.raises(ConfigError, match="nearest\\+conv"):
        archs.build_generator("hit_srf", 2, depths=[1], upsampler="nearest+conv")
