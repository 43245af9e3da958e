"""LMLT (hand-written in `components/handwritten/lmlt.py`) against traiNNer-redux's `lmlt_arch.py`: the same state-dict
layout for every preset (so redux pretrains load strictly), the same outputs for the same weights (sides that are and
are not multiples of its 64-pixel padding), and it trains."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's preset functions by `layout` (only the pixel-shuffle conv changes with scale), derived from redux's source at
# commit 686293190
REDUX_LAYOUT = {
    ("lmlt_tiny", 4): (276, 251040, "01989db94a8ca2ad"),
    ("lmlt_tiny", 2): (276, 239340, "b6cd6c7f5deae40f"),
    ("lmlt_base", 4): (276, 671808, "d7266808df26a643"),
    ("lmlt_base", 2): (276, 652332, "e1aabb504d018941"),
    ("lmlt_large", 4): (276, 1295328, "4efc61aa0696cc7c"),
    ("lmlt_large", 2): (276, 1268076, "1a494c12d5b2e2f7"),
}


@pytest.mark.parametrize(("name", "scale"), sorted(REDUX_LAYOUT))
def test_lmlt_presets_have_redux_layout(name: str, scale: int):
    assert layout(archs.build_generator(name, scale).state_dict()) == REDUX_LAYOUT[(name, scale)]


# (name, scale, options, side) -> redux's `probe` (shape, mean, std, first values)
REDUX_PROBES = [
    (
        ("lmlt_tiny", 4, {}, 64),  # whole 64-pixel tiles: no padding
        ((1, 3, 256, 256), -0.02322956337885766, 0.7452045295382648,
         [-0.7472141981124878, -0.9346476793289185, -0.9410228133201599, -0.7713611125946045]),
    ),
    (
        ("lmlt_tiny", 4, {}, 40),  # reflect-padded to 64, cropped back
        ((1, 3, 160, 160), -0.02290765568593391, 0.748139180520668,
         [-0.7472138404846191, -0.9346482753753662, -0.9410244226455688, -0.7713630199432373]),
    ),
    (
        ("lmlt_base", 3, {"dim": 16, "n_blocks": 2}, 70),  # padded to 128: four windows a side at the finest level
        ((1, 3, 210, 210), 0.055368110264348076, 0.41676772677721796,
         [0.5067960619926453, 0.3778347373008728, 0.5727126598358154, 0.5107945203781128]),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), REDUX_PROBES, ids=lambda v: str(v[:2]) if len(v) == 4 else "")
def test_lmlt_computes_what_redux_computes(case, expected):
    name, scale, options, side = case
    shape, mean, std, first = probe(archs.build_generator(name, scale, **options), side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert first == pytest.approx(expected[3], rel=1e-4)


def test_lmlt_refuses_channels_it_cannot_split_into_four_levels():
    with pytest.raises(ConfigError, match=r"network_g\.dim: .* 30 is not a multiple"):
        archs.build_generator("lmlt_tiny", 4, dim=30)


def test_lmlt_trains_with_dropout():
    options = {"dim": 8, "n_blocks": 1, "drop_rate": 0.1, "attn_drop_rate": 0.1, "drop_path_rate": 0.1}
    net = archs.build_generator("lmlt_tiny", 2, **options).train()
    out = net(torch.rand(1, 3, 36, 40))
    assert out.shape == (1, 3, 72, 80)
    out.square().mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # every level's attention gets a gradient (the coarse ones reach the output through the fusing conv)
    assert all(grads[f"feats.0.lhsb.mfr.{level}.qkv.weight"].abs().sum() > 0 for level in range(4))  # pyright: ignore[reportOptionalMemberAccess]
