"""`srcluster evaluate`: PSNR/SSIM (and LPIPS/DISTS/TOPIQ) of a model, or of bicubic, on HR images."""

from __future__ import annotations

import argparse
import json


def cmd_evaluate(args: argparse.Namespace) -> int:
    from srcluster.evaluate import evaluate, format_table  # imports torch: only this command pays for it

    result = evaluate(
        args.hr,
        args.scale,
        model=args.model,
        metrics=args.metrics.split(","),
        test_y_channel=not args.rgb,
        tile_size=args.tile,
        tile_overlap=args.tile_overlap,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def register(subparsers) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="PSNR/SSIM (and LPIPS/DISTS/TOPIQ) of a model, or of bicubic, on HR images"
    )
    ev.add_argument("--hr", required=True, help="folder or shard set of HR images (any fsspec URL)")
    ev.add_argument("--scale", type=int, required=True)
    ev.add_argument("--model", help="generator (.safetensors/.pth, path or URL); default: plain bicubic upscaling")
    ev.add_argument("--metrics", default="psnr,ssim", help="comma-separated: psnr, ssim, lpips, dists, topiq, topiq_nr")
    ev.add_argument("--rgb", action="store_true", help="score RGB instead of the Y channel (psnr, ssim)")
    ev.add_argument("--tile", type=int, default=0, help="tile size for inference (0: whole image)")
    ev.add_argument("--tile-overlap", type=int, default=8)
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(fn=cmd_evaluate)
