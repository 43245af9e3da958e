"""srcluster's on-the-fly degradations against traiNNer-redux's (commit 686293190), the reference a user's OTF config
was written for: JPEG, every OTF resize mode, the plateau kernels' beta, and the crop geometry.

`tests/reference/redux_degrade.npz` holds a 56 x 56 crop of Set14's barbara (`input`, uint8, rows 300:356, columns
420:476) and what traiNNer-redux's own functions make of it, run once outside this repository:

* `jpeg_q{75,85,95}`: `DiffJPEG(differentiable=False)(x, quality=torch.full((1,), q))` (utils/diffjpeg.py, as
  RealESRGANModel calls it), uint16 (value * 65535, rounded);
* `{mode}_down23`, `{mode}_up75`: `resize_pt(x, mode=mode, size=(23, 23) / (75, 75))` (data/degradations.py), uint16;
* `{mode}_x2_u8`: `resize_pt(x, mode=mode, size=(28, 28))` rounded to 8 bits, the final resize of a x2 pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.degradations import QUIET
from srcluster.data.crops import random_crop
from srcluster.data.stream import train_loader
from srcluster.degrade import kernels as K
from srcluster.degrade.config import Degradations, parse_degradations
from srcluster.degrade.jpeg import diff_jpeg
from srcluster.degrade.pipeline import _backend, apply, crop_size, draw, pair
from srcluster.degrade.resize import OTF_MODES, otf_resize
from srcluster.degrade.seeds import sample_seed
from srcluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "redux_degrade.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as stored:
        return dict(stored)


def _tensor(array: np.ndarray) -> torch.Tensor:
    scale = 65535 if array.dtype == np.uint16 else 255
    return torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).unsqueeze(0)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(1 / mse))


def _seeds(n: int) -> list[int]:
    return [sample_seed(7, 0, f"parity/{i}") for i in range(n)]


# --- JPEG -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [75, 85, 95])
def test_jpeg_is_redux_diffjpeg(ref: dict[str, np.ndarray], quality: int) -> None:
    x, expected = _tensor(ref["input"]), _tensor(ref[f"jpeg_q{quality}"])
    assert _psnr(diff_jpeg(x, torch.tensor([float(quality)])), expected) >= 45
    # libjpeg at the same quality is 0.6-1.0 dB milder and only ~32 dB from redux: the reference tells them apart
    assert _psnr(expected, x) < 40


@pytest.mark.parametrize("quality", [75, 85, 95])
def test_the_pipeline_jpegs_as_redux_by_default(ref: dict[str, np.ndarray], quality: int) -> None:
    cfg = Degradations.model_validate({**QUIET, "jpeg_prob2": 1, "jpeg_range2": [quality, quality]})
    x = _tensor(ref["input"])
    lr = apply(x, draw(cfg, _seeds(1), 1, 56, crop=56))  # the data workers' path (CPU)
    expected = (_tensor(ref[f"jpeg_q{quality}"]) * 255).round() / 255  # redux rounds its LR to 8 bits
    assert _psnr(lr, expected) >= 45
    plan = draw(cfg, _seeds(1), 1, 56, crop=56)
    assert _backend(plan, torch.device("cpu")) == _backend(plan, torch.device("cuda")) == "diffjpeg"


# --- resize -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", OTF_MODES)
@pytest.mark.parametrize("size", [23, 75])
def test_every_resize_mode_is_redux_resize_pt(ref: dict[str, np.ndarray], mode: str, size: int) -> None:
    expected = _tensor(ref[f"{mode}_{'down' if size < 56 else 'up'}{size}"])
    out = otf_resize(_tensor(ref["input"]), (size, size), mode)
    # float rounding apart at most; the kernels srcluster had (bicubic a = -0.75 up, MATLAB's Lanczos-3) were 47-48 dB
    # from redux's, which 45 dB would not catch
    assert _psnr(out, expected) >= 60


@pytest.mark.parametrize("mode", OTF_MODES)
def test_the_pipelines_final_resize_is_redux(ref: dict[str, np.ndarray], mode: str) -> None:
    cfg = Degradations.model_validate({**QUIET, "resize_mode_list3": [mode]})
    lr = apply(_tensor(ref["input"]), draw(cfg, _seeds(1), 2, 56, crop=56))
    assert _psnr(lr, _tensor(ref[f"{mode}_x2_u8"])) >= 60


# --- plateau kernels' beta --------------------------------------------------------------------------------------------


def _betas(kind: str, betap: tuple[float, float], n: int = 4000) -> np.ndarray:
    options = K.KernelOptions([kind], [1.0], (7, 7), 0.0, (0.5, 2.0), (0.5, 4.0), betap)
    rng = np.random.default_rng(0)
    return np.asarray([K.draw_blur(rng, options)[5] for _ in range(n)])


@pytest.mark.parametrize("kind", ["plateau_iso", "plateau_aniso"])
def test_plateau_beta_is_drawn_as_redux_draws_it(kind: str) -> None:
    # redux: uniform(low, 1) or uniform(1, high) with even odds, whatever the range; with the default [1, 2] half the
    # kernels get beta exactly 1
    betas = _betas(kind, (1.0, 2.0))
    at_one = betas == 1.0
    assert 0.45 < at_one.mean() < 0.55
    assert betas[~at_one].min() >= 1 and betas[~at_one].max() <= 2 and abs(betas[~at_one].mean() - 1.5) < 0.03
    # redux stops on a range that does not hold 1 (numpy's uniform(2, 1) raises): refused with the key's name
    with pytest.raises(ConfigError, match=r"^job.yml: datasets.train.betap_range: must be \[low, high\] with low <= 1"):
        parse_degradations({"betap_range": [2, 4]}, "job.yml")


# --- crop geometry ----------------------------------------------------------------------------------------------------


def test_a_crop_32px_larger_is_degraded_then_the_pair_is_cut() -> None:
    cfg = Degradations.model_validate(
        {**QUIET, "blur_prob": 1.0, "kernel_list": ["iso"], "kernel_prob": [1], "jpeg_prob": 1, "jpeg_range": [60, 90]}
    )
    assert crop_size(cfg, 64, 4) == 96 and crop_size(cfg, 64, 2) == 96 and crop_size(Degradations(), 64, 4) == 64
    rng = np.random.default_rng(3)
    hr = torch.from_numpy(rng.random((6, 3, 96, 96), dtype=np.float32))
    plan = draw(cfg, _seeds(6), 4, 64)
    assert plan.crop_size == 96 and plan.gt_size == 64
    patch, lr = pair(hr, plan)
    assert patch.shape == (6, 3, 64, 64) and lr.shape == (6, 3, 16, 16)
    whole = apply(hr, plan)  # the whole 96 px crop degraded, LR 24 px
    for i, (top, left) in enumerate(plan.offsets):
        assert 0 <= top <= 8 and 0 <= left <= 8
        assert torch.equal(lr[i], whole[i, :, top : top + 16, left : left + 16])
        assert torch.equal(patch[i], hr[i, :, top * 4 : top * 4 + 64, left * 4 : left * 4 + 64])
    assert len({tuple(o) for o in plan.offsets}) == 1  # redux's paired_random_crop: one place for the batch
    per_sample = cfg.model_copy(update={"otf_draws": "per_sample"})
    assert len({tuple(o) for o in draw(per_sample, _seeds(6), 4, 64).offsets}) > 1  # each sample its own place
    # not the same as degrading the 64 px patch alone: its borders would be the blur's and JPEG's borders
    alone = apply(patch, draw(cfg, _seeds(6), 4, 64, crop=64))
    assert not torch.equal(alone, lr)


def test_an_image_smaller_than_the_crop_is_padded_not_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(1, 256, (40, 50, 3), dtype=np.uint8)  # no black pixel of its own
    Image.fromarray(small).save(tmp_path / "small.png")
    result = random_crop((tmp_path / "small.png").read_bytes(), None, 64, 4, rng, hflip=False, rot=False, pad=True)
    assert not isinstance(result, str), result  # not "too_small"
    (patch,) = result
    assert patch.shape == (64, 64, 3)
    assert np.array_equal(patch[:40, :50], small) and not patch[40:].any() and not patch[:, 50:].any()

    cfg = Degradations.model_validate({**QUIET, "jpeg_prob": 1})
    stream = train_loader(str(tmp_path), crop=32, batch_size=2, steps=2, scale=4, degradations=cfg, shuffle_buffer=1)
    batches = list(stream)
    assert len(batches) == 2 and stream.skipped == {}
    hr, lr = batches[0]
    assert hr.shape == (2, 3, 32, 32) and lr.shape == (2, 3, 8, 8)
