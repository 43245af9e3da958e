"""`srcluster demo`: stack up, sample data, and the three-stage recipe at toy size."""

from __future__ import annotations

import argparse

from srcluster.cli.output import console
from srcluster.recipes.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(console)
    return 0


def register(subparsers) -> None:
    dm = subparsers.add_parser("demo", help="stack up, sample data, and the three-stage recipe at toy size")
    dm.set_defaults(fn=cmd_demo)
