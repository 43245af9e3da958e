"""The console for people: one live progress line per stage, short messages, and library noise sent to a log file.

`out` carries results, `err` progress and diagnostics (the CLI's `console` and `err_console`). Under `quiet(run)`
(every training command unless `--verbose`) they are the only way to the terminal: whatever else the process or its
children write to stdout/stderr (library warnings, MLflow's INFO lines and download bars, Ray's core worker lines and
forwarded worker output) goes to `$SRCLUSTER_HOME/logs/<run>-<time>.log`, which the command's summary names.

A stage's progress comes from rank 0 as records (plain dicts: they cross Ray); `StageProgress` shows them as one live
line on a terminal and as one plain line per record elsewhere (CI, `ray job logs`).
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from srcluster import home
from srcluster.errors import SrclusterError

out = Console()
err = Console(stderr=True)

# set while `quiet` runs, to keep the log readable: MLflow's artifact downloads draw a tqdm bar per file, and Ray
# colours the prefix of each worker line it forwards
QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "RAY_COLOR_PREFIX": "0"}


def say(message: str) -> None:
    """One plain line for people (stage and pipeline messages), above a live progress line when one is showing."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


# --- one stage's progress ---------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short ETA: 42s, 3m05s, 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(stage: str, record: dict[str, Any]) -> str:
    """Rank 0's progress record as one line: iteration/total, losses, learning rate, speed, data wait, ETA, the
    validation metrics at this iteration and the best so far."""
    return f"[{stage}] {progress_fields(record)}"


def progress_fields(record: dict[str, Any]) -> str:
    parts = [f"iter {record['iteration']}/{record['total']}"]
    if losses := record.get("losses"):
        parts.append(" ".join(f"{name} {value:.4g}" for name, value in losses.items()))
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    parts += [
        f"{record['it_per_s']:.2f} it/s",
        f"{record['samples_per_s']:.0f} samples/s",
        f"data wait {100 * record['data_wait']:.0f}%",
    ]
    if "peak_memory_mb" in record:
        parts.append(f"peak mem {record['peak_memory_mb']:.0f} MB")
    parts.append(f"eta {duration(record['eta_s'])}")
    if val := record.get("val"):
        parts.append(" ".join(f"{name} {value:.4f}" for name, value in val.items()))
    if best := record.get("best"):
        parts.append(f"best {best['metric']} {best['value']:.4f} @ {best['iteration']}")
    return " | ".join(parts)


BAR_WIDTH = 20


class StageProgress:
    """One stage's progress on `console`: a live line (bar + the latest record) on a terminal, else a plain line per
    record. `show` takes what rank 0 sends: a progress record, or `{"message": text}` for a line of its own."""

    def __init__(self, stage: str, total: int, console: Console | None = None):
        self.stage, self.total = stage, total
        self.console = console or err
        self.record: dict[str, Any] | None = None
        self.live: Live | None = None
        if self.console.is_terminal:
            # the redirects stay off: `quiet` already decides where other output goes
            self.live = Live(
                self.render(),
                console=self.console,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()

    def render(self) -> Text:
        if self.record is None:
            return Text(f"{self.stage} starting: {self.total} iterations")
        done = round(BAR_WIDTH * min(self.record["iteration"] / max(self.total, 1), 1.0))
        # one Text, cut at the terminal's edge: a narrow terminal loses the line's tail, never the name or the bar
        return Text.assemble(
            (self.stage, "bold"),
            " ",
            ("━" * done, "green"),
            ("━" * (BAR_WIDTH - done), "bright_black"),
            " ",
            progress_fields(self.record),
            no_wrap=True,
            overflow="ellipsis",
        )

    def show(self, item: dict[str, Any]) -> None:
        if "message" in item:
            self.console.print(f"[{self.stage}] {item['message']}", markup=False, highlight=False, soft_wrap=True)
            return
        self.record = item
        if self.live is not None:
            self.live.update(self.render())
        else:
            self.console.print(progress_text(self.stage, item), markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the live line; its last state stays on the screen."""
        if self.live is not None:
            self.live.update(self.render())
            self.live.stop()
            self.live = None


# --- library noise to a log file --------------------------------------------------------------------------------------


def log_path(run: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run).strip("_") or "run"
    return home.home() / "logs" / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def _terminal(stream: IO[str], fd: int) -> tuple[IO[str], bool]:
    """Where `stream` shows things once fd `fd` points at the log: a copy of the fd when `stream` writes to it (the
    normal case), else `stream` itself (already captured elsewhere, as under pytest). True when the copy is ours."""
    try:
        same = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        same = False
    if not same:
        return stream, False
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="replace"), True


@contextmanager
def quiet(run: str, *, verbose: bool = False) -> Iterator[Path | None]:
    """Send everything but `out`, `err` and `say` to `$SRCLUSTER_HOME/logs/<run>-<time>.log` (yielded) for the
    duration: fds 1 and 2 (C++ logs, child processes such as a local Ray cluster), `sys.stdout`/`sys.stderr`
    (warnings, logging, tqdm, Ray's forwarded worker output). An unexpected exception becomes one line naming the
    log, which holds its traceback. `verbose`: leave everything as it is (yields None)."""
    if verbose:
        yield None
        return
    path = log_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with path.open("a", buffering=1, encoding="utf-8", errors="replace") as log:
        terminals = [_terminal(sys.stdout, 1), _terminal(sys.stderr, 2)]
        saved_fds = [os.dup(1), os.dup(2)]
        saved_streams = sys.stdout, sys.stderr
        saved_env = {name: os.environ.get(name) for name in QUIET_ENV}
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        os.environ.update(QUIET_ENV)
        out.file, err.file = terminals[0][0], terminals[1][0]
        try:
            yield path
        except (SrclusterError, KeyboardInterrupt):
            raise
        except Exception as exc:
            traceback.print_exc(file=log)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SrclusterError(f"{type(exc).__name__}: {first} (traceback in {path})") from None
        finally:
            log.flush()
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            sys.stdout, sys.stderr = saved_streams
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            # unpinned, the consoles follow sys.stdout/sys.stderr again
            out.file = None  # pyright: ignore[reportAttributeAccessIssue]
            err.file = None  # pyright: ignore[reportAttributeAccessIssue]
            for stream, owned in terminals:
                if owned:
                    stream.close()


__all__ = ["StageProgress", "duration", "err", "log_path", "out", "progress_text", "quiet", "say"]
