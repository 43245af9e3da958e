"""Losses in the Fourier domain: FFT L1 and the focal frequency loss."""

from __future__ import annotations

import torch
from torch import nn

from srcluster.components.losses.base import LOSSES, full_precision, reducer


@LOSSES.register("fftloss")
class FFTLoss(nn.Module):
    """L1 between the real and imaginary parts of the two images' 2-D real FFTs."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduce = reducer(reduction, "fftloss")

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        diff = torch.view_as_real(torch.fft.rfft2(sr.float())) - torch.view_as_real(torch.fft.rfft2(gt.float()))
        return self.reduce(diff.abs())


@LOSSES.register("ffloss")
class FFLoss(nn.Module):
    """Focal frequency loss (Jiang et al., ICCV 2021), times 50 as traiNNer-redux: the squared distance of the two
    orthonormal 2-D spectra (per patch of a `patch_factor` x `patch_factor` grid), weighted by that distance
    ** `alpha` (optionally log(1 + .)), normalised to its maximum per spectrum (or over the batch with
    `batch_matrix`) and detached. `ave_spectrum` compares the batch's mean spectra."""

    def __init__(
        self,
        alpha: float = 1.0,
        patch_factor: int = 1,
        ave_spectrum: bool = True,
        log_matrix: bool = False,
        batch_matrix: bool = False,
    ):
        super().__init__()
        if patch_factor < 1:
            raise ValueError(f"ffloss.patch_factor: {patch_factor} is below 1")
        self.alpha, self.patch_factor = alpha, patch_factor
        self.ave_spectrum, self.log_matrix, self.batch_matrix = ave_spectrum, log_matrix, batch_matrix

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w, 2): real and imaginary parts of each patch's spectrum."""
        f = self.patch_factor
        b, c, h, w = x.shape
        if h % f or w % f:
            raise ValueError(f"ffloss.patch_factor: {f} does not divide the {h}x{w} images")
        patches = x.reshape(b, c, f, h // f, f, w // f).permute(0, 2, 4, 1, 3, 5).reshape(b, f * f, c, h // f, w // f)
        return torch.view_as_real(torch.fft.fft2(patches, norm="ortho"))

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            sr_freq, gt_freq = self._spectrum(sr.float()), self._spectrum(gt.float())
            if self.ave_spectrum:
                sr_freq, gt_freq = sr_freq.mean(0, keepdim=True), gt_freq.mean(0, keepdim=True)
            distance = ((sr_freq - gt_freq) ** 2).sum(-1)
            with torch.no_grad():
                weight = distance.sqrt() ** self.alpha
                if self.log_matrix:
                    weight = torch.log(weight + 1)
                peak = weight.max() if self.batch_matrix else weight.amax(dim=(-2, -1), keepdim=True)
                weight = torch.nan_to_num(weight / peak, nan=0.0).clamp(0, 1)
            return 50 * (weight * distance).mean()
