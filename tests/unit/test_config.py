"""The job file: what users type, and the one-line errors they get when they mistype it."""

import json

import pytest
import yaml

from helpers.shared import shared_data
from srcluster.cli import main
from srcluster.config import ConfigError, flatten, load_job, parse_job

MINIMAL = {
    "name": "t",
    "scale": 2,
    "datasets": {"train": {"dataroot_gt": "s3://srcluster/x"}},
    "network_g": {"type": "compact", "num_feat": 8},
    "train": {"total_iter": 10, "losses": [{"type": "charbonnierloss", "loss_weight": 1}]},
}


def with_(path: str, value):
    data = json.loads(json.dumps(MINIMAL))
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def test_minimal_job_fills_traiNNer_defaults():
    job = parse_job(MINIMAL)
    assert job.datasets.train.lq_size == 64
    assert job.train.optim_g.type == "AdamW"
    assert job.network_g.options() == {"num_feat": 8}
    assert job.effective_batch == 8 * 2 * 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_("datasets.train.lq_siz", 32), "datasets.train.lq_siz: unknown key (did you mean 'lq_size'?)"),
        (with_("train.total_iter", "many"), "train.total_iter: Input should be a valid integer"),
        (
            with_("datasets.train.batch_size_per_gpu", 0),
            "datasets.train.batch_size_per_gpu: Input should be greater than 0",
        ),
        (with_("scale", 5), "scale: Input should be 1, 2, 3, 4 or 8"),
        (with_("network_g.type", "compakt"), "network_g.type: unknown generator 'compakt' (did you mean 'compact'"),
        (with_("train.losses", [{"type": "charbonierloss"}]), "train.losses[0].type: unknown loss 'charbonierloss'"),
        (with_("train.losses", [{"type": "ganloss", "loss_weight": 0.1}]), "no network_d is configured"),
        (
            with_("val.metrics", {"psnr": {"type": "calculate_psnrr"}}),
            "val.metrics.psnr.type: unknown metric 'psnrr' (did you mean 'psnr'?)",
        ),
        (
            with_("val.metrics", {"lpips": {"type": "calculate_lpips", "nett": "vgg"}}),
            "val.metrics.lpips: lpips has no option 'nett' (did you mean 'net'?)",
        ),
        (
            with_("logger.save_checkpoint_format", "ckpt"),
            "logger.save_checkpoint_format: Input should be 'safetensors' or 'pth'",
        ),
    ],
)
def test_bad_values_name_the_key(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_job(data, "job.yml")
    assert expected in str(err.value)
    assert str(err.value).startswith("job.yml: ")


def test_missing_key_and_bad_files(tmp_path):
    data = json.loads(json.dumps(MINIMAL))
    del data["train"]["total_iter"]
    with pytest.raises(ConfigError, match=r"train.total_iter: required key is missing"):
        parse_job(data, "job.yml")
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "nope.yml")
    broken = tmp_path / "broken.yml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yml: not valid YAML at line 2"):
        load_job(broken)
    python_tag = tmp_path / "evil.yml"
    python_tag.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses to construct objects
        load_job(python_tag)


def test_check_command_prints_resolved_job_and_errors(tmp_path, capsys):
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert main(["check", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["effective_batch"] == 16 and out["job"]["train"]["ema_decay"] == 0.0

    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(with_("datasets.train.lq_siz", 3)))
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lq_siz: unknown key" in err and "Traceback" not in err


def test_flatten_masks_url_passwords():
    flat = flatten({"srcluster": {"mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example"}}, "l": [{"a": 1}]})
    assert flat == {"srcluster.mlflow.tracking_uri": "https://bob:***@mlflow.example", "l.0.a": 1}


TEMPLATES = shared_data("trainner-redux-templates")


@pytest.mark.skipif(not TEMPLATES.is_dir(), reason=f"traiNNer-redux templates not found at {TEMPLATES}")
@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.yml")) if TEMPLATES.is_dir() else [])
def test_every_trainner_redux_template_loads_with_its_ignored_keys_named(template):
    data = yaml.safe_load((TEMPLATES / template).read_text())
    for dataset in data["datasets"].values():  # their dataroots are placeholders for local folders
        dataset["dataroot_gt"] = "s3://bucket/hr"
        if "dataroot_lq" in dataset:
            dataset["dataroot_lq"] = "s3://bucket/lr"
    job = parse_job(data, template)
    assert job.network_g.type == data["network_g"]["type"]
    from srcluster.components.losses import LOSSES

    losses = data["train"]["losses"]
    kept = [loss["type"] for loss in losses if loss["loss_weight"] > 0 or loss["type"] in LOSSES.names()]
    # unimplemented losses at weight 0 are dropped, with a warning
    assert [loss.type for loss in job.train.losses] == kept
    for warning in job.warnings:  # each one says which key and why
        assert warning.startswith(f"{template}: ") and ("ignored (" in warning or "not implemented" in warning)
    assert any("num_gpu: ignored" in w for w in job.warnings)
    # every loss the templates list (their optional ones at weight 0 included) is implemented: none is dropped
    assert not any("(weight 0) ignored" in w for w in job.warnings)
    degradations = job.datasets.train.degradations
    if "_OTF_" in template:  # Real-ESRGAN's pipeline with the template's own kernels and ranges
        assert degradations is not None and degradations.high_order_degradation
        assert degradations.kernel_range == tuple(data["datasets"]["train"]["kernel_range"])
        assert degradations.jpeg_range == tuple(data["jpeg_range"])
    else:
        assert degradations is None


def test_trainner_logger_options_srcluster_replaces_are_warnings():
    job = parse_job(with_("logger", {"save_checkpoint_format": "pth", "use_tb_logger": True}), "job.yml")
    assert job.warnings == [
        "job.yml: logger.use_tb_logger: ignored (metrics go to MLflow)",
        (
            "job.yml: logger.save_checkpoint_format: pth ignored (for checkpoints: srcluster writes safetensors, "
            "which spandrel/chaiNNer and traiNNer-redux load; the exported generator is written as .pth too)"
        ),
    ]
    assert "logger.use_tb_logger" not in flatten(job.model_dump(mode="json"))  # lifted out: not a job option
    assert not parse_job(with_("logger.save_checkpoint_format", "safetensors")).warnings


def test_every_trainner_loss_is_built_and_a_misspelt_one_is_one_line():
    from srcluster.components.losses import LOSSES
    from srcluster.config.compat import REFUSED_LOSSES, TRAINNER_LOSSES

    assert REFUSED_LOSSES == {}
    assert sorted(TRAINNER_LOSSES - set(LOSSES.names())) == []  # none left unimplemented either
    losses = [{"type": "charbonnierloss"}, {"type": "linedistilerloss", "loss_weight": 1.0}]
    with pytest.raises(ConfigError) as error:
        parse_job(with_("train.losses", losses), "job.yml")
    assert str(error.value).startswith(
        "job.yml: train.losses[1].type: unknown loss 'linedistilerloss' (did you mean 'linedistillerloss'"
    )
    assert "\n" not in str(error.value)


def test_component_options_are_checked():
    with pytest.raises(
        ConfigError, match=r"train.losses\[0\]: hsluvloss has no option 'critrion' \(did you mean 'criterion'"
    ):
        parse_job(with_("train.losses", [{"type": "hsluvloss", "critrion": "l1"}]))
    with pytest.raises(ConfigError, match="compact"):
        parse_job(with_("network_g", {"type": "compact", "num_feet": 8}))


OTF = {"high_order_degradation": True, "jpeg_range": [40, 90]}


def test_degradation_keys_become_the_jobs_degradations_and_travel_to_the_workers():
    data = {**with_("datasets.train.kernel_range", [3, 9]), **OTF}
    job = parse_job(data, "job.yml")
    cfg = job.datasets.train.degradations
    assert cfg.high_order_degradation and cfg.kernel_range == (3, 9) and cfg.jpeg_range == (40, 90)
    assert not job.warnings
    again = type(job).model_validate(job.model_dump(mode="json"))  # what each Ray worker rebuilds
    assert again.datasets.train.degradations == cfg
    assert flatten(job.model_dump(mode="json"))["datasets.train.degradations.jpeg_range"] == [40, 90]
    assert parse_job(MINIMAL).datasets.train.degradations is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {**with_("datasets.train.kernel_range", [4, 9]), **OTF},
            "job.yml: datasets.train.kernel_range: kernel sizes must be odd",
        ),
        ({**MINIMAL, **OTF, "jpeg_range": [90, 40]}, "job.yml: jpeg_range: must be [min, max] with min <= max"),
        ({**MINIMAL, **OTF, "blur_prob": 1.5}, "job.yml: blur_prob: Input should be less than or equal to 1"),
        ({**MINIMAL, **OTF, "kernel_list": ["iso"]}, "job.yml: kernel_list: belongs under datasets.train"),
        (
            {**with_("datasets.train.jpeg_prob", 0.5), **OTF},
            "job.yml: datasets.train.jpeg_prob: belongs at the top level",
        ),
        (
            {**with_("datasets.train.dataroot_lq", "s3://srcluster/lr"), **OTF},
            (
                "job.yml: high_order_degradation: LR is made from HR on the fly, so datasets.train.dataroot_lq "
                "would be unused"
            ),
        ),
        (
            with_("datasets.train.degradations", {"blur_prob": 1}),
            "job.yml: datasets.train.degradations: not a job-file key",
        ),
        ({**MINIMAL, "srcluster": {"degrade_on": "gpu"}}, "job.yml: srcluster.degrade_on: Input should be"),
    ],
)
def test_bad_degradations_name_the_key(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_job(data, "job.yml")
    assert expected in str(err.value)


def test_degradation_keys_without_high_order_degradation_are_named_as_ignored():
    job = parse_job({**with_("datasets.train.kernel_range", [3, 9]), "jpeg_range": [40, 90]}, "job.yml")
    assert job.datasets.train.degradations is None
    assert sorted(job.warnings) == [
        "job.yml: datasets.train.kernel_range: ignored (high_order_degradation is false)",
        "job.yml: jpeg_range: ignored (high_order_degradation is false)",
    ]


def test_where_degradations_run():
    assert parse_job(MINIMAL).degrade_in_workers  # CPU job: in the data workers
    assert not parse_job({**MINIMAL, "srcluster": {"use_gpu": True}}).degrade_in_workers  # GPU: in the step
    assert parse_job({**MINIMAL, "srcluster": {"use_gpu": True, "degrade_on": "workers"}}).degrade_in_workers
    assert not parse_job({**MINIMAL, "srcluster": {"degrade_on": "device"}}).degrade_in_workers
    # video codecs code on the CPU: with one on, degradations run in the workers, and a `device` choice is named
    coded = parse_job({**MINIMAL, "video_codec_prob": 0.5, "srcluster": {"use_gpu": True, "degrade_on": "device"}})
    assert coded.degrade_in_workers
    assert any("srcluster.degrade_on: device ignored (video codecs" in w for w in coded.warnings)
