"""Re-render the examples in infra/slurm and infra/k8s from infra/example-job.yml: `python infra/render_examples.py`
(from the repository root). tests/unit/test_render.py checks that they match the templates."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

# the endpoints the examples show, in place of whatever the current shell points at
ENV = {
    "SRCLUSTER_HOME": "/home/you/.srcluster",
    "AWS_ENDPOINT_URL": "https://s3.example.org",
    "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
}
JOB = "infra/example-job.yml"
EXAMPLES = {
    "infra/slurm/example-job.sbatch": [
        "slurm",
        JOB,
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--cpus-per-node",
        "32",
        "--partition",
        "gpu",
        "--time",
        "12:00:00",
        "--setup",
        "source ~/venvs/srcluster/bin/activate",
    ],
    "infra/k8s/example-job.rayjob.yaml": [
        "k8s",
        JOB,
        "--workers",
        "2",
        "--gpus-per-worker",
        "4",
        "--cpus-per-worker",
        "32",
        "--memory-per-worker",
        "128Gi",
        "--image",
        "ghcr.io/you/srcluster:0.1.0",
    ],
    "infra/k8s/example-job.raycluster.yaml": [
        "k8s",
        JOB,
        "--workers",
        "2",
        "--gpus-per-worker",
        "4",
        "--cpus-per-worker",
        "32",
        "--memory-per-worker",
        "128Gi",
        "--image",
        "ghcr.io/you/srcluster:0.1.0",
        "--kind",
        "raycluster",
    ],
}

if __name__ == "__main__":
    from srcluster.cli import main

    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_", "SRCLUSTER_", "RAY_"))]:
        del os.environ[name]
    os.environ.update(ENV)
    for target, args in EXAMPLES.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if main(["render", *args]) != 0:
                sys.exit(f"rendering {target} failed")
        Path(target).write_text(out.getvalue())
        print(f"wrote {target}")
