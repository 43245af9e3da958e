"""DocRes (hand-written in `components/handwritten/docres.py`) against traiNNer-redux's `docres_arch.py`: the same
state-dict layout for every preset (so redux pretrains load strictly), the same outputs for the same weights (sides
that need reflect padding, the coordinate planes of 3-channel inputs and the path without them, the bias-free norm),
it refuses scales other than 1 and inconsistent levels, and it trains."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import fill, layout, probe, probe_input
from srcluster.components import archs
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

# redux's preset functions (and its class, registered as `docres`), by `layout`, derived from redux's source at commit
# 686293190
REDUX_LAYOUTS = {
    "docres": (275, 14682400, "6db801aa6fd26e3f"),
    "docres_base": (275, 14682400, "6db801aa6fd26e3f"),
    "docres_large": (385, 34568500, "0d8558b5771f04b8"),
}


@pytest.mark.parametrize("name", sorted(REDUX_LAYOUTS))
def test_docres_presets_have_redux_layout(name):
    with torch.device("meta"):  # shapes only: no time spent initialising millions of numbers
        net = archs.build_generator(name, 1)
    assert layout(net.state_dict()) == REDUX_LAYOUTS[name]


SMALL_BIAS_FREE = {
    "dim": 8,
    "num_blocks": [1, 1, 1, 2],
    "num_refinement_blocks": 1,
    "heads": [1, 2, 2, 4],
    "bias": True,
    "LayerNorm_type": "BiasFree",
    "ffn_expansion_factor": 1.5,
}
GRAY = {"inp_channels": 1, "out_channels": 1, "dim": 8, "num_blocks": [1] * 4, "num_refinement_blocks": 1,
        "heads": [1, 1, 2, 2]}  # fmt: skip

# (preset, options, side) -> redux's (layout, `probe`: shape, mean, std, first values); layout None: not compared
REDUX_PROBES = [
    (
        ("docres_base", {}, 20),  # reflect-padded to 24, coordinates over the padded image
        (None, ((1, 3, 20, 20), 0.08236522772815079, 0.303122629381166,
               [0.1195588931441307, 0.17093360424041748, 0.20459820330142975, 0.2045188695192337])),
    ),
    (
        ("docres_base", SMALL_BIAS_FREE, 21),  # padded to 24; biased convs, bias-free norm, several heads
        ((150, 216542, "645038b006ca0e2c"), ((1, 3, 21, 21), -1.1996495978722317, 1.3313405132246452,
         [-1.8018767833709717, -2.3559606075286865, -2.3856866359710693, -2.379044532775879])),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), REDUX_PROBES, ids=["base-side20", "small-bias-free-side21"])
def test_docres_computes_what_redux_computes(case, expected):
    name, options, side = case
    redux_layout, (shape, mean, std, first) = expected
    net = archs.build_generator(name, 1, **options)
    if redux_layout is not None:
        assert layout(net.state_dict()) == redux_layout
    got = probe(net, side)
    assert got[0] == shape
    assert got[1] == pytest.approx(mean, rel=1e-4)
    assert got[2] == pytest.approx(std, rel=1e-4)
    assert got[3] == pytest.approx(first, rel=1e-4)


def test_docres_without_coordinates_computes_what_redux_computes():
    # inputs of other than 3 channels get no coordinate planes: one gray channel in, one out (redux's numbers)
    net = archs.build_generator("docres_base", 1, **GRAY)
    assert layout(net.state_dict()) == (99, 202025, "e961c57009de4a51")
    with torch.no_grad():
        out = fill(net)(probe_input(18, channels=1)).double()
    assert out.shape == (1, 1, 18, 18)
    assert out.mean().item() == pytest.approx(-0.1688063519972342, rel=1e-4)
    assert out.std().item() == pytest.approx(0.05458886397836937, rel=1e-4)
    expected_first = [-0.2628747820854187, -0.34095433354377747, -0.37203913927078247, -0.3608171045780182]
    assert out.flatten()[:4].tolist() == pytest.approx(expected_first, rel=1e-4)


def test_docres_refuses_upscaling():
    with pytest.raises(ConfigError, match=r"scale: docres restores at scale 1 only .* not 4"):
        archs.build_generator("docres_base", 4)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"num_blocks": [1, 1, 1]}, "num_blocks"),
        ({"heads": [1, 2, 4]}, "heads"),
        ({"heads": [1, 3, 4, 8]}, "heads"),  # 16 channels at level 2 do not split into 3 heads
        ({"dim": 7}, "dim"),
        ({"LayerNorm_type": "withbias"}, "LayerNorm_type"),
    ],
)
def test_docres_refuses_inconsistent_options(options, key):
    with pytest.raises(ConfigError, match=rf"network_g\.{key}: "):
        archs.build_generator("docres_base", 1, **{"dim": 8, **options})


def test_docres_trains():
    # a template option that redux takes and ignores is accepted here too
    net = archs.build_generator("docres_base", 1, **SMALL_BIAS_FREE, dual_pixel_task=False).train()
    out = net(torch.rand(2, 3, 13, 18))  # padded to 16x24 inside, cropped back
    assert out.shape == (2, 3, 13, 18)
    out.square().mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for name, g in grads.items() if "temperature" in name)  # pyright: ignore[reportOptionalMemberAccess]


def test_docres_keeps_half_precision():
    # the coordinate planes follow the input's dtype, so a bf16 network on a bf16 input does not meet float32
    net = archs.build_generator("docres_base", 1, **SMALL_BIAS_FREE).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()


def test_the_docres_gan_templates_discriminator_has_redux_layout():
    """redux's `docres_discriminator` (its DocRes GAN template's network_d), layout derived from redux's class."""
    net = archs.build_discriminator("docres_discriminator")
    assert layout(net.state_dict()) == (5, 112896, "7ba7ac96995f988a")
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)
