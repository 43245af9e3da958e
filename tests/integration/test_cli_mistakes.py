"""A new user's mistakes, through the real CLI: each is one line naming what is wrong (and how to fix it), no
traceback, and a non-zero exit. Runs with a $SRCLUSTER_HOME of its own, where no local stack has been started and (as
in every test) no AWS_* variable is set: the state of a fresh machine before `srcluster stack up`."""

from __future__ import annotations

import pytest
import yaml

from srcluster.cli import main

REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens there, connections are refused at once


def job_with_typo(folder) -> str:
    path = folder / "typo.yml"
    job = {
        "name": "typo",
        "scale": 2,
        "datasets": {"train": {"dataroot_gt": str(folder), "lq_siz": 16}},
        "network_g": {"type": "compact"},
        "train": {"total_iter": 10, "losses": [{"type": "l1loss"}]},
    }
    path.write_text(yaml.safe_dump(job))
    return str(path)


MISTAKES = {
    # name: (argv, a phrase the one line must hold)
    "missing job file": (["train", "{tmp}/nope.yml"], "no such job file"),
    "typo in a job key": (["check", "{typo}"], "did you mean 'lq_size'"),
    "missing recipe": (["pipeline", "{tmp}/recipe.yml"], "no such job file"),
    "sample data before stack up": (["data", "sample"], "srcluster stack up"),
    "S3 shards without credentials": (["shards", "verify", "s3://srcluster/none"], "no S3 credentials"),
    "S3 images without credentials": (["evaluate", "--hr", "s3://srcluster/none", "--scale", "2"], "no S3 credentials"),
    "missing shard set": (["shards", "stats", "{tmp}/none"], "no shard set"),
    "folder without images": (["shards", "build", "{tmp}", "{tmp}/dest"], "no images"),
    "missing model file": (
        ["upscale", "{tmp}/none.safetensors", "{tmp}/none.png", "-o", "{tmp}/out"],
        "does not exist",
    ),
    "unreachable model URL": (
        ["evaluate", "--hr", "{tmp}", "--scale", "2", "--model", f"{REFUSED}/g.safetensors"],
        "does not exist",
    ),
    "unreachable Ray head": (["jobs", "list", "--address", REFUSED], "cannot reach the Ray dashboard"),
    "bad port": (["stack", "up", "--s3-port", "80"], "out of range"),
}


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_one_line_with_no_traceback(mistake, fresh_machine, capsys):
    argv, phrase = MISTAKES[mistake]
    (fresh_machine / "work").mkdir()
    names = {"tmp": str(fresh_machine / "work"), "typo": job_with_typo(fresh_machine)}
    code = main([arg.format(**names) for arg in argv])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0, (out, err)
    assert "Traceback" not in out + err
    assert len(errors) == 1 and phrase in " ".join(err.split()), err  # rich may wrap the line on a narrow terminal
