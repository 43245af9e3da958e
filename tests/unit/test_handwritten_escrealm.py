"""ESCRealM written here against traiNNer-redux's escreal_arch.py (commit 686293190): the same state-dict layout (redux
pretrains load strictly) and the same numbers. Redux's reference values were derived once from its own classes (its
"Naive" attention, which needs no triton) with `helpers.archs` and are hard-coded here."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import fill, layout, probe
from srcluster.components import archs
from srcluster.components.handwritten.escrealm import _ESCBlock, _symmetrized, _WindowAttention
from srcluster.errors import ConfigError

SMALL = {"n_blocks": 1, "conv_blocks": 1}


@pytest.mark.parametrize(
    ("name", "scale", "options", "expected"),
    [
        ("escrealm", 4, {}, (908, 2221558, "1b9080ec5df6d37b")),
        ("escrealm", 2, {}, (906, 2155958, "d1846f3ed85d48b3")),
        ("escrealm", 2, {"unshuffle_mod": True}, (908, 2227894, "3e2b71d1471fec8b")),
        ("escrealm", 1, {"unshuffle_mod": True}, (908, 2253238, "b57fa5fdd455a22b")),
        ("escrealm_xl", 4, {}, (1444, 13029770, "753f1704329d1465")),
    ],
)
def test_layout_matches_redux(name: str, scale: int, options: dict[str, object], expected: tuple[int, int, str]):
    assert layout(archs.build_generator(name, scale, **options).state_dict()) == expected


@pytest.mark.parametrize(
    ("name", "scale", "options", "side", "expected"),
    [
        # the default 32-pixel window on a 20-pixel image: reflect-padded to one window and cropped back
        ("escrealm", 4, SMALL, 20, ((1, 3, 80, 80), -0.4281167952607696, 0.1079775254290213,
                                    [-0.3057137131690979, -0.28628531098365784, -0.28595882654190063,
                                     -0.286119282245636])),
        ("escrealm_xl", 4, {**SMALL, "window_size": 8}, 20, ((1, 3, 80, 80), 0.05622410941015308, 0.1414002225945922,
                                                              [-0.11856505274772644, -0.11308367550373077,
                                                               -0.11311664432287216, -0.11282262206077576])),
        # pixel-unshuffle at x2 on an odd size: padded to the unshuffle factor first
        ("escrealm", 2, {**SMALL, "window_size": 8, "unshuffle_mod": True}, 21,
         ((1, 3, 42, 42), -0.42773166707718996, 0.10918368829475993,
          [-0.30572181940078735, -0.28629955649375916, -0.2859768569469452, -0.2861402928829193])),
    ],
)  # fmt: skip
def test_output_matches_redux(name: str, scale: int, options: dict[str, object], side: int, expected: tuple):
    shape, mean, std, values = probe(archs.build_generator(name, scale, **options), side=side)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert values == pytest.approx(expected[3], rel=1e-4)


def _rough(*shape: int, step: float = 2.3) -> torch.Tensor:
    """A fixed input that changes sign pixel to pixel (the smooth probe image barely tells attention patterns apart)."""
    count = torch.Size(shape).numel()
    return (torch.sin(torch.arange(count, dtype=torch.float32) * step + 0.5) * 2).reshape(shape)


def _checksum(out: torch.Tensor) -> float:
    """A signed sum over the whole output, so a difference anywhere shows."""
    flat = out.double().flatten()
    return (flat * torch.sin(torch.arange(flat.numel(), dtype=torch.float64) * 1.3)).sum().item()


@pytest.mark.parametrize("naive", [True, False])
@torch.no_grad()
def test_window_attention_matches_redux(naive: bool):
    """The attention alone, with its bias and query/key weights scaled up so the softmax is far from uniform: a bias
    read with query and key swapped moves the checksum by 6%."""
    attention = _WindowAttention(32, 8, 4, naive=naive)
    fill(attention)
    attention.relative_position_bias.mul_(60)
    for tensor in attention.to_qkv.parameters():
        tensor.mul_(4)
    out = attention(_rough(1, 32, 11, 13)).double().flatten()  # 11x13: padded to 16x16 and cropped
    assert _checksum(out) == pytest.approx(0.4817529520780637, rel=1e-4)
    assert out[:: out.numel() // 5][:5].tolist() == pytest.approx(
        [2.883422374725342, -2.186617851257324, -1.3526597023010254, 2.6065690517425537, 0.6522112488746643], rel=1e-4
    )


@torch.no_grad()
def test_block_matches_redux():
    """One block (attention sharpened as above, two partial large-kernel rounds with their predicted kernels non-zero)
    on a rough input, with a symmetrised large kernel: leaving the kernel unsymmetrised moves values by ~1e-3."""
    block = _ESCBlock(16, 8, 2, 8, 2, 2.0, naive=False)
    fill(block)
    block.attn.relative_position_bias.mul_(60)
    for tensor in block.attn.to_qkv.parameters():
        tensor.mul_(4)
    large_kernel = _symmetrized(_rough(8, 8, 13, 13, step=0.7) * 0.05)
    out = block(_rough(1, 16, 11, 13), large_kernel).double().flatten()
    assert _checksum(out) == pytest.approx(0.35361414013407644, rel=1e-4)
    assert out[:: out.numel() // 5][:5].tolist() == pytest.approx(
        [0.5749527215957642, 1.2970383167266846, -1.207787275314331, -0.24273896217346191, 1.90465247631073], rel=1e-4
    )


def test_trains_on_cpu():
    net = archs.build_generator("escrealm", 4, dim=16, pdim=8, num_heads=2, window_size=8, **SMALL).train()
    out = net(torch.rand(2, 3, 12, 12))  # a batch of 2 (per-image dynamic kernels), padded to whole windows
    assert out.shape == (2, 3, 48, 48)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    shared_kernel = net.get_parameter("plk_filter").grad
    assert shared_kernel is not None and shared_kernel.abs().sum() > 0


@torch.no_grad()
def test_dysample_upsampler_runs_without_cuda():
    net = archs.build_generator(
        "escrealm", 3, dim=16, pdim=8, num_heads=2, window_size=8, mid_dim=16, upsampler="dysample", **SMALL
    )
    assert net.eval()(torch.rand(1, 3, 8, 8)).shape == (1, 3, 24, 24)


def test_pretrain_loads_whatever_its_upsampler_description():
    net = archs.build_generator("escrealm", 4, **SMALL)
    state = net.state_dict()
    state["to_img.MetaUpsample"] = torch.zeros_like(state["to_img.MetaUpsample"])
    net.load_state_dict(state)  # strict
    assert net.state_dict()["to_img.MetaUpsample"].tolist()[:3] == [3, 5, 4]  # V3, transpose+conv, x4


def test_unknown_attention_type_names_the_key():
    with pytest.raises(ConfigError, match=r"network_g\.attn_type"):
        archs.build_generator("escrealm", 4, attn_type="Fast")
