"""`srcluster degrade preview`: what the on-the-fly degradations of a job file do to one image."""

from __future__ import annotations

import argparse

from srcluster.cli.output import console
from srcluster.config import read_yaml
from srcluster.degrade.config import parse_degradations, split_degradation_keys
from srcluster.errors import SrclusterError


def cmd_degrade_preview(args: argparse.Namespace) -> int:
    from srcluster.degrade.preview import preview  # imports torch: only this command pays for it

    data = read_yaml(args.job)
    if not isinstance(data, dict):
        raise SrclusterError(f"{args.job}: expected a mapping of traiNNer-redux options")
    _, flat = split_degradation_keys(data, args.job)
    cfg = parse_degradations(flat, args.job)
    out = preview(
        cfg, args.image, int(data.get("scale", 4)), n=args.n, out_path=args.output, seed=args.seed, size=args.size
    )
    console.print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    dg = subparsers.add_parser("degrade", help="on-the-fly degradations").add_subparsers(
        dest="degrade_command", required=True
    )
    dp = dg.add_parser("preview", help="a grid of degraded LR variants of one image, each captioned with its steps")
    dp.add_argument("job")
    dp.add_argument("image")
    dp.add_argument("-n", type=int, default=16)
    dp.add_argument("-o", "--output", default="grid.png")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--size", type=int, default=None, help="centre crop of the image in px (default: up to 512)")
    dp.set_defaults(fn=cmd_degrade_preview)
