"""`srcluster compare`: models, checkpoints and built-ins upscaled on the same images, as one interactive HTML page."""

from __future__ import annotations

import argparse


def cmd_compare(args: argparse.Namespace) -> int:
    from srcluster.compare import compare  # imports torch: only this command pays for it

    path = compare(
        args.sources,
        images=args.images,
        val=args.val,
        scale=args.scale,
        metrics=args.metrics.split(",") if args.metrics else None,
        test_y_channel=not args.rgb,
        tile=args.tile,
        overlap=args.tile_overlap,
        output=args.output,
        embed={"auto": None, "yes": True, "no": False}[args.embed],
        device=args.device,
        title=args.title,
    )
    beside = path.with_name(f"{path.stem}_files")  # where the page's tiles are when they were too many to embed
    print(
        f"page: {path.resolve().as_uri()}"
        + (f" (its images are in {beside.name}/ beside it)" if f'"{beside.name}/' in path.read_text() else "")
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="an interactive comparison page (slider, grid, synced zoom, metrics) of models and bicubic/lr/hr",
        description=(
            "SOURCES: weights (path or URL), models:/NAME@ALIAS, runs:/RUN_ID (a stage run's final and best "
            "generators; a pipeline run's stages), runs:/RUN_ID/STAGE, and the built-ins bicubic, lr, hr. "
            "NAME=SOURCE names a column. Keys on the page: 1-9 pick a source, space swaps, arrows change image, "
            "[ ] step through checkpoints, ? for all."
        ),
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", help="folder or shard set of HR images (any fsspec URL); LR by bicubic")
    where.add_argument("--val", metavar="JOB.yml", help="a job's validation set, scale, val.metrics and tiles")
    p.add_argument("--scale", type=int, help="with --images: default the largest model scale")
    p.add_argument("--metrics", help="comma-separated: psnr, ssim (default), lpips, dists, topiq, topiq_nr")
    p.add_argument("--rgb", action="store_true", help="score PSNR/SSIM on RGB instead of the Y channel")
    p.add_argument("--tile", type=int, default=0, help="tile size for inference (0: whole image)")
    p.add_argument("--tile-overlap", type=int, default=8)
    p.add_argument("-o", "--output", default="compare.html")
    p.add_argument(
        "--embed",
        choices=("auto", "yes", "no"),
        default="auto",
        help="images inside the page (one file; needed for MLflow's viewer) or beside it (auto: embed up to 96 MiB)",
    )
    p.add_argument("--title")
    p.add_argument("--device", default=None)
    p.set_defaults(fn=cmd_compare)
