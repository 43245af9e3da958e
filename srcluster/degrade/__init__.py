"""Degradations that turn HR crops into LR inputs.

``resize`` holds the MATLAB-compatible resampler (the fidelity stages' bicubic LR). The on-the-fly pipeline
(traiNNer-redux's Real-ESRGAN options plus video codecs) is ``config.Degradations`` -> ``pipeline.draw`` (per-sample
parameters, cheap, in the data workers) -> ``pipeline.apply`` (batched, on any device); ``preview`` draws a grid.
The job schema imports ``config`` alone, so reading a job file does not import torch.
"""

from __future__ import annotations

__all__ = ["KERNELS", "bicubic_downscale", "imresize"]


def __getattr__(name: str):
    if name in __all__:
        from srcluster.degrade import resize  # imports torch: only on first use, so importing `config` stays light

        return getattr(resize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
