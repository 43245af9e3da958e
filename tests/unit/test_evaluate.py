"""Benchmark evaluation (bicubic baseline, a model file, tiling) and the metric registry, LPIPS/DISTS included."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.fake_weights import fake_torch_home
from helpers.shared import shared_data
from srcluster.components import archs, perceptual, weights
from srcluster.errors import SrclusterError
from srcluster.evaluate import evaluate, format_table
from srcluster.infer.upscaler import tiled_upscale

SHARED_DATA = shared_data()


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random AlexNet/VGG16 weights under torchvision's file names."""
    return fake_torch_home(tmp_path_factory.mktemp("torch-home"), ("alexnet", "vgg16"), seed=2, bias_std=0.01)


@pytest.fixture
def backbones(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home / "hub" / "checkpoints"


def write_images(folder: Path, count=2, size=(40, 36), gray_last=True):
    """Smooth random test images; the last one is saved as a one-channel (mode L) PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(4)
    for i in range(count):
        small = torch.rand(1, 3, size[0] // 4, size[1] // 4, generator=g)
        image = torch.nn.functional.interpolate(small, size=size, mode="bicubic").clamp(0, 1)[0]
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        img = Image.fromarray(array)
        (img.convert("L") if gray_last and i == count - 1 else img).save(folder / f"img{i}.png")
    return folder


# --- the bicubic baseline ---------------------------------------------------------------------------------------------


def test_bicubic_set5_x4_matches_the_published_baseline():
    set5 = SHARED_DATA / "Set5" / "HR"
    if not set5.is_dir():
        pytest.skip(f"Set5 is not at {set5}")
    result = evaluate(str(set5), 4)
    assert [row["name"] for row in result["images"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert result["mean"]["psnr"] == pytest.approx(28.43, abs=0.02)
    assert result["mean"]["ssim"] == pytest.approx(0.8113, abs=0.001)
    assert result["metrics"] == {"psnr": "higher", "ssim": "higher"}
    assert result["model"] == "bicubic" and result["scale"] == 4
    json.dumps(result)  # the CLI's --json form
    table = format_table(result)
    assert "28.43" in table and "0.8113" in table and "butterfly" in table and "psnr ↑" in table


def test_mod_crop_gray_images_and_rgb_metrics(tmp_path):
    folder = write_images(tmp_path / "hr", size=(38, 35))  # neither side a multiple of 4
    result = evaluate(str(folder), 4, test_y_channel=False)
    assert [row["size"] for row in result["images"]] == [[36, 32], [36, 32]]
    assert all(20 < row["psnr"] < 60 and 0 < row["ssim"] <= 1 for row in result["images"])
    y = evaluate(str(folder), 4)
    # the gray image is scored as gray RGB: its Y is 16 + 219/255 * L, so every error shrinks by 219/255 on Y
    gray_gain = -20 * math.log10(219 / 255)
    assert y["images"][-1]["psnr"] - result["images"][-1]["psnr"] == pytest.approx(gray_gain, abs=1e-6)
    assert y["images"][0]["psnr"] - result["images"][0]["psnr"] != pytest.approx(gray_gain, abs=1e-3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SrclusterError, match="no images"):
        evaluate(str(tmp_path / "empty"), 2)
    with pytest.raises(SrclusterError, match="unknown metric 'psnrr' \\(did you mean 'psnr'"):
        evaluate(str(folder), 4, metrics=("psnrr",))


# --- tiling and models ------------------------------------------------------------------------------------------------


def test_tiled_upscale_equals_one_pass_for_a_conv_model():
    torch.manual_seed(0)
    # 4 convs of 3x3: each output pixel sees 4 LR pixels around it, within the 8-pixel overlap
    net = archs.build_generator("compact", 2, num_feat=8, num_conv=2).eval()
    lr = torch.rand(1, 3, 37, 29)
    with torch.inference_mode():
        whole = net(lr)
        tiled = tiled_upscale(net, lr, 2, tile=16, overlap=8)
        assert tiled.shape == whole.shape == (1, 3, 74, 58)
        torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
        # too little context: the tile seams show
        assert (tiled_upscale(net, lr, 2, tile=16, overlap=1) - whole).abs().max() > 1e-4
        assert tiled_upscale(net, lr, 2, tile=0, overlap=8).equal(whole)


def test_a_model_file_evaluates_and_tiling_does_not_change_the_scores(tmp_path):
    folder = write_images(tmp_path / "hr", count=2, size=(48, 40))
    torch.manual_seed(0)
    net = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    model = weights.export_generator(net, tmp_path / "net_g.safetensors")
    whole = evaluate(str(folder), 2, model=str(model), device="cpu")
    tiled = evaluate(str(folder), 2, model=str(model), tile_size=12, tile_overlap=8, device="cpu")
    assert whole["model"] == str(model)
    for a, b in zip(whole["images"], tiled["images"], strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-3) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-5)
    bicubic = evaluate(str(folder), 2)
    assert whole["mean"]["psnr"] != bicubic["mean"]["psnr"]  # the untrained model is scored, not bicubic

    torch.save({"params_ema": net.state_dict()}, tmp_path / "net_g.pth")  # traiNNer-style .pth, weights-only
    assert evaluate(str(folder), 2, model=str(tmp_path / "net_g.pth"))["mean"] == pytest.approx(whole["mean"])


def test_model_errors_are_one_line(tmp_path):
    folder = write_images(tmp_path / "hr", count=1)
    net = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    model = weights.export_generator(net, tmp_path / "g.safetensors")
    with pytest.raises(SrclusterError, match=r"is a x2 model \(RealESRGAN Compact\), not x4"):
        evaluate(str(folder), 4, model=str(model))
    with pytest.raises(SrclusterError, match="does not exist"):
        evaluate(str(folder), 2, model=str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(SrclusterError, match="spandrel does not recognise"):
        evaluate(str(folder), 2, model=str(tmp_path / "odd.safetensors"))


# --- perceptual metrics -----------------------------------------------------------------------------------------------


def test_metric_registry_directions_and_traiNNer_redux_names():
    assert {"psnr", "ssim", "lpips", "dists", "topiq"} <= set(perceptual.METRICS.names())
    assert perceptual.build_metric("calculate_psnr").better == "higher"
    hr = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    sr = hr.clone()
    sr[0, 0, 0, 0] ^= 1  # one value off by one: MSE = 1 / (3 * 24 * 24)
    values = perceptual.build_metric("psnr", crop_border=0)(sr, hr)
    assert values.shape == (2,) and math.isinf(values[1])
    assert values[0].item() == pytest.approx(10 * math.log10(255**2 * 3 * 24 * 24))


def load_features(arch, backbones):
    """torchvision's `features` module for `arch` holding the test backbone's weights (built without random init)."""
    with torch.device("meta"):
        features = perceptual.alexnet_features() if arch == "alexnet" else perceptual.vgg_features(arch)
    state = torch.load(backbones / perceptual.HUB_FILES[arch], weights_only=True)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, assign=True)
    return features


def test_lpips_matches_torchmetrics_with_the_same_backbone(backbones, monkeypatch):
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    metric = perceptual.build_metric("calculate_lpips")
    assert metric.better == "lower"
    g = torch.Generator().manual_seed(5)
    sr, hr = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    ours = metric(sr, hr)
    assert ours.shape == (2,) and (ours > 0).all()
    assert metric(hr, hr).abs().max() < 1e-7

    # torchmetrics' own LPIPS (linear heads from its wheel) around our test AlexNet
    features = load_features("alexnet", backbones)
    monkeypatch.setattr(torchvision.models, "alexnet", lambda weights=None: SimpleNamespace(features=features))
    reference = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours, reference(sr, hr, normalize=True).flatten(), atol=1e-5, rtol=1e-4)
    # uint8 input is read as /255
    u8 = (sr * 255).round().to(torch.uint8)
    torch.testing.assert_close(metric(u8, hr), metric(u8.float() / 255, hr))


def test_dists_matches_torchmetrics_with_the_same_backbone(backbones, monkeypatch):
    import torchmetrics.functional.image.dists as tm_dists

    metric = perceptual.build_metric("dists")
    assert metric.better == "lower"
    g = torch.Generator().manual_seed(6)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    ours = metric(sr, hr)
    assert metric(hr, hr).abs().max() < 1e-6 and (ours > 0).all()

    # torchmetrics' DISTS network around our test VGG16, with the alpha/beta its wheel ships
    features = load_features("vgg16", backbones)
    monkeypatch.setattr(tm_dists, "vgg16", lambda weights=None: SimpleNamespace(features=features))
    reference = tm_dists.DISTSNetwork(load_weights=False)
    learned = torch.load(
        perceptual.torchmetrics_file("dists_models", "weights.pt"), map_location="cpu", weights_only=True
    )
    reference.alpha.data, reference.beta.data = learned["alpha"], learned["beta"]
    torch.testing.assert_close(ours, reference(sr, hr).flatten(), atol=1e-5, rtol=1e-4)


def test_perceptual_metrics_fail_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SrclusterError, match=r"alexnet-owt-7be5be79\.pth in .*hub/checkpoints/"):
        perceptual.build_metric("lpips")
    with pytest.raises(SrclusterError, match=r"vgg16-397923af\.pth in "):
        perceptual.build_metric("dists")
    with pytest.raises(SrclusterError, match=r"cfanet_fr_kadid_res50-2c4cc61d\.pth in .*hub/pyiqa/"):
        perceptual.build_metric("calculate_topiq")


def test_evaluate_with_perceptual_metrics(tmp_path, backbones):
    folder = write_images(tmp_path / "hr", count=1, size=(40, 40), gray_last=False)
    result = evaluate(str(folder), 2, metrics=("psnr", "lpips", "dists"))
    assert result["metrics"] == {"psnr": "higher", "lpips": "lower", "dists": "lower"}
    row = result["images"][0]
    assert row["lpips"] > 0 and 0 < row["dists"] < 1
    assert "lpips ↓" in format_table(result)
