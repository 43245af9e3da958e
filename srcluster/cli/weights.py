"""`srcluster weights`: the pretrained weight files of the perceptual losses and metrics, fetched once and staged."""

from __future__ import annotations

import argparse

from srcluster.cli.output import console
from srcluster.components import hub
from srcluster.storage import StorageSettings


def _names(args: argparse.Namespace) -> list[str]:
    return [hub.entry(name).name for name in args.names] or list(hub.FILES)


def cmd_pull(args: argparse.Namespace) -> int:
    names = _names(args)
    for name in names:
        console.print(f"{name:8s} {hub.locate(name)}", highlight=False, soft_wrap=True)
    if args.to:
        settings = StorageSettings.resolve()
        settings.check(args.to)
        for name in names:
            console.print(f"{name:8s} staged at {hub.stage(name, args.to, settings)}", highlight=False, soft_wrap=True)
        console.print(
            f"nodes read them from there when {hub.WEIGHTS_URL_ENV}={args.to.rstrip('/')} is set where jobs are "
            "launched (srcluster passes it to Ray workers, submitted jobs, Slurm and KubeRay)",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    table = Table(title=f"pretrained weights (hub cache {hub.hub_dir()})")
    for column in ("name", "file", "used by", "in cache"):
        table.add_column(column, overflow="fold")
    for name in _names(args):
        found = hub.FILES[name]
        table.add_row(name, found.file, found.used_by, "yes" if hub.cache_path(name).is_file() else "no")
    console.print(table)
    return 0


def register(subparsers) -> None:
    wt = subparsers.add_parser("weights", help="pretrained weights of the perceptual losses and metrics")
    sub = wt.add_subparsers(dest="weights_command", required=True)
    known = ", ".join(hub.FILES)
    pull = sub.add_parser(
        "pull",
        help="download weights into torch's hub cache (checksum verified); --to also stages them in object storage",
        description="Download weights into torch's hub cache (checksum verified), once. With --to, also copy them to "
        f"object storage for nodes without internet; then set {hub.WEIGHTS_URL_ENV} to that URL where jobs start.",
    )
    pull.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({known})")
    pull.add_argument("--to", default=None, metavar="URL", help="stage the files here too, e.g. s3://bucket/weights")
    pull.set_defaults(fn=cmd_pull)
    ls = sub.add_parser("list", help="the weight files, what reads them, and whether they are in the hub cache")
    ls.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({known})")
    ls.set_defaults(fn=cmd_list)
