"""traiNNer-redux parity of the losses, their log names and the validation metrics (issue #14, items 1, 2 and 11).

The reference numbers were obtained once by running traiNNer-redux's own functions (commit 686293190:
`traiNNer/utils/hsluv.py: rgb_to_hsluv`, `losses/basic_loss.py: HSLuvLoss, CharbonnierLoss`,
`losses/mssim_loss.py: MSSIMLoss`, `metrics/psnr_ssim.py: calculate_psnr, calculate_ssim`) on the float32 inputs
built below, and are hard-coded here. Gradients are compared through their norm and their value at probe pixels
(white, black, grey, colours).
"""

import cv2
import numpy as np
import pytest
import torch

from helpers.fake_weights import fake_torch_home
from helpers.shared import require, shared_data
from srcluster.components import losses, perceptual
from srcluster.config import parse_job
from srcluster.errors import ConfigError
from srcluster.train.state import build_stage
from srcluster.train.step import train_step
from srcluster.train.validate import build_metrics

LOSS_RTOL = 1e-4

# --- fixed float32 inputs ---------------------------------------------------------------------------------------------

PIXELS = [
    (1.0, 1.0, 1.0),  # white
    (0.0, 0.0, 0.0),  # black
    (0.5, 0.5, 0.5),  # grey
    (0.2, 0.2, 0.2),  # dark grey
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.3, 0.6, 0.2),
    (0.99, 0.99, 1.0),  # near white, bluish
    (1.0, 1.0, 0.98),  # near white, yellowish
    (0.01, 0.0, 0.0),  # near black
    (0.9, 0.9, 0.9),  # light grey
]
# traiNNer-redux's rgb_to_hsluv of PIXELS in float32: (hue, saturation, lightness)
REDUX_HSLUV = [
    (0.0, 0.0, 100.0),
    (0.0, 0.0, 0.0),
    (0.0, 0.0, 53.388962),
    (0.0, 1.6e-05, 21.246727),
    (12.177056, 100.0, 53.237114),
    (127.714989, 100.0, 87.735519),
    (265.874329, 100.0, 32.300873),
    (122.455666, 84.288864, 56.66172),
    (265.874634, 100.0, 99.183556),
    (85.874268, 100.0, 99.874542),
    (12.177047, 99.999992, 0.148666),
    (0.0, 0.0, 91.117081),
]


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(sr, gt), (1, 3, 32, 32) float32: smooth colours with white, black and grey blocks in both, sr perturbed and
    crossed by a white stripe (line art on white, clipped highlights)."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    gt = torch.stack(
        [0.5 + 0.5 * torch.sin(xx / 3), 0.5 + 0.5 * torch.cos(yy / 4), 0.5 + 0.5 * torch.sin((xx + yy) / 5)]
    )
    gt[:, :8, :8] = 1.0
    gt[:, 24:, :8] = 0.0
    gt[:, :8, 24:] = 0.5
    sr = (gt + 0.1 * torch.sin(xx * yy / 7)).clamp(0, 1)
    sr[:, 12:16, :] = 1.0
    return sr[None].contiguous(), gt[None].contiguous()


# (channel, y, x): white block, black block, grey block, a colour, the white stripe, another colour
PROBES = [(0, 2, 2), (0, 28, 2), (1, 2, 28), (2, 16, 16), (0, 13, 5), (1, 20, 20)]


def value_and_gradient(loss, sr: torch.Tensor, gt: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    sr = sr.clone().requires_grad_(True)
    terms = loss.components(sr, gt) if isinstance(loss, losses.MultiTermLoss) else {"loss": loss(sr, gt)}
    torch.stack(list(terms.values())).sum().backward()
    assert sr.grad is not None
    return {name: value.item() for name, value in terms.items()}, sr.grad


def assert_gradient(grad: torch.Tensor, norm: float, probes: list[float]) -> None:
    assert torch.isfinite(grad).all()
    assert grad.norm().item() == pytest.approx(norm, rel=LOSS_RTOL)
    got = torch.tensor([grad[0, c, y, x].item() for c, y, x in PROBES])
    torch.testing.assert_close(got, torch.tensor(probes), rtol=LOSS_RTOL, atol=LOSS_RTOL * norm)


# --- HSLuv ------------------------------------------------------------------------------------------------------------


def test_hsluv_conversion_in_float32_matches_redux_on_white_black_and_grey():
    pixels = torch.tensor(PIXELS, dtype=torch.float32).T.reshape(1, 3, 1, -1)
    out = losses.rgb_to_hsluv(pixels)[0, :, 0].T
    assert out.dtype == torch.float32
    # white's saturation is 0 (it was ~387,000 where the gray/white thresholds only worked in float64)
    torch.testing.assert_close(out, torch.tensor(REDUX_HSLUV), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("criterion", "terms"),
    [
        ("l1", {"hue": 0.0414055697619915, "saturation": 0.01826510950922966, "lightness": 0.03956310823559761}),
        (
            "charbonnier",
            {"hue": 0.0414055697619915, "saturation": 0.01826513186097145, "lightness": 0.03956315293908119},
        ),
    ],
)
def test_hsluvloss_terms_in_float32_match_redux(criterion, terms):
    got, _ = value_and_gradient(losses.build_loss("hsluvloss", criterion=criterion), *images())
    assert got == pytest.approx(terms, rel=LOSS_RTOL)


def test_hsluvloss_gradient_in_float32_matches_redux():
    # charbonnier (the templates' criterion): L1's gradient between two grays is the sign of float noise
    _, grad = value_and_gradient(losses.build_loss("hsluvloss", criterion="charbonnier"), *images())
    probes = [0.0, 8.947472088038921e-05, 0.00013122681411914527, -7.975561311468482e-05, 0.0, 2.6865682229981758e-05]
    assert_gradient(grad, 0.01530763041228056, probes)


def test_hsluvloss_on_line_art_with_white_background_matches_redux():
    """Set14's ppt3 (slides: text and shapes on white), a 192 px crop that is 24% pure white, against its LR x4 repeated
    to the same size: the loss was 700x and its gradient 140x redux's in float32."""
    hr = read_rgb(require(shared_data("Set14", "HR", "ppt3.png")))[128:320, 256:448]
    lr = read_rgb(require(shared_data("Set14", "LR_bicubic", "X4", "ppt3x4.png")))[32:80, 64:112]
    to_float = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    sr = to_float(lr.repeat(4, 0).repeat(4, 1))
    terms, grad = value_and_gradient(losses.build_loss("hsluvloss", criterion="charbonnier"), sr, to_float(hr))
    expected = {"hue": 0.008890893310308456, "saturation": 0.00564110791310668, "lightness": 0.015525555238127708}
    assert terms == pytest.approx(expected, rel=LOSS_RTOL)
    assert grad.norm().item() == pytest.approx(0.005002883262932301, rel=LOSS_RTOL)


@pytest.mark.parametrize(
    ("options", "terms"),
    [
        (  # both images blurred first, with torchvision's GaussianBlur(4 * strength + 1, strength)
            {"blur_strength": 1},
            {"hue": 0.006921691354364157, "saturation": 0.011117196641862392, "lightness": 0.02849947288632393},
        ),
        (  # both images downscaled first (antialiased bicubic)
            {"downscale_factor": 2},
            {"hue": 0.0062364256009459496, "saturation": 0.0074037909507751465, "lightness": 0.029492925852537155},
        ),
    ],
)
def test_hsluvloss_options_match_redux(options, terms):
    got, _ = value_and_gradient(losses.build_loss("hsluvloss", **options), *images())
    assert got == pytest.approx(terms, rel=LOSS_RTOL)


# --- MS-SSIM and Charbonnier ------------------------------------------------------------------------------------------


def test_mssimloss_value_and_gradient_in_float32_match_redux():
    terms, grad = value_and_gradient(losses.build_loss("mssimloss"), *images())
    assert terms["loss"] == pytest.approx(0.5264705419540405, rel=LOSS_RTOL)
    probes = [0.0, 8.225128112826496e-06, -4.6253440814325586e-05, 0.0007760063163004816, 0.0, -0.00397682748734951]
    assert_gradient(grad, 0.037483230233192444, probes)


def test_charbonnierloss_value_and_gradient_match_redux():
    terms, grad = value_and_gradient(losses.build_loss("charbonnierloss"), *images())
    assert terms["loss"] == pytest.approx(0.12075867503881454, rel=LOSS_RTOL)
    step = 0.00032552084303461015  # 1 / (3 * 32 * 32): the sign of each difference over the pixel count
    assert_gradient(grad, 0.016886064782738686, [0.0, step, step, -step, step, step])


# --- perceptual and DISTS: float32 under the training autocast -------------------------------------------------------


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    return fake_torch_home(tmp_path_factory.mktemp("torch-home"), ("vgg19", "vgg16", "alexnet"), seed=4)


@pytest.mark.parametrize("loss_type", ["perceptualloss", "distsloss"])
def test_feature_losses_compute_in_float32_under_bf16_autocast(loss_type, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    loss = losses.build_loss(loss_type)
    sr, gt = images()
    reference, reference_grad = value_and_gradient(loss, sr, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp, amp_grad = value_and_gradient(loss, sr, gt)
    assert under_amp["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    cosine = torch.nn.functional.cosine_similarity(amp_grad.flatten(), reference_grad.flatten(), dim=0)
    assert cosine.item() > 0.9999


# --- log names --------------------------------------------------------------------------------------------------------


def test_training_log_names_the_losses_as_redux_does():
    """traiNNer-redux logs `l_g_` + the type lower-cased without "loss", one key per term of a loss returning terms
    (HSLuv: hue, saturation, lightness), and `l_g_total`."""
    job = parse_job(
        {
            "name": "log-names",
            "scale": 2,
            "manual_seed": 1,
            "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "train": {
                "total_iter": 2,
                "losses": [
                    {"type": "CharbonnierLoss", "loss_weight": 1.0},
                    {"type": "mssimloss", "loss_weight": 0.5},
                    {"type": "hsluvloss", "loss_weight": 2.0, "criterion": "charbonnier"},
                    {"type": "l1loss", "loss_weight": 0},  # weight 0: not built, not logged
                ],
            },
        }
    )
    stage = build_stage(job, torch.device("cpu"), log=lambda *_: None)
    hr = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    logged = train_step(stage, iter([hr]), accum=1)
    terms = {"l_g_charbonnier", "l_g_mssim", "l_g_hsluv_hue", "l_g_hsluv_saturation", "l_g_hsluv_lightness"}
    assert {key for key in logged if key.startswith("l_")} == terms | {"l_g_total"}
    assert float(logged["l_g_total"]) == pytest.approx(sum(float(logged[key]) for key in terms), rel=1e-5)


def test_log_labels_follow_redux_rule():
    assert [losses.log_label(t) for t in ("perceptualloss", "distsloss", "MSSIMLoss", "HSLuvLoss", "mseloss")] == [
        "l_g_perceptual",
        "l_g_dists",
        "l_g_mssim",
        "l_g_hsluv",
        "l_g_mse",
    ]


# --- validation metrics -----------------------------------------------------------------------------------------------


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# traiNNer-redux's calculate_psnr / calculate_ssim (crop_border 4) of each Set5 HR image against its x4 LR repeated 4x4,
# on RGB and on Y: (psnr rgb, ssim rgb, psnr y, ssim y)
REDUX_SET5 = {
    "baby": (27.804123330462197, 0.7682987852847281, 29.194405683793253, 0.7988790188664475),
    "bird": (25.374814898637062, 0.753482635088425, 27.500079353919688, 0.7822988431501187),
    "butterfly": (18.86102338103814, 0.6121441383529697, 20.028039775323663, 0.643557622376017),
    "head": (27.769881750372008, 0.6320148224004197, 30.267828271550307, 0.7113369645171337),
    "woman": (22.972393394858585, 0.732939800145604, 24.301088376405655, 0.7540227470325019),
}


@pytest.mark.parametrize("name", list(REDUX_SET5))
def test_psnr_and_ssim_match_redux_on_set5(name):
    hr = read_rgb(require(shared_data("Set5", "HR", f"{name}.png")))
    lr = read_rgb(require(shared_data("Set5", "LR_bicubic", "X4", f"{name}x4.png")))
    sr = lr.repeat(4, 0).repeat(4, 1)
    hr = hr[: sr.shape[0], : sr.shape[1]]
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    psnr_rgb, ssim_rgb, psnr_y, ssim_y = REDUX_SET5[name]
    for y, psnr, ssim in ((False, psnr_rgb, ssim_rgb), (True, psnr_y, ssim_y)):
        options = {"crop_border": 4, "test_y_channel": y}
        got_psnr = perceptual.build_metric("calculate_psnr", **options)(to_tensor(sr), to_tensor(hr)).item()
        got_ssim = perceptual.build_metric("calculate_ssim", **options)(to_tensor(sr), to_tensor(hr)).item()
        assert got_psnr == pytest.approx(psnr, abs=1e-4)
        assert got_ssim == pytest.approx(ssim, abs=1e-6)


def metrics_job(metrics: dict):
    return parse_job(
        {
            "name": "better",
            "scale": 2,
            "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "train": {"total_iter": 2, "losses": [{"type": "charbonnierloss"}]},
            "val": {"metrics": metrics},
        }
    )


def test_metric_better_option_sets_the_direction_of_the_best_value(torch_home, monkeypatch):
    """The templates' commented `better: lower` lines (lpips, dists) are accepted and act as in traiNNer-redux: the
    direction in which a value counts as the best; without it each metric keeps its own direction."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    job = metrics_job(
        {
            "psnr": {"type": "calculate_psnr", "crop_border": 4},
            "lpips": {"type": "calculate_lpips", "better": "lower"},
            "dists": {"type": "calculate_dists", "better": "lower"},
            "ssim_reversed": {"type": "calculate_ssim", "better": "lower"},
            "lpips_reversed": {"type": "calculate_lpips", "better": "higher"},
        }
    )
    built = build_metrics(job.val.metrics, job.scale)
    assert {name: metric.better for name, metric in built.items()} == {
        "psnr": "higher",
        "lpips": "lower",
        "dists": "lower",
        "ssim_reversed": "lower",
        "lpips_reversed": "higher",
    }


def test_metric_better_must_be_higher_or_lower():
    with pytest.raises(ConfigError, match=r"val\.metrics\.lpips\.better.*'higher' or 'lower'"):
        metrics_job({"lpips": {"type": "calculate_lpips", "better": "lowest"}})
