"""HiT-SNG (HiT-SR's N-gram variant), as traiNNer-redux builds it: its module names (`layers.0.residual_group.blocks.0.
correlation.ngram_window_partition.ngram_context...`), so its state dicts load strictly, and the numbers it computes.

The network is SwinIR-shaped: a shallow conv, residual groups of hierarchical transformer blocks (each block of a
group works on a window size `base_win_size * hier_win_ratios[i]`), a conv after the body, and an upsampler. A block
replaces attention by spatial-channel correlation (no softmax): tokens are correlated with a few pooled "block" tokens
of their window (spatial) and channels with channels (channel), after each window got a context vector from an
attention over its 2x2 neighbourhood of window summaries (the N-gram context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from spandrel.util.timm import trunc_normal_
from torch import nn
from torch.nn import functional as F

from srcluster.components.handwritten._layers import swin_init
from srcluster.errors import ConfigError

_NGRAM = 2  # redux's SCC always looks at 2x2 neighbourhoods of windows
_UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "none")


def _reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right by reflection up to multiples of `multiple`.

    One reflection adds at most size - 1 rows, so a short side is reflected again from its new, longer self: two
    steps are what redux does when one is not enough; further steps only serve sizes redux cannot run at all."""
    for dim in (2, 3):
        missing = (-x.shape[dim]) % multiple
        while missing > 0:
            if x.shape[dim] < 2:
                raise ValueError(f"HiT-SNG: an input side of {x.shape[dim]} pixel cannot be padded by reflection")
            step = min(missing, x.shape[dim] - 1)
            x = F.pad(x, (0, step, 0, 0) if dim == 3 else (0, 0, 0, step), mode="reflect")
            missing -= step
    return x


class _DualFeatureExtraction(nn.Module):
    """A narrow conv branch (1x1, 3x3, 1x1 with leaky ReLUs) gated by a 1x1 projection: features for q and v."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        narrow = dim // 5
        self.conv = nn.Sequential(
            nn.Conv2d(dim, narrow, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(narrow, narrow, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(narrow, out_dim, 1),
        )  # fmt: skip
        self.linear = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.linear(x)


def _position_stage(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, out))


class _PositionBiasMLP(nn.Module):
    """Maps a 2-D offset (dy, dx) to one bias per head, through three normalised stages (no residuals in HiT-SNG)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        width = dim // 4
        self.pos_proj = nn.Linear(2, width)
        self.pos1 = _position_stage(width, width)
        self.pos2 = _position_stage(width, width)
        self.pos3 = _position_stage(width, num_heads)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))


def _relative_index(height: int, width: int) -> torch.Tensor:
    """(height*width, height*width): for query p and key q of a window, the row of (dy, dx) = p - q in a table of
    (2*height - 1) x (2*width - 1) offsets."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = ys.flatten()[:, None] - ys.flatten()[None, :] + height - 1
    dx = xs.flatten()[:, None] - xs.flatten()[None, :] + width - 1
    return dy * (2 * width - 1) + dx


class _NGramAttention(nn.Module):
    """Softmax attention among the n*n window summaries of one neighbourhood, with a learnt relative-position bias."""

    def __init__(self, dim: int, num_heads: int, ngram: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ngram - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_index(ngram, ngram))  # persistent, as in redux
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        count, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(count, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        index = self.get_buffer("relative_position_index")
        bias = self.relative_position_bias_table[index.flatten()].view(length, length, -1).permute(2, 0, 1)
        weights = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(count, length, dim))


class _NGramContext(nn.Module):
    """One context vector per window: each window is summarised (per channel pair, by a strided conv), and each
    summary attends over its 2x2 neighbourhood, once looking down-right and once up-left (the grid extended at that
    side by reflection); the two directions are merged by a 1x1 conv."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.unigram_embed = nn.Conv2d(2, 1, kernel_size=window, stride=window)
        self.ngram_attn = _NGramAttention(dim // 2, num_heads, _NGRAM)
        self.merge = nn.Conv2d(dim, dim, 1)

    @staticmethod
    def _extend(grid: torch.Tensor, forward: bool) -> torch.Tensor:
        """Add n-1 rows and columns after (forward) or before (backward) the grid: a reflection that skips the edge
        row. Rows first, then columns over the extended rows (so the new corner comes from the new rows)."""
        for dim in (2, 3):
            if forward:
                grid = torch.cat([grid, grid.narrow(dim, grid.shape[dim] - _NGRAM, _NGRAM - 1)], dim=dim)
            else:
                grid = torch.cat([grid.narrow(dim, 1, _NGRAM - 1), grid], dim=dim)
        return grid

    def _neighbourhood_attention(self, grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(B, C, rows+n-1, cols+n-1) -> (B, C, rows, cols): attention within each n x n neighbourhood (row-major
        token order), averaged over the neighbourhood."""
        shifted = [grid[:, :, dy : dy + rows, dx : dx + cols] for dy in range(_NGRAM) for dx in range(_NGRAM)]
        tokens = rearrange(torch.stack(shifted, dim=-1), "b c h w t -> (b h w) t c")
        context = self.ngram_attn(tokens).mean(dim=1)
        return rearrange(context, "(b h w) c -> b c h w", h=rows, w=cols)

    def forward(self, qv: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, H/window, W/window, D)."""
        batch, dim, height, width = qv.shape
        rows, cols = height // self.window, width // self.window
        # channels (2k, 2k+1) are summarised together: D/2 summaries per window
        unigrams = self.unigram_embed(qv.reshape(batch * dim // 2, 2, height, width)).view(batch, dim // 2, rows, cols)
        ahead = self._neighbourhood_attention(self._extend(unigrams, forward=True), rows, cols)
        behind = self._neighbourhood_attention(self._extend(unigrams, forward=False), rows, cols)
        return self.merge(torch.cat([ahead, behind], dim=1)).permute(0, 2, 3, 1)


class _NGramWindowPartition(nn.Module):
    """Cut (B, D, H, W) into windows of tokens, (B*windows, window*window, D), each plus its window's context."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.ngram_context = _NGramContext(dim, window, num_heads)

    def forward(self, qv: torch.Tensor) -> torch.Tensor:
        context = self.ngram_context(qv)
        windows = rearrange(qv, "b d (h p) (w q) -> b h w (p q) d", p=self.window, q=self.window)
        return rearrange(windows + context.unsqueeze(3), "b h w t d -> (b h w) t d")


class _SpatialChannelCorrelation(nn.Module):
    """Linear (softmax-free) correlation of a window's q and v: spatially, each token against the window's pooled
    blocks (plus a position bias from an MLP over offsets); and over channels. The two halves are concatenated and
    projected back."""

    def __init__(self, dim: int, base_window: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.head_dim = dim // (2 * num_heads)
        block_count = min(window, base_window)  # blocks per side, each of `block` x `block` tokens
        self.block = window // block_count
        self.qv = _DualFeatureExtraction(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.spatial_linear = nn.Linear(self.block * self.block, 1)  # pools the tokens of a block into one
        self.ngram_window_partition = _NGramWindowPartition(dim, window, num_heads)
        self.pos = _PositionBiasMLP(dim // 4, num_heads)
        self._bias_tables(window, block_count)

    def _bias_tables(self, window: int, block_count: int) -> None:
        """The offsets the position MLP reads, and where each (token, block) pair finds its bias after the per-offset
        biases are box-averaged over a block (the mean of the biases of the block's tokens)."""
        span = torch.arange(1 - window, window, dtype=torch.float32)
        offsets = torch.stack(torch.meshgrid(span, span, indexing="ij"), dim=-1).reshape(-1, 2)
        self.register_buffer("offsets", offsets, persistent=False)
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        starts = torch.arange(block_count) * self.block  # first row (column) of each block
        # a box-average of size `block` starting at offset (p - start - block + 1) covers p - (start .. start+block-1)
        rows = ys.flatten()[:, None, None] - starts[None, :, None] + window - self.block
        cols = xs.flatten()[:, None, None] - starts[None, None, :] + window - self.block
        index = rows * (2 * window - self.block) + cols  # (tokens, block rows, block cols)
        self.register_buffer("block_bias_index", index.flatten(1), persistent=False)

    def _spatial_bias(self) -> torch.Tensor:
        """(heads, tokens, blocks)."""
        side = 2 * self.window - 1
        per_offset = self.pos(self.get_buffer("offsets")).t().reshape(1, self.num_heads, side, side)
        boxed = F.avg_pool2d(per_offset, self.block, stride=1)[0]
        return boxed.flatten(1)[:, self.get_buffer("block_bias_index")]

    def _spatial(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self.block
        blocks = rearrange(v, "n k (i a j c) d -> n k (i j) d (a c)", a=b, c=b, i=self.window // b, j=self.window // b)
        blocks = self.spatial_linear(blocks).squeeze(-1)  # (windows, heads, blocks, head_dim)
        correlation = q @ blocks.transpose(-2, -1) / self.head_dim + self._spatial_bias()
        return rearrange(correlation @ blocks, "n k t d -> n t (k d)")

    @staticmethod
    def _channel(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, v = (rearrange(t, "n k t d -> n t (k d)") for t in (q, v))
        correlation = q.transpose(-2, -1) @ v / q.shape[1]
        return (correlation @ v.transpose(-2, -1)).transpose(-2, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W), H and W multiples of 2 windows -> (B, H, W, D)."""
        _, _, height, width = x.shape
        windows = self.ngram_window_partition(self.qv(x))
        q, v = rearrange(windows, "n t (s k d) -> s n k t d", s=2, k=self.num_heads).unbind(0)
        mixed = self.proj(torch.cat([self._spatial(q, v), self._channel(q, v)], dim=-1))
        rows, cols = height // self.window, width // self.window
        return rearrange(mixed, "(b h w) (p q) d -> b (h p) (w q) d", h=rows, w=cols, p=self.window)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _HierarchicalBlock(nn.Module):
    """Correlation, then MLP, each normalised after (post-norm) and added to its input. The image is padded by
    reflection to whole pairs of windows (the N-gram context needs at least two per side) and cropped back."""

    def __init__(self, dim: int, num_heads: int, base_window: int, window: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.correlation = _SpatialChannelCorrelation(dim, base_window, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        height, width = size
        image = rearrange(x, "b (h w) d -> b d h w", h=height, w=width)
        mixed = self.correlation(_reflect_pad_to_multiple(image, 2 * self.window))
        x = x + self.norm1(mixed[:, :height, :width].flatten(1, 2))
        return x + self.norm2(self.mlp(x))


class _BlockStack(nn.Module):
    def __init__(self, blocks: list[_HierarchicalBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, padding=1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, padding=1),
    )  # fmt: skip


class _ResidualGroup(nn.Module):
    """Blocks of growing windows, then a conv on the image, plus the group's input."""

    def __init__(self, blocks: list[_HierarchicalBlock], dim: int, resi_connection: str):
        super().__init__()
        self.residual_group = _BlockStack(blocks)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        image = rearrange(self.residual_group(x, size), "b (h w) d -> b d h w", h=size[0], w=size[1])
        return self.conv(image).flatten(2).transpose(1, 2) + x


class _PatchNorm(nn.Module):
    """redux's patch embedding at patch size 1: only a LayerNorm over the tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _check_options(
    scale: int, base_win_size: Sequence[int], embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
    resi_connection: str, hier_win_ratios: Sequence[float], upsampler: str,
) -> list[int]:  # fmt: skip
    """Refuse what redux's network would fail on at its first forward (or build wrongly); returns the window sizes."""
    if len(base_win_size) != 2 or base_win_size[0] != base_win_size[1]:
        raise ConfigError(f"network_g.base_win_size: HiT-SNG needs a square window, not {list(base_win_size)}")
    if len(num_heads) != len(depths):
        raise ConfigError(f"network_g.num_heads: one per group of depths {list(depths)}, not {list(num_heads)}")
    for heads in num_heads:
        if heads < 1 or embed_dim % (2 * heads):
            raise ConfigError(f"network_g.embed_dim: {embed_dim} does not split into 2 x {heads} heads (num_heads)")
    if embed_dim < 16:  # its position MLP is embed_dim // 16 wide
        raise ConfigError(f"network_g.embed_dim: HiT-SNG needs at least 16 channels, not {embed_dim}")
    if max(depths, default=0) > len(hier_win_ratios):
        raise ConfigError(f"network_g.depths: a group has one block per hier_win_ratios entry ({len(hier_win_ratios)})")
    base = base_win_size[0]
    windows = [int(base * ratio) for ratio in hier_win_ratios]
    for window in windows:
        if window < 1 or (window > base and window % base):
            raise ConfigError(
                f"network_g.hier_win_ratios: window {window} must be >= 1 and, above {base}, a multiple of it"
            )
    if resi_connection not in ("1conv", "3conv"):
        raise ConfigError(f"network_g.resi_connection: {resi_connection!r} is not one of 1conv, 3conv")
    if upsampler not in _UPSAMPLERS:
        raise ConfigError(f"network_g.upsampler: {upsampler!r} is not one of {', '.join(_UPSAMPLERS)}")
    if upsampler == "pixelshuffle" and scale & (scale - 1) and scale != 3:
        raise ConfigError(f"network_g.upsampler: pixelshuffle upscales by powers of 2 and 3, not {scale}")
    if upsampler == "nearest+conv" and scale != 4:
        raise ConfigError(f"network_g.upsampler: nearest+conv upscales by 4 only, not {scale}")
    if upsampler == "none" and scale != 1:
        raise ConfigError(f"network_g.upsampler: none keeps the input size, so it needs scale 1, not {scale}")
    return windows


class HiTSNG(nn.Module):
    """HiT-SNG with redux's `hit_sng` options.

    `img_size` only sized redux's unused bookkeeping, and `expansion_factor` is dropped by redux's network (its MLPs
    are always twice `embed_dim` wide): both are accepted and have no effect, so redux's weights still fit.
    `upsampler: none` is redux's restoration mode (any other name there): a residual conv at the input size."""

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
        upsampler: str = "pixelshuffledirect",
    ):
        super().__init__()
        del img_size, expansion_factor  # see the docstring
        windows = _check_options(
            scale, base_win_size, embed_dim, depths, num_heads, resi_connection, hier_win_ratios, upsampler
        )
        self.scale = scale
        self.img_range = img_range
        self.upsampler = upsampler
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)  # not in redux's dicts

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        self.patch_embed = _PatchNorm(embed_dim)
        base = base_win_size[0]
        self.layers = nn.ModuleList(
            _ResidualGroup(
                [_HierarchicalBlock(embed_dim, heads, base, windows[i], mlp_ratio=2.0) for i in range(depth)],
                embed_dim,
                resi_connection,
            )
            for depth, heads in zip(depths, num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        self._build_tail(upsampler, scale, embed_dim, in_chans)
        self.apply(swin_init)

    def _build_tail(self, upsampler: str, scale: int, embed_dim: int, out_chans: int) -> None:
        features = 64
        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, features, 3, padding=1), nn.LeakyReLU())
        if upsampler == "pixelshuffle":
            if scale == 3:
                stages: list[nn.Module] = [nn.Conv2d(features, 9 * features, 3, padding=1), nn.PixelShuffle(3)]
            else:
                stages = [
                    module
                    for _ in range(int(math.log2(scale)))
                    for module in (nn.Conv2d(features, 4 * features, 3, padding=1), nn.PixelShuffle(2))
                ]
            self.upsample = nn.Sequential(*stages)
            self.conv_last = nn.Conv2d(features, out_chans, 3, padding=1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, scale * scale * out_chans, 3, padding=1), nn.PixelShuffle(scale)
            )
        elif upsampler == "nearest+conv":
            self.conv_up1 = nn.Conv2d(features, features, 3, padding=1)
            self.conv_up2 = nn.Conv2d(features, features, 3, padding=1)
            self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
            self.conv_last = nn.Conv2d(features, out_chans, 3, padding=1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, padding=1)

    def _deep_features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            tokens = layer(tokens, size)
        features = self.norm(tokens).transpose(1, 2).reshape(x.shape)
        return self.conv_after_body(features) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.get_buffer("mean").type_as(x)
        x = (x - mean) * self.img_range
        if self.upsampler == "none":
            out = x + self.conv_last(self._deep_features(self.conv_first(x)))
        else:
            features = self._deep_features(self.conv_first(x))
            if self.upsampler == "pixelshuffledirect":
                out = self.upsample(features)
            elif self.upsampler == "pixelshuffle":
                out = self.conv_last(self.upsample(self.conv_before_upsample(features)))
            else:
                out = self.conv_before_upsample(features)
                out = self.lrelu(self.conv_up1(F.interpolate(out, scale_factor=2, mode="nearest")))
                out = self.lrelu(self.conv_up2(F.interpolate(out, scale_factor=2, mode="nearest")))
                out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out / self.img_range + mean


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {"hit_sng": ("HiTSNG", {})}
