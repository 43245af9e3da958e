"""A real single-node Slurm for tests: munged, slurmctld and slurmd (Debian packages) on this machine, configured under
a temporary folder (SLURM_CONF, munge socket and key, spool, state, logs, free ports), so nothing under /etc changes and
`stop()` ends exactly the daemons `start()` began.

    slurm = SingleNodeSlurm(tmp_dir); slurm.start()   # raises Unavailable(reason) where Slurm cannot run
    slurm.env  -> the environment for sbatch/sacct/squeue
    slurm.stop()

Run as a script to try it by hand: `python tests/slurm_single_node.py` starts it, prints the environment, waits for ^C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "sacct", "squeue", "scontrol", "sinfo", "srun")


class Unavailable(Exception):
    """Slurm cannot run here; the message says why (for pytest.skip)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SingleNodeSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.pids: dict[str, int] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def check(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("single-node Slurm needs root to start slurmd (run the tests as root, as CI does)")
        missing = [name for name, path in DAEMONS.items() if not os.access(path, os.X_OK)]
        missing += [name for name in CLIENTS if shutil.which(name) is None]
        if missing:
            raise Unavailable(
                f"Slurm/munge not installed ({', '.join(missing)} missing): "
                "apt-get install slurmctld slurmd slurm-client munge"
            )

    def write_config(self) -> None:
        for sub in ("munge", "spool", "state", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=srcluster-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={free_port()}",
                    f"SlurmdPort={free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    "InactiveLimit=0",
                    "KillWait=10",
                    (
                        f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
                        f"RealMemory={max(memory_mb // 2, 500)} State=UNKNOWN"
                    ),
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 60) -> None:
        self.check()
        self.write_config()
        munge = self.root / "munge"
        self._run_daemon(
            "munged",
            [
                DAEMONS["munged"],
                "--force",
                f"--key-file={munge / 'munge.key'}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            munge / "munged.pid",
        )
        self._run_daemon("slurmctld", [DAEMONS["slurmctld"], "-f", str(self.conf)], self.root / "run" / "slurmctld.pid")
        self._run_daemon("slurmd", [DAEMONS["slurmd"], "-f", str(self.conf)], self.root / "run" / "slurmd.pid")
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True, check=False
            )
            state = (out.stdout or out.stderr).strip()
            if out.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(1)
        self.stop()
        raise Unavailable(
            f"the Slurm node did not become idle within {timeout:.0f}s (sinfo: {state[:200]!r}; "
            f"logs in {self.root / 'log'})"
        )

    def _run_daemon(self, name: str, command: list[str], pid_file: Path, timeout: float = 20) -> None:
        out = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            self.stop()
            raise Unavailable(
                f"{name} did not start (exit {out.returncode}): "
                f"{(out.stderr or out.stdout).strip().splitlines()[-1:] or ''}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.pids[name] = int(pid_file.read_text().strip())
                return
            except (OSError, ValueError):
                time.sleep(0.2)
        self.stop()
        raise Unavailable(f"{name} wrote no pid file at {pid_file}")

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the daemons this object started (newest first), SIGKILL what is left after `grace` seconds."""
        for name in reversed(list(self.pids)):
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(self.pids[name], signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name in reversed(list(self.pids)):
            while time.monotonic() < deadline and _alive(self.pids[name]):
                time.sleep(0.2)
            if _alive(self.pids[name]):
                os.kill(self.pids[name], signal.SIGKILL)
        self.pids.clear()

    def sbatch(self, script: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit `script`; sbatch hands its environment (`env`, default this process's) to the job."""
        env = {**(os.environ if env is None else env), "SLURM_CONF": str(self.conf)}
        out = subprocess.run(
            ["sbatch", "--parsable", str(script)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def wait(self, job_id: str, timeout: float) -> str:
        """The job's final state (COMPLETED, FAILED, ...), from scontrol while the controller remembers it."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["scontrol", "show", "job", job_id, "-o"], env=self.env, capture_output=True, text=True, check=False
            )
            for field in out.stdout.split():
                if field.startswith("JobState="):
                    state = field.split("=", 1)[1]
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN"):
                return state
            time.sleep(2)
        subprocess.run(["scancel", job_id], env=self.env, capture_output=True, check=False)  # best effort
        return f"TIMEOUT after {timeout:.0f}s (last state {state})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie whose parent has not reaped it yet counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        cluster = SingleNodeSlurm(Path(tmp))
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}   # daemons: {cluster.pids}; ^C stops them")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
