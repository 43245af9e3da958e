"""LKFMixer (hand-written in `components/handwritten/lkfmixer.py`) against traiNNer-redux's `lkfmixer_arch.py`: the
same state-dict layout (so redux pretrains load strictly), the same outputs for the same weights (inputs padded to a
multiple of 8 or not), and it trains."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe
from srcluster.components import archs

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's preset functions, by `layout`, derived from redux's source at commit 686293190
REDUX_LAYOUT = {
    ("lkfmixer_t", 4): (378, 207008, "60310cf7ee26b295"),
    ("lkfmixer_t", 2): (378, 194012, "eaf2c65944333c3e"),
    ("lkfmixer_b", 4): (502, 372816, "ad6239ca3fd53b95"),
    ("lkfmixer_b", 2): (502, 357228, "4bbeb30f9f19eedd"),
    ("lkfmixer_l", 4): (750, 927152, "b828e242a5dcb898"),
    ("lkfmixer_l", 2): (750, 906380, "ce6095e61842f416"),
}


@pytest.mark.parametrize(("name", "scale"), sorted(REDUX_LAYOUT))
def test_lkfmixer_presets_have_redux_layout(name: str, scale: int):
    assert layout(archs.build_generator(name, scale).state_dict()) == REDUX_LAYOUT[(name, scale)]


# (name, scale, options, side) -> redux's `probe` (shape, mean, std, first values)
REDUX_PROBES = [
    (  # padded from 20 to 24
        ("lkfmixer_t", 4, {}, 20),
        ((1, 3, 80, 80), 0.030439780186726276, 0.35196433893805257,
         [-0.3341570794582367, -0.36128562688827515, -0.25233346223831177, 0.04959087073802948]),
    ),
    (
        ("lkfmixer_b", 4, {"num_block": 2}, 20),
        ((1, 3, 80, 80), -0.02944492890477664, 0.346638597130187,
         [0.3922135829925537, 0.15251705050468445, 0.10920482873916626, -0.23384247720241547]),
    ),
    (
        ("lkfmixer_l", 2, {"num_block": 1}, 16),
        ((1, 3, 32, 32), -0.16684966533830448, 0.5098104640468827,
         [0.1389850676059723, -0.032469701021909714, 0.24038386344909668, 0.048902202397584915]),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), REDUX_PROBES, ids=[f"{c[0]}-x{c[1]}-{c[2]}" for c, _ in REDUX_PROBES])
def test_lkfmixer_computes_what_redux_computes(case: tuple, expected: tuple):
    name, scale, options, side = case
    shape, mean, std, first = probe(archs.build_generator(name, scale, **options), side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert first == pytest.approx(expected[3], rel=1e-4)


def test_lkfmixer_trains():
    net = archs.build_generator("lkfmixer_t", 3, num_block=1, channels=16, large_kernel=7).train()
    out = net(torch.rand(2, 3, 10, 13))
    assert out.shape == (2, 3, 30, 39)
    out.square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
