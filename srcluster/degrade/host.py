"""Host -> device copies of the small tables and indices a plan turns into (they are all built on the host)."""

from __future__ import annotations

import numpy as np
import torch


def to_device(value: torch.Tensor | np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`value` on `device` without stalling the host: to CUDA through pinned memory (an asynchronous copy; from
    pageable memory the driver may wait for the stream), on CPU as is (no copy when nothing changes)."""
    tensor = torch.as_tensor(value)
    if dtype is not None and device.type == "cpu":
        return tensor.to(dtype)
    if device.type == "cpu":
        return tensor
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor.pin_memory().to(device, non_blocking=True)
