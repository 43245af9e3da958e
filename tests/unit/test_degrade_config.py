"""Degradation options: traiNNer-redux's keys and defaults, where they live in a job, errors that name the key."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers.shared import shared_data
from srcluster.degrade.config import (
    DATASET_KEYS,
    TOP_LEVEL_KEYS,
    Degradations,
    key_path,
    parse_degradations,
    split_degradation_keys,
)
from srcluster.degrade.seeds import sample_seed
from srcluster.errors import ConfigError

TEMPLATES = shared_data("trainner-redux-templates")


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_degradations(data, "job.yml")
    return str(caught.value)


def test_defaults_are_trainner_redux_schema_defaults() -> None:
    schema_path = TEMPLATES / "redux-config.schema.json"
    if not schema_path.is_file():
        pytest.skip(f"traiNNer-redux schema not found at {schema_path}")
    defs = json.loads(schema_path.read_text())["$defs"]
    ours = Degradations()
    checked = 0
    for section in ("ReduxOptions", "DatasetOptions"):
        for key, spec in defs[section]["properties"].items():
            if key in Degradations.model_fields and "default" in spec:
                value = getattr(ours, key)
                assert list(value) == spec["default"] if isinstance(value, tuple) else value == spec["default"], key
                checked += 1
    assert checked >= 35
    # schema entries without a default: the values of traiNNer-redux's option class and OTF templates
    assert ours.resize_prob == [0.2, 0.7, 0.1] and ours.resize_prob2 == [0.3, 0.4, 0.3]
    assert ours.kernel_prob == [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    assert ours.resize_mode_list3 == ["bilinear", "bicubic", "nearest-exact", "lanczos"]


def test_an_otf_template_splits_into_job_and_degradations() -> None:
    path = TEMPLATES / "ESRGAN_OTF_gan.yml"
    if not path.is_file():
        pytest.skip(f"traiNNer-redux templates not found at {TEMPLATES}")
    job = yaml.safe_load(path.read_text())
    rest, lifted = split_degradation_keys(job, str(path))
    cfg = parse_degradations(lifted, str(path))
    assert cfg.high_order_degradation and cfg.jpeg_range == (75, 95) and cfg.kernel_range == (5, 17)
    assert cfg.resize_mode_list == ["bilinear", "bicubic", "nearest-exact", "lanczos"]
    assert not set(rest) & set(TOP_LEVEL_KEYS) and not set(rest["datasets"]["train"]) & set(DATASET_KEYS)
    assert rest["datasets"]["train"]["lq_size"] == 64 and rest["network_g"]["type"] == "esrgan"
    assert "high_order_degradation" in job  # the input is not modified
    assert cfg.ignored() == {}  # the template sets the no-op keys to their defaults: nothing to warn about


def test_misplaced_keys_say_where_they_belong() -> None:
    with pytest.raises(ConfigError, match=r"j.yml: kernel_list: belongs under datasets.train"):
        split_degradation_keys({"kernel_list": ["iso"]}, "j.yml")
    with pytest.raises(ConfigError, match=r"j.yml: datasets.train.jpeg_range: belongs at the top level"):
        split_degradation_keys({"datasets": {"train": {"jpeg_range": [30, 95]}}}, "j.yml")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"blur_prob": 1.5}, "job.yml: blur_prob: Input should be less than or equal to 1"),
        ({"gray_noise_prob2": -0.1}, "job.yml: gray_noise_prob2: Input should be greater than or equal to 0"),
        (
            {"kernel_prob": [0.5, 0.5]},
            "job.yml: datasets.train.kernel_prob: has 2 entries but datasets.train.kernel_list has 6",
        ),
        ({"resize_mode_list2": ["bicubic"]}, "job.yml: resize_mode_prob2: has 4 entries but resize_mode_list2 has 1"),
        ({"video_codec_list": ["h264", "hevc"]}, "video_codec_prob_list: has 1 entries but video_codec_list has 2"),
        ({"kernel_range2": [5, 16]}, "job.yml: datasets.train.kernel_range2: kernel sizes must be odd"),
        ({"final_kernel_range": [4, 17]}, "job.yml: datasets.train.final_kernel_range: kernel sizes must be odd"),
        ({"jpeg_range": [95, 75]}, "job.yml: jpeg_range: must be [min, max] with min <= max"),
        ({"blur_sigma": [3, 0.2]}, "job.yml: datasets.train.blur_sigma: must be [min, max]"),
        ({"jpeg_range2": [0, 95]}, "job.yml: jpeg_range2[0]: Input should be greater than or equal to 1"),
        ({"resize_prob": [0.5, 0.5]}, "job.yml: resize_prob: List should have at least 3 items"),
        (
            {"kernel_list": ["iso", "anso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]},
            "job.yml: datasets.train.kernel_list[1]: unknown blur kernel 'anso' (did you mean 'aniso'?)",
        ),
        (
            {"resize_mode_list3": ["bicubic", "cubic", "area", "bilinear"]},
            "job.yml: resize_mode_list3[1]: Input should be",
        ),
        (
            {"video_codec_list": ["h265"]},
            "job.yml: video_codec_list[0]: unknown video codec 'h265' (did you mean 'h264'?)",
        ),
        ({"video_codec_list": ["mpeg4"], "video_chroma_list": ["444"]}, "video_chroma_list: mpeg4 cannot encode 444"),
        ({"video_crf_range": [20, 60]}, "job.yml: video_crf_range[1]: Input should be less than or equal to 51"),
        ({"blur_prop": 0.5}, "job.yml: blur_prop: unknown key (did you mean 'blur_prob'?)"),
        ({"second_blur_prob": 0.8, "blur_prob2": 0.3}, "job.yml: blur_prob2: given twice"),
        (
            {"jpeg_backend": "auto"},
            "job.yml: jpeg_backend: Input should be 'diffjpeg', 'libjpeg', 'libjpeg_codec' or 'libjpeg_model'",
        ),
    ],
)
def test_bad_configs_are_rejected_naming_the_key(data: dict, expected: str) -> None:
    assert expected in _error(data)


def test_every_problem_is_reported_on_its_own_line() -> None:
    lines = _error({"kernel_prob": [1.0], "kernel_prob2": [1.0], "resize_mode_prob3": [1.0]}).splitlines()
    assert len(lines) == 3 and all(line.startswith("job.yml: ") for line in lines)


def test_real_esrgan_spelling_and_ignored_keys() -> None:
    cfg = parse_degradations({"second_blur_prob": 0.8, "queue_size": 180, "blur_kernel_size": 21})
    assert cfg.blur_prob2 == 0.8
    assert set(cfg.ignored()) == {"datasets.train.blur_kernel_size"}  # queue_size acts with the default per_batch
    per_sample = parse_degradations({"queue_size": 180, "otf_draws": "per_sample"})
    assert set(per_sample.ignored()) == {"queue_size"}
    assert key_path("final_sinc_prob") == "datasets.train.final_sinc_prob" and key_path("jpeg_range") == "jpeg_range"
    assert not cfg.makes_lr and Degradations(video_codec_prob=0.5).makes_lr
    assert Degradations(high_order_degradation=True).makes_lr and Degradations(gan_gt_usm=True).sharpens_gt


def test_sample_seed_is_stable_and_separates_its_inputs() -> None:
    # a fixed value: blake2b, not Python's per-process salted hash(), so every process and machine agrees
    assert sample_seed(0, 0, "shard-000000/img_0001") == 3830367254443084839
    seeds = {sample_seed(s, e, k) for s in (0, 1) for e in (0, 1) for k in ("a", "b")}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
