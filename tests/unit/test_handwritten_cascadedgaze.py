"""CascadedGaze (hand-written in `components/handwritten/cascadedgaze.py`) against traiNNer-redux's `cgnet_arch.py`: the
same state-dict layout (so redux pretrains load strictly), the same outputs for the same weights (sides that need the
U-Net's zero padding, other depths and context stages), it refuses scales other than 1, and it trains."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's `CascadedGaze` with its defaults (119M parameters), by `layout`, derived from redux's source at commit
# 686293190
REDUX_LAYOUT = (656, 119223063, "b9b10c2d731b660f")


def test_cascadedgaze_has_redux_layout():
    with torch.device("meta"):  # shapes only: no time spent initialising 119M numbers
        net = archs.build_generator("cascadedgaze", 1)
    assert layout(net.state_dict()) == REDUX_LAYOUT


SMALL_U_NET = {"width": 8, "middle_blk_num": 2, "enc_blk_nums": [1, 1, 1, 1], "dec_blk_nums": [1, 1, 1, 1]}
TWO_LEVELS = {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 2], "dec_blk_nums": [2, 1], "GCE_CONVS_nums": [3, 2]}

# (options, side) -> redux's (layout, `probe`: shape, mean, std, first values); layout None: not compared
REDUX_PROBES = [
    (
        ({"width": 16, "middle_blk_num": 1}, 50),  # zero-padded to 64
        (None, ((1, 3, 50, 50), 0.5111943484877547, 0.6298882942324389,
                [0.6928699016571045, 0.8404582142829895, 0.8403472304344177, 0.8283983469009399])),
    ),
    (
        (SMALL_U_NET, 67),  # zero-padded to 80
        ((216, 525091, "1a162e5d20cc979f"), ((1, 3, 67, 67), 0.6114700379292285, 0.3336012699515342,
         [0.7742424011230469, 0.8853439092636108, 0.9963743686676025, 1.0625660419464111])),
    ),
    (
        (TWO_LEVELS, 37),  # padded to a multiple of 4, not 16
        ((150, 37811, "fabd56a694b2a567"), ((1, 3, 37, 37), 0.7395554030187553, 0.4404595448349716,
         [0.5194399356842041, 0.5832773447036743, 0.6943848133087158, 0.7713235020637512])),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"), REDUX_PROBES, ids=["width16-side50", "small-side67", "two-levels-side37"]
)
def test_cascadedgaze_computes_what_redux_computes(case, expected):
    options, side = case
    redux_layout, (shape, mean, std, first) = expected
    net = archs.build_generator("cascadedgaze", 1, **options)
    if redux_layout is not None:
        assert layout(net.state_dict()) == redux_layout
    got = probe(net, side)
    assert got[0] == shape
    assert got[1] == pytest.approx(mean, rel=1e-4)
    assert got[2] == pytest.approx(std, rel=1e-4)
    assert got[3] == pytest.approx(first, rel=1e-4)


def test_cascadedgaze_refuses_upscaling():
    with pytest.raises(ConfigError, match=r"scale: cascadedgaze restores at scale 1 only .* not 4"):
        archs.build_generator("cascadedgaze", 4)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"GCE_CONVS_nums": [3, 3, 4, 2]}, "GCE_CONVS_nums"),
        ({"GCE_CONVS_nums": [3, 3]}, "GCE_CONVS_nums"),
        ({"dec_blk_nums": [2, 2]}, "dec_blk_nums"),
    ],
)
def test_cascadedgaze_refuses_inconsistent_levels(options, key):
    with pytest.raises(ConfigError, match=rf"network_g\.{key}: "):
        archs.build_generator("cascadedgaze", 1, width=4, middle_blk_num=0, **options)


def test_cascadedgaze_trains():
    net = archs.build_generator("cascadedgaze", 1, **TWO_LEVELS).train()
    with torch.no_grad():  # the residual scales start at zero, which would leave every block without a gradient
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.fill_(0.5)
    out = net(torch.rand(2, 3, 37, 41))
    assert out.shape == (2, 3, 37, 41)
    out.square().mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for name, g in grads.items() if "GCE" in name)  # pyright: ignore[reportOptionalMemberAccess]
