"""AESOP (Lee et al. 2024, "Auto-Encoded Supervision for Perceptual image super-resolution"), as traiNNer-redux's
`aesoploss`: SR and HR are compared after a frozen, pretrained autoencoder (an RRDB encoder to the LR size and an SR
generator as decoder) has re-created them, so pixel-level noise the autoencoder cannot reproduce is not penalised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from spandrel.architectures.__arch_helpers.block import RRDB
from torch import nn

from srcluster.components import archs
from srcluster.components.losses.base import LOSSES, criterion_mean, full_precision
from srcluster.errors import SrclusterError

LATENT_CHANNELS = 64  # traiNNer-redux's `nf`: the encoder's width after the pixel unshuffle


class AutoEncoder(nn.Module):
    """traiNNer-redux's AutoEncoder arch, same state-dict keys: the encoder's parts are registered both by name
    (`conv_first`, `body`, `conv_last`) and inside `encoder`, so a checkpoint holds each of their tensors twice."""

    def __init__(self, decoder: nn.Module, scale: int, nf: int = LATENT_CHANNELS):
        super().__init__()
        narrow = nf // scale**2  # channels before the pixel unshuffle, which multiplies them by scale^2 back to nf
        if narrow * scale**2 != nf:
            raise ValueError(f"aesoploss.scale: {scale}: {nf} latent channels do not split into scale^2 = {scale**2}")
        self.conv_first = nn.Sequential(nn.Conv2d(3, narrow, 3, padding=1), nn.Conv2d(narrow, narrow, 3, padding=1))
        self.down = nn.PixelUnshuffle(scale)
        self.body = nn.Sequential(RRDB(nf=nf), RRDB(nf=nf))
        self.conv_last = nn.Sequential(nn.Conv2d(nf, nf, 3, padding=1), nn.Conv2d(nf, 3, 3, padding=1))
        self.encoder = nn.Sequential(self.conv_first, self.down, self.body, self.conv_last)
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def read_autoencoder(path: str) -> dict[str, torch.Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise SrclusterError(f"aesoploss.pretrain_network_ae: autoencoder weights {file} do not exist")
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # not a safetensors file
        raise SrclusterError(f"aesoploss.pretrain_network_ae: {file} is not a safetensors file ({exc})") from None


class AESOPLoss(nn.Module):
    """`criterion` ("charbonnier" or "l1", averaged) between the autoencoder's re-creations of SR and HR.

    `decoder_opt` is the decoder's `network_g`-style section (its `type` and options; scale is `scale`), and
    `pretrain_network_ae` the autoencoder's safetensors file (traiNNer-redux trains it separately; there is no
    published one), loaded strictly. The autoencoder is frozen, in eval mode; HR's re-creation carries no gradient.
    Float32 under any autocast.
    """

    def __init__(
        self,
        decoder_opt: dict[str, Any],
        scale: int,
        pretrain_network_ae: str,
        criterion: str = "charbonnier",
    ):
        super().__init__()
        if criterion not in ("l1", "charbonnier"):
            raise ValueError(f"aesoploss.criterion: {criterion!r} is not one of l1, charbonnier")
        options = dict(decoder_opt)
        if "type" not in options:
            raise ValueError("aesoploss.decoder_opt: needs the decoder's type (a generator, as network_g.type)")
        decoder_type = str(options.pop("type"))
        options.pop("scale", None)  # traiNNer-redux sets the decoder's scale from the loss's own
        self.criterion = criterion_mean(criterion, "aesoploss")
        self.ae = AutoEncoder(archs.build_generator(decoder_type, scale, **options), scale)
        try:
            self.ae.load_state_dict(read_autoencoder(pretrain_network_ae))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped keys
            first = str(exc).strip().splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise SrclusterError(
                f"aesoploss.pretrain_network_ae: {pretrain_network_ae} does not fit an AutoEncoder with a "
                f"{decoder_type} decoder at scale {scale}: {first}"
            ) from None
        self.ae.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> AESOPLoss:
        return super().train(False)  # the autoencoder stays in eval mode

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with full_precision(sr):
            with torch.no_grad():
                target = self.ae(gt.float())
            return self.criterion(self.ae(sr.float()), target)


LOSSES.register("aesoploss")(AESOPLoss)
