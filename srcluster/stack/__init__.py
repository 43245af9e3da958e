"""The local stack: a SeaweedFS S3 server and an MLflow tracking server on 127.0.0.1.

`up()` starts what is not already running, `down()` stops it, `status()` says whether each service answers. Pids, ports
and process start times live in `$SRCLUSTER_HOME/stack.json`, so any process (the CLI, a test session) can manage the
stack that another one started, and `down()` never signals a pid that has since been reused by something else.

Ports
    The S3 server takes the 8 consecutive ports from `s3_port`: S3, master, volume, filer, then the gRPC ports of the
    same four. SeaweedFS's own default puts gRPC at +10000, which lands in Ray's default worker port range
    (10000-19999); a contiguous block keeps two stacks apart with one number and away from Ray.

Secrets
    The S3 access key and secret are generated once into `$SRCLUSTER_HOME/credentials` (0600) and written to
    SeaweedFS's identities file (0600). Only the MLflow server's environment gets them; stack.json, logs, return
    values and log messages never do.

Modules
    `services` says what runs: ports, commands, environments, credentials, buckets and health checks. `processes`
    starts and stops the processes, tells them apart from later ones with a reused pid, and keeps stack.json.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from srcluster import home
from srcluster.errors import StackError
from srcluster.stack.processes import (
    _is_running,
    _leftover,
    _load_state,
    _locked,
    _save_state,
    _start,
    _stop,
    _wait_until_answers,
)
from srcluster.stack.services import (
    BUCKETS,
    HOST,
    LABELS,
    MLFLOW_ARTIFACTS,
    S3_PORT_ROLES,
    _answers,
    _check_ports_free,
    _clean_env,
    _local_settings,
    _mlflow_command,
    _mlflow_env,
    _prepare_buckets,
    _weed_command,
    _write_identities,
    ensure_credentials,
    port_free,
    s3_ports,
    weed_binary,
)

__all__ = [
    "BUCKETS",
    "HOST",
    "LABELS",
    "MLFLOW_ARTIFACTS",
    "S3_PORT_ROLES",
    "Service",
    "down",
    "ensure_credentials",
    "mlflow_url",
    "port_free",
    "s3_ports",
    "status",
    "up",
    "weed_binary",
]


@dataclass
class Service:
    name: str
    pid: int
    port: int
    url: str


# --- public API -------------------------------------------------------------------------------------------------------


def up(*, s3_port: int = 8333, mlflow_port: int = 5055, mlflow: bool = True, timeout: float = 60) -> dict[str, Service]:
    """Start the services that are not running yet and wait until every service answers.

    Services already running (and answering) are left alone, whatever ports were asked for; an entry whose process
    died is started again. On failure, what this call started is stopped again.
    """
    root = home.home()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)  # it holds the credentials
    for sub in ("s3", "mlflow", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked():
        recorded = _load_state()
        state = {name: entry for name, entry in recorded.items() if _is_running(entry)}
        # What is left of a dead service (MLflow's uvicorn, a Go process's last threads) would hold its ports.
        _stop({name: entry for name, entry in recorded.items() if _leftover(entry)}, grace=2)
        _save_state(state)  # forget entries whose process is gone
        wanted = ["s3", "mlflow"] if mlflow else ["s3"]
        to_start = [name for name in wanted if name not in state]

        ports = s3_ports(state["s3"]["port"] if "s3" in state else s3_port)
        weed = weed_binary() if "s3" in to_start else ""
        if "s3" in to_start:
            _check_ports_free({f"S3 server ({role})": port for role, port in ports.items()})
        if "mlflow" in to_start:
            if mlflow_port in ports.values():
                raise StackError(
                    f"MLflow port {mlflow_port} falls inside the S3 server's ports "
                    f"{min(ports.values())}-{max(ports.values())}; pick another one"
                )
            _check_ports_free({"MLflow server": mlflow_port})

        key, secret = ensure_credentials()
        settings = _local_settings(f"http://{HOST}:{ports['s3']}", key, secret)
        procs: dict[str, subprocess.Popen] = {}
        try:
            # Both start before either is waited for: MLflow's slow start overlaps SeaweedFS's raft bootstrap.
            if "s3" in to_start:
                command = _weed_command(weed, ports, _write_identities(key, secret))
                procs["s3"] = _start(state, "s3", command, ports["s3"], cwd=root / "s3", env=_clean_env(), ports=ports)
            if "mlflow" in to_start:
                procs["mlflow"] = _start(
                    state,
                    "mlflow",
                    _mlflow_command(mlflow_port),
                    mlflow_port,
                    cwd=root / "mlflow",
                    env=_mlflow_env(settings, mlflow_port),
                )
            deadline = time.monotonic() + timeout
            _wait_until_answers("s3", state["s3"], procs.get("s3"), deadline, timeout)
            _prepare_buckets(settings, deadline, probe="s3" in procs)
            if "mlflow" in state:
                _wait_until_answers("mlflow", state["mlflow"], procs.get("mlflow"), deadline, timeout)
        except BaseException:
            _stop({name: state.pop(name) for name in to_start if name in state}, grace=2)
            _save_state(state)
            raise
        return {name: Service(name, entry["pid"], entry["port"], entry["url"]) for name, entry in state.items()}


def down(grace: float = 10) -> list[str]:
    """Stop the stack's services (SIGTERM, then SIGKILL after `grace` seconds); return the names of those stopped."""
    if not home.stack_state_path().exists():
        return []
    with _locked():
        state = _load_state()
        running = {name: entry for name, entry in state.items() if _is_running(entry) or _leftover(entry)}
        _stop(running, grace)
        _save_state({})
        return list(running)


def status() -> list[tuple[str, str, bool]]:
    """(name, url, answers) for every service recorded in stack.json."""
    return [
        (name, entry.get("url", ""), _is_running(entry) and _answers(name, entry.get("url", "")))
        for name, entry in _load_state().items()
    ]


def mlflow_url() -> str | None:
    return (_load_state().get("mlflow") or {}).get("url")
