"""The network HiT-SIR and HiT-SRF share (traiNNer-redux's `hit_sir_arch.py` / `hit_srf_arch.py`), with redux's module
names so its pretrains load strictly. The two differ only in their blocks' feed-forward (a plain MLP, or one with a
depthwise 5x5 convolution) and in how a window larger than the image is padded; `hit_sir.py` and `hit_srf.py` choose.

HiT-SR replaces windowed self-attention with "spatial-channel correlation" (SCC): no softmax; each window's queries are
correlated with its values pooled into a few groups by a learned linear map (spatial), and all channels with all
channels over the window (channel). Each residual group runs blocks whose windows grow (`hier_win_ratios` times
`base_win_size`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import swin_init
from srcluster.errors import ConfigError

# this module only holds shared parts: it names no preset of its own (the package reads this table from every module)
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {}

Size = tuple[int, int]
Variant = Literal["sir", "srf"]
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", None)


def _tokens_to_map(x: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], size[0], size[1])


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class _GatedProjection(nn.Module):
    """HiT-SR's DFE, which makes the queries and values: a narrow conv branch (1x1 down to C/5, 3x3, 1x1 up) times a
    1x1 linear branch, on the (padded) feature map."""

    def __init__(self, channels: int):
        super().__init__()
        narrow = channels // 5
        self.conv = nn.Sequential(
            nn.Conv2d(channels, narrow, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(narrow, narrow, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(narrow, channels, 1),
        )
        self.linear = nn.Conv2d(channels, channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = image.permute(0, 3, 1, 2)
        return (self.conv(x) * self.linear(x)).permute(0, 2, 3, 1)


def _layer_norm_relu_linear(features_in: int, features_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(features_in), nn.ReLU(inplace=True), nn.Linear(features_in, features_out))


class _OffsetBias(nn.Module):
    """The learned bias for each (row, column) offset between two window positions, one per head: a small MLP of the
    offset (CrossFormer's dynamic position bias, the non-residual form)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        hidden = dim // 4
        self.pos_proj = nn.Linear(2, hidden)
        self.pos1 = _layer_norm_relu_linear(hidden, hidden)
        self.pos2 = _layer_norm_relu_linear(hidden, hidden)
        self.pos3 = _layer_norm_relu_linear(hidden, num_heads)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


class _SpatialChannelCorrelation(nn.Module):
    """SCC over windows of `window` (the map must be padded to a multiple): half the output channels from spatial
    correlation, half from channel correlation, fused by `proj`."""

    offsets: torch.Tensor
    box_index: torch.Tensor

    def __init__(self, dim: int, base_window: Size, window: Size, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        # values are pooled into groups laid out like a base window: `group` rows x columns of `stride`-sized cells
        self.group = (min(window[0], base_window[0]), min(window[1], base_window[1]))
        self.stride = (window[0] // self.group[0], window[1] // self.group[1])
        # the spatial correlation divides by the head width itself, not its square root
        self.head_width = dim // (2 * num_heads)
        self.qv = _GatedProjection(dim)
        self.proj = nn.Linear(dim, dim)
        self.spatial_linear = nn.Linear(self.stride[0] * self.stride[1], 1)
        self.pos = _OffsetBias(dim // 4, num_heads)
        self._build_offset_tables()

    def _build_offset_tables(self) -> None:
        height, width = self.window
        rows = torch.arange(1 - height, height, dtype=torch.float32)
        cols = torch.arange(1 - width, width, dtype=torch.float32)
        # every (row, column) offset, row-major: the input of the bias MLP
        self.register_buffer("offsets", torch.cartesian_prod(rows, cols), persistent=False)
        # redux averages each query's bias over the keys of a value group; for a group whose top-left key is
        # (gy*sy, gx*sx), that is the mean of the bias table over the sy x sx offsets ending at
        # (qy - gy*sy, qx - gx*sx), so one box average of the table and a gather give it (redux gathers the full
        # L x L bias first: 4096^2 entries per head for a 64x64 window). Index into the box-averaged table, (L, groups):
        (sy, sx), (gy, gx) = self.stride, self.group
        query_y, query_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        group_y, group_x = torch.meshgrid(torch.arange(gy) * sy, torch.arange(gx) * sx, indexing="ij")
        box_y = query_y.reshape(-1, 1) - group_y.reshape(1, -1) + height - sy
        box_x = query_x.reshape(-1, 1) - group_x.reshape(1, -1) + width - sx
        self.register_buffer("box_index", box_y * (2 * width - sx) + box_x, persistent=False)

    def _group_bias(self) -> torch.Tensor:
        """(heads, L, groups): each query's position bias to each value group."""
        height, width = self.window
        table = self.pos(self.offsets).t().reshape(self.num_heads, 2 * height - 1, 2 * width - 1)
        boxed = F.avg_pool2d(table, self.stride, stride=1) if self.stride != (1, 1) else table
        return boxed.flatten(1)[:, self.box_index]

    def _spatial(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        (gy, gx), (sy, sx) = self.group, self.stride
        cells = rearrange(v, "b n (gy sy gx sx) c -> b n (gy gx) c (sy sx)", gy=gy, sy=sy, gx=gx, sx=sx)
        pooled = self.spatial_linear(cells).squeeze(-1)  # (B, heads, groups, c)
        correlation = q @ pooled.transpose(-2, -1) / self.head_width + self._group_bias()
        return rearrange(correlation @ pooled, "b n l c -> b l (n c)")

    @staticmethod
    def _channel(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # all heads as one: a (channels x channels) correlation over the window's positions
        q, v = (rearrange(t, "b n l c -> b l (n c)") for t in (q, v))
        correlation = q.transpose(-2, -1) @ v / q.shape[1]
        return v @ correlation.transpose(-2, -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) with H, W multiples of the window -> (B, H, W, C)."""
        height, width = image.shape[1] // self.window[0], image.shape[2] // self.window[1]
        windows = rearrange(
            self.qv(image), "b (h wy) (w wx) c -> (b h w) (wy wx) c", wy=self.window[0], wx=self.window[1]
        )
        q, v = rearrange(windows, "b l (two n c) -> two b n l c", two=2, n=self.num_heads)
        fused = torch.cat([self._spatial(q, v), self._channel(q, v)], dim=-1)
        out = rearrange(
            fused, "(b h w) (wy wx) c -> b (h wy) (w wx) c", h=height, w=width, wy=self.window[0], wx=self.window[1]
        )
        return self.proj(out)


class _MLP(nn.Module):
    """HiT-SIR's feed-forward: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _DepthwiseGELU(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.depthwise_conv = nn.Sequential(nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden), nn.GELU())

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return _map_to_tokens(self.depthwise_conv(_tokens_to_map(x, size)))


class _ConvMLP(nn.Module):
    """HiT-SRF's feed-forward: Linear, GELU, plus a depthwise 5x5 conv + GELU of that, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = _DepthwiseGELU(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        hidden = self.act(self.fc1(x))
        return self.fc2(hidden + self.dwconv(hidden, size))


def _pad_to_window(image: torch.Tensor, window: Size, variant: Variant) -> torch.Tensor:
    """(B, C, H, W) reflect-padded at the bottom/right to multiples of `window`.

    A reflect pad must be smaller than the side it reflects. HiT-SIR pads once (so a window over twice the side fails,
    as in redux); HiT-SRF, when either side needs that much, first reflects both sides by side-1, then pads (or crops)
    the rest, which reaches the same final size."""
    height, width = image.shape[-2:]
    need_h, need_w = (-height) % window[0], (-width) % window[1]
    if variant == "srf" and (need_h >= height or need_w >= width):
        image = F.pad(image, (0, width - 1, 0, height - 1), "reflect")
        need_h, need_w = need_h - (height - 1), need_w - (width - 1)
    return F.pad(image, (0, need_w, 0, need_h), "reflect")


class _HierarchicalBlock(nn.Module):
    """SCC over windows of one size, post-normalised, then the feed-forward (also post-normalised); both residual."""

    def __init__(self, dim: int, num_heads: int, base_window: Size, window: Size, mlp_ratio: float, variant: Variant):
        super().__init__()
        larger = window[0] > base_window[0] and window[1] > base_window[1]
        if larger and (window[0] % base_window[0] or window[1] % base_window[1]):
            raise ConfigError(
                f"network_g.hier_win_ratios: window {window} is larger than but no multiple of base_win_size "
                f"{base_window}"
            )
        self.window = window
        self.variant: Variant = variant
        self.norm1 = nn.LayerNorm(dim)
        self.correlation = _SpatialChannelCorrelation(dim, base_window, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        feed_forward = _ConvMLP if variant == "srf" else _MLP
        self.mlp = feed_forward(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        height, width = size
        padded = _pad_to_window(_tokens_to_map(x, size), self.window, self.variant).permute(0, 2, 3, 1)
        mixed = self.correlation(padded)[:, :height, :width, :].reshape(x.shape)
        x = x + self.norm1(mixed)
        return x + self.norm2(self.mlp(x, size))


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, padding=1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, padding=1),
        )
    raise ConfigError(f"network_g.resi_connection: {resi_connection!r} is not one of '1conv', '3conv'")


class _BlockStack(nn.Module):
    """Blocks whose windows grow by `hier_win_ratios` (redux's BasicLayer: state keys `blocks.<i>`)."""

    def __init__(self, blocks: list[_HierarchicalBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


class _ResidualGroup(nn.Module):
    """Redux's RHTB: the block stack, a conv over the map, plus the input."""

    def __init__(self, blocks: list[_HierarchicalBlock], dim: int, resi_connection: str):
        super().__init__()
        self.residual_group = _BlockStack(blocks)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        return _map_to_tokens(self.conv(_tokens_to_map(self.residual_group(x, size), size))) + x


class _TokenNorm(nn.Module):
    """Redux's PatchEmbed with patch_norm: flattens to tokens and layer-normalises them (state key `norm`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_map_to_tokens(x))


def _pixel_shuffle_upsampler(scale: int, channels: int) -> nn.Sequential:
    if scale & (scale - 1) == 0:
        doublings = scale.bit_length() - 1
        steps = [(nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)) for _ in range(doublings)]
        return nn.Sequential(*(layer for step in steps for layer in step))
    if scale == 3:
        return nn.Sequential(nn.Conv2d(channels, 9 * channels, 3, padding=1), nn.PixelShuffle(3))
    raise ConfigError(f"scale: HiT-SR's pixelshuffle upsampler takes scales 2^n and 3, not {scale}")


class HiTNetwork(nn.Module):
    """HiT-SR: a conv stem, residual groups of hierarchical SCC blocks at LR resolution, and redux's upsamplers
    ('pixelshuffledirect', 'pixelshuffle', 'nearest+conv' (x4 only), or None for same-size restoration)."""

    # redux's internal constants: the stem width of the conv upsamplers, and the MLP ratio (redux's hit_* presets
    # take `expansion_factor` but never pass it on, so every redux HiT-SR net has ratio 2)
    num_feat = 64
    mlp_ratio = 2.0
    mean: torch.Tensor

    def __init__(
        self,
        *,
        variant: Variant,
        scale: int,
        in_chans: int,
        base_win_size: Sequence[int],
        img_range: float,
        depths: Sequence[int],
        embed_dim: int,
        num_heads: Sequence[int],
        resi_connection: str,
        hier_win_ratios: Sequence[float],
        upsampler: str | None,
    ):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of {', '.join(map(repr, UPSAMPLERS))}")
        if upsampler == "nearest+conv" and scale != 4:
            raise ConfigError(f"scale: HiT-SR's 'nearest+conv' upsampler is x4 only, not x{scale}")
        if len(num_heads) < len(depths):
            raise ConfigError(f"network_g.num_heads: {len(num_heads)} values for {len(depths)} depths")
        if any(embed_dim % (2 * heads) for heads in num_heads[: len(depths)]):
            raise ConfigError(f"network_g.embed_dim: {embed_dim} must divide by twice every num_heads")
        if max(depths, default=0) > len(hier_win_ratios):
            raise ConfigError(f"network_g.hier_win_ratios: {len(hier_win_ratios)} ratios for a depth of {max(depths)}")
        self.scale = scale
        self.img_range = img_range
        self.upsampler = upsampler
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)

        base = (int(base_win_size[0]), int(base_win_size[1]))
        windows = [(int(base[0] * ratio), int(base[1] * ratio)) for ratio in hier_win_ratios]
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        self.patch_embed = _TokenNorm(embed_dim)
        self.layers = nn.ModuleList(
            _ResidualGroup(
                [
                    _HierarchicalBlock(embed_dim, num_heads[group], base, windows[i], self.mlp_ratio, variant)
                    for i in range(depth)
                ],
                embed_dim,
                resi_connection,
            )
            for group, depth in enumerate(depths)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        self._build_reconstruction(upsampler, scale, embed_dim, in_chans)
        self.apply(swin_init)

    def _build_reconstruction(self, upsampler: str | None, scale: int, embed_dim: int, out_chans: int) -> None:
        feat = self.num_feat
        if upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, scale**2 * out_chans, 3, padding=1), nn.PixelShuffle(scale)
            )
            return
        if upsampler is None:
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, padding=1)
            return
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, padding=1), nn.LeakyReLU(inplace=True))
        if upsampler == "pixelshuffle":
            self.upsample = _pixel_shuffle_upsampler(scale, feat)
        else:  # nearest+conv
            self.conv_up1 = nn.Conv2d(feat, feat, 3, padding=1)
            self.conv_up2 = nn.Conv2d(feat, feat, 3, padding=1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, padding=1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self.conv_last = nn.Conv2d(feat, out_chans, 3, padding=1)

    def _deep_features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, size)
        return self.conv_after_body(_tokens_to_map(self.norm(tokens), size)) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        features = self._deep_features(self.conv_first(x))
        if self.upsampler == "pixelshuffledirect":
            x = self.upsample(features)
        elif self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(features)))
        elif self.upsampler == "nearest+conv":
            x = self.conv_before_upsample(features)
            x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
            x = self.conv_last(self.lrelu(self.conv_hr(x)))
        else:
            x = x + self.conv_last(features)
        return x / self.img_range + mean


class ReduxHiT(HiTNetwork):
    """HiT-SR with redux's `hit_sir` / `hit_srf` options and defaults, the variant named by the subclass (`VARIANT`).
    `expansion_factor` is accepted and, as in redux, unused (the MLP ratio stays 2); `img_size` is likewise unused
    (any input size works)."""

    VARIANT: Variant

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        img_size: int = 64,
        base_win_size: Sequence[int] = (8, 8),
        img_range: float = 1.0,
        depths: Sequence[int] = (6, 6, 6, 6),
        embed_dim: int = 60,
        num_heads: Sequence[int] = (6, 6, 6, 6),
        expansion_factor: int = 2,
        resi_connection: str = "1conv",
        hier_win_ratios: Sequence[float] = (0.5, 1, 2, 4, 6, 8),
        upsampler: str | None = "pixelshuffledirect",
    ):
        super().__init__(
            variant=self.VARIANT,
            scale=scale,
            in_chans=in_chans,
            base_win_size=base_win_size,
            img_range=img_range,
            depths=depths,
            embed_dim=embed_dim,
            num_heads=num_heads,
            resi_connection=resi_connection,
            hier_win_ratios=hier_win_ratios,
            upsampler=upsampler,
        )
