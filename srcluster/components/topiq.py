"""TOPIQ (Chen et al., TIP 2024): CFANet image-quality networks, full-reference and no-reference, without pyiqa/timm.

The network scores an image from ResNet50 features at five depths. Each depth's features are gated (by the feature
distance to the reference for FR, by a learned gate for NR), reduced to 256 channels, pooled to the deepest level's grid
and turned into tokens with a learned position embedding. Self-attention refines each level; the deepest level's tokens
then attend, coarse to fine, to every shallower level, and a final attention layer and MLP give one score per image.

State-dict names are those of the files traiNNer-redux (and pyiqa) load into their CFANet, so
`cfanet_fr_kadid_res50-*.pth` and `cfanet_nr_koniq_res50-*.pth` load strictly. The backbone is torchvision's ResNet50
without its classifier: its `conv1/bn1/layer1..4` names and feature maps are those of timm's `features_only` ResNet50
that redux builds. Inference only: the network is frozen and always in eval mode, so dropout is left out.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.errors import SrclusterError

FEATURE_CHANNELS = (64, 256, 512, 1024, 2048)  # ResNet50 after the stem's ReLU, then after layer1 .. layer4
TOKEN_DIM = 256
HEADS = 4
MLP_DIM = 1024  # min(4 * TOKEN_DIM, 2048), as the published networks were trained
POS_GRID = 32  # the learned position embedding is a 32x32 grid, resized to each level
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet50Features(nn.Module):
    """torchvision's ResNet50 without pooling head and classifier; returns the five feature maps listed in
    FEATURE_CHANNELS (strides 2, 4, 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        # torchvision (2+ s to import: it loads torch._dynamo) only when a TOPIQ network is built
        from torchvision.models import resnet50

        net = resnet50()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        out = [stem]
        h = self.maxpool(stem)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = stage(h)
            out.append(h)
        return out


class FeedForward(nn.Module):
    """The parts shared by both attention blocks: `linear1` -> GELU -> `linear2`."""

    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(TOKEN_DIM, MLP_DIM)
        self.linear2 = nn.Linear(MLP_DIM, TOKEN_DIM)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SelfAttention(FeedForward):
    """Pre-norm transformer encoder layer on (tokens, batch, dim)."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(TOKEN_DIM, HEADS)
        self.norm1 = nn.LayerNorm(TOKEN_DIM)
        self.norm2 = nn.LayerNorm(TOKEN_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttention(FeedForward):
    """Pre-norm layer where the query tokens attend to another level's tokens (`context`), also normalised."""

    def __init__(self):
        super().__init__()
        # never run: the trained files hold a self-attention here, so it must exist for them to load strictly
        self.self_attn = nn.MultiheadAttention(TOKEN_DIM, HEADS)
        self.multihead_attn = nn.MultiheadAttention(TOKEN_DIM, HEADS)
        self.norm1 = nn.LayerNorm(TOKEN_DIM)
        self.norm2 = nn.LayerNorm(TOKEN_DIM)
        self.norm3 = nn.LayerNorm(TOKEN_DIM)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.norm2(context)
        x = x + self.multihead_attn(self.norm1(x), context, context, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class OneLayer(nn.Module):
    """A stack of one attention layer: the files name these `<block>.layers.0.*`."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList([layer])

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x, *context)


def distance_gate(channels: int) -> nn.Sequential:
    """FR: a per-pixel weight in (0, 1) from the feature distance between image and reference."""
    return nn.Sequential(
        nn.Conv2d(channels, 64, 1),
        nn.GELU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(64, 1, 3, padding=1),
        nn.Sigmoid(),
    )


class SelfGate(nn.Module):
    """NR: the features split in two halves after a 1x1 conv; one half, activated, is weighted per pixel by a gate
    computed from the other."""

    def __init__(self, channels: int):
        super().__init__()
        self.splitconv = nn.Conv2d(channels, 2 * channels, 1)
        self.weight_blk = distance_gate(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, gate_input = self.splitconv(x).chunk(2, dim=1)
        return F.gelu(values) * self.weight_blk(gate_input)


class CFANet(nn.Module):
    """TOPIQ's network. `forward(image, reference)` for full reference (`full_reference=True`), `forward(image)`
    otherwise; images (B, 3, H, W) float RGB in [0, 1]; returns (B,) scores, higher is better."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, full_reference: bool = True):
        super().__init__()
        self.full_reference = full_reference
        self.semantic_model = ResNet50Features()
        # FR levels see [image, reference, distance] features stacked: three times the backbone's channels
        widths = [3 * c if full_reference else c for c in FEATURE_CHANNELS]
        self.weight_pool = nn.ModuleList(
            [distance_gate(c) if full_reference else SelfGate(c) for c in FEATURE_CHANNELS]
        )
        self.dim_reduce = nn.ModuleList([nn.Sequential(nn.Conv2d(w, TOKEN_DIM, 1), nn.GELU()) for w in widths])
        self.sa_attn_blks = nn.ModuleList([OneLayer(SelfAttention()) for _ in FEATURE_CHANNELS])
        self.attn_blks = nn.ModuleList([OneLayer(CrossAttention()) for _ in FEATURE_CHANNELS[1:]])
        self.attn_pool = SelfAttention()
        self.score_linear = nn.Sequential(
            nn.LayerNorm(TOKEN_DIM),
            nn.Linear(TOKEN_DIM, TOKEN_DIM),
            nn.GELU(),
            nn.LayerNorm(TOKEN_DIM),
            nn.Linear(TOKEN_DIM, TOKEN_DIM),
            nn.GELU(),
            nn.Linear(TOKEN_DIM, 1),
        )
        # the position embedding: half its channels vary along the height, half along the width
        self.h_emb = nn.Parameter(torch.zeros(1, TOKEN_DIM // 2, POS_GRID, 1))
        self.w_emb = nn.Parameter(torch.zeros(1, TOKEN_DIM // 2, 1, POS_GRID))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> CFANet:
        return super().train(False)  # a metric: batch-norm statistics must never change

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.semantic_model((x - self.mean) / self.std)

    def _gated(self, level: int, image: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        if reference is None:
            return self.weight_pool[level](image)
        distance = torch.sqrt((image - reference) ** 2 + 1e-12)  # |image - reference|, smooth at 0
        return torch.cat([image, reference, distance], dim=1) * self.weight_pool[level](distance)

    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        if self.full_reference != (reference is not None):
            raise ValueError("full-reference TOPIQ needs a reference image; no-reference TOPIQ takes none")
        image_feats = self._features(image)
        reference_feats = self._features(reference) if reference is not None else [None] * len(image_feats)
        grid_h, grid_w = image_feats[-1].shape[2:]
        position = torch.cat([self.h_emb.expand(-1, -1, -1, POS_GRID), self.w_emb.expand(-1, -1, POS_GRID, -1)], dim=1)

        tokens = []  # per level, deepest first: (grid cells, B, TOKEN_DIM)
        for level in reversed(range(len(image_feats))):
            feat = self._gated(level, image_feats[level], reference_feats[level])
            if feat.shape[2] > grid_h and feat.shape[3] > grid_w:  # finer levels are averaged to the deepest grid
                feat = F.adaptive_avg_pool2d(feat, (grid_h, grid_w))
            pos = F.interpolate(position, size=feat.shape[2:], mode="bicubic", align_corners=False)
            seq = self.dim_reduce[level](feat).flatten(2).permute(2, 0, 1) + pos.flatten(2).permute(2, 0, 1)
            tokens.append(self.sa_attn_blks[level](seq))

        query = tokens[0]
        for block, finer in zip(self.attn_blks, tokens[1:], strict=True):  # coarse to fine
            query = block(query, finer)
        pooled = self.attn_pool(query).mean(dim=0)
        return self.score_linear(pooled)[:, 0]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TOPIQ weights file: pyiqa's files keep them under `params`; a `module.` prefix (saved from
    DataParallel) is dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that holds code
        raise SrclusterError(f"{path} is not a weights-only torch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise SrclusterError(f"{path} is not a TOPIQ weights file: it holds a {type(state).__name__}, not tensors")
    state = state.get("params", state)
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_cfanet(path: Path, full_reference: bool) -> CFANet:
    """CFANet with every tensor from `path`, strictly: a missing, extra or misshapen tensor is a one-line error.
    Built on the meta device first, since random initialisation would be overwritten anyway."""
    kind = "full-reference" if full_reference else "no-reference"
    state = read_weights(path)
    with torch.device("meta"):
        net = CFANet(full_reference)
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in expected]
    if missing or extra:
        problem = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the network does not"
        raise SrclusterError(f"{path} is not {kind} TOPIQ (CFANet) weights: it {problem}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise SrclusterError(
                f"{path} is not {kind} TOPIQ (CFANet) weights: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    net.load_state_dict(
        {k: v if k.endswith("num_batches_tracked") else v.float() for k, v in state.items()}, assign=True
    )
    # the ImageNet statistics are not in the file: meta tensors until made again on a real device
    net.mean, net.std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return net.eval().requires_grad_(False)
