"""DIS (hand-written in `components/handwritten/dis.py`) against traiNNer-redux's `dis_arch.py`: the same state-dict
layout at every scale it takes (so redux pretrains load strictly), the same outputs for the same weights, and it
trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's preset functions at each scale (the upsampler's keys differ: two x2 stages at x4, one stage at x2/x3, none
# at x1), by `layout`, derived from redux's source at commit 686293190
REDUX_LAYOUT = {
    ("dis_balanced", 4): (49, 306659, "2627fa1048b6b857"),
    ("dis_balanced", 3): (46, 315875, "a0148c8cdd416d41"),
    ("dis_balanced", 2): (46, 269635, "4768ed2f6d3dbe51"),
    ("dis_balanced", 1): (43, 232611, "ecc6dc7c17778066"),
    ("dis_fast", 4): (37, 232803, "c35c6735523e93ac"),
    ("dis_fast", 3): (34, 242019, "b12b2cb5fa715fff"),
    ("dis_fast", 2): (34, 195779, "8dbe23434198b59e"),
    ("dis_fast", 1): (31, 158755, "00e3401005a21a51"),
}


@pytest.mark.parametrize(("name", "scale"), sorted(REDUX_LAYOUT))
def test_dis_presets_have_redux_layout(name: str, scale: int):
    assert layout(archs.build_generator(name, scale).state_dict()) == REDUX_LAYOUT[(name, scale)]


# (name, scale, options, side) -> redux's `probe` (shape, mean, std, first values)
REDUX_PROBES = [
    (
        ("dis_balanced", 4, {}, 16),
        ((1, 3, 64, 64), 0.15332465332721767, 0.28800275531544844,
         [0.3192079961299896, 0.2785112261772156, 0.2844713032245636, 0.32141488790512085]),
    ),
    (
        ("dis_fast", 4, {"use_depthwise": True}, 16),
        ((1, 3, 64, 64), -0.06971472218962542, 0.2819230330381584,
         [0.09845501184463501, 0.05503538250923157, 0.10039204359054565, 0.10002118349075317]),
    ),
    (
        ("dis_fast", 3, {"num_blocks": 2}, 13),
        ((1, 3, 39, 39), -0.20864986800393748, 0.43269212513358024,
         [0.38369062542915344, 0.41166335344314575, 0.3770456910133362, 0.43600088357925415]),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), REDUX_PROBES, ids=[f"{c[0]}-x{c[1]}-{c[2]}" for c, _ in REDUX_PROBES])
def test_dis_computes_what_redux_computes(case: tuple, expected: tuple):
    name, scale, options, side = case
    shape, mean, std, first = probe(archs.build_generator(name, scale, **options), side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert first == pytest.approx(expected[3], rel=1e-4)


def test_dis_at_scale_one_adds_the_input_itself():
    net = archs.build_generator("dis_fast", 1, num_blocks=1).eval()
    for parameter in net.get_submodule("tail").parameters():  # a zero residual: the output is the base
        nn.init.zeros_(parameter)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(net(x), x)


def test_dis_refuses_a_scale_it_has_no_upsampler_for():
    with pytest.raises(ConfigError, match="scale: DIS upscales by 1, 2, 3 or 4, not 8"):
        archs.build_generator("dis_fast", 8)


@pytest.mark.parametrize("use_depthwise", [False, True])
def test_dis_trains(use_depthwise: bool):
    net = archs.build_generator("dis_fast", 2, num_blocks=2, use_depthwise=use_depthwise).train()
    out = net(torch.rand(2, 3, 9, 11))
    assert out.shape == (2, 3, 18, 22)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
