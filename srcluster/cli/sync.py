"""`srcluster sync`: deliver tracking calls spooled while the MLflow server was down."""

from __future__ import annotations

import argparse

from srcluster.cli.output import console
from srcluster.tracking.tracker import sync_spool


def cmd_sync(args: argparse.Namespace) -> int:
    sent, waiting = sync_spool(args.tracking_uri)
    console.print(
        f"delivered {sent} spooled tracking call(s)" + (f"; {waiting} still waiting (server down?)" if waiting else "")
    )
    return 1 if waiting else 0


def register(subparsers) -> None:
    sy = subparsers.add_parser("sync", help="deliver tracking calls spooled while the MLflow server was down")
    sy.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local stack's server")
    sy.set_defaults(fn=cmd_sync)
