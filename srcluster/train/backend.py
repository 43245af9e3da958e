"""The process-wide torch settings a job asks for, as traiNNer-redux sets them before training: `deterministic`,
`detect_anomaly`, `fast_matmul` and cuDNN autotuning, and the memory format of its networks and batches."""

from __future__ import annotations

import os

import torch

from srcluster.config import Job


def configure(job: Job) -> None:
    """Set once per training process, before the networks are built (redux's train.py does the same)."""
    torch.autograd.set_detect_anomaly(job.detect_anomaly)
    if job.deterministic:
        # redux: deterministic kernels where torch has them (a warning names the rest), no cuDNN autotuning, and
        # cuBLAS's workspace setting that deterministic GEMMs need
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # training shapes are fixed (lq_size x batch), so cuDNN's per-shape autotuning pays off after the first step
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)
    # fast_matmul: float32 matmuls and convolutions on TF32 tensor cores (redux: "high" precision)
    torch.set_float32_matmul_precision("high" if job.fast_matmul else "highest")
    torch.backends.cudnn.allow_tf32 = job.fast_matmul or torch.backends.cudnn.allow_tf32


def memory_format(job: Job) -> torch.memory_format:
    """channels_last for the networks, loss networks, EMA and batches when AMP is on and `use_channels_last` (redux's
    default) asks for it; otherwise each tensor keeps its layout."""
    return torch.channels_last if job.use_amp and job.use_channels_last else torch.preserve_format
