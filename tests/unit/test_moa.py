"""Mixture of augmentations (`degrade/moa.py`, `train.use_moa`): each augmentation against traiNNer-redux's
`ops/batchaug.py` for the same forced draws, the choice among them, and its place in `train/batch.py`.

The reference fingerprints were computed once by running redux 686293190's batchaug functions (loaded from the file,
with its RNG, `random` and `torch.randperm` scripted to hand out the draws below) on the same `pattern` inputs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from helpers.batches import HRBatches
from srcluster.config import parse_job
from srcluster.degrade import moa
from srcluster.degrade.resize import imresize
from srcluster.train.batch import mixer_for, to_batch
from srcluster.train.state import build_stage
from srcluster.train.step import train_step

pytestmark = pytest.mark.usefixtures("single_thread")

BICUBIC, BILINEAR, NEAREST = 0, 1, 2  # indices into moa.RESAMPLERS


class Scripted:
    """A stand-in for the numpy generator that hands out the given draws in order, checking each one's range."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def _next(self):
        return self.draws.pop(0)

    def uniform(self, low=0.0, high=1.0):
        value = self._next()
        assert low <= value <= high
        return value

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        value = self._next()
        assert low <= value < high
        return value

    def permutation(self, n):
        value = np.asarray(self._next())
        assert sorted(value.tolist()) == list(range(n))
        return value

    def random(self):
        return self._next()


def pattern(shape, phase):
    x = torch.arange(math.prod(shape), dtype=torch.float64)
    return ((torch.sin(x * 0.37 + phase) + 1) / 2).float().reshape(shape)


def fingerprint(t: torch.Tensor) -> tuple[float, float]:
    """The sum and a position-weighted sum: any moved, mixed or resampled value changes the second."""
    d = t.double().flatten()
    return d.sum().item(), (d * torch.cos(torch.arange(d.numel(), dtype=torch.float64) * 0.71)).sum().item()


X2 = (pattern((3, 2, 12, 12), 0.0), pattern((3, 2, 6, 6), 1.0), 2)
X3 = (pattern((2, 3, 12, 12), 0.5), pattern((2, 3, 4, 4), 2.0), 3)

# (name, inputs, our draws in our order, redux's GT and LQ fingerprints for redux's equivalent draws)
REDUX = [
    # lam 0.45, randperm [2, 0, 1]
    ("mixup", X2, [0.45, [2, 0, 1]], (432.542523, -0.527925), (108.137633, -0.063696)),
    # lam 0.5 (box side int(6 * sqrt(0.5)) = 4), randperm, centre row 1 (box clipped at the top), column 4
    ("cutmix", X2, [0.5, [1, 2, 0], 1, 4], (432.542524, 0.159692), (108.137633, 4.315652)),
    ("cutmix", X3, [0.2, [1, 0], 3, 0], (432.066926, 3.559118), (46.401405, -1.023188)),
    # randperm, tao 0.7 (side 4), centre column 3, row 2
    ("resizemix", X2, [[2, 0, 1], 0.7, 3, 2], (432.758234, -2.665979), (111.274964, -4.874671)),
    # lam 0.5 (side 3), centre row 0, column 5: clipped at two borders
    ("cutblur", X2, [0.5, 0, 5], (432.542524, -0.491425), (110.034939, -0.892037)),
    ("cutblur", X3, [0.6, 2, 1], (432.066926, -0.618228), (48.949268, 0.076811)),
    # down bicubic, up bilinear, factor 0.75: 6 * 0.75 = 4.5 rounds half to even, to 4
    ("downup", X2, [BICUBIC, BILINEAR, 0.75], (432.542524, -0.491425), (108.040827, 8.529986)),
    # nearest both ways: coin 0.7 (> 0.5) redraws the upscale (bicubic), factor 0.6
    ("downup", X2, [NEAREST, NEAREST, 0.7, BICUBIC, 0.6], (432.542524, -0.491425), (109.16575, 17.146656)),
    # nearest both ways: coin 0.3 redraws the downscale (bilinear), factor 0.5
    ("downup", X2, [NEAREST, NEAREST, 0.3, BILINEAR, 0.5], (432.542524, -0.491425), (108.006737, 2.029268)),
    # lam 0.7 (half side 2), centre row 3, column 2, LQ enlarged bilinear
    ("up", X2, [0.7, 3, 2, BILINEAR], (429.492616, 0.066165), (104.077601, 6.400703)),
    ("up", X2, [0.55, 2, 3, NEAREST], (431.908925, -1.430322), (120.451492, 0.764907)),
]


@pytest.mark.parametrize(("name", "inputs", "draws", "gt_print", "lq_print"), REDUX, ids=[r[0] for r in REDUX])
def test_each_augmentation_computes_what_redux_computes_for_the_same_draws(name, inputs, draws, gt_print, lq_print):
    gt, lq, scale = inputs
    before = gt.clone(), lq.clone()
    rng = Scripted(*draws)
    augmentation = moa.draw(rng, name, gt.shape[0], lq.shape[-2], lq.shape[-1])  # type: ignore[arg-type]
    assert not rng.draws  # every forced draw consumed, in redux's order
    assert augmentation is not None
    out_gt, out_lq = augmentation.apply(gt, lq, scale)
    assert out_gt.shape == gt.shape and out_lq.shape == lq.shape
    assert fingerprint(out_gt) == pytest.approx(gt_print, abs=2e-5)
    assert fingerprint(out_lq) == pytest.approx(lq_print, abs=2e-5)
    assert torch.equal(gt, before[0]) and torch.equal(lq, before[1])  # the inputs are not written


def test_mixup_blends_each_pair_with_its_partner():
    gt, lq, scale = X2
    out_gt, out_lq = moa.Mixup(0.4, np.array([1, 2, 0])).apply(gt, lq, scale)
    torch.testing.assert_close(out_gt[0], 0.4 * gt[0] + 0.6 * gt[1])
    torch.testing.assert_close(out_lq[2], 0.4 * lq[2] + 0.6 * lq[0])


def test_cutmix_box_is_the_partners_at_both_resolutions_and_the_rest_is_kept():
    gt, lq, scale = X2
    box = moa.Box(top=1, left=2, bottom=4, right=5)
    out_gt, out_lq = moa.CutMix(box, np.array([2, 0, 1])).apply(gt, lq, scale)
    assert torch.equal(out_gt[0, :, 2:8, 4:10], gt[2, :, 2:8, 4:10])
    assert torch.equal(out_lq[0, :, 1:4, 2:5], lq[2, :, 1:4, 2:5])
    outside = torch.ones(12, 12, dtype=torch.bool)
    outside[2:8, 4:10] = False
    assert torch.equal(out_gt[..., outside], gt[..., outside])


def test_boxes_too_small_to_hold_a_pixel_leave_the_pair_as_it_is():
    gt, lq, scale = X2
    empty = moa.Box(2, 2, 2, 4)
    for augmentation in (moa.ResizeMix(empty, np.array([1, 2, 0])), moa.CutBlur(empty), moa.Up(empty, BICUBIC)):
        out_gt, out_lq = augmentation.apply(gt, lq, scale)
        assert torch.equal(out_gt, gt) and torch.equal(out_lq, lq)


def test_real_draws_stay_in_redux_ranges_and_keep_shapes():
    rng = np.random.default_rng(0)
    gt, lq = pattern((4, 3, 32, 32), 0.0), pattern((4, 3, 8, 8), 1.0)
    for name in moa.AUGMENTATIONS[1:]:
        for _ in range(20):
            augmentation = moa.draw(rng, name, 4, 8, 8)
            assert augmentation is not None
            if isinstance(augmentation, moa.Mixup):
                assert 0.4 <= augmentation.ratio <= 0.6
            if isinstance(augmentation, moa.DownUp):
                assert (augmentation.down, augmentation.up) != (NEAREST, NEAREST)
                assert all(4 <= side <= 7 for side in augmentation.size)  # round(8 * [0.5, 0.9])
            if isinstance(augmentation, moa.Up):
                box = augmentation.box
                assert min(box.top, box.left) >= 0 and max(box.bottom, box.right) <= 8
                assert box.bottom - box.top == box.right - box.left  # a square zoom
            out_gt, out_lq = augmentation.apply(gt, lq, 4)
            assert out_gt.shape == gt.shape and out_lq.shape == lq.shape
            assert torch.isfinite(out_gt).all() and torch.isfinite(out_lq).all()


def test_the_choice_follows_the_weights_as_redux_cumulative_choice():
    augs = ["none", "mixup", "cutmix", "resizemix", "cutblur"]
    probs = [0.4, 0.084, 0.084, 0.084, 0.348]
    # a uniform draw times the total, located among the cumulative weights (0.4, 0.484, 0.568, 0.652, 1.0)
    picks = [moa.Mixer(augs, probs, 2, Scripted(u)).pick() for u in (0.0, 0.39, 0.4, 0.5, 0.6, 0.66, 0.999)]  # type: ignore[arg-type]
    assert picks == ["none", "none", "mixup", "cutmix", "resizemix", "cutblur", "cutblur"]
    mixer = moa.Mixer(augs, [p * 10 for p in probs], 2, np.random.default_rng(1))  # weights need not sum to 1
    counts = Counter(mixer.pick() for _ in range(20000))
    for name, p in zip(augs, probs, strict=True):
        assert counts[name] / 20000 == pytest.approx(p, abs=0.015)
    assert Counter(moa.Mixer(["none", "up"], [0, 1], 2, np.random.default_rng(2)).pick() for _ in range(50)) == {
        "up": 50
    }


def test_mixer_refuses_what_redux_stops_on():
    rng = np.random.default_rng(0)
    # redux's own defaults: 4 augmentations, 5 probabilities
    with pytest.raises(ValueError, match="moa_probs: 5 probabilities for 4 moa_augs"):
        moa.Mixer(["none", "mixup", "cutmix", "resizemix"], [0.4, 0.084, 0.084, 0.084, 0.348], 2, rng)
    with pytest.raises(ValueError, match=r"moa_augs: unknown augmentation\(s\) \['cutmixup'\]"):
        moa.Mixer(["none", "cutmixup"], [0.5, 0.5], 2, rng)
    with pytest.raises(ValueError, match=r"moa_probs: .* not all zero"):
        moa.Mixer(["none", "mixup"], [0, 0], 2, rng)
    gt, lq, scale = X2
    with pytest.raises(ValueError, match="more than one pair"):
        moa.Mixer(["none"], [1], scale, rng)(gt[:1], lq[:1])
    with pytest.raises(ValueError, match=r"GT \(12, 12\) is not 3x LQ"):
        moa.CutBlur(moa.Box(0, 0, 2, 2)).apply(gt, lq, 3)


def job(**train):
    data = {
        "name": "moa",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
        "train": {"total_iter": 4, "losses": [{"type": "l1loss"}], **train},
    }
    return parse_job(data)


def test_without_use_moa_batches_are_untouched():
    item = HRBatches(1).items[0]
    batch = to_batch(item, job(), torch.device("cpu"))
    hr = item.float() / 255
    assert torch.equal(batch.pixel_gt, hr) and torch.equal(batch.gan_gt, hr)
    assert torch.equal(batch.lr, imresize(hr, 1 / 2, kernel="bicubic").clamp(0, 1))


def test_use_moa_augments_the_pair_after_the_lr_is_made():
    item = HRBatches(1).items[0]
    config = job(use_moa=True, moa_augs=["mixup"], moa_probs=[1.0])
    mixer = moa.Mixer(["mixup"], [1.0], 2, Scripted(0.0, 0.5, [1, 0]))  # type: ignore[arg-type]
    batch = to_batch(item, config, torch.device("cpu"), mixer)
    hr = item.float() / 255
    lr = imresize(hr, 1 / 2, kernel="bicubic").clamp(0, 1)
    torch.testing.assert_close(batch.pixel_gt, 0.5 * hr + 0.5 * hr[[1, 0]])
    torch.testing.assert_close(batch.lr, 0.5 * lr + 0.5 * lr[[1, 0]])  # the bicubic LR of the original pair, mixed


def test_paired_items_are_augmented_too():
    hr = HRBatches(1).items[0]
    lr = HRBatches(1, size=8).items[0]
    mixer = moa.Mixer(["cutmix"], [1.0], 2, Scripted(0.0, 0.0, [1, 0], 4, 4))  # type: ignore[arg-type]
    config = job(use_moa=True, moa_augs=["cutmix"], moa_probs=[1.0])
    batch = to_batch((hr, lr), config, torch.device("cpu"), mixer)
    # mix 0: the box side is the whole image, centred at (4, 4): rows and columns [0, 8) of the LR, all swapped
    assert torch.equal(batch.lr, lr[[1, 0]].float() / 255)
    assert torch.equal(batch.pixel_gt, hr[[1, 0]].float() / 255)


def test_a_job_keeps_its_stream_and_a_new_job_starts_it_afresh():
    config = job(use_moa=True, moa_augs=["mixup"], moa_probs=[1.0])
    first = mixer_for(config)
    assert mixer_for(config) is first
    draws = [first.rng.random() for _ in range(3)]
    again = mixer_for(job(use_moa=True, moa_augs=["mixup"], moa_probs=[1.0]))
    assert again is not first and [again.rng.random() for _ in range(3)] == draws


@pytest.mark.parametrize("name", moa.AUGMENTATIONS)
def test_a_training_step_runs_with_each_augmentation(name, monkeypatch):
    stage = build_stage(job(use_moa=True, moa_augs=[name], moa_probs=[1.0]), torch.device("cpu"), log=lambda _: None)
    drawn = []
    real_draw = moa.draw

    def spy(*args):
        augmentation = real_draw(*args)
        drawn.append(augmentation)
        return augmentation

    monkeypatch.setattr(moa, "draw", spy)
    out = train_step(stage, iter(HRBatches(2)), 2)
    expected = {"none": type(None), "mixup": moa.Mixup, "cutmix": moa.CutMix, "resizemix": moa.ResizeMix}
    expected |= {"cutblur": moa.CutBlur, "downup": moa.DownUp, "up": moa.Up}
    assert [type(a) for a in drawn] == [expected[name]] * 2  # once per micro-batch
    assert torch.isfinite(torch.as_tensor(out["l_g_total"])).all()
