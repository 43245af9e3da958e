"""Where the commands print: results on stdout, progress and diagnostics on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def warn(lines: list[str], to: Console = err_console) -> None:
    for line in lines:
        to.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
