"""Pretrained-weight files made by the tests: nothing can be downloaded, so the real loading code reads these."""

import dataclasses
import hashlib
import math
from pathlib import Path

import torch

from srcluster.components import hub, perceptual


def random_features(arch: str, seed: int, bias_std: float = 0.0) -> dict[str, torch.Tensor]:
    """torchvision-layout `features.*` tensors with He-scaled random weights: activations stay O(1) through the net."""
    with torch.device("meta"):  # shapes only
        net = perceptual.alexnet_features() if arch == "alexnet" else perceptual.vgg_features(arch)
    g = torch.Generator().manual_seed(seed)
    return {
        f"features.{k}": (
            torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
            if k.endswith("weight")
            else bias_std * torch.randn(v.shape, generator=g)
        )
        for k, v in net.state_dict().items()
    }


def fake_torch_home(home: Path, archs: tuple[str, ...], seed: int, bias_std: float = 0.0) -> Path:
    """A TORCH_HOME whose hub cache holds random weights for `archs` under torchvision's file names."""
    (home / "hub" / "checkpoints").mkdir(parents=True)
    for arch in archs:
        torch.save(random_features(arch, seed, bias_std), home / "hub" / "checkpoints" / perceptual.HUB_FILES[arch])
    return home


def first_conv_file(path: Path, seed: int = 0) -> Path:
    """A small VGG19 weights file holding only what conv1_1 needs (`features.0.*`), in torchvision's layout: enough
    for a perceptual loss with `layer_weights: {conv1_1: ...}`."""
    state = {k: v for k, v in random_features("vgg19", seed).items() if k.startswith("features.0.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def pinned(name: str, file: Path, **changes) -> hub.HubFile:
    """`hub.FILES[name]` with its sha256 set to `file`'s, for tests that put it in the table: the checksum a test-made
    file can match (the verification itself stays as it is)."""
    return dataclasses.replace(hub.FILES[name], sha256=hashlib.sha256(file.read_bytes()).hexdigest(), **changes)
