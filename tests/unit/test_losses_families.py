"""traiNNer-redux's other losses, its GAN types and its old `*_opt` loss format.

Reference values come from running traiNNer-redux's own loss classes (commit 686293190) once on `inputs()` below,
outside this repository; the numbers are hard-coded here.
"""

import pytest
import torch

from srcluster.components import losses
from srcluster.config import parse_job
from srcluster.errors import ConfigError
from srcluster.train.state import build_stage
from srcluster.train.step import train_step


def inputs():
    """SR, HR and an EMA output: (2, 3, 32, 32) in [0, 1], the same tensors redux's losses were run on."""
    g = torch.Generator().manual_seed(0)
    sr = torch.rand(2, 3, 32, 32, generator=g)
    gt = (sr + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    ema = (gt + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    return sr, gt, ema


# (type, options) -> traiNNer-redux's value of loss(sr, gt) (LDL: loss(sr, ema, gt) in redux's argument order)
REDUX_VALUES = [
    ("psnrloss", {}, -15.009117126464844),
    ("psnrloss", {"to_y": True}, -19.771047592163086),
    ("cosimloss", {}, 0.23192435503005981),
    ("sobeledgeloss", {}, 0.01064159907400608),
    ("fftloss", {}, 3.2029833793640137),
    ("colorloss", {}, 0.01932578906416893),
    ("colorloss", {"criterion": "charbonnier", "scale": 2}, 0.03930727392435074),
    ("lumaloss", {}, 0.10051141679286957),
    ("averageloss", {}, 0.03624987229704857),
    ("bicubicloss", {}, 0.030029242858290672),
    ("bicubicloss", {"criterion": "l2", "scale": 2}, 0.0052492995746433735),
    ("ffloss", {}, 0.42719775438308716),
    (
        "ffloss",
        {"alpha": 2.0, "patch_factor": 2, "ave_spectrum": False, "log_matrix": True, "batch_matrix": True},
        0.361908495426178,
    ),
    ("gradientvarianceloss", {}, 0.18804016709327698),
    ("gradientvarianceloss", {"patch_size": 8, "criterion": "l1"}, 0.24576324224472046),
    ("nccloss", {}, 0.08511877059936523),
    ("ldlloss", {}, 0.002349548740312457),
    ("ssimloss", {}, 0.1660251021385193),  # redux returns the score: 1 - it here
    ("ssimloss", {"crop_border": 2, "color_space": "ycbcr"}, 0.16238975524902344),
    ("msssiml1loss", {}, 0.17172561585903168),
    ("msssiml1loss", {"gaussian_sigmas": [0.5, 1.0, 2.0], "alpha": 0.5}, 0.4554394483566284),
    ("fliploss", {}, 0.2914258539676666),  # redux's FLIP runs on CUDA only: its CPU run had .cuda() made a no-op
    ("fliploss", {"pixels_per_degree": 30.0}, 0.48090195655822754),
    ("l1loss", {"reduction": "sum"}, 857.896484375),
    ("charbonnierloss", {"reduction": "sum"}, 857.896484375),
]


@pytest.mark.parametrize(("loss_type", "options", "expected"), REDUX_VALUES)
def test_loss_value_matches_trainner_redux(loss_type, options, expected):
    sr, gt, ema = inputs()
    loss = losses.build_loss(loss_type, **options)
    value = loss(sr, gt, ema) if losses.needs_ema(loss) else loss(sr, gt)
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_bce_with_logits_dice_matches_trainner_redux():
    sr, gt, _ = inputs()
    loss = losses.build_loss("bcewithlogitsdiceloss")
    assert loss(sr * 4 - 2, gt).item() == pytest.approx(0.9186285138130188, rel=1e-5)
    one_channel = losses.build_loss("bcewithlogitsdiceloss", weight_bce=0.5, weight_dice=2.0)
    assert one_channel(sr[:, :1] * 4 - 2, gt).item() == pytest.approx(1.2891004085540771, rel=1e-5)


def test_structure_texture_weights_and_structure_term_match_trainner_redux(monkeypatch, tmp_path):
    from helpers.fake_weights import fake_torch_home

    monkeypatch.setenv("TORCH_HOME", str(fake_torch_home(tmp_path, ("vgg19",), seed=1)))
    sr, gt, _ = inputs()
    loss = losses.StructureTextureLoss()
    structure, texture = loss.edge_weights(gt)
    assert structure.mean().item() == pytest.approx(0.7692611217498779, rel=1e-5)
    assert texture.mean().item() == pytest.approx(0.4996802806854248, rel=1e-5)
    sr96, gt96 = (torch.nn.functional.interpolate(x, size=96, mode="bilinear") for x in (sr, gt))
    weight, _ = loss.edge_weights(gt96)
    score = losses.weighted_ms_ssim(loss._luma(sr96), loss._luma(gt96), weight)
    assert 1 - score.mean().item() == pytest.approx(0.16806244850158691, rel=2e-5)
    terms = losses.weighted_terms("structuretextureloss", 2.0, loss, sr96, gt96)
    assert set(terms) == {"l_g_structuretexture_structure", "l_g_structuretexture_texture"}
    assert terms["l_g_structuretexture_structure"].item() == pytest.approx(2 * 0.16806244850158691, rel=2e-5)
    assert terms["l_g_structuretexture_texture"].item() > 0


@pytest.mark.parametrize("loss_type", sorted({case[0] for case in REDUX_VALUES}))
def test_loss_has_a_finite_gradient_towards_the_target(loss_type):
    sr, gt, ema = inputs()
    sr.requires_grad_(True)
    loss = losses.build_loss(loss_type)
    value = loss(sr, gt, ema) if losses.needs_ema(loss) else loss(sr, gt)
    value.backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


def test_loss_is_smallest_when_the_output_is_the_target():
    sr, gt, _ = inputs()
    for loss_type in ("cosimloss", "sobeledgeloss", "fftloss", "colorloss", "lumaloss", "averageloss", "ffloss"):
        loss = losses.build_loss(loss_type)
        assert loss(gt, gt).item() == pytest.approx(0, abs=1e-6), loss_type
        assert loss(sr, gt).item() > 1e-4, loss_type


# traiNNer-redux's GANLoss on logits linspace(-2, 3, 10): (type, target_is_real) -> value (D and G alike)
REDUX_GAN = [
    ("wgan", True, -0.5),
    ("wgan", False, 0.5),
    ("wgan_softplus", True, 0.7362902760505676),
    ("wgan_softplus", False, 1.2362902164459229),
]


@pytest.mark.parametrize(("gan_type", "real", "expected"), REDUX_GAN)
def test_gan_types_match_trainner_redux(gan_type, real, expected):
    logits = torch.linspace(-2, 3, 10).view(2, 1, 5)
    loss = losses.build_loss("ganloss", gan_type=gan_type)
    for is_disc in (True, False):
        assert loss(logits, real, is_disc=is_disc).item() == pytest.approx(expected, rel=1e-6)


def job(losses_section=None, **train):
    data = {
        "name": "unit",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {"total_iter": 10, **({"losses": losses_section} if losses_section is not None else {}), **train},
    }
    return parse_job(data)


def hr_batches(n, batch=2, size=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]


@pytest.mark.parametrize("gan_type", ["wgan", "wgan_softplus", "hinge", "lsgan"])
def test_every_gan_type_trains_generator_and_discriminator(gan_type):
    stage = build_stage(
        job([{"type": "l1loss"}, {"type": "ganloss", "gan_type": gan_type, "loss_weight": 0.1}]), torch.device("cpu")
    )
    assert stage.raw_d is not None
    before = [p.detach().clone() for p in stage.raw_d.parameters()]
    out = train_step(stage, iter(hr_batches(1)), 1)
    assert {"l_g_l1", "l_g_gan", "l_d_real", "l_d_fake"} <= set(out)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.raw_d.parameters(), strict=True))


def test_an_unknown_gan_type_is_refused_when_the_job_is_checked():
    with pytest.raises(ConfigError, match=r"train.losses\[0\]: ganloss.gan_type: 'wgangp' is not one of"):
        job([{"type": "ganloss", "gan_type": "wgangp"}])


def test_a_refused_option_value_names_its_loss_and_key():
    with pytest.raises(ConfigError, match=r"train.losses\[1\]: l1loss.reduction: 'none' is not one of mean, sum"):
        job([{"type": "charbonnierloss"}, {"type": "l1loss", "reduction": "none"}])
    with pytest.raises(ConfigError, match=r"train.losses\[0\]: colorloss.criterion: 'l3' is not one of l1, l2"):
        job([{"type": "colorloss", "criterion": "l3"}])


def test_ldl_needs_the_ema_and_trains_against_its_output():
    with pytest.raises(ConfigError, match=r"train.losses\[1\]: ldlloss compares with the EMA generator's output"):
        job([{"type": "l1loss"}, {"type": "ldlloss"}])
    stage = build_stage(job([{"type": "l1loss"}, {"type": "ldlloss"}], ema_decay=0.9), torch.device("cpu"))
    seen = []
    assert stage.ema is not None
    stage.ema.net.register_forward_hook(lambda module, args, output: seen.append(output))
    out = train_step(stage, iter(hr_batches(2)), 2)
    assert len(seen) == 2 and "l_g_ldl" in out  # the EMA generator ran once per micro-batch


def test_ldl_is_zero_where_the_ema_is_further_from_the_target():
    sr, gt, _ = inputs()
    far = sr + 2 * (sr - gt)  # the EMA output is three times as far everywhere: LDL sees no artifact
    assert losses.build_loss("ldlloss")(sr, gt, far).item() == 0


# the same losses, in traiNNer-redux's old format and in the list format
OLD_FORMAT = {
    "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
    "gan_opt": {"type": "GANLoss", "gan_type": "wgan_softplus", "loss_weight": 0.1},
    "mssim_opt": {"type": "MSSIMLoss", "loss_weight": 0.5},
    "color_opt": {"type": "ColorLoss", "loss_weight": 0.0},
}
LIST_FORMAT = [  # redux's order of the old keys: pixel, mssim, ..., gan, color
    {"type": "L1Loss", "loss_weight": 1.0},
    {"type": "MSSIMLoss", "loss_weight": 0.5},
    {"type": "GANLoss", "gan_type": "wgan_softplus", "loss_weight": 0.1},
    {"type": "ColorLoss", "loss_weight": 0.0},
]


def test_old_loss_format_loads_as_the_list_format_in_redux_order():
    old, new = job(**OLD_FORMAT), job(LIST_FORMAT)
    assert old.train.losses == new.train.losses
    assert [loss.type for loss in old.train.losses] == ["l1loss", "mssimloss", "ganloss", "colorloss"]
    assert not [w for w in old.warnings if "_opt" in w]


def test_old_loss_format_trains_the_same_as_the_list_format():
    outs = []
    for parsed in (job(**OLD_FORMAT), job(LIST_FORMAT)):
        stage = build_stage(parsed, torch.device("cpu"))
        outs.append(train_step(stage, iter(hr_batches(1)), 1))
        outs.append([p.detach().clone() for p in stage.raw_g.parameters()])
    old_out, old_g, new_out, new_g = outs
    assert {k: v for k, v in old_out.items() if k != "data_wait_s"} == {
        k: v for k, v in new_out.items() if k != "data_wait_s"
    }
    assert all(torch.equal(a, b) for a, b in zip(old_g, new_g, strict=True))


def test_old_loss_sections_beside_a_losses_list_are_ignored_with_a_warning():
    parsed = job([{"type": "charbonnierloss"}], pixel_opt={"type": "L1Loss", "loss_weight": 1.0})
    assert [loss.type for loss in parsed.train.losses] == ["charbonnierloss"]
    assert any("train.pixel_opt: ignored (train.losses is set" in w for w in parsed.warnings)


def test_an_old_loss_section_without_a_type_is_one_line():
    with pytest.raises(ConfigError, match=r"train.pixel_opt: a loss section needs a type"):
        job(pixel_opt={"loss_weight": 1.0})


def test_perceptual_alpha_blends_pointwise_and_distribution_terms(monkeypatch, tmp_path):
    from helpers.fake_weights import fake_torch_home

    home = fake_torch_home(tmp_path, ("vgg19",), seed=1)
    monkeypatch.setenv("TORCH_HOME", str(home))
    sr, gt, _ = inputs()
    layers = {"conv1_2": 1.0, "relu2_2": 1.0}
    point = losses.build_loss("perceptualloss", layer_weights=layers, criterion="pd+l1", alpha=[0.0, 0.0])
    dist = losses.build_loss("perceptualloss", layer_weights=layers, criterion="pd+l1", alpha=[1.0, 1.0])
    half = losses.build_loss("perceptualloss", layer_weights=layers, criterion="pd+l1", alpha=[0.5, 0.5])
    p, d, h = point(sr, gt).item(), dist(sr, gt).item(), half(sr, gt).item()
    assert p > 0 and d > 0 and h == pytest.approx((p + d) / 2, rel=1e-5)
    clipped = losses.build_loss("perceptualloss", layer_weights=layers, criterion="pd+l1", clip_min=1e6)
    assert clipped(sr, gt).item() == 1e6
    with pytest.raises(ValueError, match=r"perceptualloss\.alpha: 1 values for 2 layers"):
        losses.build_loss("perceptualloss", layer_weights=layers, criterion="pd+l1", alpha=[0.5])
    with pytest.raises(ValueError, match=r"perceptualloss\.alpha: values above 0 need a distribution criterion"):
        losses.build_loss("perceptualloss", layer_weights=layers, criterion="l1", alpha=[0.5, 0.5])
