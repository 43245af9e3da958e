"""EMT (components/handwritten/emt.py) against traiNNer-redux's emt_arch.py (commit 686293190): the same state-dict
layout at every upsampler path, the same frozen shift masks and mean shifts, the same numbers for the same weights, and
a training step. Reference values were computed once from redux's own network with the same `layout` / `probe`."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from torch import nn

from helpers.archs import layout, probe
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's `EMT(scale=s)` (the `emt` preset): the tail differs by scale (x1 no shuffle, x3 one x3 step, x8 three x2)
REDUX_LAYOUTS = {
    1: (476, 742803, "4f76ecc642932f26"),
    2: (478, 872643, "28440c147955f7a4"),
    3: (478, 1034943, "37bd533eeb5316d8"),
    4: (480, 1002483, "0a109d489440d111"),
    8: (482, 1132323, "292bde20a678d4f3"),
}

# One block of three layers: unshifted attention, shifted attention, pixel-shift mixer, i.e. every code path of the
# full preset (whose probe at side 20 also matched redux, but takes ~20 s on a busy CPU)
SHALLOW = {"n_blocks": 1, "n_layers": 3}
SMALL_WINDOWS = {"window_list": [[8, 4], [4, 8]], "shift_list": [[4, 2], [2, 4]]}


def frozen_digest(net: nn.Module) -> tuple[int, str]:
    """(count, digest) of the parameters training must not change: the shift masks and the mean-shift convolutions."""
    lines = [
        f"{name}:{[round(v, 4) for v in p.detach().flatten().tolist()]}"
        for name, p in sorted(net.named_parameters())
        if not p.requires_grad
    ]
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("scale", sorted(REDUX_LAYOUTS))
def test_emt_has_redux_layout(scale):
    assert layout(archs.build_generator("emt", scale).state_dict()) == REDUX_LAYOUTS[scale]


def test_frozen_masks_and_mean_shifts_are_redux_values():
    net = archs.build_generator("emt", 4, **SHALLOW)
    assert frozen_digest(net) == (11, "e8411275bd7956f5")


def test_pads_odd_sizes_to_the_windows_like_redux():
    """Side 20 against 32x8 / 8x32 windows: reflect padding, rolled shifted windows, cropping, pixelshuffle x4."""
    shape, mean, std, first = probe(archs.build_generator("emt", 4, **SHALLOW), side=20)
    assert shape == (1, 3, 80, 80)
    assert (mean, std) == pytest.approx((0.31284480485521876, 0.07833644030871448), rel=1e-4)
    expected = [0.32779908180236816, 0.32527798414230347, 0.3247140944004059, 0.3258875906467438]
    assert first == pytest.approx(expected, rel=1e-4)


def test_pixelshuffledirect_with_other_windows_matches_redux():
    net = archs.build_generator("emt", 3, upsampler="pixelshuffledirect", dim=30, **SHALLOW, **SMALL_WINDOWS)
    assert layout(net.state_dict()) == (50, 28134, "d77ac2898431b72c")
    shape, mean, std, first = probe(net, side=13)
    assert shape == (1, 3, 39, 39)
    assert (mean, std) == pytest.approx((0.1473496173596842, 0.19698031455347903), rel=1e-4)
    expected = [-0.11309158802032471, -0.011596903204917908, 0.06512763351202011, -0.06671865284442902]
    assert first == pytest.approx(expected, rel=1e-4)


def test_trains_without_touching_frozen_parameters():
    torch.manual_seed(0)
    net = archs.build_generator("emt", 2, dim=20, num_heads=1, **SHALLOW, **SMALL_WINDOWS).train()
    out = net(torch.rand(2, 3, 10, 10))
    assert out.shape == (2, 3, 20, 20)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"upsampler": "nearest"}, "network_g.upsampler"),
        ({"dim": 64}, "network_g.dim"),
        ({"num_heads": 4}, "network_g.num_heads"),
        ({"shift_list": [[16, 4]]}, "network_g.shift_list"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        archs.build_generator("emt", 4, n_blocks=1, n_layers=1, **options)
