"""Comparing a generator written here with traiNNer-redux's own: the state-dict layout (what a strict load of a redux
pretrain needs) and the output for the same weights on the same input (what the network computes).

Reference values are derived once, in a scratch script, by running redux's network (its source at commit 686293190)
through `probe` with the same `fill`; tests hard-code them."""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn


def layout(state: dict[str, torch.Tensor]) -> tuple[int, int, str]:
    """(tensors, numbers, digest of every `name:shape`): equal layouts are what a strict load needs."""
    lines = "\n".join(f"{name}:{tuple(tensor.shape)}" for name, tensor in sorted(state.items()))
    return len(state), sum(t.numel() for t in state.values()), hashlib.sha256(lines.encode()).hexdigest()[:16]


@torch.no_grad()
def fill(net: nn.Module) -> nn.Module:
    """Set every floating tensor of the state dict to a fixed pattern (by sorted name), the same in any network with the
    same layout; BatchNorm variances stay positive. Returns the network in eval mode."""
    state = net.state_dict()
    for index, name in enumerate(sorted(state)):
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        positions = torch.arange(tensor.numel(), dtype=torch.float64)
        pattern = torch.sin(positions * 0.37 + index) * (
            0.5 / math.sqrt(max(1, tensor[0].numel() if tensor.dim() else 1))
        )
        if name.endswith("running_var"):
            pattern = pattern.abs() + 0.5
        tensor.copy_(pattern.reshape(tensor.shape).to(tensor.dtype))
    return net.eval()


def probe_input(side: int = 16, channels: int = 3) -> torch.Tensor:
    """A fixed, smooth test image in [0, 1]."""
    y, x = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    planes = [0.5 + 0.4 * torch.sin(x * (0.3 + 0.1 * c) + y * (0.2 + 0.05 * c) + c) for c in range(channels)]
    return torch.stack(planes)[None]


@torch.no_grad()
def probe(net: nn.Module, side: int = 16) -> tuple[tuple[int, ...], float, float, list[float]]:
    """(output shape, mean, std, the first 4 values) of the filled network on `probe_input(side)`."""
    out = fill(net)(probe_input(side)).double()
    return tuple(out.shape), out.mean().item(), out.std().item(), out.flatten()[:4].tolist()
