"""The last traiNNer-redux losses (issue #15): contextual, A-DISTS, multi-scale GAN, anime perceptual, AESOP; and the
ones still refused (line distiller; multi-scale GAN in training) with their reasons.

Reference numbers were obtained once by running traiNNer-redux's own classes (commit 686293190:
`losses/contextual_loss.py: ContextualLoss`, `losses/adists_loss.py: ADISTSLoss`,
`losses/perceptual_anime_loss.py: PerceptualAnimeLoss`, `losses/aesop_loss.py: AESOPLoss` with
`archs/autoencoder_arch.py: AutoEncoder`, its decoder built by srcluster's registry) on the weight files and inputs
these tests build, and are hard-coded here. redux's ContextualLoss.forward adds its layers into an integer tensor and
fails on the first one (and drops layer names spelt "conv3_2"); its numbers are those of its own per-layer code
(`calculate_loss`, its pooling and quarter cropping) summed in float. Weight files are random, with the real layouts;
nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.fake_weights import fake_torch_home
from helpers.jobs import tiny_job
from srcluster.components import archs, hub, losses
from srcluster.components.losses.anime import resnet50_body
from srcluster.config import parse_job
from srcluster.errors import ConfigError, SrclusterError

RTOL = 1e-5
VGG_SEED = 11
ANIME_STAGES = 5  # conv1, bn1, relu, maxpool, layer1: enough for the "0" and "4_2_conv3" taps
ANIME_LAYERS = {"0": 0.1, "4_2_conv3": 20.0}  # traiNNer-redux's two shallowest default taps and weights


def inputs(size: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sr, gt) in [0, 1]: random HR and a noisy copy."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=g)
    sr = (gt + 0.1 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    return sr, gt


def danbooru_state(stages: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random weights in the Danbooru checkpoint's layout ("0." + the ResNet50 body's keys) for its first `stages`
    modules: He-scaled convs, BatchNorm affine near (1, 0) and running statistics away from (0, 1)."""
    with torch.device("meta"):
        body = resnet50_body()[:stages]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in body.state_dict().items():
        if key.endswith("num_batches_tracked"):
            tensor = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            tensor = 0.5 + torch.rand(value.shape, generator=g)
        elif key.endswith("running_mean"):
            tensor = 0.1 * torch.randn(value.shape, generator=g)
        elif value.ndim == 1:
            tensor = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(value.shape, generator=g)
        else:
            tensor = torch.randn(value.shape, generator=g) * math.sqrt(2 / value[0].numel())
        state[f"0.{key}"] = tensor
    return state


@pytest.fixture(scope="module")
def vgg_home(tmp_path_factory) -> Path:
    return fake_torch_home(tmp_path_factory.mktemp("vgg"), ("vgg19", "vgg16"), seed=VGG_SEED, bias_std=0.01)


@pytest.fixture
def vgg(vgg_home, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(vgg_home))
    return vgg_home


@pytest.fixture
def danbooru(tmp_path, monkeypatch) -> Path:
    """A TORCH_HOME whose hub cache holds the Danbooru file, as `hub.locate` looks for it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub.cache_path("danbooru_resnet50")
    path.parent.mkdir(parents=True)
    torch.save({**danbooru_state(ANIME_STAGES), "1.2.weight": torch.ones(8)}, path)  # "1." is fastai's head
    return path


def built_from_job(loss: dict) -> nn.Module:
    """The loss as a job builds it: parsed (compat, schema, option checks), then built from its options."""
    job = parse_job(tiny_job(train={"total_iter": 20, "losses": [loss]}))
    spec = job.train.losses[0]
    assert spec.type == loss["type"] and spec.loss_weight == loss["loss_weight"]
    return losses.build_loss(spec.type, **spec.options())


def value(loss: nn.Module, sr: torch.Tensor, gt: torch.Tensor, seed: int = 5) -> float:
    torch.manual_seed(seed)  # contextual's sub-sampling draws positions from the global generator, as redux's
    return loss(sr, gt).item()


def assert_gradient_flows(loss: nn.Module, sr: torch.Tensor, gt: torch.Tensor) -> None:
    sr = sr.clone().requires_grad_(True)
    loss(sr, gt).backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


# --- contextual -------------------------------------------------------------------------------------------------------

# redux's value on inputs(32) with layer_weights {conv_3_2: 1.0, conv_4_2: 0.5} and these options
REDUX_CONTEXTUAL = [
    ({}, 0.01470678299665451),
    ({"distance_type": "l1"}, 0.5534630417823792),
    ({"distance_type": "l2"}, 0.015166444703936577),
    ({"calc_type": "symetric"}, 0.014908932149410248),
    ({"calc_type": "bilateral"}, 2.779956817626953),
    ({"z_norm": True}, 0.0017267935909330845),
    ({"crop_quarter": True}, 0.0041686720214784145),
    ({"max_1d_size": 5}, 0.5031837224960327),  # 8x8 conv3_2 maps sub-sampled to 25 random positions (seeded)
    ({"band_width": 0.2, "b": 1.5}, 1.698748383205384e-05),
]
CONTEXTUAL_LAYERS = {"conv3_2": 1.0, "conv4_2": 0.5}
REDUX_CONTEXTUAL_DEFAULT_LAYERS = 0.01470678299665451  # {conv_3_2: 1.0, conv_4_2: 1.0}: conv4_2 adds ~0 here


@pytest.mark.parametrize(("options", "expected"), REDUX_CONTEXTUAL, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_contextual_matches_trainner_redux(vgg, options, expected):
    sr, gt = inputs(32)
    loss = built_from_job({"type": "contextualloss", "loss_weight": 1.0, "layer_weights": CONTEXTUAL_LAYERS, **options})
    assert value(loss, sr, gt) == pytest.approx(expected, rel=RTOL)


def test_contextual_reads_redux_layer_spelling_and_defaults(vgg):
    sr, gt = inputs(32)
    redux_spelling = losses.build_loss("contextualloss", layer_weights={"conv_3_2": 1.0, "conv_4_2": 0.5})
    assert value(redux_spelling, sr, gt) == pytest.approx(REDUX_CONTEXTUAL[0][1], rel=RTOL)
    default = losses.build_loss("contextualloss")  # conv3_2 and conv4_2, weight 1 each
    assert default.layer_weights == {"conv3_2": 1.0, "conv4_2": 1.0}
    assert value(default, sr, gt) == pytest.approx(REDUX_CONTEXTUAL_DEFAULT_LAYERS, rel=RTOL)
    assert value(default, gt, gt) < value(default, sr, gt)
    assert_gradient_flows(default, sr, gt)
    # layer weights scale their layer's term
    one, two = ({"conv3_2": w} for w in (1.0, 2.0))
    once = value(losses.build_loss("contextualloss", layer_weights=one), sr, gt)
    assert value(losses.build_loss("contextualloss", layer_weights=two), sr, gt) == pytest.approx(2 * once, rel=1e-6)


def test_contextual_without_vgg_matches_trainner_redux():
    sr, gt = inputs(8)
    assert value(losses.build_loss("contextualloss", use_vgg=False), sr, gt) == pytest.approx(
        0.4903103709220886, rel=RTOL
    )


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"distance_type": "l3"}, "contextualloss.distance_type"),
        ({"calc_type": "fast"}, "contextualloss.calc_type"),
        ({"band_width": 0}, "contextualloss.band_width"),
        ({"net": "vgg16"}, "contextualloss.net"),
        ({"layer_weights": {"conv9_9": 1.0}}, "contextualloss.layer_weights"),
    ],
)
def test_contextual_refuses_bad_options_naming_them(vgg, options, key):
    with pytest.raises(ValueError, match=key):
        losses.build_loss("contextualloss", **options)


# --- A-DISTS ----------------------------------------------------------------------------------------------------------

# redux's value on inputs(size, seed=1) with these options: 64 px uses the windowed statistics at the image and the
# first two stages and the global ones below; window_size 9 at 80 px windows down to the 10x10 fourth stage
REDUX_ADISTS = [
    (64, {}, 0.008511662483215332),
    (48, {}, 0.010118842124938965),
    (80, {"window_size": 9}, 0.010021686553955078),
]


@pytest.mark.parametrize(("size", "options", "expected"), REDUX_ADISTS)
def test_adists_matches_trainner_redux(vgg, size, options, expected):
    sr, gt = inputs(size, seed=1)
    loss = built_from_job({"type": "adistsloss", "loss_weight": 1.0, **options})
    assert value(loss, sr, gt) == pytest.approx(expected, rel=RTOL)
    assert_gradient_flows(loss, sr, gt)


def test_adists_is_finite_where_a_map_is_exactly_the_window(vgg):
    # at 72 px the fourth stage is 9x9: redux's texture probability takes a standard deviation of one value (NaN)
    sr, gt = inputs(72, batch=1, seed=1)
    loss = losses.build_loss("adistsloss", window_size=9)
    assert math.isfinite(value(loss, sr, gt))
    assert value(loss, gt, gt) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"adistsloss\.window_size"):
        losses.build_loss("adistsloss", window_size=20)


# --- multi-scale GAN --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gan_type", losses.GAN_TYPES)
def test_multiscale_gan_averages_ganloss_over_the_scales(gan_type):
    g = torch.Generator().manual_seed(0)
    coarse, features, fine = (torch.randn(2, c, s, s, generator=g) for c, s in ((1, 4), (8, 4), (1, 2)))
    multi, single = (
        losses.build_loss("multiscaleganloss", gan_type=gan_type),
        losses.build_loss("ganloss", gan_type=gan_type),
    )
    for real, disc in ((True, True), (False, True), (True, False)):
        # a scale given as a list (intermediate features, then logits) counts by its last element
        expected = (single(coarse, real, is_disc=disc) + single(fine, real, is_disc=disc)) / 2
        assert multi([coarse, [features, fine]], real, is_disc=disc).item() == pytest.approx(expected.item(), rel=1e-6)
        assert multi(coarse, real, is_disc=disc).item() == pytest.approx(single(coarse, real, disc).item(), rel=1e-6)
    logits = [coarse.clone().requires_grad_(True), fine.clone().requires_grad_(True)]
    multi(logits, True).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits)


def test_multiscale_gan_trains_a_discriminator_as_ganloss_does():
    """srcluster's discriminators return one logit map, so a stage with multiscaleganloss trains D and G exactly as
    with ganloss (redux's step never treats it as the GAN loss)."""
    from srcluster.train.state import build_stage
    from srcluster.train.step import train_step

    results = {}
    for kind in ("ganloss", "multiscaleganloss"):
        job = parse_job(
            tiny_job(
                network_d={"type": "unetdiscriminatorsn", "num_feat": 8},
                train={
                    "total_iter": 20,
                    "losses": [{"type": "l1loss", "loss_weight": 1.0}, {"type": kind, "loss_weight": 0.1}],
                },
            )
        )
        assert job.uses_gan
        stage = build_stage(job, torch.device("cpu"), log=lambda _: None)
        assert stage.gan is not None and stage.optim_d is not None
        batch = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        results[kind] = {k: float(v) for k, v in train_step(stage, iter([batch]), 1).items() if k != "data_wait_s"}
    assert results["multiscaleganloss"] == pytest.approx(results["ganloss"], rel=1e-6)


# --- anime perceptual -------------------------------------------------------------------------------------------------

REDUX_ANIME = [  # redux's value on inputs(64) with ANIME_LAYERS and these options
    ({}, 29.135986328125),
    ({"criterion": "charbonnier"}, 29.135986328125),
]
REDUX_ANIME_TERMS = {
    "0": 0.045924581587314606,
    "4_2_conv3": 29.09006118774414,
}  # verbose_logging: each layer's weighted term


@pytest.mark.parametrize(("options", "expected"), REDUX_ANIME)
def test_perceptual_anime_matches_trainner_redux(danbooru, options, expected):
    sr, gt = inputs(64)
    loss = built_from_job({"type": "perceptualanimeloss", "loss_weight": 1.0, "layer_weights": ANIME_LAYERS, **options})
    assert value(loss, sr, gt) == pytest.approx(expected, rel=RTOL)
    assert_gradient_flows(loss, sr, gt)


def test_perceptual_anime_logs_each_layer_with_verbose_logging(danbooru):
    sr, gt = inputs(64)
    loss = losses.build_loss("perceptualanimeloss", layer_weights=ANIME_LAYERS, verbose_logging=True)
    terms = losses.weighted_terms("perceptualanimeloss", 2.0, loss, sr, gt)
    assert terms.keys() == {"l_g_perceptualanime_0", "l_g_perceptualanime_4_2_conv3"}
    for label, expected in REDUX_ANIME_TERMS.items():
        assert terms[f"l_g_perceptualanime_{label}"].item() == pytest.approx(2 * expected, rel=RTOL)


def test_perceptual_anime_weights_file_and_labels(danbooru, tmp_path, monkeypatch):
    # the given path wins over the cache
    moved = tmp_path / "elsewhere.pth"
    danbooru.rename(moved)
    sr, gt = inputs(64)
    loss = losses.build_loss("perceptualanimeloss", layer_weights=ANIME_LAYERS, weights_path=str(moved))
    assert value(loss, sr, gt) == pytest.approx(REDUX_ANIME[0][1], rel=RTOL)
    # a tap deeper than the file holds names the missing key
    with pytest.raises(SrclusterError, match=r"lacks 0\.5\.0\.conv1\.weight"):
        losses.build_loss("perceptualanimeloss", weights_path=str(moved))
    with pytest.raises(ValueError, match=r"perceptualanimeloss\.layer_weights: '4_9_conv3'"):
        losses.build_loss("perceptualanimeloss", layer_weights={"4_9_conv3": 1.0})
    # neither given nor cached, and no network: one line naming the file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(SrclusterError, match=r"resnet50-13306192\.pth are not on this machine") as error:
        losses.build_loss("perceptualanimeloss", layer_weights=ANIME_LAYERS)
    assert "\n" not in str(error.value)


def test_perceptual_anime_hub_entry_is_redux_url():
    entry = hub.FILES["danbooru_resnet50"]
    assert entry.url == "https://github.com/RF5/danbooru-pretrained/releases/download/v0.1/resnet50-13306192.pth"
    assert entry.sha256 == "13306192" and entry.folder == "checkpoints"


# --- AESOP ------------------------------------------------------------------------------------------------------------

AE_DECODER = {"type": "superultracompact"}
AE_SCALE = 2
# redux's value on inputs(16) with autoencoder_file's weights
REDUX_AESOP = [("charbonnier", 0.010304120369255543), ("l1", 0.010304120369255543)]


def autoencoder_file(path: str | Path, seed: int = 7) -> Path:
    """A random AutoEncoder (superultracompact decoder, scale 2) saved as traiNNer-redux reads it: safetensors, every
    key (the encoder's tensors twice, as its state dict names them) a tensor of its own."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    ae = losses.AutoEncoder(archs.build_generator(AE_DECODER["type"], AE_SCALE), AE_SCALE)
    save_file({key: value.clone().contiguous() for key, value in ae.state_dict().items()}, str(path))
    return Path(path)


@pytest.mark.parametrize(("criterion", "expected"), REDUX_AESOP)
def test_aesop_matches_trainner_redux(tmp_path, criterion, expected):
    path = autoencoder_file(tmp_path / "ae.safetensors")
    options = {"decoder_opt": AE_DECODER, "scale": AE_SCALE, "pretrain_network_ae": str(path), "criterion": criterion}
    loss = built_from_job({"type": "aesoploss", "loss_weight": 1.0, **options})
    sr, gt = inputs(16)
    assert value(loss, sr, gt) == pytest.approx(expected, rel=RTOL)
    assert value(loss, gt, gt) == pytest.approx(0.0, abs=1e-5)
    assert_gradient_flows(loss, sr, gt)
    assert not any(p.requires_grad for p in loss.parameters())


def test_aesop_refuses_a_missing_or_mismatched_autoencoder(tmp_path):
    path = autoencoder_file(tmp_path / "ae.safetensors")
    with pytest.raises(SrclusterError, match=r"aesoploss\.pretrain_network_ae: autoencoder weights .* do not exist"):
        losses.build_loss("aesoploss", decoder_opt=AE_DECODER, scale=2, pretrain_network_ae=str(tmp_path / "no"))
    with pytest.raises(SrclusterError, match=r"does not fit an AutoEncoder with a compact decoder"):
        losses.build_loss("aesoploss", decoder_opt={"type": "compact"}, scale=2, pretrain_network_ae=str(path))
    with pytest.raises(ValueError, match=r"aesoploss\.scale: 3"):
        losses.build_loss("aesoploss", decoder_opt=AE_DECODER, scale=3, pretrain_network_ae=str(path))


# --- line distiller (its value and weights: test_loss_linedistiller.py) -----------------------------------------------


def test_line_distiller_takes_redux_options_only():
    loss = {"type": "linedistillerloss", "loss_weight": 1.0, "critrion": "l1"}
    with pytest.raises(ConfigError, match=r"train.losses\[1\]: linedistillerloss has no option 'critrion'"):
        parse_job(tiny_job(train={"total_iter": 20, "losses": [{"type": "l1loss", "loss_weight": 1.0}, loss]}))
