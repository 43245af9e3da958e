"""Paired LR mixed into on-the-fly LR (srcluster issue #15): traiNNer-redux's `dataroot_lq_prob`.

With high-order degradations and `datasets.train.dataroot_lq`, redux's RealESRGANPairedModel makes each batch, with
probability `dataroot_lq_prob` (one draw per batch), paired data's (HR, LR) crops, else the on-the-fly batch. These
tests build real paired folders whose pixels say where they come from: an LR pixel is (row, column, 10 x image), an HR
pixel (row, column, 200 + image), so a crop shows which window of which image it is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.images import save
from helpers.jobs import tiny_job, write_job
from srcluster.cli import main
from srcluster.config import parse_job
from srcluster.data.stream import train_loader
from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import Plan
from srcluster.errors import ConfigError
from srcluster.train.batch import to_batch
from srcluster.train.specs import data_path, train_data

SCALE, LQ = 2, 8
CROP = LQ * SCALE  # gt_size; the on-the-fly crop is CROP + 32 (redux's border)
OTF_CROP = CROP + 32
LR_SIDE = 32  # LR images are 32 x 32, HR 64 x 64: larger than the on-the-fly crop, so nothing is padded
IMAGES = 5


def coded(side: int, image: int, channel_b: int) -> np.ndarray:
    """side x side RGB whose pixel (y, x) is (y, x, channel_b): its place in the image, and which image."""
    rows, cols = np.mgrid[:side, :side]
    return np.stack([rows, cols, np.full_like(rows, channel_b)], axis=-1).astype(np.uint8)


def paired_folders(root, *, mismatched: bool = False) -> tuple[str, str]:
    """HR and LR folders of IMAGES coded pairs (x2); with `mismatched`, one more pair whose LR has the wrong size."""
    hr, lr = root / "hr", root / "lr"
    for image in range(IMAGES):
        save(hr / f"{image}.png", coded(LR_SIDE * SCALE, image, 200 + image))
        save(lr / f"{image}.png", coded(LR_SIDE, image, 10 * image))
    if mismatched:
        save(hr / "bad.png", coded(LR_SIDE * SCALE, 9, 209))
        save(lr / "bad.png", coded(LR_SIDE - 4, 9, 90))
    return str(hr), str(lr)


OTF = Degradations(high_order_degradation=True)


def mixing(prob: float) -> Degradations:
    return OTF.model_copy(update={"dataroot_lq_prob": prob})


def augmented(window: np.ndarray) -> list[np.ndarray]:
    """The window under each flip and transpose the crops' augmentation can make (H x W x 3)."""
    out = []
    for hflip in (False, True):
        for vflip in (False, True):
            for transpose in (False, True):
                view = window[:, ::-1] if hflip else window
                view = view[::-1] if vflip else view
                out.append(view.transpose(1, 0, 2) if transpose else view)
    return out


def assert_paired_crops(hr: torch.Tensor, lr: torch.Tensor) -> None:
    """Each LR crop is an LQ x LQ window of its image's LR partner, pixels untouched (flipped and turned at most), and
    its HR crop is the aligned window of the HR, augmented alike."""
    assert hr.dtype == lr.dtype == torch.uint8
    assert hr.shape[1:] == (3, CROP, CROP) and lr.shape[1:] == (3, LQ, LQ)
    for one_hr, one_lr in zip(hr.numpy().astype(int), lr.numpy().astype(int), strict=True):
        image = int(one_lr[2, 0, 0]) // 10
        top, left = int(one_lr[0].min()), int(one_lr[1].min())
        window = coded(LR_SIDE, image, 10 * image)[top : top + LQ, left : left + LQ].astype(int)
        assert any(np.array_equal(one_lr.transpose(1, 2, 0), view) for view in augmented(window))
        # HR pixel (Y, X) lies over LR pixel (Y // s, X // s), whatever flips both crops share
        upsampled = one_lr.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
        assert np.array_equal(one_hr[:2] // SCALE, upsampled[:2])
        assert np.array_equal(one_hr[2] - 200, upsampled[2] // 10)


# --- the job file ---------------------------------------------------------------------------------------------------


def otf_job(*, gt: str = "s3://b/hr", lq: str | None = "s3://b/lr", top: dict | None = None, **cluster) -> dict:
    train = {"dataroot_gt": gt, "lq_size": LQ, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0}
    if lq is not None:
        train["dataroot_lq"] = lq
    return tiny_job(
        **{"high_order_degradation": True, "dataroot_lq_prob": 0.3, **(top or {})},
        scale=SCALE,
        datasets={"train": train},
        val={"val_enabled": False},
        srcluster={"workers": 1, **cluster},
    )


def test_a_mixing_job_is_accepted_without_an_ignored_warning(tmp_path, capsys):
    job = parse_job(otf_job(), "job.yml")
    assert job.datasets.train.dataroot_lq == "s3://b/lr"
    degradations = job.datasets.train.degradations
    assert degradations is not None and degradations.dataroot_lq_prob == 0.3
    assert not [line for line in job.warnings if "dataroot_lq_prob" in line]

    assert main(["check", str(write_job(tmp_path, otf_job()))]) == 0
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert "dataroot_lq_prob: 0.3" in [line.strip() for line in lines]  # the resolved job, as parsed
    assert not [line for line in lines if line.startswith("warning:") and "dataroot_lq_prob" in line]


def test_dataroot_lq_prob_without_paired_lr_names_the_key():
    with pytest.raises(ConfigError) as err:
        parse_job(otf_job(lq=None), "job.yml")
    message = str(err.value)
    assert message.startswith("job.yml: dataroot_lq_prob: ") and "needs datasets.train.dataroot_lq" in message
    assert "\n" not in message


def test_paired_lr_with_degradations_but_no_mixing_is_refused_and_points_at_dataroot_lq_prob():
    with pytest.raises(ConfigError) as err:
        parse_job(otf_job(top={"dataroot_lq_prob": 0}), "job.yml")
    message = str(err.value)
    assert message.startswith("job.yml: high_order_degradation: LR is made from HR on the fly")
    assert "datasets.train.dataroot_lq would be unused" in message and "dataroot_lq_prob" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "top", [{"high_order_degradation": False}, {"high_order_degradation": False, "l1_gt_usm": True}]
)
def test_without_on_the_fly_lr_the_key_is_ignored_and_paired_data_trains_plain(top):
    job = parse_job(otf_job(top=top), "job.yml")
    assert "job.yml: dataroot_lq_prob: ignored (high_order_degradation is false)" in job.warnings
    assert data_path(job) == "paired"


def test_a_mixing_job_is_costed_as_its_on_the_fly_path():
    assert data_path(parse_job(otf_job(degrade_on="workers"))) == "otf-workers"
    assert data_path(parse_job(otf_job(degrade_on="device"))) == "otf-device"
    assert data_path(parse_job(otf_job(lq=None, top={"dataroot_lq_prob": 0}, degrade_on="device"))) == "otf-device"


# --- the stream -----------------------------------------------------------------------------------------------------


def test_all_batches_paired_at_probability_one_are_paired_datas_crops(tmp_path):
    hr, lr = paired_folders(tmp_path)
    stream = train_loader(hr, lq=lr, scale=SCALE, crop=CROP, batch_size=4, steps=6, degradations=mixing(1.0))
    batches = list(stream)
    assert len(batches) == 6
    for high, low in batches:
        assert_paired_crops(high, low)
    # the form is paired data's: the same tensors, with keys last
    plain = next(iter(train_loader(hr, lq=lr, scale=SCALE, crop=CROP, batch_size=4, steps=1, with_keys=True)))
    mixed = next(
        iter(
            train_loader(
                hr, lq=lr, scale=SCALE, crop=CROP, batch_size=4, steps=1, with_keys=True, degradations=mixing(1.0)
            )
        )
    )
    assert [type(part) for part in mixed] == [type(part) for part in plain] == [torch.Tensor, torch.Tensor, list]
    assert [tuple(t.shape) for t in mixed[:2]] == [tuple(t.shape) for t in plain[:2]]


def test_a_parsed_job_mixes_through_its_train_data_and_the_step_takes_both_kinds(tmp_path):
    hr, lr = paired_folders(tmp_path)
    job = parse_job(otf_job(gt=hr, lq=lr, top={"dataroot_lq_prob": 0.5}, degrade_on="device"))
    batches = list(train_data(job, 1).loader(rank=0, world=1, start=0, steps=12))
    kinds = {isinstance(batch[1], Plan) for batch in batches}
    assert kinds == {True, False}  # on-the-fly plans for the step, and paired LR
    for batch in (
        next(b for b in batches if isinstance(b[1], Plan)),
        next(b for b in batches if torch.is_tensor(b[1])),
    ):
        made = to_batch(batch, job, torch.device("cpu"))
        assert made.lr.shape == (2, 3, LQ, LQ) and made.pixel_gt.shape == (2, 3, CROP, CROP)


def test_half_the_batches_are_paired_in_a_reproducible_order(tmp_path):
    hr, lr = paired_folders(tmp_path)

    def kinds(seed: int) -> list[bool]:
        """Per batch: paired (True) or the on-the-fly plan for the step (False)."""
        stream = train_loader(
            hr, lq=lr, scale=SCALE, crop=CROP, batch_size=2, steps=40, seed=seed, degradations=mixing(0.5),
            degrade_in_workers=False,
        )  # fmt: skip
        out = []
        for high, second in stream:
            if isinstance(second, Plan):
                assert high.shape == (2, 3, OTF_CROP, OTF_CROP)
                out.append(False)
            else:
                assert_paired_crops(high, second)
                out.append(True)
        return out

    first = kinds(seed=7)
    assert 12 <= sum(first) <= 28  # 40 draws at 0.5: 20 expected, sd ~3.2
    assert kinds(seed=7) == first
    assert kinds(seed=8) != first  # the draws come from the seed
    # one draw per batch from the worker's own generator, continued batch after batch
    assert first == list(np.random.default_rng([7, 0, 4, 0, 0]).random(40) < 0.5)


def test_on_the_fly_batches_are_those_of_the_stream_without_paired_lr(tmp_path):
    hr, lr = paired_folders(tmp_path)
    options = {"scale": SCALE, "crop": CROP, "batch_size": 3, "steps": 10, "seed": 4, "with_keys": True}
    mixed = list(train_loader(hr, lq=lr, degradations=mixing(0.5), **options))
    alone = list(train_loader(hr, degradations=OTF, **options))
    paired = np.random.default_rng([4, 0, 4, 0, 0]).random(10) < 0.5  # the kinds, as the previous test pins them
    assert 0 < paired.sum() < 10
    for (high, low, keys), (alone_high, alone_low, alone_keys), is_paired in zip(mixed, alone, paired, strict=True):
        assert keys == alone_keys  # the same samples in the same batches, whichever kind a batch is
        if is_paired:
            assert_paired_crops(high, low)
        else:  # cut from the same place and degraded alike: mixing changes nothing in an on-the-fly batch
            assert torch.equal(high, alone_high) and torch.equal(low, alone_low)


def test_a_sample_without_a_paired_crop_is_skipped_in_both_kinds(tmp_path):
    hr, lr = paired_folders(tmp_path, mismatched=True)
    stream = train_loader(
        hr, lq=lr, scale=SCALE, crop=CROP, batch_size=2, steps=20, degradations=mixing(0.5), with_keys=True,
        degrade_in_workers=False,
    )  # fmt: skip
    keys = {key for _, _, batch_keys in stream for key in batch_keys}
    assert len(keys) == IMAGES and not any(key.endswith("bad.png") for key in keys)
    assert stream.skipped["size_mismatch"] >= 1


def test_the_loader_refuses_paired_data_with_degradations_that_do_not_mix(tmp_path):
    hr, lr = paired_folders(tmp_path)
    with pytest.raises(ValueError, match="dataroot_lq_prob"):
        train_loader(hr, lq=lr, scale=SCALE, crop=CROP, batch_size=2, steps=1, degradations=OTF)
    with pytest.raises(ValueError, match="dataroot_lq_prob"):
        train_loader(hr, scale=SCALE, crop=CROP, batch_size=2, steps=1, degradations=mixing(0.5))
