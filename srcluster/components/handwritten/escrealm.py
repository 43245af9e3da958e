"""ESCRealM (ESC-Real with a choice of upsampler), as traiNNer-redux builds it (`proj`, `skip`, `blocks`, `last`,
`to_img`, `plk_filter`, so its state dicts load strictly).

Redux runs the window attention through flex_attention (triton, compiled) by default; the same numbers come from
plain softmax attention with the relative-position bias added to the scores, so here every `attn_type` computes that
with portable torch ops (SDPA, or an explicit softmax for "Naive") and runs on CPU as well as CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from spandrel.architectures.__arch_helpers.dysample import DySample as PortableDySample
from spandrel.architectures.FDAT.__arch.fdat import DySample as PinnedDySample
from spandrel.architectures.FDAT.__arch.fdat import SampleMods3, UniUpsampleV3
from torch import Tensor, nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import ChannelLayerNorm
from srcluster.errors import ConfigError

ATTENTION_TYPES = ("Naive", "SDPA", "Flex")
UPSAMPLERS: tuple[str, ...] = SampleMods3.__args__


class _PartialLargeKernelConv(nn.Module):
    """On the first `pdim` channels only: the network's shared large kernel plus a 3x3 depthwise kernel predicted per
    image from those channels' global average. The other channels pass through."""

    dynamic_size = 3

    def __init__(self, pdim: int):
        super().__init__()
        self.pdim = pdim
        taps = self.dynamic_size**2
        predict = nn.Conv2d(pdim // 2, pdim * taps, 1)
        # the predicted kernels start at zero: at first only the shared large kernel acts
        for tensor in predict.parameters():
            nn.init.zeros_(tensor)
        self.dwc_proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(pdim, pdim // 2, 1), nn.GELU(), predict)

    def forward(self, x: Tensor, large_kernel: Tensor) -> Tensor:
        part, rest = x.split([self.pdim, x.shape[1] - self.pdim], dim=1)
        batch = x.shape[0]
        # one depthwise kernel per (image, channel): fold the batch into the channels for a single grouped conv
        kernels = self.dwc_proj(part).reshape(batch * self.pdim, 1, self.dynamic_size, self.dynamic_size)
        dynamic = F.conv2d(
            part.reshape(1, batch * self.pdim, *part.shape[2:]),
            kernels,
            padding=self.dynamic_size // 2,
            groups=batch * self.pdim,
        ).reshape_as(part)
        static = F.conv2d(part, large_kernel, padding=large_kernel.shape[-1] // 2)
        return torch.cat([static + dynamic, rest], dim=1)


class _ConvAttention(nn.Module):
    def __init__(self, dim: int, pdim: int):
        super().__init__()
        self.plk = _PartialLargeKernelConv(pdim)
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, large_kernel: Tensor) -> Tensor:
        return self.aggr(self.plk(x, large_kernel))


class _ConvFFN(nn.Module):
    """1x1 expand, GELU; depthwise conv, GELU, plus its input; 1x1 back."""

    def __init__(self, dim: int, kernel_size: int, exp_ratio: float):
        super().__init__()
        hidden = int(dim * exp_ratio)
        self.proj = nn.Conv2d(dim, hidden, 1)
        self.dwc = nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden)
        self.aggr = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.proj(x))
        return self.aggr(F.gelu(self.dwc(hidden)) + hidden)


def _relative_index(window: int, device: torch.device) -> Tensor:
    """(window², window²) index into a flattened (2·window-1)² table: the key's offset from the query."""
    rows, cols = torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    offset = coords[None, :, :] - coords[:, None, :] + window - 1  # [query, key]
    return offset[..., 0] * (2 * window - 1) + offset[..., 1]


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping square windows, with a learned relative-position bias; the map
    is reflect-padded to whole windows and cropped back."""

    def __init__(self, dim: int, window_size: int, num_heads: int, naive: bool):
        super().__init__()
        self.window = window_size
        self.num_heads = num_heads
        self.naive = naive
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.relative_position_bias = nn.Parameter(torch.randn(num_heads, (2 * window_size - 1) ** 2) * 0.001)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2:]
        pad_h, pad_w = (-height) % self.window, (-width) % self.window
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        qkv = self.to_qkv(x)
        q, k, v = rearrange(
            qkv,
            "b (qkv heads c) (h wh) (w ww) -> qkv (b h w) heads (wh ww) c",
            qkv=3,
            heads=self.num_heads,
            wh=self.window,
            ww=self.window,
        )
        bias = self.relative_position_bias[:, _relative_index(self.window, x.device)][None].to(q.dtype)
        if self.naive:
            scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5 + bias
            out = scores.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = rearrange(
            out,
            "(b h w) heads (wh ww) c -> b (heads c) (h wh) (w ww)",
            h=x.shape[2] // self.window,
            w=x.shape[3] // self.window,
            wh=self.window,
        )
        return self.to_out(out.to(qkv.dtype)[:, :, :height, :width])


class _ESCBlock(nn.Module):
    """ConvFFN, window attention, then `conv_blocks` rounds of (ConvFFN, partial large-kernel conv), a 3x3 conv, and
    the block's input added back."""

    def __init__(
        self, dim: int, pdim: int, conv_blocks: int, window_size: int, num_heads: int, exp_ratio: float, naive: bool
    ):
        super().__init__()
        self.ln_proj = ChannelLayerNorm(dim)
        self.proj = _ConvFFN(dim, 3, 2)
        self.ln_attn = ChannelLayerNorm(dim)
        self.attn = _WindowAttention(dim, window_size, num_heads, naive)
        self.lns = nn.ModuleList([ChannelLayerNorm(dim) for _ in range(conv_blocks)])
        self.pconvs = nn.ModuleList([_ConvAttention(dim, pdim) for _ in range(conv_blocks)])
        self.convffns = nn.ModuleList([_ConvFFN(dim, 3, exp_ratio) for _ in range(conv_blocks)])
        self.ln_out = ChannelLayerNorm(dim)
        self.conv_out = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, large_kernel: Tensor) -> Tensor:
        features = self.proj(self.ln_proj(x))
        features = features + self.attn(self.ln_attn(features))
        for norm, pconv, ffn in zip(self.lns, self.pconvs, self.convffns, strict=True):
            features = features + pconv(ffn(norm(features)), large_kernel)
        return self.conv_out(self.ln_out(features)) + x


def _symmetrized(kernel: Tensor) -> Tensor:
    """The mean of the kernel over the 8 flips and quarter turns of a square (IGConv's geometric re-parameterisation),
    so the large kernel has no preferred orientation."""
    turned = torch.rot90(kernel, -1, [2, 3])
    variants = [k.flip(dims) if dims else k for k in (kernel, turned) for dims in ((), [3], [2], [2, 3])]
    return torch.stack(variants).mean(dim=0)


def _upsampler(upsampler: str, scale: int, dim: int, mid_dim: int) -> nn.Sequential:
    """Redux's UniUpsampleV3 (spandrel ships the same module), with a DySample that does not pin host memory (the
    shipped one does in every forward, which needs CUDA); both have the same parameters."""
    to_img = UniUpsampleV3(upsampler, scale, dim, 3, mid_dim, 4)  # pyright: ignore[reportArgumentType]
    for index, module in enumerate(to_img):
        if isinstance(module, PinnedDySample):
            to_img[index] = PortableDySample(module.offset.in_channels, 3, module.scale, module.groups)
    return to_img


class ESCRealM(nn.Module):
    """ESC-Real: blocks of window attention and partial large-kernel convolutions (one large kernel shared by the whole
    network, symmetrised), a long skip plus a separate convolutional skip from the image, and a choice of upsampler.
    With `unshuffle_mod` at scales 1 and 2 the image is pixel-unshuffled first and the network upscales by 4."""

    def __init__(
        self,
        dim: int = 64,
        pdim: int = 16,
        kernel_size: int = 13,
        n_blocks: int = 10,
        conv_blocks: int = 5,
        window_size: int = 32,
        num_heads: int = 4,
        scale: int = 4,
        exp_ratio: float = 2.0,
        attn_type: str = "Flex",
        mid_dim: int = 64,
        upsampler: str = "transpose+conv",
        unshuffle_mod: bool = False,
    ):
        super().__init__()
        if attn_type not in ATTENTION_TYPES:
            raise ConfigError(f"network_g.attn_type: {attn_type!r} is not one of {', '.join(ATTENTION_TYPES)}")
        if upsampler not in UPSAMPLERS:
            raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of {', '.join(UPSAMPLERS)}")
        self.upscaling_factor = scale
        self.plk_filter = nn.Parameter(torch.empty(pdim, pdim, kernel_size, kernel_size))
        nn.init.orthogonal_(self.plk_filter)

        if unshuffle_mod and scale < 3:
            factor = 4 // scale
            self.padding = factor  # the input is padded to a multiple of the unshuffle factor
            in_channels = 3 * factor**2
            self.proj = nn.Sequential(nn.PixelUnshuffle(factor), nn.Conv2d(in_channels, dim, 3, 1, 1))
            self.skip = nn.Sequential(nn.PixelUnshuffle(factor), *self._image_skip(in_channels, dim))
            scale = 4
        else:
            self.padding = 0
            self.proj = nn.Conv2d(3, dim, 3, 1, 1)
            self.skip = nn.Sequential(*self._image_skip(3, dim))

        naive = attn_type == "Naive"
        self.blocks = nn.ModuleList(
            [_ESCBlock(dim, pdim, conv_blocks, window_size, num_heads, exp_ratio, naive) for _ in range(n_blocks)]
        )
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        try:
            self.to_img = _upsampler(upsampler, scale, dim, mid_dim)
        except ValueError as error:  # a scale the upsampler cannot do
            raise ConfigError(f"network_g.upsampler: {upsampler!r} at scale {scale}: {error}") from error

    @staticmethod
    def _image_skip(in_channels: int, dim: int) -> list[nn.Module]:
        return [
            nn.Conv2d(in_channels, dim * 2, 1),
            nn.Conv2d(dim * 2, dim * 2, 7, 1, 3, groups=dim * 2, padding_mode="reflect"),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim * 2, dim, 1),
        ]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        # like redux: the upsampler's description buffer is always this network's own, whatever the file holds
        state = dict(state_dict)
        state["to_img.MetaUpsample"] = self.to_img.MetaUpsample
        return super().load_state_dict(state, strict, assign)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2:]
        if self.padding:
            x = F.pad(x, (0, (-width) % self.padding, 0, (-height) % self.padding), mode="reflect")
        features = self.proj(x)
        large_kernel = _symmetrized(self.plk_filter)
        deep = features
        for block in self.blocks:
            deep = block(deep, large_kernel)
        out = self.to_img(self.last(deep) + features + self.skip(x))
        return out[:, :, : height * self.upscaling_factor, : width * self.upscaling_factor]


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "escrealm": ("ESCRealM", {}),
    "escrealm_xl": (
        "ESCRealM",
        {"dim": 128, "pdim": 32, "n_blocks": 16, "num_heads": 8, "upsampler": "pixelshuffle"},
    ),
}
