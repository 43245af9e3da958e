"""MAN (components/handwritten/man.py) against traiNNer-redux's man_arch.py (commit 686293190): every preset's
state-dict layout, the same frozen mean shifts, the same numbers for the same weights (one group, and several groups
with their extra conv and long skip), and a training step. Reference values were computed once from redux's own
network with the same `layout` / `probe`."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's `MAN(scale=4)`, `man_light(scale=4)`, `man_tiny(scale=4)` (8.71M, 0.84M, 0.15M parameters)
REDUX_LAYOUT_X4 = {
    "man": (1458, 8712612, "076864e99c5ed5b1"),
    "man_light": (978, 842892, "20defa76f6357d5a"),
    "man_tiny": (218, 150024, "0bfacdc2eb97bbb6"),
}
REDUX_LAYOUT_X2 = {"man_tiny": (218, 134436, "48f818bff9aef8a2")}


def frozen_digest(net: nn.Module) -> tuple[int, str]:
    """(count, digest) of the parameters training must not change: the mean-shift convolutions."""
    lines = [
        f"{name}:{[round(v, 4) for v in p.detach().flatten().tolist()]}"
        for name, p in sorted(net.named_parameters())
        if not p.requires_grad
    ]
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(REDUX_LAYOUT_X4))
def test_presets_have_redux_layout(name):
    assert layout(archs.build_generator(name, 4).state_dict()) == REDUX_LAYOUT_X4[name]


def test_x2_layout_matches_redux():
    assert layout(archs.build_generator("man_tiny", 2).state_dict()) == REDUX_LAYOUT_X2["man_tiny"]


def test_mean_shifts_are_redux_values():
    assert frozen_digest(archs.build_generator("man_tiny", 4)) == (4, "5f49def548d0f2b7")


def test_man_tiny_matches_redux_at_an_odd_size():
    shape, mean, std, first = probe(archs.build_generator("man_tiny", 3), side=17)
    assert shape == (1, 3, 51, 51)
    assert (mean, std) == pytest.approx((0.15440567779494038, 0.17940521834012296), rel=1e-4)
    expected = [0.06281888484954834, 0.01897284761071205, -0.020348668098449707, 0.06349384784698486]
    assert first == pytest.approx(expected, rel=1e-4)


def test_several_groups_match_redux():
    net = archs.build_generator("man", 2, n_resgroups=2, n_resblocks=2, n_feats=24)
    assert layout(net.state_dict()) == (190, 49644, "e532dbb31a58484b")
    shape, mean, std, first = probe(net, side=12)
    assert shape == (1, 3, 24, 24)
    assert (mean, std) == pytest.approx((0.23490469788925517, 0.06866488900247351), rel=1e-4)
    expected = [0.18750789761543274, 0.15269997715950012, 0.20553895831108093, 0.13695365190505981]
    assert first == pytest.approx(expected, rel=1e-4)


def test_trains_without_touching_the_mean_shifts():
    torch.manual_seed(0)
    net = archs.build_generator("man", 2, n_resgroups=2, n_resblocks=1, n_feats=12).train()
    # the layer-scale parameters start at zero, which would leave most gradients zero: start them at one
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
    out = net(torch.rand(2, 3, 9, 9))
    assert out.shape == (2, 3, 18, 18)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_n_feats_must_split_in_thirds():
    with pytest.raises(ConfigError, match=r"network_g\.n_feats"):
        archs.build_generator("man_tiny", 4, n_feats=50)
