"""Real faults injected into real runs: 2 Ray Train workers streaming shards from the SeaweedFS S3 server, tracked by
the MLflow server. Each test records its outcome in the suite's table (see conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers.drivers import kill_when
from srcluster import stack as local_stack
from srcluster.config import parse_job
from srcluster.data.sample import build_sample_dataset
from srcluster.stack import processes as stack_processes
from srcluster.storage import StorageSettings
from srcluster.tracking.tracker import Tracker
from srcluster.train.stage import default_storage, recorded_checkpoints, run_key, run_stage

pytestmark = pytest.mark.slow

TRAIN, VAL = "s3://srcluster/faults/train", "s3://srcluster/faults/val"


def job_dict(name: str, total: int, **srcluster) -> dict:
    return {
        "name": name,
        "scale": 2,
        "manual_seed": 3,
        "datasets": {
            "train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": VAL},
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": total, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        "val": {"val_freq": 10_000},
        "logger": {"print_freq": 5, "save_checkpoint_freq": 10},
        "srcluster": {"workers": 2, **srcluster},
    }


@pytest.fixture(scope="module")
def data(stack):
    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


class Watch:
    """A job's run as seen from outside: its checkpoints in storage and its metrics in MLflow."""

    def __init__(self, job: dict):
        self.job = parse_job(job)

    def run_folder(self) -> tuple:
        return StorageSettings.resolve().filesystem(self.folder_url())

    def folder_url(self) -> str:
        settings = StorageSettings.resolve()
        return f"{(self.job.srcluster.storage or default_storage(settings)).rstrip('/')}/{run_key(self.job)}"

    def checkpoints(self) -> list[int]:
        """Checkpoints Ray Train has recorded as complete (uploaded and reported)."""
        return recorded_checkpoints(self.folder_url(), StorageSettings.resolve())

    def run(self):
        client = Tracker().client
        experiment = client.get_experiment_by_name(self.job.name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return runs[0] if runs else None

    def last_step(self) -> int:
        run = self.run()
        if run is None:
            return 0
        history = Tracker().client.get_metric_history(run.info.run_id, "l_g_charbonnier")
        return max((m.step for m in history), default=0)


class Background(Watch):
    """run_stage in a thread, so the test can inject a fault while it trains."""

    def __init__(self, job: dict):
        super().__init__(job)
        self.result, self.error = None, None

        def target() -> None:
            try:
                self.result = run_stage(self.job)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 600):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end in time"
        return self.result

    def wait(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.thread.is_alive(), f"the run ended before {what}: {self.error!r}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)


def train_worker_pids() -> list[int]:
    """Ray names its worker processes by their actor class (setproctitle)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::RayTrainWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def kill_service(name: str) -> None:
    entry = stack_processes._load_state()[name]
    os.killpg(entry["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack_processes._group_alive(entry["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)


def restart_stack(stack) -> None:
    local_stack.up(s3_port=stack.s3_port, mlflow_port=stack.mlflow_port, mlflow=True, timeout=180)


def test_kill_one_train_worker(stack, ray_cluster, data, fault_record, capfd):
    run = Background(job_dict("fault-worker", 60, max_failures=2))
    run.wait(lambda: 10 in run.checkpoints() and run.last_step() >= 15, "the first checkpoint")
    workers = train_worker_pids()
    assert workers, "no Ray Train worker process found"
    at_kill, saved = run.last_step(), max(run.checkpoints())
    killed, killed_ms = time.monotonic(), int(time.time() * 1000)
    os.kill(workers[-1], signal.SIGKILL)
    run.wait(lambda: run.last_step() > at_kill, "training to go on after the kill")
    recover_s = time.monotonic() - killed
    result = run.join()

    out = capfd.readouterr()
    resumed = [
        int(line.rsplit(" ", 1)[1])
        for line in (out.out + out.err).splitlines()
        if "[fault-worker] resumed from checkpoint at iteration" in line
    ]
    assert result is not None, run.error
    assert result.iterations == 60
    assert resumed and resumed[-1] >= saved  # the latest complete checkpoint, not an older one
    lost = at_kill - resumed[-1]
    assert lost <= 10 + 5  # one checkpoint interval (plus the print_freq lag of the kill-time reading)
    # the loss curve goes on from the checkpoint, not from the start: after the kill the run logs only steps past the
    # checkpoint it resumed from (comparing single-batch loss values is too noisy to tell a restart from a resume)
    history = Tracker().client.get_metric_history(result.run_id, "l_g_charbonnier")
    after_kill = sorted(m.step for m in history if m.timestamp > killed_ms)
    assert after_kill and after_kill[0] > resumed[-1] and after_kill[-1] == 60
    before_kill = [m.step for m in history if m.timestamp <= killed_ms]
    assert before_kill and min(before_kill) == 5
    fault_record(
        "kill -9 of one Ray Train worker",
        True,
        iterations_lost=max(lost, 0),
        recover_s=recover_s,
        note=f"resumed from checkpoint {resumed[-1]}, ended at 60",
    )


def test_s3_server_killed_and_restarted_mid_stream(stack, ray_cluster, data, fault_record):
    # checkpoints only at the end: this is about the data stream and tracking, not about uploads during the outage
    job = job_dict("fault-s3-restart", 60)
    job["logger"]["save_checkpoint_freq"] = 1000
    run = Background(job)
    run.wait(lambda: run.last_step() >= 10, "training to start")
    killed = time.monotonic()
    try:
        kill_service("s3")
        time.sleep(5)
    finally:
        restart_stack(stack)
    restarted = time.monotonic()
    result = run.join()
    assert result is not None, run.error
    assert result.iterations == 60
    assert Tracker().client.get_run(result.run_id).data.metrics["data_io_retries"] >= 0
    fault_record(
        "kill -9 of the S3 server, back after 5 s",
        True,
        iterations_lost=0,
        recover_s=restarted - killed,
        note="the stream retried; no restart of the run",
    )


def test_s3_server_down_past_the_deadline_stops_the_run_clearly(stack, ray_cluster, data, fault_record):
    job = job_dict("fault-s3-down", 400, s3_retry_deadline_s=8)
    job["logger"]["save_checkpoint_freq"] = 10
    run = Background(job)
    run.wait(lambda: 10 in run.checkpoints() and run.last_step() >= 15, "the first checkpoint")
    saved = max(run.checkpoints())
    try:
        kill_service("s3")
        run.thread.join(300)
    finally:
        restart_stack(stack)
    assert not run.thread.is_alive()
    message = str(run.error)
    assert "stopped:" in message and stack.s3_url in message, message
    assert len(message.splitlines()) == 1
    # the last checkpoint written before the outage is whole and loads
    import torch

    fs, folder = run.run_folder()
    with fs.open(f"{folder}/checkpoint_{saved:07d}/state.pt", "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    assert state["iteration"] == saved
    fault_record(
        "S3 server down past the deadline (8 s)",
        True,
        note=f"one-line error naming the endpoint; checkpoint {saved} intact",
    )


def test_mlflow_down_during_a_run_loses_nothing(stack, ray_cluster, data, fault_record):
    run = Background(job_dict("fault-mlflow", 80))
    run.wait(lambda: run.last_step() >= 10, "training to start")
    killed = time.monotonic()
    kill_service("mlflow")
    time.sleep(8)  # training goes on meanwhile: rank 0 spools its metrics
    restart_stack(stack)
    back = time.monotonic()
    result = run.join()
    assert result is not None, run.error
    assert result.iterations == 80
    from srcluster.tracking.tracker import sync_spool

    sync_spool()  # whatever the workers still held when they ended
    client = Tracker().client
    steps = {m.step for m in client.get_metric_history(result.run_id, "l_g_charbonnier")}
    assert steps == set(range(5, 81, 5)), sorted(steps)  # every print_freq step, none lost
    assert client.get_run(result.run_id).info.status == "FINISHED"
    fault_record(
        "MLflow server down for ~8 s mid-run",
        True,
        iterations_lost=0,
        recover_s=back - killed,
        note="metrics spooled on disk and delivered when it was back",
    )


def test_a_checkpoint_cut_off_halfway_is_never_used(stack, ray_cluster, data, fault_record, tmp_path):
    job = job_dict("fault-cut", 40)
    path = tmp_path / "job.yml"
    path.write_text(yaml.safe_dump(job))
    command = [sys.executable, "-m", "srcluster.cli", "train", str(path)]
    watcher = Watch(job)
    kill_when(command, lambda: 10 in watcher.checkpoints(), timeout=300)
    # what an upload cut off by the kill leaves behind: a newer checkpoint folder with half a state file
    fs, folder = watcher.run_folder()
    with fs.open(f"{folder}/checkpoint_0000010/state.pt", "rb") as f:
        whole = f.read()
    fs.pipe_file(f"{folder}/checkpoint_0000030/state.pt", whole[: len(whole) // 2])
    started = time.monotonic()
    second = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # output asserted below
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr
    resumed = [
        int(line.rsplit(" ", 1)[1]) for line in output.splitlines() if "resumed from checkpoint at iteration" in line
    ]
    assert resumed and resumed[0] in (10, 20) and 30 not in resumed, output[-3000:]
    # the rerun reopened the killed run's MLflow run and finished it: one run, one loss curve to the end
    assert "continuing MLflow run" in output and "iter 40/40" in output
    run = watcher.run()
    assert run.info.status == "FINISHED" and watcher.last_step() == 40
    third = run_stage(watcher.job)  # the same config once more: the finished run is returned, nothing trains
    assert third.reused and third.run_id == run.info.run_id and third.checkpoint_uri.endswith("checkpoint_0000040")
    fault_record(
        "checkpoint upload cut off halfway",
        True,
        iterations_lost=None,
        recover_s=time.monotonic() - started,
        note=f"the partial checkpoint_0000030 was ignored; resumed from {resumed[0]}",
    )


def test_non_finite_losses_stop_with_the_last_good_checkpoint(stack, ray_cluster, data, fault_record, capsys, tmp_path):
    import torch

    from srcluster.cli import main

    job = job_dict("fault-nan", 200, nonfinite_patience=3)
    # a sane start, then the learning rate explodes at iteration 10, after the first checkpoint
    job["train"]["scheduler"] = {"type": "MultiStepLR", "milestones": [10], "gamma": 1.0e30}
    job["train"]["optim_g"] = {"type": "AdamW", "lr": 1.0e-3}
    job["logger"] = {"print_freq": 1, "save_checkpoint_freq": 10}
    path = tmp_path / "nan.yml"
    path.write_text(yaml.safe_dump(job))
    assert main(["train", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # Ray's worker log above it keeps the traceback
    assert (
        last.startswith("error: stage fault-nan stopped: 3 consecutive non-finite") and "Lower train.optim_g.lr" in last
    )
    watcher = Watch(job)
    assert watcher.run().info.status == "FAILED"
    fs, folder = watcher.run_folder()
    saved = watcher.checkpoints()
    assert saved and saved[-1] == 10
    with fs.open(f"{folder}/checkpoint_0000010/state.pt", "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["net_g"].values())
    fault_record(
        "non-finite losses (lr x 1e30 at iteration 10)",
        True,
        iterations_lost=None,
        note="stopped after 3 with advice; checkpoint 10 intact and finite",
    )


def test_a_preemption_signal_checkpoints_stops_and_a_rerun_resumes(stack, ray_cluster, data, fault_record, capfd):
    """SIGUSR1 (Slurm's warning before the time limit, forwarded by the rendered sbatch; SIGTERM alike) to a running
    `srcluster train`: it checkpoints at the next poll, exits 75 with one line, the MLflow run ends KILLED, and running
    it again resumes from that checkpoint."""
    job = job_dict("fault-preempt", 400)
    folder = Path(tempfile.mkdtemp(prefix="preempt-"))
    (folder / "job.yml").write_text(yaml.safe_dump(job))
    watch = Watch(job)
    driver = subprocess.Popen(
        [str(Path(sys.executable).parent / "srcluster"), "train", "job.yml"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (10 in watch.checkpoints() and watch.last_step() >= 15):
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.3)
    at_signal = watch.last_step()
    signalled = time.monotonic()
    driver.send_signal(signal.SIGUSR1)
    out, err = driver.communicate(timeout=300)
    stop_s = time.monotonic() - signalled
    assert driver.returncode == 75, (out + err)[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert "fault-preempt stopped at iteration" in line and "run the same command again to resume" in line
    stopped = max(watch.checkpoints())
    assert at_signal <= stopped < 400 and stopped % 10 == 0  # the poll right after the signal, not a later save
    assert watch.run().info.status == "KILLED"

    capfd.readouterr()
    result = run_stage(parse_job({**job, "train": {**job["train"], "total_iter": stopped + 10}}))
    assert result.iterations == stopped + 10
    assert f"resumed from checkpoint at iteration {stopped}" in "".join(capfd.readouterr())
    fault_record(
        "SIGUSR1 to a running srcluster train (preemption warning)",
        True,
        iterations_lost=0,
        recover_s=stop_s,
        note=f"checkpoint at {stopped} (signal at ~{at_signal}), exit 75, rerun resumed there",
    )
