"""`srcluster promote` and `srcluster lineage`: aliases on registered generators, and where a model came from."""

from __future__ import annotations

import argparse
import json

from srcluster.tracking.lineage import chain, format_chain
from srcluster.tracking.models import set_alias
from srcluster.tracking.tracker import Tracker


def cmd_promote(args: argparse.Namespace) -> int:
    set_alias(Tracker(args.tracking_uri), args.name, args.version, args.alias, reason=args.reason)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    entries = chain(Tracker(args.tracking_uri), args.model)
    print(json.dumps(entries, indent=2) if args.json else format_chain(entries))
    return 0


def register(subparsers) -> None:
    pr = subparsers.add_parser("promote", help="point a registry alias (default: champion) at a model version")
    pr.add_argument("name", help="registered model name, e.g. demo-gan_4x")
    pr.add_argument("version")
    pr.add_argument("--alias", default="champion")
    pr.add_argument("--reason", default="", help="why (kept as a tag on the version, with who and when)")
    pr.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else the local stack")
    pr.set_defaults(fn=cmd_promote)

    li = subparsers.add_parser("lineage", help="the chain of a registered model back to its training data")
    li.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    li.add_argument("--json", action="store_true")
    li.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else the local stack")
    li.set_defaults(fn=cmd_lineage)
