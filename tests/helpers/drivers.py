"""A srcluster command run as its own driver process, killed with -9 (with all it started) at a chosen moment: what
the resume tests do to it before running it again."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

import pytest


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    *,
    timeout: float,
    settle: float = 0.0,
    env: dict[str, str] | None = None,
) -> None:
    """Run `command` in a session of its own; once `ready()` holds (and `settle` seconds more), kill -9 its whole
    process group, the driver and every process it started, as a lost node would. Fails the test if the command ends
    first or `ready()` does not hold within `timeout` seconds."""
    with tempfile.TemporaryFile("w+") as output:  # a file, not a pipe: a chatty driver never blocks on a full pipe
        proc = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = "ended before it could be killed" if proc.poll() is not None else f"not ready in {timeout}s"
                    output.seek(0)
                    pytest.fail(f"`{' '.join(command[1:])}` {why}:\n{output.read()[-3000:]}")
                time.sleep(0.3)
            time.sleep(settle)
            assert proc.poll() is None, "the command ended while settling"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def checkpoint_recorded(fs, runs: str, iteration: int) -> bool:
    """Ray records a checkpoint in its snapshot after the upload: only then is it one a rerun can resume from."""
    return fs.exists(f"{runs}/checkpoint_manager_snapshot.json") and fs.exists(
        f"{runs}/checkpoint_{iteration:07d}/state.pt"
    )
