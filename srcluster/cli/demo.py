"""`srcluster demo`: stack up, sample data, and the three-stage recipe at toy size."""

from __future__ import annotations

import argparse

from srcluster.cli.output import VERBOSE_HELP, console
from srcluster.console import quiet
from srcluster.recipes.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    with quiet("demo", verbose=args.verbose) as log_file:
        run_demo(console)
    if log_file:
        console.print(f"log (library warnings, Ray and MLflow output): {log_file}", highlight=False, soft_wrap=True)
    return 0


def register(subparsers) -> None:
    dm = subparsers.add_parser("demo", help="stack up, sample data, and the three-stage recipe at toy size")
    dm.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    dm.set_defaults(fn=cmd_demo)
