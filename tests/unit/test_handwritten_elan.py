"""ELAN (hand-written in `components/handwritten/elan.py`) against traiNNer-redux's `elan_arch.py`: the same
state-dict layout (so redux pretrains load strictly), the same outputs for the same weights (inputs that need padding,
shared attention, shifted odd windows, mean shift), and it trains without touching its fixed shift kernels."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe
from srcluster.components import archs

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's `ELAN` class (`elan`) and `elan_light` preset, by `layout`, derived from redux's source at commit 686293190
REDUX_LAYOUT = {
    ("elan", 4): (544, 8513364, "6370185fa388ff39"),
    ("elan", 2): (544, 8455008, "022ad8fa126a2967"),
    ("elan_light", 4): (364, 644712, "76d122d47f8bdf36"),
    ("elan_light", 2): (364, 625236, "c6f94ede7c665fe9"),
}


@pytest.mark.parametrize(("name", "scale"), sorted(REDUX_LAYOUT))
def test_elan_presets_have_redux_layout(name: str, scale: int):
    assert layout(archs.build_generator(name, scale).state_dict()) == REDUX_LAYOUT[(name, scale)]


# (name, scale, options, side) -> redux's `probe` (shape, mean, std, first values)
REDUX_PROBES = [
    (
        ("elan", 4, {}, 16),
        ((1, 3, 64, 64), -0.03462266274779798, 2.8506162990649537,
         [2.8776698112487793, -0.8481341004371643, 0.041676782071590424, 1.9690110683441162]),
    ),
    (  # padded from 20 to 32, attention shared with a second round
        ("elan_light", 4, {}, 20),
        ((1, 3, 80, 80), -0.6025044170192754, 15.480669819356311,
         [12.184364318847656, -3.3590939044952393, -14.782740592956543, -6.252468585968018]),
    ),
    (  # an odd shifted window (rolled by -3, back by 2) and padding to the windows' lcm 30
        ("elan", 2, {"m_elan": 2, "c_elan": 30, "window_sizes": [5, 3, 2]}, 20),
        ((1, 3, 40, 40), 0.08969429570528974, 0.35391975110867296,
         [0.27812665700912476, 0.38242411613464355, 0.25685566663742065, 0.3589932322502136]),
    ),
    (
        ("elan", 4, {"m_elan": 2, "c_elan": 30, "norm": True}, 16),
        ((1, 3, 64, 64), 0.17980004538003413, 0.23872338199931706,
         [-0.3390829563140869, -0.3846474885940552, -0.3780425190925598, -0.3202277421951294]),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), REDUX_PROBES, ids=[f"{c[0]}-x{c[1]}-{c[2]}" for c, _ in REDUX_PROBES])
def test_elan_computes_what_redux_computes(case: tuple, expected: tuple):
    name, scale, options, side = case
    shape, mean, std, first = probe(archs.build_generator(name, scale, **options), side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert first == pytest.approx(expected[3], rel=1e-4)


def test_elan_trains_and_keeps_its_shift_kernels_and_mean_fixed():
    net = archs.build_generator("elan_light", 2, m_elan=4, c_elan=15, norm=True).train()
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    # redux freezes the shift kernels (2 blocks x 2 rounds x 2 shift convs) and the two mean shifts' weight and bias
    assert len(frozen) == 2 * 2 * 2 + 4
    assert all(name.endswith("shift_conv.weight") or "_mean." in name for name in frozen)
    out = net(torch.rand(2, 3, 9, 17))
    assert out.shape == (2, 3, 18, 34)
    out.square().mean().backward()
    for name, parameter in net.named_parameters():
        if name in frozen:
            assert parameter.grad is None
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
