"""Shared fixtures.

Local stack (this section): every test session gets its own $SRCLUSTER_HOME in a temp dir, with the AWS_* and MLFLOW_*
variables of the caller's shell removed, so tests never touch ~/.srcluster or real cloud storage. The fixtures `s3` and
`stack` start real services in it, once per session and only when a test asks: `s3` starts the SeaweedFS S3 server
alone, `stack` adds the MLflow server to the same S3 (or starts both at once when it comes first).
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.free_ports import free_port_block
from srcluster import stack as local_stack

# --- local stack ------------------------------------------------------------------------------------------------------


@dataclass
class LocalStack:
    home: Path
    s3_url: str
    s3_port: int
    mlflow_url: str | None = None
    mlflow_port: int | None = None


class _StackSession:
    """One S3 server and at most one MLflow server for the whole session, started on first use."""

    def __init__(self, home: Path):
        self.home = home
        self.s3_port = free_port_block(len(local_stack.S3_PORT_ROLES))
        self.mlflow_port = free_port_block(1, avoid=set(local_stack.s3_ports(self.s3_port).values()))
        self.started = False

    def ensure(self, mlflow: bool) -> LocalStack:
        os.environ["SRCLUSTER_HOME"] = str(self.home)
        self.started = True
        services = local_stack.up(s3_port=self.s3_port, mlflow_port=self.mlflow_port, mlflow=mlflow, timeout=120)
        found = LocalStack(self.home, services["s3"].url, services["s3"].port)
        if "mlflow" in services:
            found.mlflow_url, found.mlflow_port = services["mlflow"].url, services["mlflow"].port
        return found

    def close(self) -> None:
        if self.started:
            os.environ["SRCLUSTER_HOME"] = str(self.home)  # in case a test switched it and failed before restoring it
            local_stack.down(grace=2)  # the data dies with the temp dir: no need to wait for a clean SeaweedFS exit


@pytest.fixture(scope="session", autouse=True)
def _stack_session(tmp_path_factory):
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_"))]:
        del os.environ[name]
    home = tmp_path_factory.mktemp("srcluster-home")
    os.environ["SRCLUSTER_HOME"] = str(home)
    session = _StackSession(home)
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(scope="session")
def s3(_stack_session) -> LocalStack:
    """The session's S3 server; StorageSettings.resolve() finds it through $SRCLUSTER_HOME/stack.json."""
    return _stack_session.ensure(mlflow=False)


@pytest.fixture(scope="session")
def stack(_stack_session) -> LocalStack:
    """The session's S3 and MLflow servers; MLFLOW_TRACKING_URI points at the MLflow server."""
    found = _stack_session.ensure(mlflow=True)
    os.environ["MLFLOW_TRACKING_URI"] = found.mlflow_url
    return found


# --- pretrained weights -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch):
    """Tests never download: a weights file missing from a test's hub cache ends in the offline error, as on a node
    without internet. Tests of the download path replace `hub.download` themselves."""
    from srcluster.components import hub

    def offline(url: str, dest) -> None:
        raise urllib.error.URLError(f"tests never download ({url})")

    monkeypatch.setattr(hub, "download", offline)
    monkeypatch.delenv(hub.WEIGHTS_URL_ENV, raising=False)


# --- CPU threads ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of CPU-bound tensor tests: on a busy 2-core machine thread contention made
    single calls up to 20x slower. Use as `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- Ray --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster(_stack_session):
    """One local Ray cluster for the session. Started after $SRCLUSTER_HOME is set, so workers inherit it.

    4 logical CPUs on a 2-core machine: 2 training workers plus Ray Train's controller actors fit at once.
    """
    import ray

    # address="local": always a new cluster, never one that another Ray user on this machine left in /tmp/ray
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_port=free_port_block(1),
        log_to_driver=True,
        configure_logging=False,
    )
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address  # subprocesses join this cluster
    try:
        yield ray
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()
