"""`srcluster submit` and `srcluster jobs`: a job file onto a running Ray cluster through Ray's Job Submission API, the
same API `ray job submit` uses.

What travels: a working folder holding the job file and the relative local files it names, the entrypoint
(`srcluster train|pipeline FILE`), and the endpoints the stage needs (storage `public_env()`, the MLflow tracking URI).
What does not: credentials. The cluster's nodes resolve those from their own environment, files or instance roles.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from unittest import mock

from srcluster import __version__
from srcluster.envnames import LOCAL_ONLY, SECRET_NAME, VALID_NAME
from srcluster.errors import SrclusterError
from srcluster.launch.jobfile import JobFile, load, relative_to_cwd
from srcluster.storage import StorageSettings, redact_url
from srcluster.tracking.tracker import resolve_tracking_uri
from srcluster.train.stage import ON_CLUSTER_ENV, worker_env

# Ray's GCS holds a job's packaged working folder (its own cap is 500 MiB); data belongs in object storage.
WORKING_DIR_LIMIT = 100 << 20


def resolve_address(explicit: str | None) -> str:
    """--address > RAY_API_SERVER_ADDRESS > RAY_ADDRESS, as the `ray job` CLI does."""
    address = explicit or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SrclusterError("no Ray cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address


def connect(address: str):
    """A JobSubmissionClient for `address`, or a one-line error naming it."""
    # Ray loads when a command talks to a cluster, not when the CLI parser imports this module
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        # Ray's client lets RAY_API_SERVER_ADDRESS, then RAY_ADDRESS (which `ray.init` sets in the driver), override
        # the address it is given, so a job could silently go to another cluster: pin the first to the one resolved.
        with mock.patch.dict(os.environ, {"RAY_API_SERVER_ADDRESS": address}):  # restores os.environ after
            return JobSubmissionClient(address)
    except AuthenticationError:
        raise SrclusterError(
            f"the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (or ~/.ray/auth_token)"
        ) from None
    except Exception as exc:  # ConnectionError, requests' errors, ValueError for malformed addresses
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SrclusterError(
            f"cannot reach the Ray dashboard at {address} (is the head running and its dashboard "
            f"port, 8265 by default, reachable?): {reason[:200]}"
        ) from None


def call(address: str, fn, *args):
    """Run one SDK call; Ray reports an unknown job id and server errors as RuntimeError with a long text."""
    try:
        return fn(*args)
    except RuntimeError as exc:
        raise SrclusterError(f"{address}: {str(exc).strip().splitlines()[0][:300]}") from None


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not VALID_NAME.fullmatch(name):
            raise SrclusterError(f"--env {pair!r}: expected NAME=VALUE")
        if SECRET_NAME.search(name):
            raise SrclusterError(
                f"--env {name}: looks like a secret; set it in the cluster's environment instead "
                "(job specs are readable by anyone who can list the cluster's jobs)"
            )
        env[name] = value
    return env


def job_env(settings: StorageSettings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The endpoints a job's driver on a cluster needs, without secrets: the workers' environment (storage's
    public_env() and the MLflow tracking URI) less what names this machine (`LOCAL_ONLY`: its srcluster home, AWS
    profile and credentials file, which the cluster's nodes resolve for themselves), plus `extra`."""
    uri = resolve_tracking_uri()
    remote = "://" in uri and not uri.startswith(("sqlite:", "file:"))  # a local store means nothing elsewhere
    env = {k: v for k, v in worker_env(settings, uri if remote else None).items() if k not in LOCAL_ONLY}
    # The stage's driver calls ray.init(runtime_env={"env_vars": ...}) with these same names; Ray refuses to merge
    # a driver's env_vars with the job's when names repeat unless told the driver's may override them.
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    env[ON_CLUSTER_ENV] = "1"  # cluster defaults (train/stage.py: max_failures)
    env.update(extra or {})
    for name, value in env.items():
        if redact_url(value) != value:
            raise SrclusterError(
                f"{name} holds a URL with a password, which would travel in plain text; give the "
                "cluster its credentials instead (MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*)"
            )
    return env


@dataclass
class Submission:
    jobfile: JobFile
    entrypoint: str
    runtime_env: dict
    submission_id: str
    workdir: tempfile.TemporaryDirectory = field(repr=False)

    def files(self) -> list[str]:
        root = Path(self.workdir.name)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def prepare(
    path: str | Path, *, pip: list[str] | None = None, env: dict[str, str] | None = None, fresh: bool = False
) -> Submission:
    """Validate the job file and build everything `submit_job` needs; raises before anything reaches the cluster."""
    jobfile = load(path)
    jobfile.check_no_password()
    extra_files = jobfile.relative_files()
    env_vars = job_env(StorageSettings.resolve(), env)  # this machine's storage endpoint, as the job's driver sees it
    size = jobfile.path.stat().st_size + sum(_size(Path.cwd() / rel) for rel in extra_files)
    if size > WORKING_DIR_LIMIT:
        raise SrclusterError(
            f"{jobfile.path}: the files it names add up to {size / 2**20:.0f} MiB, over the "
            f"{WORKING_DIR_LIMIT >> 20} MiB that travel with a job; put data in object storage "
            "(s3://)"
        )
    workdir = tempfile.TemporaryDirectory(prefix="srcluster-submit-")
    root = Path(workdir.name)
    target = relative_to_cwd(jobfile.path)
    (root / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(jobfile.path, root / target)
    for rel in extra_files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if (Path.cwd() / rel).is_dir():
            shutil.copytree(Path.cwd() / rel, root / rel, dirs_exist_ok=True)
        else:
            shutil.copy2(Path.cwd() / rel, root / rel)
    runtime_env: dict = {"working_dir": str(root), "env_vars": env_vars}
    if pip:
        runtime_env["pip"] = pip
    entrypoint = shlex.join(["srcluster", jobfile.command, str(target), *(["--fresh"] if fresh else [])])
    slug = re.sub(r"[^a-z0-9]+", "-", jobfile.name.lower()).strip("-")[:40] or "job"
    return Submission(jobfile, entrypoint, runtime_env, f"srcluster-{slug}-{secrets.token_hex(4)}", workdir)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def submit(
    path: str | Path,
    address: str,
    *,
    pip: list[str] | None = None,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> tuple[object, str]:
    """Submit the job file; returns (client, submission id)."""
    submission = prepare(path, pip=pip, env=env, fresh=fresh)
    try:
        client = connect(address)
        job_id = call(
            address,
            lambda: client.submit_job(
                entrypoint=submission.entrypoint,
                runtime_env=submission.runtime_env,
                submission_id=submission.submission_id,
                metadata={"srcluster_version": __version__, "srcluster_job": submission.jobfile.name},
            ),
        )
    finally:
        submission.workdir.cleanup()  # the client has packaged and uploaded it by now
    return client, job_id


def follow(client, job_id: str, out: TextIO = sys.stdout, settle_s: float = 60) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # the log stream closes when the driver exits; the status turns terminal a moment later
    deadline = time.monotonic() + settle_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return status.value
        time.sleep(0.5)
