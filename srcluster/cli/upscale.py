"""`srcluster upscale MODEL INPUT... -o OUT`: run a generator on image files or folders, tile by tile, into PNGs."""

from __future__ import annotations

import argparse


def cmd_upscale(args: argparse.Namespace) -> int:
    from srcluster.upscale import upscale_files  # imports torch: only this command pays for it

    written = upscale_files(
        args.model,
        args.inputs,
        args.output,
        tile=args.tile,
        overlap=args.tile_overlap,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


def register(subparsers) -> None:
    up = subparsers.add_parser(
        "upscale",
        help="upscale images with a generator (path, URL or models:/NAME@ALIAS) into PNGs",
        description="Run a generator on image files or folders, in overlapping tiles, writing PNGs.",
    )
    up.add_argument(
        "model", help="generator: .safetensors/.pth path or URL, or models:/NAME@ALIAS, models:/NAME/VERSION"
    )
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (any fsspec URL)")
    up.add_argument("-o", "--output", required=True, help="output folder (or a .png file for a single input image)")
    up.add_argument("--tile", type=int, default=512, help="LR tile side in pixels (0: whole image at once)")
    up.add_argument("--tile-overlap", type=int, default=32, help="LR pixels of context around each tile")
    up.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    up.set_defaults(fn=cmd_upscale)
