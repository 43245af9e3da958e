"""Degradations that turn HR crops into LR inputs; ``resize`` holds the MATLAB-compatible resampler."""

from srcluster.degrade.resize import KERNELS, bicubic_downscale, imresize

__all__ = ["KERNELS", "bicubic_downscale", "imresize"]
