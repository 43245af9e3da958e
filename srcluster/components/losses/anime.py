"""The anime perceptual loss of APISR (Wang et al. 2024), as traiNNer-redux's `perceptualanimeloss`: distances between
features of RF5's ResNet50 trained on Danbooru2018 tags (`components.hub` "danbooru_resnet50")."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50

from srcluster.components import hub
from srcluster.components.losses.base import LOSSES, MultiTermLoss, criterion_mean, full_precision
from srcluster.components.perceptual import IMAGENET_MEAN, IMAGENET_STD
from srcluster.errors import SrclusterError

# traiNNer-redux's default taps: the stem conv, and the last conv of a block in each of the four stages
ANIME_LAYER_WEIGHTS = {"0": 0.1, "4_2_conv3": 20.0, "5_3_conv3": 25.0, "6_5_conv3": 1.0, "7_2_conv3": 1.0}
WEIGHTS_OPTION = "perceptualanimeloss.weights_path"


def resnet50_body() -> nn.Sequential:
    """torchvision's ResNet50 without its pooling and classifier: conv1, bn1, relu, maxpool, layer1 ... layer4 as
    indices 0 ... 7, the layout of the Danbooru checkpoint's body."""
    return nn.Sequential(*list(resnet50(weights=None).children())[:-2])


def load_body(path: str | None, stages: int) -> nn.Sequential:
    """The first `stages` modules of the body with the Danbooru weights: the file holds fastai's (body, head) pair;
    keys under "0." are the body's, the head ("1.") is not used. Every key of those stages must be there (a file with
    only them works too)."""
    file = hub.locate("danbooru_resnet50", path, WEIGHTS_OPTION)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one that holds code
        raise SrclusterError(f"{file} is not a weights-only torch checkpoint ({exc.__class__.__name__})") from None
    body_state = {key[2:]: value for key, value in state.items() if key.startswith("0.")}
    with torch.device("meta"):  # every tensor comes from the file
        body = resnet50_body()[:stages]
    own = body.state_dict()
    missing = [key for key in own if key not in body_state]
    if missing:
        raise SrclusterError(f"{file} is not the Danbooru ResNet50 checkpoint: it lacks 0.{missing[0]}")
    wrong = [key for key in own if body_state[key].shape != own[key].shape]
    if wrong:
        raise SrclusterError(f"{file} is not the Danbooru ResNet50 checkpoint: 0.{wrong[0]} has the wrong shape")
    body.load_state_dict({key: body_state[key] for key in own}, assign=True)
    return body


def tapped_module(body: nn.Sequential, label: str) -> nn.Module:
    """The module a traiNNer-redux layer label names: "0" is body[0]; "4_2_conv3" is body[4][2].conv3."""
    *indices, name = label.split("_")
    module: nn.Module = body
    try:
        for index in indices:
            module = module[int(index)]  # pyright: ignore[reportIndexIssue]
        return getattr(module, name)
    except (ValueError, IndexError, AttributeError, TypeError):
        raise ValueError(
            f"perceptualanimeloss.layer_weights: {label!r} names no ResNet50 layer (e.g. '0', '4_2_conv3')"
        ) from None


class PerceptualAnimeLoss(nn.Module):
    """Sum over `layer_weights` (traiNNer-redux's labels: "<index>[_<block>]_<module>" into the ResNet50 body) of
    weight * `criterion` ("l1" or "charbonnier", averaged) between the SR's and HR's outputs of that module, on
    ImageNet-normalised input, BatchNorm in eval mode. Float32 under any autocast. Weights from `weights_path`, else
    `components.hub` ("danbooru_resnet50"). `verbose_logging: true` logs each layer's term (see `build`)."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        criterion: str = "l1",
        weights_path: str | None = None,
    ):
        super().__init__()
        if criterion not in ("l1", "charbonnier"):
            raise ValueError(f"perceptualanimeloss.criterion: {criterion!r} is not one of l1, charbonnier")
        self.layer_weights = dict(ANIME_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        if not self.layer_weights:
            raise ValueError("perceptualanimeloss.layer_weights: no layer given")
        self.criterion = criterion_mean(criterion, "perceptualanimeloss")
        with torch.device("meta"):  # every label is checked before any file is read
            probe = resnet50_body()
        for label in self.layer_weights:
            tapped_module(probe, label)
        # only the stages up to the deepest tap are built and run: what follows cannot change the tapped outputs
        deepest = max(int(label.split("_")[0]) for label in self.layer_weights)
        self.body = load_body(weights_path, deepest + 1).eval().requires_grad_(False)
        self.taps = {label: tapped_module(self.body, label) for label in self.layer_weights}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualAnimeLoss:
        return super().train(False)  # BatchNorm must keep its running statistics

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}

        def recorder(label: str):
            def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
                found[label] = output

            return record

        hooks = [module.register_forward_hook(recorder(label)) for label, module in self.taps.items()]
        try:
            self.body((x - self.mean) / self.std)
        finally:
            for hook in hooks:
                hook.remove()
        return found

    def terms(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each layer's weighted distance, by its label."""
        with full_precision(sr):
            sr_features = self.features(sr.float())
            with torch.no_grad():
                gt_features = self.features(gt.float())
            return {
                label: self.criterion(sr_features[label], gt_features[label]) * weight
                for label, weight in self.layer_weights.items()
            }

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.terms(sr, gt).values())).sum()


class PerceptualAnimeTerms(MultiTermLoss):
    """`perceptualanimeloss` with `verbose_logging`: the same loss, each layer logged as `l_g_perceptualanime_<label>`
    as traiNNer-redux logs it."""

    def __init__(self, loss: PerceptualAnimeLoss):
        super().__init__()
        self.loss = loss

    def components(self, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loss.terms(sr, gt)


def build(
    layer_weights: dict[str, float] | None = None,
    criterion: str = "l1",
    verbose_logging: bool = False,
    weights_path: str | None = None,
) -> nn.Module:
    loss = PerceptualAnimeLoss(layer_weights, criterion, weights_path)
    return PerceptualAnimeTerms(loss) if verbose_logging else loss


LOSSES.register("perceptualanimeloss")(build)
