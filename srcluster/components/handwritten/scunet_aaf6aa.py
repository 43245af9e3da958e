"""SCUNet_aaf6aa (aaf6aa's SCUNet fork: SCUNet with an RRDB upsampler for scales above 1), as traiNNer-redux builds it
(`m_head`, `m_down1..3`, `m_body`, `m_up3..1`, `m_res`, `m_upsample`, `m_tail`, so its state dicts load strictly)."""

from __future__ import annotations

import math

import torch
from spandrel.util.timm import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.nn import functional as F

from srcluster.errors import ConfigError

HEAD_DIM = 32
WINDOW = 8


def _relative_index(window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices into a (2·window-1)² table for every (query, key) pair of a window: the query's offset
    from the key (SCUNet's orientation)."""
    steps = torch.arange(window, device=device)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    offset = coords[:, None, :] - coords[None, :, :] + window - 1
    return offset[..., 0], offset[..., 1]


def _shift_mask(windows_h: int, windows_w: int, window: int, device: torch.device) -> Tensor:
    """True where a query and a key of a shifted window came from opposite sides of the image (after the cyclic roll):
    only the last row and last column of windows mix such pixels. Shape (windows, window², window²)."""
    split = window - window // 2
    region = (torch.arange(window, device=device) >= split).long()  # which side of the split each row/column is on
    rows = torch.zeros(windows_h, window, dtype=torch.long, device=device)
    cols = torch.zeros(windows_w, window, dtype=torch.long, device=device)
    rows[-1] = region
    cols[-1] = region
    # a pixel's region label: (row side, column side), per window; pairs with different labels are masked
    row_label = rows[:, None, :, None].expand(windows_h, windows_w, window, window)
    col_label = cols[None, :, None, :].expand(windows_h, windows_w, window, window)
    row_label = row_label.reshape(windows_h * windows_w, window * window)
    col_label = col_label.reshape(windows_h * windows_w, window * window)
    differs_row = row_label[:, :, None] != row_label[:, None, :]
    differs_col = col_label[:, :, None] != col_label[:, None, :]
    return differs_row | differs_col


class _WindowSelfAttention(nn.Module):
    """Multi-head self-attention in 8x8 windows of a (B, H, W, C) map, with a relative-position bias; the "SW" kind
    rolls the map by half a window first (and back after), masking pairs that the roll brought together."""

    def __init__(self, dim: int, shifted: bool):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.shifted = shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.linear = nn.Linear(dim, dim)
        table = torch.zeros((2 * WINDOW - 1) ** 2, self.heads)
        trunc_normal_(table, std=0.02)
        self.relative_position_params = nn.Parameter(
            table.view(2 * WINDOW - 1, 2 * WINDOW - 1, self.heads).permute(2, 0, 1).contiguous()
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        half = WINDOW // 2
        if self.shifted:
            x = torch.roll(x, shifts=(-half, -half), dims=(1, 2))
        windows_h, windows_w = height // WINDOW, width // WINDOW
        windows = (
            x.reshape(batch, windows_h, WINDOW, windows_w, WINDOW, channels)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch, windows_h * windows_w, WINDOW * WINDOW, channels)
        )
        # (B, windows, tokens, 3·C) -> three of (B, windows, heads, tokens, HEAD_DIM): q, k, v, each heads-major
        qkv = self.embedding_layer(windows).unflatten(-1, (3, self.heads, HEAD_DIM)).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)
        rows, cols = _relative_index(WINDOW, x.device)
        bias = self.relative_position_params[:, rows, cols]  # (heads, tokens, tokens)
        bias = bias[None, None].to(q.dtype)
        if self.shifted:
            mask = _shift_mask(windows_h, windows_w, WINDOW, x.device)[None, :, None]
            bias = bias.masked_fill(mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.linear(out.transpose(2, 3).flatten(-2))  # heads back into channels, heads-major
        out = (
            out.reshape(batch, windows_h, windows_w, WINDOW, WINDOW, channels)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(batch, height, width, channels)
        )
        if self.shifted:
            out = torch.roll(out, shifts=(half, half), dims=(1, 2))
        return out


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float, shifted: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = _WindowSelfAttention(dim, shifted)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class _StraightThroughNoise(nn.Module):
    """While training, adds Gaussian noise (sigma 0.05) to the value but not to the gradient, which passes as if the
    noise were absent."""

    def __init__(self, sigma: float = 0.05):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.sigma == 0:
            return x
        return x + (torch.randn_like(x) * self.sigma).detach()


class _ConvTransBlock(nn.Module):
    """A 1x1 conv splits the channels into a residual conv branch and a Swin branch; a 1x1 conv merges them, added to
    the input."""

    def __init__(self, conv_dim: int, trans_dim: int, drop_path: float, shifted: bool):
        super().__init__()
        self.conv_dim, self.trans_dim = conv_dim, trans_dim
        total = conv_dim + trans_dim
        self.trans_block = _SwinBlock(trans_dim, drop_path, shifted)
        self.conv1_1 = nn.Conv2d(total, total, 1)
        self.conv1_2 = nn.Conv2d(total, total, 1)
        self.conv_block = nn.Sequential(
            nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False),
            nn.ReLU(True),
            nn.Conv2d(conv_dim, conv_dim, 3, 1, 1, bias=False),
        )
        self.noise = _StraightThroughNoise()

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = self.conv1_1(x).split((self.conv_dim, self.trans_dim), dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.noise(x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1)))


def _nearest_x2_conv(dim: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(0.2, True)]


class _NearestUpconv(nn.Module):
    """The U-Net's x2 step above scale 1: nearest x2, conv, LeakyReLU, then a conv to `out_dim`, LeakyReLU."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.up = nn.Sequential(*_nearest_x2_conv(dim), nn.Conv2d(dim, out_dim, 3, 1, 1), nn.LeakyReLU(0.2, True))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)


class _DenseBlock(nn.Module):
    """ESRGAN's residual dense block: five convs, each seeing all earlier outputs; 0.2 of the result is added."""

    def __init__(self, features: int, growth: int = 32):
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", nn.Conv2d(features + (index - 1) * growth, growth, 3, 1, 1))
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        seen = [x]
        for index in range(1, 5):
            seen.append(self.lrelu(getattr(self, f"conv{index}")(torch.cat(seen, dim=1))))
        return self.conv5(torch.cat(seen, dim=1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int = 32):
        super().__init__()
        self.rdb1 = _DenseBlock(features, growth)
        self.rdb2 = _DenseBlock(features, growth)
        self.rdb3 = _DenseBlock(features, growth)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class _RRDBUpsampler(nn.Module):
    """Two RRDBs, then log2(scale) nearest-x2-conv steps and a final conv + LeakyReLU."""

    def __init__(self, dim: int, scale: int):
        super().__init__()
        steps = [module for _ in range(int(math.log2(scale))) for module in _nearest_x2_conv(dim)]
        self.up = nn.Sequential(_RRDB(dim), _RRDB(dim), *steps, nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(0.2, True))

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)


def _mirror_pad(x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflection padding; where one reflection is too short for the image (redux would stop there), reflect again."""
    while left or right or top or bottom:
        height, width = x.shape[-2:]
        step = (min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


class SCUNet_aaf6aa(nn.Module):  # redux's class name
    """SCUNet: a 3-level U-Net of Swin-conv blocks (8x8 windows, 32-channel heads, alternating plain and shifted
    windows where `input_resolution` exceeds the window), a residual from the head, and for scales above 1 an RRDB
    upsampler. The input is reflect-padded to a multiple of 64 (plus 64 more in eval) and cropped back."""

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        config: list[int] | None = None,
        dim: int = 64,
        drop_path_rate: float = 0.0,
        input_resolution: int = 256,
        scale: int = 1,
        residual: bool = True,
    ):
        super().__init__()
        if scale < 1 or scale & (scale - 1):
            raise ConfigError(f"scale: scunet_aaf6aa upscales by a power of two (1, 2, 4, 8), not {scale}")
        config = [2, 2, 2, 2, 2, 2, 2] if config is None else list(config)
        if len(config) < 7:
            raise ConfigError(f"network_g.config: scunet_aaf6aa needs 7 block counts, not {len(config)}")
        # the smallest Swin branch (dim / 2 channels) must hold whole 32-channel heads
        if any(config) and (dim < 2 * HEAD_DIM or dim % (2 * HEAD_DIM)):
            raise ConfigError(f"network_g.dim: scunet_aaf6aa needs a multiple of {2 * HEAD_DIM}, not {dim}")
        self.scale = scale
        self.residual = residual
        rates = iter(torch.linspace(0, drop_path_rate, sum(config)).tolist())

        def stage(count: int, half_dim: int, resolution: int) -> list[nn.Module]:
            # even blocks plain windows, odd ones shifted; at or below one window everything is plain
            shiftable = resolution > WINDOW
            return [_ConvTransBlock(half_dim, half_dim, next(rates), shiftable and i % 2 == 1) for i in range(count)]

        def unet_up(dim_in: int, dim_out: int) -> nn.Module:
            if scale > 1:
                return _NearestUpconv(dim_in, dim_out)
            return nn.ConvTranspose2d(dim_in, dim_out, 2, 2, bias=False)

        res = input_resolution
        self.m_head = nn.Sequential(nn.Conv2d(in_nc, dim, 3, 1, 1, bias=False))
        self.m_down1 = nn.Sequential(*stage(config[0], dim // 2, res), nn.Conv2d(dim, 2 * dim, 2, 2, bias=False))
        self.m_down2 = nn.Sequential(*stage(config[1], dim, res // 2), nn.Conv2d(2 * dim, 4 * dim, 2, 2, bias=False))
        self.m_down3 = nn.Sequential(
            *stage(config[2], 2 * dim, res // 4), nn.Conv2d(4 * dim, 8 * dim, 2, 2, bias=False)
        )
        self.m_body = nn.Sequential(*stage(config[3], 4 * dim, res // 8))
        self.m_up3 = nn.Sequential(unet_up(8 * dim, 4 * dim), *stage(config[4], 2 * dim, res // 4))
        self.m_up2 = nn.Sequential(unet_up(4 * dim, 2 * dim), *stage(config[5], dim, res // 2))
        self.m_up1 = nn.Sequential(unet_up(2 * dim, dim), *stage(config[6], dim // 2, res))
        if residual:
            self.m_res = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=False))
        if scale > 1:
            self.m_upsample = nn.Sequential(_RRDBUpsampler(dim, scale))
        self.m_tail = nn.Sequential(nn.Conv2d(dim, out_nc, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        # to whole multiples of 64 (three halvings, then 8x8 windows); eval adds a 64 border, as redux does
        extra = 0 if self.training else 64
        pad_h, pad_w = (-height) % 64 + extra, (-width) % 64 + extra
        top, left = (pad_h + 1) // 2, (pad_w + 1) // 2
        x = _mirror_pad(x, left, pad_w - left, top, pad_h - top)

        head = self.m_head(x)
        down1 = self.m_down1(head)
        down2 = self.m_down2(down1)
        down3 = self.m_down3(down2)
        x = self.m_up3(self.m_body(down3) + down3)
        x = self.m_up2(x + down2)
        x = self.m_up1(x + down1)
        x = x + (self.m_res(head) if self.residual else head)
        if self.scale > 1:
            x = self.m_upsample(x)
        x = self.m_tail(x)
        s = self.scale
        return x[..., top * s : (top + height) * s, left * s : (left + width) * s]


REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"scunet_aaf6aa": ("SCUNet_aaf6aa", {})}
