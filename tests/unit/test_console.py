"""The console for people: rank 0's progress as one line (live on a terminal, one plain line per record elsewhere), and
library noise kept in the run's log file (srcluster/console.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rich.console import Console

from srcluster.console import StageProgress, duration, progress_text

RECORD = {
    "iteration": 40,
    "total": 100,
    "losses": {"l_g_charbonnierloss": 0.012345, "l_g_gan": 0.7},
    "lr": 2e-4,
    "it_per_s": 3.25,
    "samples_per_s": 52.0,
    "data_wait": 0.07,
    "peak_memory_mb": 1234.5,
    "eta_s": 185.0,
    "val": {"val_psnr": 27.123456},
    "best": {"metric": "val_psnr", "value": 27.5, "iteration": 20},
}


def test_progress_line_has_every_field_and_a_readable_eta():
    line = progress_text("fidelity_2x", RECORD)
    assert line.startswith("[fidelity_2x] iter 40/100 | ")
    for part in (
        "l_g_charbonnierloss 0.01235 l_g_gan 0.7",
        "lr 2.00e-04",
        "3.25 it/s",
        "52 samples/s",
        "data wait 7%",
        "peak mem 1234 MB",
        "eta 3m05s",
        "val_psnr 27.1235",
        "best val_psnr 27.5000 @ 20",
    ):
        assert part in line, (part, line)
    # before the first validation there is no best and no validation metric
    early = progress_text("s", {**RECORD, "val": {}, "best": None})
    assert "best" not in early and "val_" not in early
    assert [duration(s) for s in (0, 42.4, 60, 185, 7260, -3)] == ["0s", "42s", "1m00s", "3m05s", "2h01m", "0s"]


def test_plain_mode_prints_one_line_per_record_and_messages_in_between():
    text = io.StringIO()
    display = StageProgress("gan_4x", 100, Console(file=text, force_terminal=False, width=80))
    display.show({"message": "resumed from checkpoint at iteration 20"})
    display.show({**RECORD, "iteration": 30})
    display.show(RECORD)
    display.close()
    lines = text.getvalue().splitlines()
    assert lines[0] == "[gan_4x] resumed from checkpoint at iteration 20"
    # a whole line each even past the console's width, and no escape codes: CI logs and `ray job logs` grep them
    assert lines[1].startswith("[gan_4x] iter 30/100 |") and lines[1].endswith("best val_psnr 27.5000 @ 20")
    assert lines[2].startswith("[gan_4x] iter 40/100 |")
    assert len(lines) == 3 and "\x1b[" not in text.getvalue()


def test_live_mode_redraws_one_line_and_leaves_the_last_record():
    text = io.StringIO()
    console = Console(file=text, force_terminal=True, width=70, color_system=None)
    display = StageProgress("fidelity_2x", 100, console)
    for iteration in (10, 20, 30, 40):
        display.show({**RECORD, "iteration": iteration})
    display.show({"message": "stopping early"})
    display.close()
    output = text.getvalue()
    assert "[fidelity_2x] stopping early\n" in output
    # each record redraws the same line in place: two line ends in all, the message's and the final line's
    assert output.count("\n") == 2
    # the last line stays: name, a bar 40% full, the record; a narrow terminal cuts its tail instead of wrapping it
    last = output.rsplit("\n", 2)[-2].rsplit("\x1b[2K", 1)[-1]
    assert last.startswith("fidelity_2x " + "━" * 20 + " iter 40/100 | l_g_charbonnierloss")
    assert last.endswith("…") and len(last) == 70


NOISY = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from srcluster import console
    from srcluster.errors import SrclusterError

    def noisy_command():
        with console.quiet("my run", verbose={verbose}) as log:
            print("(RayTrainWorker pid=1) a forwarded worker line")
            warnings.warn("Add type hints to the `predict` method")
            logging.getLogger("mlflow.store").warning("Waiting up to 300 seconds for model version")
            os.write(2, b"[core_worker.cc:1] C++ noise straight to fd 2\\n")
            subprocess.run([sys.executable, "-c", "print('a child process line')"], check=True)
            console.say("[stage] iter 4/4 | 1.00 it/s")
            console.out.print("result line")
            assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") == ("false" if log else None)
            {fail}
        console.out.print(f"log: {{log}}", soft_wrap=True)

    try:
        noisy_command()
    except SrclusterError as exc:  # as the CLI prints it
        sys.exit(f"error: {{exc}}")
    """
)
NOISE = (
    "a forwarded worker line",
    "Add type hints",
    "Waiting up to 300 seconds",
    "core_worker.cc",
    "a child process line",
)


def run_script(tmp_path, *, verbose: bool = False, fail: str = "pass") -> subprocess.CompletedProcess:
    script = NOISY.format(verbose=verbose, fail=fail)
    env = {**os.environ, "SRCLUSTER_HOME": str(tmp_path)}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    # its own process: `quiet` points fds 1 and 2 at the log, which pytest's own capture must not see
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_quiet_keeps_library_and_child_output_in_the_log_it_names(tmp_path):
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert "[stage] iter 4/4 | 1.00 it/s" in done.stderr and "result line" in done.stdout
    assert not [noise for noise in NOISE if noise in shown], shown
    log = Path(done.stdout.split("log: ", 1)[1].strip())
    assert log.parent == tmp_path / "logs" and log.name.startswith("my_run-") and log.suffix == ".log"
    kept = log.read_text()
    assert all(noise in kept for noise in NOISE), kept


def test_quiet_turns_an_unexpected_error_into_one_line_naming_the_log(tmp_path):
    done = run_script(tmp_path, fail="raise RuntimeError('worker group failed\\nmore detail')")
    assert done.returncode != 0
    # the error escapes as a SrclusterError, which the CLI prints as one line; its traceback is in the log
    assert done.stderr.strip().splitlines()[:-1] == ["[stage] iter 4/4 | 1.00 it/s"]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: RuntimeError: worker group failed (traceback in ")
    kept = Path(line.rsplit("(traceback in ", 1)[1].rstrip(")")).read_text()
    assert "Traceback" in kept and "more detail" in kept


def test_verbose_leaves_everything_on_the_console(tmp_path):
    done = run_script(tmp_path, verbose=True)
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert all(noise in shown for noise in NOISE) and "log: None" in shown
    assert not (tmp_path / "logs").exists()
