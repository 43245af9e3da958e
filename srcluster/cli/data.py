"""`srcluster data sample` and `srcluster shards build|verify|stats`: the demo dataset and WebDataset shard sets."""

from __future__ import annotations

import argparse
import json
import re

from rich.markup import escape

from srcluster.cli.output import console
from srcluster.data.build import TileSettings, build_shards
from srcluster.data.sample import build_sample_dataset
from srcluster.data.shards import stats, verify
from srcluster.errors import SrclusterError


def cmd_data_sample(args: argparse.Namespace) -> int:
    summary = build_sample_dataset(args.train, args.val, tile=args.tile)
    console.print(
        f"{summary['tiles']} HR tiles in {summary['shards']} shards at {args.train}; "
        f"{len(summary['val_images'])} validation images at {args.val}"
    )
    return 0


def parse_size(text: str) -> int:
    """'256MB' (decimal), '1GiB' (binary), '4096' (bytes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmg])(i)?)?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MB, 1GiB)")
    number, prefix, binary = match.groups()
    power = " kmg".index(prefix) if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def cmd_shards_build(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise SrclusterError("give at least one SRC folder and the DEST: srcluster shards build SRC... DEST")
    *sources, dest = args.paths
    try:
        settings = TileSettings(
            tile=None if args.tile == 0 else args.tile,
            stride=args.stride,
            min_size=args.tile_min,
            scale=args.scale,
            image_format=args.format,
            alpha=args.alpha,
        )
    except ValueError as exc:
        raise SrclusterError(str(exc)) from None
    result = build_shards(
        sources,
        dest,
        lq=args.lq,
        settings=settings,
        max_samples=args.shard_samples,
        max_bytes=args.shard_size,
        max_bad_fraction=args.max_bad,
        workers=args.workers,
        progress=not args.quiet,
    )
    manifest = result.manifest
    if not result.created:
        console.print(f"{dest} is already built from these sources and settings: nothing to do", soft_wrap=True)
    for item in result.skipped[:20]:
        console.print(
            f"[yellow]skipped[/] {escape(item['path'])}: {escape(item['reason'])}", highlight=False, soft_wrap=True
        )
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more (see {dest}/build-report.json)", soft_wrap=True)
    if result.unpaired_lr:
        console.print(
            f"[yellow]{len(result.unpaired_lr)} LR file(s) without an HR partner[/], e.g. "
            f"{escape(result.unpaired_lr[0])}",
            highlight=False,
            soft_wrap=True,
        )
    resumed = (
        f", {result.resumed_shards} kept from an interrupted build" if result.created and result.resumed_shards else ""
    )
    console.print(
        f"{manifest['samples']} samples in {len(manifest['shards'])} shards "
        f"({manifest['bytes'] / 1e6:.1f} MB{resumed}) at {dest}; {len(result.skipped)} source(s) skipped, "
        f"{len(result.bad)} of them bad",
        soft_wrap=True,
    )
    return 0


def cmd_shards_verify(args: argparse.Namespace) -> int:
    result = verify(args.dest)
    for problem in result.problems:
        console.print(f"[red]bad[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if not result.ok:
        console.print(f"{args.dest}: {len(result.problems)} problem(s) in {result.shards} shards", soft_wrap=True)
        return 1
    console.print(
        f"[green]{args.dest}: OK[/] ({result.shards} shards, {result.samples} samples, "
        f"{result.bytes / 1e6:.1f} MB; sizes, sha256 and sample counts match the manifest)",
        soft_wrap=True,
    )
    return 0


def cmd_shards_stats(args: argparse.Namespace) -> int:
    info = stats(args.dest)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    tile = info["tile"] or {}
    rows = [
        ("samples", f"{info['samples']}"),
        (
            "shards",
            (
                f"{info['shards']} (samples per shard {info['shard_samples']['min']}"
                f"/{info['shard_samples']['median']}/{info['shard_samples']['max']} min/median/max)"
            ),
        ),
        (
            "bytes",
            (
                f"{info['bytes'] / 1e6:.1f} MB (per shard {info['shard_bytes']['min'] / 1e6:.1f}"
                f"/{info['shard_bytes']['median'] / 1e6:.1f}/{info['shard_bytes']['max'] / 1e6:.1f} MB)"
            ),
        ),
        (
            "images",
            f"{info['image_format']}, " + (f"paired with LR at x{info['scale']}" if info["paired"] else "HR only"),
        ),
        (
            "tiles",
            f"{tile.get('size') or 'whole images'}"
            + (f", stride {tile['stride']}" if tile.get("stride") else "")
            + (f", min side {tile['min_size']}" if tile.get("min_size") else ""),
        ),
        ("sources", ", ".join(info["sources"] or []) or "-"),
        (
            "skipped",
            "-"
            if info["skipped"] is None
            else f"{info['skipped']} of {info['source_images']} source images ({info['bad']} bad)",
        ),
        ("created", f"{info['created']} by srcluster {info['tool_version']} ({info['format']})"),
    ]
    for name, value in rows:
        console.print(f"{name:8s} {escape(value)}", highlight=False, soft_wrap=True)
    return 0


def register(subparsers) -> None:
    d = subparsers.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    ds = d.add_parser("sample", help="build the demo dataset from photos bundled with scikit-image")
    ds.add_argument("--train", default="s3://srcluster/demo/train", help="where the training shards go")
    ds.add_argument("--val", default="s3://srcluster/demo/val", help="where the validation images go")
    ds.add_argument("--tile", type=int, default=128, help="HR tile size in pixels")
    ds.set_defaults(fn=cmd_data_sample)

    sh = subparsers.add_parser("shards", help="WebDataset shard sets").add_subparsers(
        dest="shards_command", required=True
    )
    sb = sh.add_parser(
        "build",
        help="build a shard set from folders of HR images (resumable)",
        description="Build WebDataset shards + manifest.json at DEST from image folders (or fsspec "
        "URLs). Re-running continues an interrupted build and does nothing for a "
        "finished one.",
    )
    sb.add_argument("paths", nargs="+", metavar="SRC... DEST", help="HR folders or URLs, then the destination")
    sb.add_argument(
        "--lq",
        action="append",
        metavar="FOLDER",
        help="LR folder paired with the SRC at the same position (repeat for several SRC); needs --scale",
    )
    sb.add_argument("--scale", type=int, default=1, help="HR / LR size ratio of the --lq folders")
    sb.add_argument("--tile", type=int, default=512, help="HR tile side in pixels; 0 stores whole images (default 512)")
    sb.add_argument("--stride", type=int, default=None, help="distance between tiles (default: the tile side)")
    sb.add_argument(
        "--tile-min",
        type=int,
        default=None,
        help="smallest tile side kept: smaller images are skipped, narrower edge strips dropped "
        "(default: half the tile)",
    )
    sb.add_argument("--format", choices=["webp", "png"], default="webp", help="lossless storage format")
    sb.add_argument(
        "--alpha",
        choices=["drop", "white", "black"],
        default="drop",
        help="what to do with transparency: drop it, or composite on white or black",
    )
    sb.add_argument("--shard-size", type=parse_size, default=256 << 20, help="target shard size (default 256MiB)")
    sb.add_argument("--shard-samples", type=int, default=1000, help="most samples per shard")
    sb.add_argument(
        "--max-bad",
        type=float,
        default=0.01,
        help="fail when more than this fraction of the sources is bad (default 0.01)",
    )
    sb.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores; 0: inline)")
    sb.add_argument("--quiet", action="store_true", help="no progress bar")
    sb.set_defaults(fn=cmd_shards_build)
    sv = sh.add_parser("verify", help="check every shard against the manifest (size, sha256, sample count)")
    sv.add_argument("dest")
    sv.set_defaults(fn=cmd_shards_verify)
    st = sh.add_parser("stats", help="counts and sizes of a shard set, from its manifest")
    st.add_argument("dest")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_shards_stats)
