"""Launching from tests: Ray heads started with `ray start` beside the session's cluster, and MLflow look-ups."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers.free_ports import free_port_block

BIN = Path(sys.executable).parent  # the venv's console scripts (srcluster, ray)


def ray_start_args(temp_dir: Path) -> list[str]:
    """Every port `ray start` opens, on free ones, and its own temp dir: beside other Ray clusters on this machine."""
    base = free_port_block(40)
    names = [
        "node-manager-port",
        "object-manager-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    ]
    args = [f"--{name}={base + i}" for i, name in enumerate(names)]
    return [*args, f"--min-worker-port={base + 10}", f"--max-worker-port={base + 39}", f"--temp-dir={temp_dir}"]


def only_run(experiment: str):
    from srcluster.tracking.tracker import Tracker

    client = Tracker().client
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]
