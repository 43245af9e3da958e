"""Pretrained feature networks (VGG19 features, LPIPS, DISTS, TOPIQ) and image-quality metrics by name.

ImageNet backbones are torchvision's checkpoint files and TOPIQ's (FR, NR) the published CFANet files, found by
`components.hub.locate`: the path the caller gives, else torch's hub cache, else the copy staged in object storage
($SRCLUSTER_WEIGHTS_URL), else downloaded (checksum verified); with none of these, a one-line error names the file,
where to put it and `srcluster weights pull`. The small learned parts (LPIPS' linear heads, DISTS' alpha/beta) ship
inside the torchmetrics wheel and are read from there. Only the `features.*` tensors of a backbone are used, so a
checkpoint holding just those works too.

`METRICS` maps a metric name to a builder of `Metric(better, fn)`, where `fn(sr, hr)` takes uint8 images (or float in
[0, 1]), (B, C, H, W) or (C, H, W), and returns one value per image. Networks are built once per process and device.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from srcluster.components import hub
from srcluster.components import metrics as sr_metrics
from srcluster.components import topiq as topiq_arch
from srcluster.errors import SrclusterError
from srcluster.registry import Registry

# --- backbones --------------------------------------------------------------------------------------------------------

# torchvision's file names for the backbones built here (components/hub.py has their URLs and checksums)
HUB_FILES = {arch: hub.FILES[arch].file for arch in ("vgg19", "vgg16", "alexnet")}

# torchvision's VGG `features` layout: numbers are 3x3 conv widths (each followed by a ReLU), "M" a 2x2 max pool.
VGG_CFG: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layers(arch: str) -> list[tuple[str, int]]:
    """(name, output channels) of each module of `features`, in order: conv1_1, relu1_1, ..., pool1, conv2_1, ..."""
    out: list[tuple[str, int]] = []
    block, index, channels = 1, 1, 3
    for item in VGG_CFG[arch]:
        if item == "M":
            out.append((f"pool{block}", channels))
            block, index = block + 1, 1
        else:
            channels = int(item)
            out += [(f"conv{block}_{index}", channels), (f"relu{block}_{index}", channels)]
            index += 1
    return out


VGG19_LAYERS = [name for name, _ in vgg_layers("vgg19")]


def vgg19_channels(layer: str) -> int:
    return dict(vgg_layers("vgg19"))[layer]


def vgg_features(arch: str, depth: int | None = None) -> nn.Sequential:
    """The first `depth` modules of torchvision's `vgg16/19().features`, with the same indices (so its state dict
    keys `features.<i>.weight` load directly). ReLUs are not in-place: intermediate outputs are kept as features."""
    modules: list[nn.Module] = []
    channels = 3
    for item in VGG_CFG[arch]:
        if item == "M":
            modules.append(nn.MaxPool2d(2, 2))
        else:
            modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*modules[:depth])


def alexnet_features(depth: int | None = None) -> nn.Sequential:
    """torchvision's `alexnet().features` up to the last ReLU (index 11), same indices."""
    # fmt: off
    return nn.Sequential(  # one stage per line
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )[:depth]
    # fmt: on


def checkpoint_path(arch: str, path: str | None = None, option: str = "a weights path") -> Path:
    """The local file with torchvision's `arch` weights: `path` if given, else found or fetched by `hub.locate`."""
    return hub.locate(arch, path, option)


def pretrained_features(
    arch: str, depth: int | None = None, path: str | None = None, option: str = "a weights path"
) -> nn.Sequential:
    """torchvision's `arch().features` (first `depth` modules) with the weights of its checkpoint file; the other keys
    of the file (the classifier) are ignored. Built on the meta device first: every weight comes from the file, so
    random initialisation would be wasted work."""
    file = checkpoint_path(arch, path, option)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that holds code
        raise SrclusterError(f"{file} is not a weights-only torch checkpoint ({exc.__class__.__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    with torch.device("meta"):
        features = alexnet_features(depth) if arch == "alexnet" else vgg_features(arch, depth)
    own = features.state_dict()
    wanted = {key: state[f"features.{key}"] for key in own if f"features.{key}" in state}
    missing = [key for key in own if key not in wanted]
    if missing:
        raise SrclusterError(f"{file} is not torchvision's {arch} checkpoint: it lacks features.{missing[0]}")
    wrong = [k for k, v in wanted.items() if v.shape != own[k].shape]
    if wrong:
        raise SrclusterError(
            f"{file} is not torchvision's {arch} checkpoint: features.{wrong[0]} has shape "
            f"{tuple(wanted[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
    features.load_state_dict({k: v.float() for k, v in wanted.items()}, assign=True)
    return features


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


class VGGFeatures(nn.Module):
    """VGG19 features at named layers (conv1_1 ... pool5), for the perceptual loss; frozen, always in eval mode.

    Only the layers up to the deepest one asked for are built. The first conv pads by replicating the border, as
    traiNNer-redux does, so the zero padding of a crop's edge is not scored as image content.
    """

    mean: torch.Tensor  # buffers, declared so they type as tensors rather than as Module attributes
    std: torch.Tensor

    def __init__(self, layers: Sequence[str], use_input_norm: bool = True, weights_path: str | None = None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG19 layer {unknown[0]!r}")
        self.layers = sorted(set(layers), key=VGG19_LAYERS.index)
        self.body = pretrained_features(
            "vgg19", VGG19_LAYERS.index(self.layers[-1]) + 1, weights_path, "perceptualloss.vgg_weights_path"
        )
        conv1_1 = self.body[0]
        assert isinstance(conv1_1, nn.Conv2d)  # VGG's features start with a conv
        conv1_1.padding_mode = "replicate"
        _frozen(self.body)
        self.use_input_norm = use_input_norm
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # a loss network: dropout/batch-norm behaviour must never change

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for name, module in zip(VGG19_LAYERS, self.body, strict=False):  # the body stops at the deepest layer asked for
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out


# --- LPIPS and DISTS --------------------------------------------------------------------------------------------------


def torchmetrics_file(*parts: str) -> Path:
    """A weights file shipped in the torchmetrics wheel (LPIPS heads, DISTS alpha/beta), found without importing
    torchmetrics."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or spec.origin is None:
        raise SrclusterError(
            "LPIPS and DISTS read their learned weights from the torchmetrics package: pip install 'torchmetrics>=1.9'"
        )
    found = Path(spec.origin).parent.joinpath("functional", "image", *parts)
    if not found.is_file():
        raise SrclusterError(f"{found} is missing from the installed torchmetrics (srcluster needs torchmetrics>=1.9)")
    return found


def _read_small(path: Path) -> dict[str, torch.Tensor]:
    # map_location: torchmetrics' DISTS weights were saved from a CUDA device
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018) v0.1 with an AlexNet or VGG16 backbone; per-image distance, lower is closer.

    Inputs in [0, 1]. Features at five ReLUs are unit-normalised over channels, their squared differences weighted
    per channel by the learned linear heads, averaged over pixels and summed over layers.
    """

    TAPS: ClassVar[dict[str, tuple[int, ...]]] = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # ReLU indices
    CHANNELS: ClassVar[dict[str, tuple[int, ...]]] = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
    shift: torch.Tensor  # buffers
    scale: torch.Tensor

    def __init__(
        self, net: Literal["alex", "vgg"] = "alex", backbone_path: str | None = None, heads_path: str | None = None
    ):
        super().__init__()
        if net not in self.TAPS:
            raise ValueError(f"lpips net {net!r} is not one of alex, vgg")
        self.taps = self.TAPS[net]
        self.features = pretrained_features(
            "alexnet" if net == "alex" else "vgg16", self.taps[-1] + 1, backbone_path, "lpips backbone_path"
        )
        heads = [nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS[net]]
        learned = _read_small(Path(heads_path) if heads_path else torchmetrics_file("lpips_models", f"{net}.pth"))
        for i, head in enumerate(heads):
            head.weight.data.copy_(learned[f"lin{i}.model.1.weight"])
        self.heads = nn.ModuleList(heads)
        # LPIPS' input scaling: [-1, 1] images shifted and scaled to roughly ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.taps:
                out.append(x / torch.sqrt(1e-8 + (x**2).sum(dim=1, keepdim=True)))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        per_layer = [
            head((fa - fb) ** 2).mean(dim=(1, 2, 3))
            for head, fa, fb in zip(self.heads, self._taps(a), self._taps(b), strict=True)
        ]
        return torch.stack(per_layer).sum(dim=0)


class L2Pooling(nn.Module):
    """DISTS' anti-aliased downsampling: sqrt of a Hann-weighted 3x3 average of x^2, stride 2."""

    filter: torch.Tensor  # a buffer

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])  # numpy.hanning(5)[1:-1]
        window = a[:, None] * a[None, :]
        self.register_buffer("filter", (window / window.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS (Ding et al. 2020): 1 - a learned mix of per-channel structure (correlation) and texture (mean) similarity
    over the image and five VGG16 stages whose max pools are L2 pools. Inputs in [0, 1]; per image, lower is closer.
    Differentiable, so it also serves as `distsloss`."""

    TAPS = (3, 8, 15, 22, 29)
    CHANNELS = (3, 64, 128, 256, 512, 512)  # the image itself, then the five stages
    alpha: torch.Tensor  # buffers
    beta: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, vgg_weights_path: str | None = None, weights_path: str | None = None):
        super().__init__()
        features = pretrained_features("vgg16", self.TAPS[-1] + 1, vgg_weights_path, "dists vgg_weights_path")
        channels = 3
        for i in range(len(features)):
            module = features[i]
            if isinstance(module, nn.Conv2d):
                channels = module.out_channels
            elif isinstance(module, nn.MaxPool2d):  # pools what the conv before it made
                features[i] = L2Pooling(channels)
        self.features = features
        weights = _read_small(Path(weights_path) if weights_path else torchmetrics_file("dists_models", "weights.pt"))
        self.register_buffer("alpha", weights["alpha"].float().view(1, -1, 1, 1))
        self.register_buffer("beta", weights["beta"].float().view(1, -1, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [x], (x - self.mean) / self.std
        for i, module in enumerate(self.features):
            h = module(h)
            if i in self.TAPS:
                out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, list(self.CHANNELS), dim=1)
        betas = torch.split(self.beta / total, list(self.CHANNELS), dim=1)
        c1 = c2 = 1e-6
        score = a.new_zeros(a.shape[0])
        for fa, fb, alpha, beta in zip(self._stages(a), self._stages(b), alphas, betas, strict=True):
            mean_a, mean_b = fa.mean(dim=(2, 3), keepdim=True), fb.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1)
            var_a = ((fa - mean_a) ** 2).mean(dim=(2, 3), keepdim=True)
            var_b = ((fb - mean_b) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (fa * fb).mean(dim=(2, 3), keepdim=True) - mean_a * mean_b
            structure = (2 * cov + c2) / (var_a + var_b + c2)
            score = score + (alpha * texture + beta * structure).sum(dim=(1, 2, 3))
        return 1 - score


def topiq_network(weights: str, full_reference: bool) -> nn.Module:
    """TOPIQ's CFANet (components/topiq.py) with every tensor from the file `weights`."""
    return topiq_arch.load_cfanet(Path(weights), full_reference)


# --- metrics by name --------------------------------------------------------------------------------------------------


Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A per-image quality measure: `fn(sr, hr)` -> (B,) float tensor, and which direction is better. Every builder
    takes traiNNer-redux's `better` option, which overrides the metric's own direction."""

    better: Better
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.fn(sr, hr)


METRICS: Registry[Metric] = Registry("metric")
Y_CHANNEL_METRICS = frozenset({"psnr", "ssim"})  # the builders that take `test_y_channel`; the others score RGB


def as_float_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float, (C, H, W) or (B, C, H, W), gray or RGB -> float (B, 3, H, W) in [0, 1]."""
    x = x.unsqueeze(0) if x.dim() == 3 else x
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border else x


# kind -> builder(device, *weight paths)
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "lpips-alex": lambda device, *paths: LPIPS("alex", *paths).to(device),
    "lpips-vgg": lambda device, *paths: LPIPS("vgg", *paths).to(device),
    "dists": lambda device, *paths: DISTS(*paths).to(device),
    "topiq_fr": lambda device, path: topiq_network(path, full_reference=True).to(device),
    "topiq_nr": lambda device, path: topiq_network(path, full_reference=False).to(device),
}


@functools.lru_cache(maxsize=8)
def _network(kind: str, device: str, *paths: str | None) -> nn.Module:
    """One instance per network, device and weight files for the whole process."""
    return NETWORKS[kind](torch.device(device), *paths)


def _network_metric(kind: str, crop_border: int, *paths: str | None):
    """fn(sr, hr) running the cached network `kind` on the images' device, without gradients."""

    @torch.no_grad()
    def fn(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        a, b = crop(as_float_batch(sr), crop_border), crop(as_float_batch(hr), crop_border)
        return _network(kind, str(a.device), *paths)(a, b).flatten().float()

    return fn


@METRICS.register("psnr")
def psnr(crop_border: int = 0, test_y_channel: bool = False, better: Better | None = None) -> Metric:
    return Metric(
        better or "higher", functools.partial(sr_metrics.psnr, crop_border=crop_border, test_y_channel=test_y_channel)
    )


@METRICS.register("ssim")
def ssim(crop_border: int = 0, test_y_channel: bool = False, better: Better | None = None) -> Metric:
    return Metric(
        better or "higher", functools.partial(sr_metrics.ssim, crop_border=crop_border, test_y_channel=test_y_channel)
    )


@METRICS.register("lpips")
def lpips(
    crop_border: int = 0,
    net: Literal["alex", "vgg"] = "alex",
    backbone_path: str | None = None,
    better: Better | None = None,
) -> Metric:
    if net not in LPIPS.TAPS:
        raise ValueError(f"lpips net {net!r} is not one of {', '.join(LPIPS.TAPS)}")
    # resolve the backbone now: a missing file fails when the metric is set up, not after the first epoch
    backbone = str(checkpoint_path("alexnet" if net == "alex" else "vgg16", backbone_path, "lpips backbone_path"))
    return Metric(better or "lower", _network_metric(f"lpips-{net}", crop_border, backbone))


@METRICS.register("dists")
def dists(crop_border: int = 0, vgg_weights_path: str | None = None, better: Better | None = None) -> Metric:
    backbone = str(checkpoint_path("vgg16", vgg_weights_path, "dists vgg_weights_path"))
    return Metric(better or "lower", _network_metric("dists", crop_border, backbone))


def _no_reference_metric(kind: str, crop_border: int, *paths: str | None):
    """fn(sr, hr) scoring `sr` alone with the cached network `kind` (hr is taken, and ignored, so that every metric
    is called the same way)."""

    @torch.no_grad()
    def fn(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        image = crop(as_float_batch(sr), crop_border)
        return _network(kind, str(image.device), *paths)(image).flatten().float()

    return fn


@METRICS.register("topiq")
def topiq(crop_border: int = 0, better: Better | None = None) -> Metric:
    """TOPIQ full-reference (traiNNer-redux's `calculate_topiq`: CFANet trained on KADID-10k), higher is better. Its
    weights are found like the backbones' (`hub.locate("topiq")`), when the metric is built."""
    weights = str(hub.locate("topiq"))
    return Metric(better or "higher", _network_metric("topiq_fr", crop_border, weights))


@METRICS.register("topiq_nr")
def topiq_nr(crop_border: int = 0, better: Better | None = None) -> Metric:
    """TOPIQ no-reference (traiNNer-redux's `calculate_topiq_nr`: CFANet trained on KonIQ-10k): scores the SR image
    alone, higher is better. Weights from `hub.locate("topiq_nr")`."""
    weights = str(hub.locate("topiq_nr"))
    return Metric(better or "higher", _no_reference_metric("topiq_nr", crop_border, weights))


def build_metric(name: str, **options) -> Metric:
    """`name` is a registry key or traiNNer-redux's `calculate_<name>` type."""
    return METRICS.build(name.removeprefix("calculate_"), **options)
