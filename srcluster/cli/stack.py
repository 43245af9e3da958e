"""`srcluster stack up|down|status`: the local S3 + MLflow stack."""

from __future__ import annotations

import argparse

from srcluster import stack
from srcluster.cli.output import console


def cmd_stack(args: argparse.Namespace) -> int:
    if args.action == "up":
        for service in stack.up(s3_port=args.s3_port, mlflow_port=args.mlflow_port).values():
            console.print(f"{service.name:7s} {service.url}  (pid {service.pid})")
    elif args.action == "down":
        stopped = stack.down()
        console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    else:
        rows = stack.status()
        if not rows:
            console.print("the local stack is not running (start it with `srcluster stack up`)")
            return 1
        for name, url, alive in rows:
            console.print(f"{name:7s} {url}  {'[green]up[/]' if alive else '[red]not answering[/]'}")
        return 0 if all(alive for _, _, alive in rows) else 1
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser("stack", help="the local S3 + MLflow stack on 127.0.0.1")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument(
        "--s3-port",
        type=int,
        default=8333,
        help="up: the S3 server's port; it also takes the 7 after it (default 8333)",
    )
    s.add_argument("--mlflow-port", type=int, default=5055, help="up: the MLflow server's port (default 5055)")
    s.set_defaults(fn=cmd_stack)
