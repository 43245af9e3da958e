"""The job file: what users type, and the one-line errors they get when they mistype it."""

import json

import pytest
import yaml

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
    "data, expected",
    [
        (with_("datasets.train.lq_siz", 32), "datasets.train.lq_siz: unknown key (did you mean 'lq_size'?)"),
        (with_("train.total_iter", "many"), "train.total_iter: Input should be a valid integer"),
        (with_("datasets.train.batch_size_per_gpu", 0), "datasets.train.batch_size_per_gpu: Input should be greater than 0"),
        (with_("scale", 5), "scale: Input should be 1, 2, 3, 4 or 8"),
        (with_("network_g.type", "compakt"), "network_g.type: unknown generator 'compakt' (did you mean 'compact'"),
        (with_("train.losses", [{"type": "charbonierloss"}]), "train.losses[0].type: unknown loss 'charbonierloss'"),
        (with_("train.losses", [{"type": "ganloss", "loss_weight": 0.1}]), "no network_d is configured"),
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
    assert out["effective_batch"] == 16 and out["job"]["train"]["ema_decay"] == 0.999

    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(with_("datasets.train.lq_siz", 3)))
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lq_siz: unknown key" in err and "Traceback" not in err


def test_flatten_masks_url_passwords():
    flat = flatten({"srcluster": {"mlflow": {"tracking_uri": "https://bob:hunter2@mlflow.example"}}, "l": [{"a": 1}]})
    assert flat == {"srcluster.mlflow.tracking_uri": "https://bob:***@mlflow.example", "l.0.a": 1}
