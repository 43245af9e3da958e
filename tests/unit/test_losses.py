"""Losses by traiNNer-redux name: MS-SSIM, HSLuv, VGG perceptual (with test-made VGG19 weights), DISTS."""

import pytest
import torch
import torch.nn.functional as F

from helpers.fake_weights import fake_torch_home
from srcluster.components import losses, perceptual
from srcluster.errors import SrclusterError


def smooth_images(batch=2, channels=3, size=64, noise=0.05, seed=0):
    """A smooth random image and a noisy copy of it, both in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    hr = F.interpolate(torch.rand(batch, channels, size // 8, size // 8, generator=g), size=size, mode="bicubic")
    hr = hr.clamp(0, 1)
    return (hr + noise * torch.randn(hr.shape, generator=g)).clamp(0, 1), hr


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random VGG19/VGG16 weights under torchvision's file names."""
    return fake_torch_home(tmp_path_factory.mktemp("torch-home"), ("vgg19", "vgg16"), seed=1)


@pytest.fixture
def weights(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home / "hub" / "checkpoints"


def test_traiNNer_redux_loss_names_are_registered():
    assert {
        "mssimloss",
        "perceptualloss",
        "hsluvloss",
        "ganloss",
        "distsloss",
        "charbonnierloss",
        "l1loss",
        "mseloss",
    } <= set(losses.LOSSES.names())


# --- MS-SSIM ----------------------------------------------------------------------------------------------------------


def test_ms_ssim_matches_torchmetrics_on_the_textbook_definition():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as reference

    # luminance at the coarsest scale, 5 scales of an image large enough for 'valid' 11x11 windows at each
    sr, hr = smooth_images(channels=1, size=192)
    ours = losses.ms_ssim(sr, hr, include_luminance=True)
    torch.testing.assert_close(ours, reference(sr, hr, data_range=1.0, reduction="none"), atol=1e-5, rtol=0)
    assert (ours < 0.999).all()


def test_mssimloss_is_zero_for_identical_images_and_grows_with_noise():
    loss = losses.build_loss("mssimloss")
    sr, hr = smooth_images(batch=1, size=48)
    assert loss(hr, hr).item() == pytest.approx(0, abs=1e-6)
    small, big = loss(sr, hr).item(), loss(smooth_images(batch=1, size=48, noise=0.2)[0], hr).item()
    assert 0 < small < big < 1
    # options traiNNer-redux offers change the value but keep it a loss in [0, 1]
    for options in (
        {"is_prod": False},
        {"test_y_channel": False},
        {"include_luminance": True},
        {"color_space": "ycbcr"},
        {"downsample": True},
    ):
        assert 0 < losses.build_loss("mssimloss", **options)(sr, hr).item() < 1
    with pytest.raises(ValueError, match="color_space"):
        losses.build_loss("mssimloss", color_space="lab")


def test_mssimloss_uses_yiq_luma_by_default():
    sr, hr = smooth_images(size=64)
    y = losses.luma(sr, "yiq")
    torch.testing.assert_close(y, 0.299 * sr[:, :1] + 0.587 * sr[:, 1:2] + 0.114 * sr[:, 2:])
    on_luma = 1 - losses.ms_ssim(losses.luma(sr, "yiq"), losses.luma(hr, "yiq")).mean()
    assert losses.build_loss("mssimloss")(sr, hr).item() == pytest.approx(on_luma.item(), abs=1e-6)


def test_mssimloss_gradients_are_finite():
    sr, hr = smooth_images(size=32)  # coarse scales smaller than the window use zero-padded windows
    sr.requires_grad_(True)
    losses.build_loss("mssimloss")(sr, hr).backward()
    assert torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


# --- HSLuv ------------------------------------------------------------------------------------------------------------

# (r, g, b) -> (h, s, l) from the HSLuv reference implementation (hsluv.org; the `hsluv` package, v5)
HSLUV_REFERENCE = {
    (1.0, 0.0, 0.0): (12.177050630061776, 100.0, 53.23711559542933),
    (0.0, 1.0, 0.0): (127.71501294924047, 100.0, 87.73551910965973),
    (0.0, 0.0, 1.0): (265.8743202181779, 100.0, 32.30087290398002),
    (0.5, 0.5, 0.5): (0.0, 0.0, 53.38896474111415),
    (0.2, 0.6, 0.3): (133.3010324985881, 84.35934244307235, 56.10194188397672),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 1.0, 1.0): (0.0, 0.0, 100.0),
}


def as_pixels(colours):
    return torch.tensor(colours, dtype=torch.float64).T.reshape(1, 3, 1, -1)


def test_hsluv_conversion_matches_reference_values():
    out = losses.rgb_to_hsluv(as_pixels(list(HSLUV_REFERENCE)))[0, :, 0].T
    for got, expected in zip(out.tolist(), HSLUV_REFERENCE.values(), strict=True):
        assert got == pytest.approx(expected, abs=1e-6)


def test_hsluv_conversion_matches_the_hsluv_package_on_random_colours():
    hsluv = pytest.importorskip("hsluv")  # a dev extra
    colours = torch.rand(300, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64).tolist()
    out = losses.rgb_to_hsluv(as_pixels(colours))[0, :, 0].T.tolist()
    for rgb, (hue, saturation, lightness) in zip(colours, out, strict=True):
        ref_h, ref_s, ref_l = hsluv.rgb_to_hsluv(rgb)
        assert min(abs(hue - ref_h), 360 - abs(hue - ref_h)) < 1e-6
        assert (saturation, lightness) == pytest.approx((ref_s, ref_l), abs=1e-6)


def test_hsluvloss_hand_computed_cases():
    loss = losses.build_loss("hsluvloss")
    red, blue, gray = (as_pixels([c]).float() for c in ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)))
    assert loss(red, red).item() == pytest.approx(0, abs=1e-7)

    (h1, _, l1), (h2, _, l2) = HSLUV_REFERENCE[(1.0, 0.0, 0.0)], HSLUV_REFERENCE[(0.0, 0.0, 1.0)]
    d = abs(h1 - h2) / 360
    parts = loss.components(red, blue)
    assert parts["hue"].item() == pytest.approx(min(d, 1 - d) * 2 / 3, rel=1e-5)
    assert parts["saturation"].item() == pytest.approx(0, abs=1e-6)  # both fully saturated
    assert parts["lightness"].item() == pytest.approx(abs(l1 - l2) / 100 / 3, rel=1e-5)
    assert loss(red, blue).item() == pytest.approx(sum(v.item() for v in parts.values()))

    # gray against a colour: the hue term is the larger saturation (1 for pure red), not an angle
    parts = loss.components(gray, red)
    assert parts["hue"].item() == pytest.approx(1 / 3, rel=1e-5)
    l_gray, l_red = HSLUV_REFERENCE[(0.5, 0.5, 0.5)][2] / 100, l1 / 100
    weight = min(l_gray, 1 - l_gray) + min(l_red, 1 - l_red)
    assert parts["saturation"].item() == pytest.approx(1.0 * weight / 3, rel=1e-4)


def test_hsluvloss_options_and_gradients():
    sr, hr = smooth_images(size=16)
    sr.requires_grad_(True)
    l2 = losses.build_loss("hsluvloss", criterion="l2", hue_weight=0, downscale_factor=2)
    assert set(l2.components(sr, hr)) == {"saturation", "lightness"}  # a 0-weight term is not logged, as in redux
    losses.build_loss("hsluvloss", criterion="charbonnier")(sr, hr).backward()
    assert torch.isfinite(sr.grad).all()
    extremes = as_pixels([(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)]).float().requires_grad_(True)
    losses.build_loss("hsluvloss")(extremes, as_pixels([(0.1, 0.2, 0.3)] * 3).float()).backward()
    assert torch.isfinite(extremes.grad).all()  # black, white and gray have undefined hue: no NaN may leak
    with pytest.raises(ValueError, match="criterion"):
        losses.build_loss("hsluvloss", criterion="huber")


# --- perceptual (VGG19) -----------------------------------------------------------------------------------------------


def test_perceptual_loss_without_weights_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        SrclusterError, match=r"vgg19-dcbb9e9d\.pth in .*hub/checkpoints/.*srcluster weights pull vgg19"
    ):
        losses.build_loss("perceptualloss")
    with pytest.raises(SrclusterError, match="does not exist"):
        losses.build_loss("perceptualloss", vgg_weights_path=str(tmp_path / "nope.pth"))


def test_perceptual_loss_rejects_a_file_that_is_not_vgg19(tmp_path, weights):
    torch.save({"features.0.weight": torch.zeros(1), "features.0.bias": torch.zeros(64)}, tmp_path / "shape.pth")
    with pytest.raises(SrclusterError, match=r"not torchvision's vgg19 checkpoint: features\.0\.weight has shape"):
        losses.build_loss(
            "perceptualloss", layer_weights={"conv1_1": 1.0}, vgg_weights_path=str(tmp_path / "shape.pth")
        )
    torch.save({"classifier.0.weight": torch.zeros(1)}, tmp_path / "keys.pth")
    with pytest.raises(SrclusterError, match=r"not torchvision's vgg19 checkpoint: it lacks features\.0\.weight"):
        losses.build_loss("perceptualloss", vgg_weights_path=str(tmp_path / "keys.pth"))


def conv1_1(x, state, use_input_norm=True):
    if use_input_norm:
        x = (x - torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(perceptual.IMAGENET_STD).view(
            1, 3, 1, 1
        )
    # traiNNer-redux pads the first conv by replicating the border
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), state["features.0.weight"], state["features.0.bias"])


@pytest.mark.parametrize("use_input_norm", [True, False])
def test_perceptual_loss_equals_hand_computed_first_layer_distance(weights, use_input_norm):
    state = torch.load(weights / perceptual.HUB_FILES["vgg19"], weights_only=True)
    sr, hr = smooth_images(size=16)
    for criterion, distance in (
        ("l1", lambda d: d.abs()),
        ("l2", lambda d: d**2),
        ("charbonnier", lambda d: torch.sqrt(d**2 + 1e-12)),
    ):
        loss = losses.build_loss(
            "perceptualloss", layer_weights={"conv1_1": 0.5}, criterion=criterion, use_input_norm=use_input_norm
        )
        expected = 0.5 * distance(conv1_1(sr, state, use_input_norm) - conv1_1(hr, state, use_input_norm)).mean()
        assert loss(sr, hr).item() == pytest.approx(expected.item(), rel=1e-5)
        assert len(loss.vgg.body) == 1  # only the layers up to the deepest one asked for are built


def test_perceptual_loss_defaults_follow_the_criterion(weights):
    assert losses.build_loss("perceptualloss").layer_weights == losses.CONV_LAYER_WEIGHTS
    assert losses.build_loss("perceptualloss", criterion="fd").layer_weights == losses.RELU_LAYER_WEIGHTS
    mix = losses.build_loss("perceptualloss", criterion="pd+l1")
    assert mix.layer_weights == {**losses.CONV_LAYER_WEIGHTS, **losses.RELU_LAYER_WEIGHTS}
    assert mix.distribution_layers == set(losses.RELU_LAYER_WEIGHTS)  # conv layers take the L1 part
    with pytest.raises(ValueError, match="criterion"):
        losses.build_loss("perceptualloss", criterion="fro")
    with pytest.raises(ValueError, match="unknown VGG19 layer 'conv6_1'"):
        losses.build_loss("perceptualloss", layer_weights={"conv6_1": 1.0})


@pytest.mark.parametrize("criterion", ["charbonnier", "pd+l1", "fd"])
def test_perceptual_loss_trains_the_generator_not_vgg(weights, criterion):
    loss = losses.build_loss("perceptualloss", criterion=criterion, num_proj_fd=8)
    sr, hr = smooth_images(batch=1, size=16)  # relu5_4 is 1x1 here: smaller than fd's 5x5 projections
    assert loss(hr, hr).item() == pytest.approx(0, abs=1e-5)  # charbonnier's sqrt(eps) per element remains
    sr.requires_grad_(True)
    value = loss(sr, hr)
    assert value.item() > 1e-3
    value.backward()
    assert torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.vgg.training  # the feature network never leaves eval mode


def test_pd_distance_hand_computed():
    a = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)  # all mass on the first pixel
    b = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)  # all mass on the last
    # CDFs (1, 1, 1, 1) and (0, 0, 0, 1): L1 distance 3
    assert losses.pd_distance(a, b).item() == pytest.approx(3.0)
    assert losses.pd_distance(a, a).item() == 0


def test_perceptual_loss_reads_weights_from_an_explicit_path(weights, tmp_path, monkeypatch):
    (tmp_path / "vgg.pth").write_bytes((weights / perceptual.HUB_FILES["vgg19"]).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    loss = losses.build_loss(
        "perceptualloss", layer_weights={"relu2_1": 1.0}, vgg_weights_path=str(tmp_path / "vgg.pth")
    )
    sr, hr = smooth_images(size=16)
    assert loss(sr, hr).item() > 0


def test_dists_loss_is_zero_for_identical_images(weights):
    loss = losses.build_loss("distsloss")
    sr, hr = smooth_images(batch=1, size=32)
    assert loss(hr, hr).item() == pytest.approx(0, abs=1e-6)
    sr.requires_grad_(True)
    value = loss(sr, hr)
    value.backward()
    assert value.item() > 0 and torch.isfinite(sr.grad).all()
