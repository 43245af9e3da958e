"""The `srcluster` command. Each subcommand is a thin shell over one module; user errors print as one line."""

# Each module below registers one command group: `register(subparsers)` adds its commands. A `cmd_*` handler imports
# inside itself the domain modules that import torch or ray; the others import those and mlflow only where they call
# them. That is the command boundary: building the parser (and so `srcluster --help`, or a typo) never pays for torch,
# ray or mlflow, only the command that runs does.

from __future__ import annotations

import argparse

from rich.markup import escape

from srcluster import __version__
from srcluster.cli import (
    check,
    compare,
    data,
    degrade,
    demo,
    evaluate,
    export,
    launch,
    models,
    stack,
    sync,
    train,
    tune,
    upscale,
    weights,
)
from srcluster.cli.output import err_console
from srcluster.errors import Preempted, SrclusterError

# in the order `srcluster --help` lists them
COMMAND_GROUPS = (
    stack,
    data,
    check,
    train,
    evaluate,
    compare,
    degrade,
    sync,
    demo,
    models,
    upscale,
    export,
    tune,
    launch,
    weights,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="srcluster", description=__doc__)
    p.add_argument("--version", action="version", version=f"srcluster {__version__}")
    subparsers = p.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except Preempted as exc:
        err_console.print(f"[yellow]stopped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except SrclusterError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
