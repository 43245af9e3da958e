"""SCUNet_aaf6aa written here against traiNNer-redux's scunet_aaf6aa_arch.py (commit 686293190): the same state-dict
layout (redux pretrains load strictly) and the same numbers. Redux's reference values were derived once from its own
classes with `helpers.archs` and are hard-coded here."""

from __future__ import annotations

import pytest
import torch

from helpers.archs import fill, layout, probe
from srcluster.components import archs
from srcluster.components.handwritten.scunet_aaf6aa import _ConvTransBlock, _WindowSelfAttention
from srcluster.errors import ConfigError


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (1, (275, 9699756, "9d5a09f3ffab3e04")),  # transposed-conv U-Net, no upsampler
        (2, (348, 15170540, "42dd921f95c6a5b9")),  # nearest+conv U-Net, RRDB upsampler
        (4, (350, 15207468, "ecf98d44631d2806")),
    ],
)
def test_layout_matches_redux(scale: int, expected: tuple[int, int, str]):
    assert layout(archs.build_generator("scunet_aaf6aa", scale).state_dict()) == expected


@pytest.mark.parametrize(
    ("scale", "options", "expected"),
    [
        # plain and shifted windows in the body; 51 pixels pad unevenly (39 above, 38 below)
        (1, {"config": [0, 0, 0, 2, 0, 0, 0]},
         ((1, 3, 51, 51), -0.0024239843442539293, 0.002614164032933842,
          [-0.001704455353319645, -0.0017672405811026692, -0.0015967543004080653, -0.0014529823092743754])),
        # the x2 path: nearest+conv U-Net steps and the RRDB upsampler (no Swin blocks, so any width)
        (2, {"config": [0] * 7, "dim": 8},
         ((1, 3, 102, 102), -0.006584769007731355, 0.06263317196022782,
          [-0.07725130766630173, -0.07731205970048904, -0.07738284766674042, -0.07746269553899765])),
    ],
)  # fmt: skip
def test_output_matches_redux(scale: int, options: dict[str, object], expected: tuple):
    shape, mean, std, values = probe(archs.build_generator("scunet_aaf6aa", scale, **options), side=51)
    assert shape == expected[0]
    assert mean == pytest.approx(expected[1], rel=1e-4)
    assert std == pytest.approx(expected[2], rel=1e-4)
    assert values == pytest.approx(expected[3], rel=1e-4)


def _rough(*shape: int) -> torch.Tensor:
    """A fixed input that changes sign pixel to pixel (the smooth probe image barely tells attention patterns apart)."""
    count = torch.Size(shape).numel()
    return (torch.sin(torch.arange(count, dtype=torch.float32) * 2.3 + 0.5) * 2).reshape(shape)


def _sharpened(attention: _WindowSelfAttention) -> None:
    """Scale the bias and the query/key weights up (after `fill`), so the softmax is far from uniform."""
    attention.relative_position_params.mul_(60)
    for tensor in attention.embedding_layer.parameters():
        tensor.mul_(4)


def _checksum(out: torch.Tensor) -> float:
    """A signed sum over the whole output, so a difference anywhere shows."""
    flat = out.double().flatten()
    return (flat * torch.sin(torch.arange(flat.numel(), dtype=torch.float64) * 1.3)).sum().item()


@pytest.mark.parametrize(
    ("shifted", "checksum", "values"),
    [
        (False, -19.349958893983338,
         [4.143981456756592, 2.272519111633301, -3.5123000144958496, -2.932830333709717, 2.451056718826294]),
        (True, -19.290365028943267,
         [4.1415486335754395, 2.271665096282959, -3.512503147125244, -2.932986259460449, 2.4505465030670166]),
    ],
)  # fmt: skip
@torch.no_grad()
def test_window_attention_matches_redux(shifted: bool, checksum: float, values: list[float]):
    """The attention alone (B, H, W, C): dropping the shift mask moves the checksum by 0.25%."""
    attention = _WindowSelfAttention(64, shifted)
    fill(attention)
    _sharpened(attention)
    out = attention(_rough(1, 24, 24, 64)).double().flatten()
    assert _checksum(out) == pytest.approx(checksum, rel=1e-4)
    assert out[:: out.numel() // 5][:5].tolist() == pytest.approx(values, rel=1e-4)


@torch.no_grad()
def test_swin_conv_block_matches_redux():
    block = _ConvTransBlock(64, 64, 0.0, shifted=True)
    fill(block)
    _sharpened(block.trans_block.msa)
    out = block(_rough(1, 128, 24, 24)).double().flatten()
    assert _checksum(out) == pytest.approx(1.943031253497906, rel=1e-4)
    assert out[:: out.numel() // 5][:5].tolist() == pytest.approx(
        [-0.5931439399719238, 0.3487374186515808, 3.0891597270965576, -2.5911192893981934, 0.5955991744995117], rel=1e-4
    )


def test_trains_on_cpu_with_noise_while_training():
    net = archs.build_generator("scunet_aaf6aa", 1, config=[1, 0, 0, 0, 0, 0, 1]).train()
    x = torch.rand(1, 3, 24, 24)  # padded to 64 while training
    torch.manual_seed(0)
    out = net(x)
    assert out.shape == (1, 3, 24, 24)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():
        torch.manual_seed(1)
        assert not torch.equal(net(x), out)  # each Swin-conv block adds fresh noise while training


@torch.no_grad()
def test_small_images_pad_by_repeated_reflection():
    """Eval pads by at least 64: redux's single reflection fails below ~45 pixels; reflecting again still works."""
    net = archs.build_generator("scunet_aaf6aa", 1, config=[0] * 7, dim=8).eval()
    assert net(torch.rand(1, 3, 20, 17)).shape == (1, 3, 20, 17)


def test_scale_must_be_a_power_of_two():
    with pytest.raises(ConfigError, match=r"scale: scunet_aaf6aa"):
        archs.build_generator("scunet_aaf6aa", 3)
