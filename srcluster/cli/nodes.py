"""`python -m srcluster.cli.nodes --expect N`: wait until N Ray nodes are alive at $RAY_ADDRESS.

The rendered Slurm script runs this between starting the nodes and running the stage, so training never starts on a
cluster that is still missing nodes. It is a module of its own rather than a `srcluster` subcommand because only that
script calls it, and `srcluster --help` lists what users run.
"""

from __future__ import annotations

import argparse
import os
import sys

from srcluster.launch.nodes import wait


def cmd_wait_nodes(args: argparse.Namespace) -> int:
    return wait(args.expect, args.timeout, args.address, [int(pid) for pid in args.pids.split()])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m srcluster.cli.nodes", description=__doc__)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    p.add_argument("--pids", default="", help="space-separated pids of the node processes (srun): fail when one ends")
    p.set_defaults(fn=cmd_wait_nodes)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
