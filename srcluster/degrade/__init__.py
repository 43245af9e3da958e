"""Degradations that turn HR crops into LR inputs.

``resize`` holds the MATLAB-compatible resampler (the fidelity stages' bicubic LR) and traiNNer-redux's OTF resize.
The on-the-fly pipeline (traiNNer-redux's Real-ESRGAN options, JPEG and crop geometry, plus video codecs) is
``config.Degradations`` -> ``pipeline.draw`` (per-sample parameters, cheap, in the data workers) -> ``pipeline.pair``
(degrade the larger crop and cut the pair, batched, on any device); ``preview`` draws a grid.
The job schema imports ``config`` alone, so reading a job file does not import torch.
"""
