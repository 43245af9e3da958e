"""`srcluster submit` / `srcluster jobs` against a real Ray head started with `ray start --head` on 127.0.0.1 (its own
ports, temp dir and auth token; not the session's `ray_cluster`), and the plain `ray job submit` form from the docs.

The head's environment has no MLFLOW_* or AWS_*, and an SRCLUSTER_HOME of its own (as a cluster node has: where it
finds its credentials): a job reaches the test stack only through the endpoints the submission carries, as on a
real cluster, and the submitter's local state (its home, AWS profile, credentials file) never travels. Bad input
is checked to fail in one line before anything is submitted.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.free_ports import free_port_block
from helpers.jobs import CANARY, launch_job, write_job
from helpers.jobs import LAUNCH_TRAIN as TRAIN
from helpers.jobs import LAUNCH_VAL as VAL
from helpers.launch import BIN, only_run, ray_start_args
from srcluster import home
from srcluster.cli import main
from srcluster.launch.submit import prepare


def local_secret() -> str:
    parser = configparser.ConfigParser()
    parser.read(home.credentials_path())
    return parser["srcluster"]["aws_secret_access_key"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a child at the test stack or the session's Ray."""
    drop = ("RAY_", "AWS_", "MLFLOW_", "SRCLUSTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@dataclass
class Head:
    address: str  # the dashboard URL jobs are submitted to
    env: dict[str, str]  # a client's environment: the head's auth token, nothing of the test stack


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) for every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            found[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def tree(root: int) -> set[int]:
    """`root`, its descendants, and its process group (Ray's workers start their own sessions, so both are needed)."""
    table = processes()
    members = {root} | {pid for pid, (_, group, _) in table.items() if group == root}
    while True:
        more = {pid for pid, (parent, _, _) in table.items() if parent in members} - members
        if not more:
            return {pid for pid in members if pid in table and table[pid][2] != "Z"}
        members |= more


def stop_tree(proc: subprocess.Popen, grace: float = 15) -> None:
    """End `ray start --block` and everything it started, by pid: never a bare `ray stop`, which would end every Ray
    cluster on the machine (this session's `ray_cluster` and other users' included)."""
    pids = tree(proc.pid)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, our child
            table = processes()
            pids = {pid for pid in pids if pid in table and table[pid][2] != "Z"}
            if not pids:
                break
            time.sleep(0.5)
    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def sample_data(stack):
    from srcluster.data.sample import build_sample_dataset

    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


def start_head(
    temp: Path, env: dict[str, str], token: str, timeout: float = 240
) -> tuple[subprocess.Popen | None, str]:
    """`ray start --head --block` -> (process, dashboard URL) once the node is fully up ("Ray runtime started") and
    the dashboard answers; (None, why) when `ray start` gave up (it allows the raylet 30 s to register, which a
    loaded machine can miss)."""
    import requests

    port = free_port_block(2)
    log_path = temp / f"head-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                f"--dashboard-port={port + 1}",
                "--num-cpus=4",
                "--include-dashboard=true",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                "--disable-usage-stats",
                *ray_start_args(temp),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{port + 1}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_tree(proc)
            return None, log_path.read_text()[-3000:]
        try:
            if (
                "Ray runtime started" in log_path.read_text()
                and requests.get(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2).ok
            ):
                return proc, address
        except requests.RequestException:
            pass
        time.sleep(1)
    stop_tree(proc)
    return None, f"the Ray head's dashboard at {address} did not answer in {timeout:.0f}s"


@pytest.fixture(scope="module")
def ray_head(stack):
    temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    token = secrets.token_hex(32)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    node_env = {**env, "SRCLUSTER_HOME": str(home.home())}  # the node's own; clients (env) have none
    proc, address = start_head(temp, node_env, token)
    if proc is None:  # one more try: on a busy machine the raylet can miss ray start's 30 s registration window
        proc, address = start_head(temp, node_env, token)
    if proc is None:
        shutil.rmtree(temp, ignore_errors=True)
        pytest.fail(f"ray start --head failed twice:\n{address}")
    try:
        yield Head(address, env)
    finally:
        stop_tree(proc)
        shutil.rmtree(temp, ignore_errors=True)


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # the caller asserts on the return code and shows the output when it is wrong
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def jobs_on(head: Head) -> list[dict]:
    """The head's jobs through its REST API (this process's Ray client may hold the session cluster's token)."""
    import requests

    answer = requests.get(
        f"{head.address}/api/jobs/", headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"}, timeout=30
    )
    answer.raise_for_status()
    return answer.json()


# --- real submissions -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_srcluster_submit_follow_runs_the_stage_on_the_head(stack, sample_data, ray_head, tmp_path):
    write_job(tmp_path, launch_job("launch-sdk"))
    # the submitter's view of storage and MLflow travels with the job; the head's own environment has neither
    submit_env = {
        **ray_head.env,
        "SRCLUSTER_HOME": str(home.home()),
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "AWS_ACCESS_KEY_ID": "AKIACANARY",
    }
    # keys in the submitter's shell do not travel: on the head the job finds the stack's own credentials file
    out = run_cli(
        [str(BIN / "srcluster"), "submit", "job.yml", "--address", ray_head.address, "--follow"], submit_env, tmp_path
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    job_id = out.stdout.splitlines()[0].strip()
    assert job_id.startswith("srcluster-launch-sdk-")
    assert "iter 4/4" in out.stdout and f"job {job_id}: SUCCEEDED" in out.stderr

    run = only_run("launch-sdk")
    assert run.info.status == "FINISHED" and run.data.metrics["val_psnr"] > 0

    (info,) = [j for j in jobs_on(ray_head) if j["submission_id"] == job_id]
    assert info["status"] == "SUCCEEDED" and info["entrypoint"] == "srcluster train job.yml"
    spec = json.dumps(info["runtime_env"])
    assert local_secret() not in spec and CANARY not in spec and "AKIACANARY" not in spec
    assert not {"SRCLUSTER_HOME", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"} & set(info["runtime_env"]["env_vars"])
    assert info["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == os.environ["MLFLOW_TRACKING_URI"]

    status = run_cli(
        [str(BIN / "srcluster"), "jobs", "status", job_id, "--address", ray_head.address], ray_head.env, tmp_path
    )
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    logs = run_cli(
        [str(BIN / "srcluster"), "jobs", "logs", job_id], {**ray_head.env, "RAY_ADDRESS": ray_head.address}, tmp_path
    )
    assert logs.returncode == 0 and "iter 4/4" in logs.stdout
    listing = run_cli([str(BIN / "srcluster"), "jobs", "list", "--address", ray_head.address], ray_head.env, tmp_path)
    assert job_id in listing.stdout and "SUCCEEDED" in listing.stdout
    stop = run_cli(
        [str(BIN / "srcluster"), "jobs", "stop", "no-such-job", "--address", ray_head.address], ray_head.env, tmp_path
    )
    assert stop.returncode == 2 and len(stop.stderr.strip().splitlines()) == 1 and "no-such-job" in stop.stderr


@pytest.mark.slow
def test_plain_ray_job_submit_runs_the_stage(stack, sample_data, ray_head, tmp_path):
    """The documented form: `ray job submit --working-dir . -- srcluster train FILE`, endpoints as env_vars."""
    write_job(tmp_path, launch_job("launch-plain"))
    env_vars = {
        "SRCLUSTER_HOME": str(home.home()),
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
    }
    out = run_cli(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            ray_head.address,
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps({"env_vars": env_vars}),
            "--",
            "srcluster",
            "train",
            "job.yml",
        ],
        ray_head.env,
        tmp_path,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()
    run = only_run("launch-plain")
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_bad_input_against_a_live_head_submits_nothing(stack, ray_head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = len(jobs_on(ray_head))
    bad = write_job(tmp_path, {**launch_job("launch-bad"), "network_g": {"type": "no_such_arch"}})
    missing = write_job(
        tmp_path, launch_job("launch-missing", path={"pretrain_network_g": "weights/g.safetensors"}), "missing.yml"
    )
    for job in (bad, missing):
        assert main(["submit", job.name, "--address", ray_head.address]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and job.name in err, err
    assert len(jobs_on(ray_head)) == before


# --- bad input, no cluster needed: each is one line, found before contacting any head ---------------------------------


@pytest.mark.parametrize(
    ("change", "args", "expected"),
    [
        ({"network_g": {"type": "no_such_arch"}}, [], "network_g"),
        (
            {"path": {"pretrain_network_g": "weights/g.safetensors"}},
            [],
            "path.pretrain_network_g names weights/g.safetensors, which does not exist",
        ),
        ({"datasets": {"train": {"dataroot_gt": "../elsewhere"}, "val": {"dataroot_gt": VAL}}}, [], "outside"),
        ({}, ["--env", "AWS_SECRET_ACCESS_KEY=x"], "--env AWS_SECRET_ACCESS_KEY: looks like a secret"),
        ({"srcluster": {"workers": 1, "mlflow": {"tracking_uri": "http://me:hunter2@mlflow:5000"}}}, [], "password"),
        (
            {},
            ["--env", "MLFLOW_TRACKING_URI=http://me:hunter2@mlflow:5000"],
            "MLFLOW_TRACKING_URI holds a URL with a password",
        ),
    ],
)
def test_bad_job_files_fail_in_one_line_before_contacting_the_head(
    tmp_path, monkeypatch, capsys, change, args, expected
):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, {**launch_job("bad"), **change})
    assert main(["submit", "job.yml", "--address", "http://127.0.0.1:9", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "127.0.0.1:9" not in err and "hunter2" not in err  # the job file was refused before any connection


def test_unreachable_head_is_one_line_naming_the_address(ray_head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, launch_job("unreachable"))
    # --address wins over a RAY_ADDRESS naming a live cluster (Ray's own client would let the variable win, and
    # `ray.init` sets it): the job must not land on another cluster than the one asked for.
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.env["RAY_AUTH_TOKEN"])
    assert main(["submit", "job.yml", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["jobs", "list"]) == 2
    assert "pass --address" in capsys.readouterr().err


def test_the_working_folder_holds_the_job_and_its_local_files_and_the_env_no_secret(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "g.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "jobs").mkdir()
    write_job(tmp_path / "jobs", launch_job("wd", path={"pretrain_network_g": "weights/g.safetensors"}))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    submission = prepare("jobs/job.yml", pip=["lpips==0.1.4"], env={"AWS_ENDPOINT_URL": "http://s3.example:8333"})
    try:
        assert submission.files() == ["jobs/job.yml", "weights/g.safetensors"]
        assert submission.entrypoint == "srcluster train jobs/job.yml"
        env = submission.runtime_env["env_vars"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://s3.example:8333"
        assert submission.runtime_env["pip"] == ["lpips==0.1.4"]
        assert CANARY not in json.dumps(submission.runtime_env) and "AKIACANARY" not in json.dumps(
            submission.runtime_env
        )
    finally:
        submission.workdir.cleanup()


def test_a_local_redux_state_travels_with_the_networks_redux_saved_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "experiments" / "x"
    (run / "training_states").mkdir(parents=True)
    (run / "models" / "resume_models").mkdir(parents=True)
    for file in (
        "training_states/1000.state",
        "models/net_g_ema_1000.safetensors",
        "models/resume_models/net_g_1000.safetensors",
        "models/net_g_ema_500.safetensors",
    ):
        (run / file).write_bytes(b"x")
    write_job(tmp_path, launch_job("redux", path={"resume_state": "experiments/x/training_states/1000.state"}))
    submission = prepare("job.yml")
    try:
        assert submission.files() == [
            "experiments/x/models/net_g_ema_1000.safetensors",
            "experiments/x/models/resume_models/net_g_1000.safetensors",
            "experiments/x/training_states/1000.state",
            "job.yml",
        ]
    finally:
        submission.workdir.cleanup()


def test_a_recipe_is_submitted_as_a_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, {**launch_job("recipe"), "stages": {"fidelity_2x": {}, "fidelity_4x": {}}}, "recipe.yml")
    submission = prepare("recipe.yml", fresh=True)
    submission.workdir.cleanup()
    assert submission.entrypoint == "srcluster pipeline recipe.yml --fresh"
    assert [job.name for job in submission.jobfile.jobs] == ["recipe-fidelity_2x", "recipe-fidelity_4x"]


def test_local_files_too_big_to_travel_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "0001.png").write_bytes(b"x" * (3 << 20))
    write_job(
        tmp_path, {**launch_job("big"), "datasets": {"train": {"dataroot_gt": "hr"}, "val": {"dataroot_gt": VAL}}}
    )
    monkeypatch.setattr("srcluster.launch.submit.WORKING_DIR_LIMIT", 2 << 20)
    assert main(["submit", "job.yml", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "add up to 3 MiB, over the 2 MiB" in err and "s3://" in err and len(err.strip().splitlines()) == 1
