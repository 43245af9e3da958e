"""The stack's processes: starting them (a session each, logged), stopping their whole process groups, telling a
process apart from a later one with the same pid, and the stack.json state file that any process can read."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from srcluster import home
from srcluster.errors import StackError
from srcluster.stack.services import HOST, LABELS, _answers

log = logging.getLogger(__name__)


# --- starting ---------------------------------------------------------------------------------------------------------


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
    # no such process: ps exits 1 with empty output, which is the answer (None)
    result = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False)
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
