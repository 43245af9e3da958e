"""Every key of traiNNer-redux's config schema is known to srcluster: it acts, is ignored with a warning that names it,
or (where srcluster cannot train the model redux would) is refused with one line naming it and why. Plus the keys
that act while loading: the older `gt_size`, a dataset's own `scale`, `*_opt: null`."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from helpers.jobs import tiny_job
from helpers.shared import require, shared_data
from srcluster.config import parse_job
from srcluster.degrade.resize import otf_resize
from srcluster.errors import ConfigError
from srcluster.train.batch import to_batch

SCHEMA = shared_data("trainner-redux-templates", "redux-config.schema.json")
# schema section -> where its keys sit in a job file (the sections themselves are tested through their keys)
SECTIONS = {
    "ReduxOptions": (),
    "TrainOptions": ("train",),
    "PathOptions": ("path",),
    "ValOptions": ("val",),
    "LogOptions": ("logger",),
    "DatasetOptions": ("datasets", "train"),
    "OnnxOptions": ("onnx",),
}
NESTED = {"datasets", "train", "path", "val", "logger", "onnx", "network_g", "network_d"}


def with_key(where: tuple[str, ...], key: str, value) -> dict:
    job = copy.deepcopy(tiny_job())
    node = job
    for part in where:
        node = node.setdefault(part, {})
    node[key] = value
    return job


def schema_keys() -> list[tuple[str, tuple[str, ...], str, object]]:
    schema = json.loads(require(SCHEMA).read_text())
    defs = schema["$defs"]
    return [
        (section, where, key, prop.get("default"))
        for section, where in SECTIONS.items()
        for key, prop in defs[section]["properties"].items()
        if key not in NESTED
    ]


def test_every_key_of_redux_schema_at_its_default_is_known() -> None:
    """At its default value a redux key never fails as unknown: a value error (a required key left null) is fine,
    "unknown key" means srcluster forgot the key."""
    unknown = []
    for section, where, key, default in schema_keys():
        if key in ("lq_size", "gt_size"):  # exactly one of the two: the job gives lq_size
            continue
        try:
            parse_job(with_key(where, key, default), source="t")
        except ConfigError as exc:
            if "unknown key" in str(exc):
                unknown.append(f"{section}.{key}: {str(exc).splitlines()[0]}")
    assert not unknown, "\n".join(unknown)


@pytest.mark.parametrize(
    ("where", "key", "value", "words"),
    [
        ((), "dist", True, "launcher decides"),
        ((), "auto_resume", True, "resumes"),
        (("path",), "experiments_root", "/runs", "MLflow"),
        (("datasets", "train"), "dataset_enlarge_ratio", 4, "total_iter"),
        (("datasets", "train"), "phase", "train", "dataset's key"),
    ],
)
def test_keys_srcluster_does_not_need_warn_by_name(where, key, value, words) -> None:
    job = parse_job(with_key(where, key, value), source="t")
    named = [w for w in job.warnings if f"{'.'.join((*where, key))}: ignored" in w]
    assert named and words in named[0]


@pytest.mark.parametrize(
    ("where", "key", "value", "words"),
    [
        ((), "input_pixel_format", "y", "RGB"),
        ((), "output_pixel_format", "yuv444", "RGB"),
        (("datasets", "train"), "color", "y", "luma"),
        (("datasets", "train"), "mean", [0.5, 0.5, 0.5], "normalized"),
    ],
)
def test_keys_that_would_train_another_model_are_refused_in_one_line(where, key, value, words) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_job(with_key(where, key, value), source="t")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and f"t: {'.'.join((*where, key))}:" in message and words in message


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ((), "input_pixel_format", "rgb"),
        (("datasets", "train"), "color", None),
        ((), "network_g_teacher", None),
        (("train",), "eco", {"enabled": False}),
    ],
)
def test_their_redux_defaults_load_without_a_word(where, key, value) -> None:
    job = parse_job(with_key(where, key, value), source="t")
    assert not [w for w in job.warnings if key in w]


def test_autoencoder_keys_are_ignored_beside_a_generator_and_autoencoder_jobs_refused() -> None:
    job = parse_job(with_key((), "network_ae", {"type": "autoencoder"}))
    assert [w for w in job.warnings if "network_ae: ignored" in w and "no network_g" in w]
    alone = with_key((), "network_ae", {"type": "autoencoder"})
    del alone["network_g"]
    with pytest.raises(ConfigError, match=r"network_ae: autoencoder training .* is not supported"):
        parse_job(alone, source="t")


def test_gt_size_sets_lq_size_as_redux_converts_it() -> None:
    job = tiny_job()
    del job["datasets"]["train"]["lq_size"]
    job["datasets"]["train"]["gt_size"] = 50  # scale 2: lq_size 25 (redux floors)
    assert parse_job(job).datasets.train.lq_size == 25
    both = with_key(("datasets", "train"), "gt_size", 32)
    with pytest.raises(ConfigError, match=r"datasets\.train\.gt_size: give one of gt_size and lq_size"):
        parse_job(both, source="t")


def test_a_dataset_scale_must_agree_with_the_job() -> None:
    assert parse_job(with_key(("datasets", "train"), "scale", 2)).scale == 2
    with pytest.raises(ConfigError, match=r"datasets\.train\.scale: 4 differs from the job.s scale 2"):
        parse_job(with_key(("datasets", "train"), "scale", 4), source="t")


def test_a_null_old_style_loss_section_is_no_loss() -> None:
    job = parse_job(with_key(("train",), "pixel_opt", None))
    assert [loss.type for loss in job.train.losses] == ["charbonnierloss"]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest-exact", "lanczos", "area"])
def test_lq_resize_mode_makes_the_lr_of_hr_only_data_as_redux_resize_pt(mode) -> None:
    job = parse_job(with_key(("datasets", "train"), "lq_resize_mode", mode))
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = to_batch((hr * 255).round().to(torch.uint8), job, torch.device("cpu"))
    expected = otf_resize((hr * 255).round() / 255, (16, 16), mode)
    assert torch.equal(batch.lr, expected)
    default = to_batch((hr * 255).round().to(torch.uint8), parse_job(tiny_job()), torch.device("cpu")).lr
    assert not torch.equal(default, expected)  # MATLAB's bicubic otherwise


def test_lq_resize_mode_beside_paired_lr_is_named_as_ignored() -> None:
    config = with_key(("datasets", "train"), "lq_resize_mode", "bicubic")
    config["datasets"]["train"]["dataroot_lq"] = "/tmp/lr"
    job = parse_job(config, source="t")
    assert [w for w in job.warnings if "lq_resize_mode: ignored (the LR comes from datasets.train.dataroot_lq" in w]
