"""Where the commands print: results on stdout, progress and diagnostics on stderr (the consoles of
srcluster/console.py, which `quiet` keeps on the terminal while library noise goes to the run's log file)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from srcluster.console import err as err_console
from srcluster.console import out as console

__all__ = ["VERBOSE_HELP", "console", "err_console", "warn"]

VERBOSE_HELP = "show library warnings and Ray and MLflow output live (default: in the log file the summary names)"


def warn(lines: list[str], to: Console = err_console) -> None:
    for line in lines:
        to.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
