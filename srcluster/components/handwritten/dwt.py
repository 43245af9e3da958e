"""DWT (Dilated Window Transformer), as traiNNer-redux builds it: a SwinIR-style body whose blocks attend within
plain, shifted or dilated windows. Module names follow redux (`layers.N.residual_group.blocks.M.attn...`, persistent
`relative_position_index` and `attn_mask` buffers) so its state dicts load strictly."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from einops import rearrange
from spandrel.util.timm import DropPath, trunc_normal_
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from srcluster.components.handwritten._layers import swin_init
from srcluster.errors import ConfigError

# How a block partitions its tokens (redux's `layer_kind`): -1 windows after a cyclic shift, 0 plain windows,
# k > 0 the image split into k x k partitions, each attended in dilated windows (every (side/k/window)-th token)
SHIFTED, PLAIN = -1, 0
_KINDS = (SHIFTED, PLAIN, 1, 2)
_DEFAULT_KINDS = [[0, -1] * 3, [0, -1] * 3, [0, 2] * 3, [0, 2] * 3, [0, 1] * 3, [0, 1] * 3]


def _to_windows(x: torch.Tensor, window: int, kind: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window², C), windows in redux's order (the attention mask relies on it)."""
    if kind > 0:
        return rearrange(x, "b (g i a) (k j e) c -> (b g k a e) (i j) c", g=kind, k=kind, i=window, j=window)
    return rearrange(x, "b (a i) (e j) c -> (b a e) (i j) c", i=window, j=window)


def _from_windows(windows: torch.Tensor, window: int, kind: int, height: int, width: int) -> torch.Tensor:
    if kind > 0:
        a, e = height // (kind * window), width // (kind * window)
        return rearrange(windows, "(b g k a e) (i j) c -> b (g i a) (k j e) c", g=kind, k=kind, i=window, a=a, e=e)
    return rearrange(windows, "(b a e) (i j) c -> b (a i) (e j) c", i=window, a=height // window, e=width // window)


def _attention_mask(
    height: int, width: int, window: int, shift: int, kind: int, device: torch.device | None
) -> torch.Tensor:
    """(windows, window², window²): -100 between tokens that the cyclic shift brought together from different image
    regions, else 0. Same quirks as redux: for dilated kinds the regions are read in contiguous windows of each
    partition (not the dilated ones attention uses), and a zero shift labels the whole image as one region."""
    regions = torch.zeros(1, height, width, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, cols, :] = label
    if kind > 0:
        labels = rearrange(regions, "1 (g a i) (k e j) 1 -> (g k a e) (i j)", g=kind, k=kind, i=window, j=window)
    else:
        labels = _to_windows(regions, window, PLAIN).squeeze(-1)
    differs = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros_like(differs, dtype=torch.float32).masked_fill(differs, -100.0)


class _WindowAttention(nn.Module):
    """Multi-head self-attention within square windows, with a learned bias per relative position."""

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool, qk_scale: float | None, attn_drop: float,
                 proj_drop: float):  # fmt: skip
        super().__init__()
        self.heads = heads
        self.scale = qk_scale or (dim // heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        row_offset = rows[:, None] - rows[None, :] + window - 1
        col_offset = cols[:, None] - cols[None, :] + window - 1
        self.register_buffer("relative_position_index", row_offset * (2 * window - 1) + col_offset)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = x.shape[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.heads).permute(2, 0, 1)
        bias = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)
        # windows that share a mask row go side by side with the heads, so one (1, windows*heads, N, N) bias
        # broadcasts over the images of the batch
        per_image = bias.shape[0]
        q, k, v = rearrange(self.qkv(x), "(b w) n (three h d) -> three b (w h) n d", three=3, h=self.heads, w=per_image)
        attn_bias = bias.reshape(1, -1, tokens, tokens).to(q.dtype)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(rearrange(out, "b (w h) n d -> (b w) n (h d)", h=self.heads)))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act, self.drop = nn.GELU(), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class _DWTBlock(nn.Module):
    """Pre-norm attention over (shifted / dilated) windows, then an MLP, each with a residual."""

    attn_mask: torch.Tensor | None

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, shift: int, kind: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None, drop: float, attn_drop: float,
                 drop_path: float, norm_layer: type[nn.Module]):  # fmt: skip
        super().__init__()
        if min(resolution) <= window:  # the whole (training) image is one window: nothing to shift
            window, shift = min(resolution), 0
        self.resolution, self.window, self.shift, self.kind = resolution, window, shift, kind
        self.norm1 = norm_layer(dim)
        self.attn = _WindowAttention(dim, window, heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)
        # redux keeps the mask for the training size as a (persistent) buffer; plain-window blocks have none
        mask = None if kind == PLAIN else _attention_mask(*resolution, window, shift, kind, None)
        self.register_buffer("attn_mask", mask)

    def _mask(self, size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        if size == self.resolution:
            return self.attn_mask
        if self.shift == 0:  # one region: the mask redux would build here is all zeros
            return None
        # at other sizes redux builds a shifted-window mask even for plain blocks
        return _attention_mask(*size, self.window, self.shift, self.kind, device)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        height, width = size
        shortcut = x
        image = self.norm1(x).view(x.shape[0], height, width, -1)
        roll = self.shift if self.kind != PLAIN else 0
        if roll:
            image = torch.roll(image, shifts=(-roll, -roll), dims=(1, 2))
        windows = self.attn(_to_windows(image, self.window, self.kind), self._mask(size, x.device))
        image = _from_windows(windows, self.window, self.kind, height, width)
        if roll:
            image = torch.roll(image, shifts=(roll, roll), dims=(1, 2))
        x = shortcut + self.drop_path(image.reshape(x.shape))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":  # a bottleneck at a quarter of the channels, to save parameters
        lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        quarter = dim // 4
        return nn.Sequential(nn.Conv2d(dim, quarter, 3, 1, 1), lrelu, nn.Conv2d(quarter, quarter, 1, 1, 0), lrelu,
                             nn.Conv2d(quarter, dim, 3, 1, 1))  # fmt: skip
    raise ConfigError(f"network_g.resi_connection: {resi_connection!r} is not one of 1conv, 3conv")


class _Blocks(nn.Module):
    """redux's AttentionBlock: only a container, so that the blocks are named `residual_group.blocks.N`."""

    def __init__(self, blocks: list[_DWTBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class _ResidualGroup(nn.Module):
    """redux's RTG: blocks on the token sequence, a convolution on the image, plus the group's input."""

    def __init__(self, blocks: list[_DWTBlock], dim: int, resi_connection: str, use_checkpoint: bool):
        super().__init__()
        self.residual_group = _Blocks(blocks)
        self.conv = _residual_conv(dim, resi_connection)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        tokens = x
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.residual_group.blocks:
            # checkpointing keeps only each block's input; its activations are recomputed in the backward pass
            tokens = checkpoint(block, tokens, size, use_reentrant=False) if recompute else block(tokens, size)
        image = rearrange(tokens, "b (h w) c -> b c h w", h=size[0], w=size[1])
        return rearrange(self.conv(image), "b c h w -> b (h w) c") + x


def _upsample(scale: int, feat: int) -> nn.Sequential:
    if scale & (scale - 1) == 0:
        steps = [(nn.Conv2d(feat, 4 * feat, 3, 1, 1), nn.PixelShuffle(2)) for _ in range(int(math.log2(scale)))]
        return nn.Sequential(*[module for step in steps for module in step])
    return nn.Sequential(nn.Conv2d(feat, 9 * feat, 3, 1, 1), nn.PixelShuffle(3))  # scale 3 (checked)


class DWT(nn.Module):
    """Dilated Window Transformer. Defaults are redux's `dwt` preset (its `dwt_s` differs only in `window_size`).

    `img_size` is the training LR size: masks for it are stored in the state dict; other sizes build theirs on the fly.
    Inputs are reflect-padded to a multiple of 2 * window_size and the output cropped back, as redux does."""

    mean: torch.Tensor

    def __init__(self, scale: int = 4, img_size: int | Sequence[int] = 64, patch_size: int | Sequence[int] = 1,
                 in_chans: int = 3, embed_dim: int = 180, depths: Sequence[int] = (6,) * 6,
                 num_heads: Sequence[int] = (6,) * 6, window_size: int = 16, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, norm_layer: type[nn.Module] = nn.LayerNorm,
                 ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False, img_range: float = 1.0,
                 upsampler: str = "pixelshuffle", resi_connection: str = "1conv",
                 layer_kinds: Sequence[Sequence[int]] = _DEFAULT_KINDS):  # fmt: skip
        super().__init__()
        _check_options(scale, embed_dim, depths, num_heads, layer_kinds, upsampler)
        size, patch = _pair(img_size), _pair(patch_size)
        resolution = (size[0] // patch[0], size[1] // patch[1])
        self.scale, self.window_size, self.img_range, self.ape = scale, window_size, img_range, ape
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)  # redux: not saved
        feat = 64

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        # redux's `patch_embed` only flattens the image into tokens, then (patch_norm) normalises them
        self.patch_embed = nn.Sequential(OrderedDict(norm=norm_layer(embed_dim)) if patch_norm else OrderedDict())
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        # deeper blocks drop more often (on the CPU: a list of numbers, whatever the default device)
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for group, depth in enumerate(depths):
            first = sum(depths[:group])
            blocks = [
                _DWTBlock(embed_dim, resolution, num_heads[group], window_size, 0 if i % 2 == 0 else window_size // 2,
                          layer_kinds[group][i], mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                          drop_paths[first + i], norm_layer)
                for i in range(depth)
            ]  # fmt: skip
            self.layers.append(_ResidualGroup(blocks, embed_dim, resi_connection, use_checkpoint))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = _upsample(scale, feat)
        self.conv_last = nn.Conv2d(feat, in_chans, 3, 1, 1)
        self.apply(swin_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The deep features of `conv_first`'s output (a padded image), as redux's `forward_features`."""
        size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(rearrange(x, "b c h w -> b (h w) c"))
        if self.ape:
            tokens = tokens + self.absolute_pos_embed
        tokens = self.pos_drop(tokens)
        for layer in self.layers:
            tokens = layer(tokens, size)
        return rearrange(self.norm(tokens), "b (h w) c -> b c h w", h=size[0], w=size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        multiple = self.window_size * 2  # dilated blocks split the image in 2 x 2 partitions of whole windows
        x = F.pad(x, (0, -width % multiple, 0, -height % multiple), "reflect")
        mean = self.mean.type_as(x)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.img_range + mean
        return x[:, :, : height * self.scale, : width * self.scale]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _check_options(scale: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                   layer_kinds: Sequence[Sequence[int]], upsampler: str) -> None:  # fmt: skip
    if scale & (scale - 1) and scale != 3:
        raise ConfigError(f"scale: DWT upscales by a power of 2 or by 3, not {scale}")
    if upsampler != "pixelshuffle":  # redux builds the others' modules but its forward never runs them
        raise ConfigError(f"network_g.upsampler: DWT upscales only with 'pixelshuffle', not {upsampler!r}")
    if len(num_heads) < len(depths) or len(layer_kinds) < len(depths):
        raise ConfigError("network_g.depths: num_heads and layer_kinds need an entry for each group of depths")
    for group, depth in enumerate(depths):
        if embed_dim % num_heads[group]:
            raise ConfigError(f"network_g.num_heads: {num_heads[group]} heads do not divide embed_dim {embed_dim}")
        kinds = layer_kinds[group]
        if len(kinds) < depth or any(kind not in _KINDS for kind in kinds[:depth]):
            raise ConfigError(
                f"network_g.layer_kinds: group {group} needs {depth} entries, each -1 (shifted windows), 0 (windows) "
                f"or 1 / 2 (dilated windows in 1x1 / 2x2 partitions), not {list(kinds)}"
            )


# redux's preset names -> (class, preset options); `components/archs.py` registers them
REDUX_PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "dwt": ("DWT", {}),
    "dwt_s": ("DWT", {"window_size": 8}),
}
