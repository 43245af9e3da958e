"""Where srcluster keeps its local state: `$SRCLUSTER_HOME`, default `~/.srcluster`.

Layout:
    credentials     AWS shared-credentials INI (profile `srcluster`) for the local S3 server, mode 0600
    stack.json      pids and ports of the local stack's services (written by `srcluster stack up`)
    s3/             SeaweedFS data
    mlflow/         MLflow's SQLite store
    logs/           service logs
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_PROFILE = "srcluster"


def home() -> Path:
    return Path(os.environ.get("SRCLUSTER_HOME") or Path.home() / ".srcluster").expanduser().resolve()


def credentials_path() -> Path:
    return home() / "credentials"


def stack_state_path() -> Path:
    return home() / "stack.json"
