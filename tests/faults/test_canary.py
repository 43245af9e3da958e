"""Security without Ray: the S3 secret never shows up where people or other processes can read it, local services
listen on loopback only, YAML cannot build objects, and a checkpoint cannot run code.

The canary is the session stack's real S3 secret, set as AWS_SECRET_ACCESS_KEY (the credentials of a user with keys in
the environment), so the commands below really use it; commands that never reach S3 get a made-up canary as well.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import logging
import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from srcluster import cli, home
from srcluster import stack as local_stack
from srcluster.config import job_params, parse_job
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.tracking.tracker import Tracker

REPO = Path(__file__).resolve().parents[2]
FAKE_CANARY = "CANARY-" + uuid.uuid4().hex  # for what must not leak even when it cannot reach S3


def stack_keys() -> tuple[str, str]:
    parser = configparser.ConfigParser()
    parser.read(home.credentials_path())
    section = parser[home.LOCAL_PROFILE]
    return section["aws_access_key_id"], section["aws_secret_access_key"]


def fragments(secret: str) -> list[str]:
    """The secret and its halves: a truncated or split secret is still a leak."""
    half = len(secret) // 2
    return [secret, secret[:half], secret[half:]]


def assert_clean(text: str, secret: str, where: str) -> None:
    for part in fragments(secret):
        assert part not in text, f"the S3 secret (or part of it) appears in {where}"


@pytest.fixture
def secret_in_env(s3, monkeypatch) -> str:
    key, secret = stack_keys()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert StorageSettings.resolve().credential_source.startswith("environment")
    return secret


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue() + err.getvalue()


def canary_job(tmp_path: Path, secret: str) -> Path:
    """The repository's job, with a secret-bearing URL in it: URLs with passwords are masked wherever srcluster
    writes a job down (MLflow params)."""
    data = yaml.safe_load((REPO / "jobs" / "local-2x-fidelity.yml").read_text())
    data["srcluster"]["mlflow"] = {"tracking_uri": f"http://srcluster:{secret}@127.0.0.1:9/"}
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the secret stays out of output, params and environments ----------------------------------------------------------


def test_check_output_has_no_secret(secret_in_env, tmp_path, monkeypatch, fault_record):
    job = tmp_path / "plain.yml"
    job.write_text((REPO / "jobs" / "local-2x-fidelity.yml").read_text())
    for secret in (secret_in_env, FAKE_CANARY):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        for extra in ((), ("--json",)):
            code, text = run_cli("check", str(job), *extra)
            assert code == 0, text
            assert_clean(text, secret, f"`srcluster check {' '.join(extra)}`")
    fault_record("canary: S3 secret in `srcluster check` (text, --json)", True, note="absent")


def test_shards_build_and_verify_output_has_no_secret(secret_in_env, tmp_path, caplog, fault_record):
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")  # a skipped file: its report line is output too
    dest = f"s3://srcluster/tests/canary-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)  # everything any library logs, botocore and s3fs included
    code, build_out = run_cli(
        "shards", "build", str(folder), dest, "--tile", "0", "--tile-min", "8", "--max-bad", "0.5", "--workers", "0"
    )
    assert code == 0, build_out
    assert "broken.png" in build_out  # the output was captured
    code, verify_out = run_cli("shards", "verify", dest)
    assert code == 0, verify_out
    code, missing_out = run_cli("shards", "verify", dest + "-missing")  # an error path prints too
    assert code == 2 and "error" in missing_out
    logs = caplog.text
    assert logs  # DEBUG logging was on
    for text, where in (
        (build_out, "shards build output"),
        (verify_out, "shards verify output"),
        (missing_out, "shards verify error"),
        (logs, "log records"),
    ):
        assert_clean(text, secret_in_env, where)
    fault_record("canary: S3 secret in `shards build` / `verify` output and logs", True, note="absent, DEBUG logs too")


def test_public_env_has_no_secret(secret_in_env, fault_record):
    settings = StorageSettings.resolve()
    assert settings.secret_key == secret_in_env  # the canary really is the secret in use
    assert_clean(json.dumps(settings.public_env()), secret_in_env, "public_env()")
    assert_clean(repr(settings) + settings.describe(), secret_in_env, "StorageSettings repr / describe")
    assert secret_in_env in json.dumps(settings.secret_env())  # the one place it must be (the MLflow server we start)
    fault_record("canary: S3 secret in public_env() / repr / describe", True, note="absent")


def test_mlflow_params_and_tags_have_no_secret(stack, secret_in_env, tmp_path, fault_record):
    job = parse_job(yaml.safe_load(canary_job(tmp_path, secret_in_env).read_text()), "job.yml")
    tracker = Tracker(stack.mlflow_url)
    run_id = tracker.start_run(
        f"canary-{uuid.uuid4().hex[:8]}",
        "canary",
        params={**job_params(job), "effective_batch": job.effective_batch},
        tags={"srcluster.stage": job.name, "srcluster.run_key": "canary"},
    )
    tracker.end_run(run_id)
    response = requests.get(f"{stack.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
    response.raise_for_status()
    data = response.json()["run"]["data"]
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["srcluster.mlflow.tracking_uri"] == "http://srcluster:***@127.0.0.1:9/"  # masked, not dropped
    assert params["datasets.train.dataroot_gt"] == "s3://srcluster/demo/train"
    assert_clean(response.text, secret_in_env, "MLflow run params/tags (REST API)")
    fault_record("canary: S3 secret in MLflow params/tags (REST API)", True, note="absent; URL passwords masked")


def test_stack_files_hold_the_secret_only_where_needed(stack, secret_in_env, fault_record):
    """Of the local stack's files, only the two credential files hold the secret, both readable by the owner only;
    the service logs and the state file do not."""
    holders = []
    for path in home.home().rglob("*"):
        if not path.is_file() or path.stat().st_size > 50 << 20:
            continue
        try:
            content = path.read_bytes()
        except OSError:
            continue
        if any(part.encode() in content for part in fragments(secret_in_env)):
            holders.append(path)
    allowed = {home.credentials_path(), home.home() / "s3-identities.json"}
    unexpected = [str(p) for p in holders if p not in allowed]
    assert not unexpected, f"the S3 secret appears in {unexpected}"
    for path in holders:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    fault_record(
        "canary: S3 secret in the stack's logs and state files",
        True,
        note="only in credentials + s3-identities.json (0600)",
    )


# --- loopback only ----------------------------------------------------------------------------------------------------


def listening_sockets() -> dict[int, set[str]]:
    """port -> local addresses of every TCP socket in LISTEN state, from /proc/net/tcp{,6} (no psutil needed)."""
    found: dict[int, set[str]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if width == 8:
                text = ".".join(str(b) for b in words)
            else:
                import ipaddress

                text = str(ipaddress.IPv6Address(words))
            found.setdefault(int(port, 16), set()).add(text)
    return found


def test_local_services_listen_on_loopback_only(stack, fault_record):
    ports = set(local_stack.s3_ports(stack.s3_port).values()) | {stack.mlflow_port}
    listening = listening_sockets()
    bound = {port: listening.get(port, set()) for port in ports}
    assert bound[stack.s3_port] and bound[stack.mlflow_port], bound  # the services are up and were found
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    exposed = {port: addresses - loopback for port, addresses in bound.items() if addresses - loopback}
    assert not exposed, f"listening beyond loopback: {exposed}"
    fault_record(
        "local services bind 127.0.0.1 only",
        True,
        note=f"{sum(bool(a) for a in bound.values())} listening port(s) checked",
    )


def test_mlflow_refuses_foreign_host_headers(stack, fault_record):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends `Host: evil.example`; the server refuses."""
    url = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search"
    ok = requests.post(url, json={"max_results": 1}, timeout=30)
    assert ok.status_code == 200, ok.text
    foreign = requests.post(
        url, json={"max_results": 1}, headers={"Host": f"evil.example:{stack.mlflow_port}"}, timeout=30
    )
    assert foreign.status_code in (400, 403), (foreign.status_code, foreign.text[:200])
    fault_record("MLflow request with a foreign Host header", True, note=f"refused ({foreign.status_code})")


# --- YAML and pickles -------------------------------------------------------------------------------------------------


def test_yaml_python_tags_are_refused(tmp_path, fault_record):
    marker = tmp_path / "yaml-payload-ran"
    job = tmp_path / "evil.yml"
    job.write_text(
        (REPO / "jobs" / "local-2x-fidelity.yml").read_text()
        + f"\nextra: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    code, text = run_cli("check", str(job))
    assert code == 2
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "not valid YAML" in lines[0] and "python/object" in lines[0], text
    assert "Traceback" not in text
    assert not marker.exists()
    fault_record("job file with a !!python/object tag", True, note="refused with one line; payload did not run")


class Payload:
    """Unpickling this runs `os.system(touch <marker>)`: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_pickle_checkpoint_cannot_run_code(s3, tmp_path, where, fault_record):
    from srcluster.components.weights import read_state_dict

    marker = tmp_path / f"pickle-payload-ran-{where}"
    buffer = io.BytesIO()
    torch.save({"params_ema": {"w": torch.zeros(2)}, "evil": Payload(marker)}, buffer)
    if where == "local":
        source = str(tmp_path / "evil.pth")
        Path(source).write_bytes(buffer.getvalue())
    else:
        source = f"s3://srcluster/tests/canary-{uuid.uuid4().hex}/evil.pth"
        fs, path = StorageSettings.resolve().filesystem(source)
        fs.pipe_file(path, buffer.getvalue())
    with pytest.raises(SrclusterError, match="not a weights-only torch file") as caught:
        read_state_dict(source)
    assert "\n" not in str(caught.value)
    assert not marker.exists()
    # the same payload through plain pickle does run: the test would notice a weights_only regression
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    fault_record(
        f"checkpoint with a pickle payload ({where})", True, note="refused (weights_only); payload did not run"
    )
