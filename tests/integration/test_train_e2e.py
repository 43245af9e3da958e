"""A real stage and a real three-stage chain: shards on SeaweedFS S3, 2 Ray Train workers over gloo, MLflow server."""

from __future__ import annotations

import configparser

import pytest
import yaml

from helpers.jobs import SCORED, TRAIN, VAL, tiny_job
from srcluster import home
from srcluster.cli import main
from srcluster.data.sample import build_sample_dataset
from srcluster.storage import StorageSettings
from srcluster.tracking.tracker import Tracker
from srcluster.train.stage import run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_data(stack):
    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


def local_secret() -> str:
    parser = configparser.ConfigParser()
    parser.read(home.credentials_path())
    return parser["srcluster"]["aws_secret_access_key"]


def test_stage_streams_from_s3_checkpoints_to_s3_and_tracks_in_mlflow(stack, ray_cluster, sample_data, tmp_path, capfd):
    from spandrel import ModelLoader

    from srcluster.config import parse_job

    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(tiny_job()))
    assert main(["train", str(path)]) == 0
    shown = capfd.readouterr()
    # the console: rank 0's progress relayed by the driver, one plain line per print_freq here (not a terminal), the
    # summary naming the log file; Ray's forwarded worker output and library noise went to that file
    lines = (shown.out + shown.err).splitlines()
    assert [line.split(" |")[0] for line in lines if " iter " in line] == ["[e2e] iter 10/20", "[e2e] iter 20/20"]
    assert any("data wait" in line and "eta " in line and "best val_psnr" in line for line in lines)
    noise = [line for line in lines if any(n in line for n in ("pid=", "core_worker", "Warning", "Traceback"))]
    assert not noise, noise
    log = home.home() / "logs" / shown.out.split("log: ", 1)[1].strip().rsplit("/", 1)[1]
    # Ray's forwarded output (its "(... pid=N)" prefix) went to the file; which lines have arrived by the time the
    # command returns depends on Ray's forwarding, so no particular line is asserted
    assert "pid=" in log.read_text()
    result = run_stage(parse_job(tiny_job()))  # the run just trained, found by its config
    assert result.reused and result.iterations == 20

    fs, _ = StorageSettings.resolve().filesystem(result.checkpoint_uri)
    assert result.checkpoint_uri.startswith("s3://srcluster/runs/")
    assert {p.rsplit("/", 1)[-1] for p in fs.ls(result.checkpoint_uri)} >= {"state.pt", "net_g_ema.safetensors"}
    run_folder = result.checkpoint_uri.rsplit("/", 1)[0]
    assert {"checkpoint_0000010", "checkpoint_0000020"} <= {p.rsplit("/", 1)[-1] for p in fs.ls(run_folder)}

    client = Tracker().client
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["datasets.train.lq_size"] == "16" and run.data.params["effective_batch"] == "4"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_psnr")] == [10, 20]
    assert len(client.get_metric_history(result.run_id, "l_g_charbonnier")) == 2
    assert run.data.metrics["val_psnr"] > 20 and run.data.metrics["samples_per_s"] > 0
    assert run.data.metrics["data_skipped"] == 0 and "data_io_retries" in run.data.metrics
    secret = local_secret()
    assert all(secret not in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])

    artifacts = {f.path for folder in ("model", "comparisons") for f in client.list_artifacts(result.run_id, folder)}
    assert {"model/net_g_ema_20.safetensors", "comparisons/val_0000020.png"} <= artifacts
    # artifacts went through the tracking server into the mlflow bucket on S3
    s3_fs, _ = StorageSettings.resolve().filesystem("s3://mlflow/")
    assert any(p.endswith("net_g_ema_20.safetensors") for p in s3_fs.find("mlflow/artifacts"))

    exported = client.download_artifacts(result.run_id, "model/net_g_ema_20.safetensors", str(tmp_path))
    model = ModelLoader().load_from_file(exported)
    assert model.architecture.id == "Compact" and model.scale == 2


@pytest.mark.parametrize(
    ("change", "env", "expected"),
    [
        (
            {"srcluster": {"workers": 2, "s3_endpoint": "http://127.0.0.1:9"}},
            {"AWS_PROFILE": "srcluster"},
            "cannot reach S3 endpoint http://127.0.0.1:9",
        ),
        ({"srcluster": {"workers": 2, "s3_endpoint": "http://127.0.0.1:9"}}, {}, "no S3 credentials"),
        (
            {},
            {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONG", "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"},
            "rejected the credentials",
        ),
        (
            {"datasets": {"train": {"dataroot_gt": "s3://no-such-bucket/x"}}},
            {},
            "bucket 'no-such-bucket' does not exist",
        ),
        (
            {"datasets": {"train": {"dataroot_gt": "s3://srcluster/e2e/nothing-here"}}},
            {},
            "dataset s3://srcluster/e2e/nothing-here does not exist",
        ),
    ],
)
def test_bad_storage_fails_in_one_line_before_training(
    stack, sample_data, tmp_path, monkeypatch, capsys, change, env, expected
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    job = tiny_job(**change)
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(job))
    runs_before = len(Tracker().client.search_runs([e.experiment_id for e in Tracker().client.search_experiments()]))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "wrong-secret-value" not in err
    runs_after = len(Tracker().client.search_runs([e.experiment_id for e in Tracker().client.search_experiments()]))
    assert runs_after == runs_before  # nothing was started


def test_plateau_stops_early_and_the_best_generator_goes_downstream(stack, ray_cluster, sample_data):
    from safetensors.torch import load as load_safetensors
    from spandrel import ModelLoader

    from srcluster.config import parse_job

    # min_delta so large that no validation after the first counts as an improvement: the run stops at the second
    job = tiny_job(
        name="plateau",
        train={"total_iter": 400, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        val={"val_freq": 4, **SCORED},
        logger={"print_freq": 4, "save_checkpoint_freq": 100},
        srcluster={
            "workers": 2,
            "checkpoints": {"keep_last": 1, "best": "ssim"},
            "plateau": {"patience": 1, "min_delta": 100.0},
        },
    )
    result = run_stage(parse_job(job))

    assert result.iterations == 8 and result.metrics["stopped_early"] == 1
    assert result.best == {**result.best, "metric": "val_ssim", "iteration": 4}
    assert result.generator_uri.endswith("/best/net_g_ema_0000004.safetensors")
    assert result.checkpoint_uri.endswith("checkpoint_0000008")  # the stop saved a resume point
    fs, path = StorageSettings.resolve().filesystem(result.generator_uri)
    assert ModelLoader().load_from_state_dict(load_safetensors(fs.cat_file(path))).scale == 2
    run_folder = result.checkpoint_uri.rsplit("/", 1)[0]
    kept = [p.rsplit("/", 1)[-1] for p in fs.ls(run_folder) if p.rsplit("/", 1)[-1].startswith("checkpoint_0")]
    assert kept == ["checkpoint_0000008"]  # keep_last: 1

    client = Tracker().client
    run = client.get_run(result.run_id)
    assert (
        run.data.tags["srcluster.best_iteration"] == "4"
        and run.data.tags["srcluster.generator_uri"] == result.generator_uri
    )
    assert {f.path for f in client.list_artifacts(result.run_id, "model/best")} == {
        "model/best/net_g_ema_4.safetensors"
    }
    again = run_stage(parse_job(job))  # a reused run passes the same best generator downstream
    assert again.reused and again.generator_uri == result.generator_uri and again.iterations == 8


def test_two_nodes_read_their_own_shards_and_an_elastic_run_survives_losing_one(stack, sample_data, tmp_path):
    """A real multi-node Ray cluster (ray.cluster_utils, one training worker per node) in a subprocess, since this
    session's own Ray cluster is single-node. workers: [1, 2]; one node is removed after the first checkpoint."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from srcluster.config import parse_job

    job = tiny_job(
        name="elastic",
        train={"total_iter": 60, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        val={"val_freq": 100},
        logger={"print_freq": 4, "save_checkpoint_freq": 4},
        srcluster={"workers": [1, 2], "max_failures": 3},
    )
    parse_job(job)  # a bad job fails here, not in the subprocess
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_DEDUP_LOGS": "0"}
    script = Path(__file__).parents[1] / "helpers" / "ray_nodes.py"
    out = subprocess.run(  # check=False: the assertion below shows the output of a failed run
        [sys.executable, str(script), str(spec)], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])

    reads = {}  # rank -> (node, shards) while both nodes were up: "rank R on node N reads K of M shards/images: ..."
    for line in (out.stdout + out.stderr).splitlines():
        if "[elastic] rank " in line and " reads " in line:
            words = line.split("[elastic] rank ", 1)[1].split()
            if int(words[5]) < int(words[7]):  # a share, not all of them (the one-node phase)
                reads.setdefault(words[0], (words[3], line.split(": ", 1)[1]))
    assert set(reads) >= {"0", "1"}, out.stdout[-3000:]
    assert reads["0"][0] != reads["1"][0] and reads["0"][1] != reads["1"][1]  # two nodes, two disjoint shard lists

    assert result["iterations"] == 60
    client = Tracker().client
    run = client.get_run(result["run_id"])
    resizes = {k: v for k, v in run.data.tags.items() if k.startswith("srcluster.resize.")}
    assert "removing a node" in out.stdout
    assert any(v.startswith("2 -> 1 workers: batch_size_per_gpu 2, accum_iter 2") for v in resizes.values()), (
        out.stdout + out.stderr
    )[-6000:]
    workers = {int(m.value) for m in client.get_metric_history(result["run_id"], "workers")}
    assert workers == {1, 2}
    assert run.data.params["effective_batch"] == "4"
