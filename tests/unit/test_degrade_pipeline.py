"""The on-the-fly pipeline end to end: LR sizes, seeds and batch cuts, each step's effect, plans, the preview grid."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from helpers.degradations import ALL_CODECS, EVERYTHING, QUIET
from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import apply, crop_size, describe, draw, pair
from srcluster.degrade.preview import preview
from srcluster.degrade.resize import imresize
from srcluster.degrade.seeds import sample_seed

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """(8, 3, 96, 96) real photo crops in [0, 1]: what the data workers cut for 64 px patches with high-order
    degradations (traiNNer-redux's gt_size + 32)."""
    rng = np.random.default_rng(0)
    crops = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()) * 2:
        y, x = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
        crops.append(photo[y : y + 96, x : x + 96])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)


def _seeds(n: int, epoch: int = 0) -> list[int]:
    return [sample_seed(1234, epoch, f"shard-0/{i:04d}") for i in range(n)]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_same_seeds_give_bit_identical_lr_however_the_batch_is_cut(hr: torch.Tensor) -> None:
    cfg = Degradations.model_validate({**EVERYTHING, "otf_draws": "per_sample"})  # what per-sample draws are for
    seeds = _seeds(8)
    whole = apply(hr, draw(cfg, seeds, 4, 64))
    halves = torch.cat([apply(hr[:4], draw(cfg, seeds[:4], 4, 64)), apply(hr[4:], draw(cfg, seeds[4:], 4, 64))])
    assert torch.equal(whole, halves)
    reordered = [3, 0, 7, 5]
    part = apply(hr[reordered], draw(cfg, [seeds[i] for i in reordered], 4, 64))
    assert torch.equal(part, whole[reordered])
    other_epoch = apply(hr, draw(cfg, _seeds(8, epoch=1), 4, 64))
    assert not torch.equal(other_epoch, whole)


@pytest.mark.parametrize(("scale", "gt"), [(4, 64), (2, 48), (3, 36), (4, 16), (1, 24)])
def test_every_path_gives_exactly_the_patch_sizes(hr: torch.Tensor, scale: int, gt: int) -> None:
    lq = gt // scale
    for settings in (
        {},
        {"video_codec_prob": 1.0, **ALL_CODECS},
        EVERYTHING,
        {**EVERYTHING, "jpeg_backend": "libjpeg"},
        {**EVERYTHING, "jpeg_backend": "libjpeg_model"},
        {**EVERYTHING, "resize_prob": [1, 0, 0], "resize_prob2": [0, 1, 0]},
        {**EVERYTHING, "resize_prob": [0, 1, 0], "resize_prob2": [0, 0, 1], "resize_range": [0.15, 0.2]},
    ):
        cfg = Degradations.model_validate(settings)
        crop = crop_size(cfg, gt, scale)
        x = hr[:, :, :crop, :crop]
        patch, lr = pair(x, draw(cfg, _seeds(len(x)), scale, gt))
        assert patch.shape == (len(x), 3, gt, gt) and lr.shape == (len(x), 3, lq, lq) and lr.dtype == torch.float32
        assert float(lr.min()) >= 0 and float(lr.max()) <= 1


def test_without_high_order_degradation_lr_is_matlab_bicubic(hr: torch.Tensor) -> None:
    hr = hr[..., :64, :64].contiguous()  # no border without high-order degradations
    before = hr.clone()
    lr = apply(hr, draw(Degradations(), _seeds(8), 4, 64))
    assert torch.equal(lr, imresize(hr, 1 / 4, kernel="bicubic").clamp(0, 1))
    assert torch.equal(hr, before)  # the HR batch is not modified
    u8 = (hr * 255).round().to(torch.uint8)
    assert torch.equal(
        apply(u8, draw(Degradations(), _seeds(8), 4, 64)),
        apply(u8.float() / 255, draw(Degradations(), _seeds(8), 4, 64)),
    )


def _lr(hr: torch.Tensor, **settings) -> torch.Tensor:
    return apply(hr, draw(Degradations.model_validate({**QUIET, **settings}), _seeds(len(hr)), 4, 64))


def _laplacian_energy(x: torch.Tensor) -> float:
    lap = x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


def test_each_step_moves_the_lr_the_expected_way(hr: torch.Tensor) -> None:
    clean = _lr(hr)
    blurred = _lr(hr, blur_prob=1.0, blur_sigma=[2.5, 3.0], kernel_list=["iso"], kernel_prob=[1], kernel_range=[21, 21])
    assert _laplacian_energy(blurred) < 0.5 * _laplacian_energy(clean)
    # noise at the HR size, then the 4x downscale averages it: the LR's noise grows with sigma, below it
    stds = [float((_lr(hr, gaussian_noise_prob2=1.0, noise_range2=[s, s]) - clean).std()) * 255 for s in (5, 15, 30)]
    assert stds == sorted(stds) and 1 < stds[0] < 5 and stds[-1] < 30, stds
    poisson = _lr(hr, poisson_scale_range2=[3, 3])
    assert float((poisson - clean).var()) > 1e-4
    sharp = _lr(hr, lq_usm=True, lq_usm_radius_range=[15, 15])
    assert _laplacian_energy(sharp) > _laplacian_energy(clean)
    psnrs = [_psnr(_lr(hr, jpeg_prob2=1.0, jpeg_range2=[q, q]), clean) for q in (90, 50, 20, 5)]
    assert psnrs == sorted(psnrs, reverse=True) and psnrs[0] > 30, psnrs
    psnrs = [_psnr(_lr(hr[:4], video_codec_prob=1.0, video_crf_range=[c, c]), clean[:4]) for c in (10, 25, 40, 51)]
    assert psnrs == sorted(psnrs, reverse=True) and psnrs[0] - psnrs[-1] > 8, psnrs


def test_plans_pickle_and_describe_their_steps(hr: torch.Tensor) -> None:
    cfg = Degradations.model_validate(EVERYTHING)
    plan = draw(cfg, _seeds(8), 4, 64)
    copy = pickle.loads(pickle.dumps(plan))  # data workers send plans to the training process
    assert torch.equal(apply(hr, copy), apply(hr, plan))
    for i in range(8):
        steps = describe(plan, i)
        assert steps[0].startswith(("usm", "thick", "blur")) and any(s.startswith("resize ") for s in steps)
        assert ("jpeg q" in " ".join(steps)) == bool(plan.jpeg1.on[i])
        assert any(s.startswith(("h264", "mpeg2", "mpeg4")) for s in steps) == bool(plan.codec.on[i])
    assert any(s.startswith("crop 64px at") for s in describe(plan, 0))
    assert describe(draw(Degradations(), _seeds(1), 4, 64), 0) == ["bicubic x1/4"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_the_gpu_path_matches_the_cpu_path(hr: torch.Tensor) -> None:
    cfg = Degradations.model_validate({**EVERYTHING, "video_codec_prob": 0.0})
    plan = draw(cfg, _seeds(8), 4, 64)
    on_gpu = apply(hr.cuda(), plan)
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (8, 3, 24, 24)
    assert _psnr(on_gpu.cpu(), apply(hr, plan)) > 35  # same plan; float rounding may flip a few 8-bit levels


def test_preview_writes_a_captioned_grid(tmp_path) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()).save(image)
    cfg = Degradations.model_validate(EVERYTHING)
    out = preview(cfg, image, scale=2, n=5, out_path=tmp_path / "grid.png", size=64)
    grid = np.asarray(Image.open(out))
    assert out.is_file() and grid.shape[1] == 3 * (64 + 4) + 4  # 3 columns of 64 px tiles for 5 variants
    assert grid.shape[0] > 2 * (64 + 4)  # 2 rows, with captions under the tiles
    assert (grid[4:68, 4:68] != 255).any()  # a tile was drawn
