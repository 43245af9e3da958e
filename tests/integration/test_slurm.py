"""The rendered sbatch script on a real single-node Slurm (Debian's slurmctld, slurmd, munge;
tests/slurm_single_node.py): Ray head via srun, the wait for nodes, the tiny stage, teardown. Skips, saying why, where
Slurm cannot start."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers.free_ports import free_port_block
from helpers.jobs import LAUNCH_TRAIN as TRAIN
from helpers.jobs import LAUNCH_VAL as VAL
from helpers.jobs import launch_job, write_job
from helpers.launch import BIN, only_run, ray_start_args
from helpers.slurm_single_node import SingleNodeSlurm, Unavailable
from srcluster import home
from srcluster.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SingleNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def sample_data(stack):
    from srcluster.data.sample import build_sample_dataset

    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


def test_the_sbatch_script_runs_the_stage_on_slurm(stack, sample_data, slurm, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, launch_job("launch-slurm"))
    ray_temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    port = free_port_block(2)
    args = [
        "render",
        "slurm",
        "job.yml",
        "--nodes",
        "1",
        "--gpus-per-node",
        "0",
        "--cpus-per-node",
        str(os.cpu_count() or 1),
        "--log",
        str(tmp_path / "slurm-%j.out"),
        "--join-timeout",
        "180",
        "--ray-port",
        str(port),
        "--dashboard-port",
        str(port + 1),
        # this machine runs other Ray clusters: every port and the temp dir of its own
        "--ray-args",
        shlex.join(ray_start_args(ray_temp)),
        "--setup",
        # the node's own srcluster home, as a site's setup would set it: the submitter's is never shipped
        f"export PATH={shlex.quote(str(BIN))}:$PATH SRCLUSTER_HEAD_IP=127.0.0.1 SRCLUSTER_HOME={home.home()}",
        "-o",
        "job.sbatch",
    ]
    assert main(args) == 0, capsys.readouterr().err
    script = (tmp_path / "job.sbatch").read_text()
    assert f"export SRCLUSTER_HOME={home.home()}\n" not in script  # local state stays here (the setup line sets it)
    assert (
        "#SBATCH --signal=B:USR1@120" in script
        and 'srun --overlap --nodes=1 --ntasks=1 --cpus-per-task="$RAY_CPUS"' in script
    )

    # sbatch passes its environment on: give it none of this session's Ray, only what the script itself sets up
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "SRCLUSTER_"))}
    job_id = slurm.sbatch(tmp_path / "job.sbatch", tmp_path, env=env)
    try:
        state = slurm.wait(job_id, timeout=420)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    log = tmp_path / f"slurm-{job_id}.out"
    output = log.read_text() if log.exists() else "(no output file)"
    assert state == "COMPLETED", output[-4000:]
    assert "1/1 Ray node(s) up" in output and "iter 4/4" in output and "stopping the Ray cluster" in output
    run = only_run("launch-slurm")
    assert run.info.status == "FINISHED"
