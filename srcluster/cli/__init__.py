"""The `srcluster` command. Each subcommand is a thin shell over one module; user errors print as one line."""

from __future__ import annotations

import argparse
import json
import re
import sys

from rich.console import Console
from rich.markup import escape

from srcluster import __version__
from srcluster.errors import SrclusterError

console = Console()
err_console = Console(stderr=True)


def cmd_stack(args: argparse.Namespace) -> int:
    from srcluster import stack

    if args.action == "up":
        for service in stack.up().values():
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


def cmd_data_sample(args: argparse.Namespace) -> int:
    from srcluster.data.sample import build_sample_dataset

    summary = build_sample_dataset(args.train, args.val, tile=args.tile)
    console.print(f"{summary['tiles']} HR tiles in {summary['shards']} shards at {args.train}; "
                  f"{len(summary['val_images'])} validation images at {args.val}")
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
    from srcluster.data.build import TileSettings, build_shards

    if len(args.paths) < 2:
        raise SrclusterError("give at least one SRC folder and the DEST: srcluster shards build SRC... DEST")
    *sources, dest = args.paths
    try:
        settings = TileSettings(tile=None if args.tile == 0 else args.tile, stride=args.stride,
                                min_size=args.tile_min, scale=args.scale, image_format=args.format, alpha=args.alpha)
    except ValueError as exc:
        raise SrclusterError(str(exc)) from None
    result = build_shards(sources, dest, lq=args.lq, settings=settings, max_samples=args.shard_samples,
                          max_bytes=args.shard_size, max_bad_fraction=args.max_bad, workers=args.workers,
                          progress=not args.quiet)
    manifest = result.manifest
    if not result.created:
        console.print(f"{dest} is already built from these sources and settings: nothing to do", soft_wrap=True)
    for item in result.skipped[:20]:
        console.print(f"[yellow]skipped[/] {escape(item['path'])}: {escape(item['reason'])}", highlight=False,
                      soft_wrap=True)
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more (see {dest}/build-report.json)", soft_wrap=True)
    if result.unpaired_lr:
        console.print(f"[yellow]{len(result.unpaired_lr)} LR file(s) without an HR partner[/], e.g. "
                      f"{escape(result.unpaired_lr[0])}", highlight=False, soft_wrap=True)
    resumed = (f", {result.resumed_shards} kept from an interrupted build"
               if result.created and result.resumed_shards else "")
    console.print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards "
                  f"({manifest['bytes'] / 1e6:.1f} MB{resumed}) at {dest}; {len(result.skipped)} source(s) skipped, "
                  f"{len(result.bad)} of them bad", soft_wrap=True)
    return 0


def cmd_shards_verify(args: argparse.Namespace) -> int:
    from srcluster.data.shards import verify

    result = verify(args.dest)
    for problem in result.problems:
        console.print(f"[red]bad[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if not result.ok:
        console.print(f"{args.dest}: {len(result.problems)} problem(s) in {result.shards} shards", soft_wrap=True)
        return 1
    console.print(f"[green]{args.dest}: OK[/] ({result.shards} shards, {result.samples} samples, "
                  f"{result.bytes / 1e6:.1f} MB; sizes, sha256 and sample counts match the manifest)", soft_wrap=True)
    return 0


def cmd_shards_stats(args: argparse.Namespace) -> int:
    from srcluster.data.shards import stats

    info = stats(args.dest)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    tile = info["tile"] or {}
    rows = [
        ("samples", f"{info['samples']}"),
        ("shards", f"{info['shards']} (samples per shard {info['shard_samples']['min']}"
                   f"/{info['shard_samples']['median']}/{info['shard_samples']['max']} min/median/max)"),
        ("bytes", f"{info['bytes'] / 1e6:.1f} MB (per shard {info['shard_bytes']['min'] / 1e6:.1f}"
                  f"/{info['shard_bytes']['median'] / 1e6:.1f}/{info['shard_bytes']['max'] / 1e6:.1f} MB)"),
        ("images", f"{info['image_format']}, "
                   + (f"paired with LR at x{info['scale']}" if info["paired"] else "HR only")),
        ("tiles", f"{tile.get('size') or 'whole images'}" + (f", stride {tile['stride']}" if tile.get("stride") else "")
         + (f", min side {tile['min_size']}" if tile.get("min_size") else "")),
        ("sources", ", ".join(info["sources"] or []) or "-"),
        ("skipped", "-" if info["skipped"] is None else f"{info['skipped']} of {info['source_images']} source images "
                                                          f"({info['bad']} bad)"),
        ("created", f"{info['created']} by srcluster {info['tool_version']} ({info['format']})"),
    ]
    for name, value in rows:
        console.print(f"{name:8s} {escape(value)}", highlight=False, soft_wrap=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from srcluster.config import load_job

    job = load_job(args.job)
    resolved = job.model_dump(mode="json")
    if args.json:
        print(json.dumps({"job": resolved, "effective_batch": job.effective_batch, "warnings": job.warnings}, indent=2))
    else:
        import yaml

        console.print(yaml.safe_dump(resolved, sort_keys=False), end="", markup=False, highlight=False)
        cluster = job.srcluster
        console.print(f"effective batch: {job.datasets.train.batch_size_per_gpu} per worker x "
                      f"{cluster.max_workers} workers x {job.datasets.train.accum_iter} accum = {job.effective_batch}")
        if cluster.min_workers < cluster.max_workers:
            plans = ", ".join(f"{w} workers: batch {b} x accum {a}"
                              for w in range(cluster.min_workers, cluster.max_workers) for b, a in [job.batch_plan(w)])
            console.print(f"elastic: held at {job.effective_batch} with {plans}")
        for warning in job.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        console.print(f"[green]{args.job}: OK[/]" + (f" ({len(job.warnings)} warnings)" if job.warnings else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from srcluster.config import load_job
    from srcluster.train.stage import run_stage

    job = load_job(args.job)
    for warning in job.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    result = run_stage(job, fresh=args.fresh)
    console.print(f"[green]done[/]: {result.iterations} iterations, val PSNR "
                  f"{result.metrics.get('val_psnr', float('nan')):.2f} dB")
    console.print(f"generator: {result.generator_uri}")
    console.print(f"MLflow run: {result.run_url}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from srcluster.recipes.pipeline import format_plan, load_recipe, plan, run_recipe

    recipe = load_recipe(args.recipe)
    if args.plan:
        stages = plan(recipe)
        print(json.dumps(stages, indent=2) if args.json else format_plan(stages))
        return 0
    for summary in run_recipe(recipe, fresh=args.fresh):
        psnr = f"{summary.psnr:.2f} dB" if summary.psnr is not None else "-"
        console.print(f"{summary.stage}: {summary.iterations} it, val PSNR {psnr}, {summary.model_uri} "
                      f"({summary.checkpoint_uri})", highlight=False, soft_wrap=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from srcluster.evaluate import evaluate, format_table

    result = evaluate(args.hr, args.scale, model=args.model, metrics=args.metrics.split(","),
                      test_y_channel=not args.rgb, tile_size=args.tile, tile_overlap=args.tile_overlap, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_degrade_preview(args: argparse.Namespace) -> int:
    from srcluster.config import read_yaml
    from srcluster.degrade.config import parse_degradations, split_degradation_keys
    from srcluster.degrade.preview import preview

    data = read_yaml(args.job)
    if not isinstance(data, dict):
        raise SrclusterError(f"{args.job}: expected a mapping of traiNNer-redux options")
    _, flat = split_degradation_keys(data, args.job)
    cfg = parse_degradations(flat, args.job)
    out = preview(cfg, args.image, int(data.get("scale", 4)), n=args.n, out_path=args.output, seed=args.seed,
                  size=args.size)
    console.print(f"wrote {out}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from srcluster.tracking.tracker import sync_spool

    sent, waiting = sync_spool(args.tracking_uri)
    console.print(f"delivered {sent} spooled tracking call(s)" + (f"; {waiting} still waiting (server down?)" if waiting else ""))
    return 1 if waiting else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from srcluster.recipes.demo import run_demo

    run_demo(console)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="srcluster", description=__doc__)
    p.add_argument("--version", action="version", version=f"srcluster {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="the local S3 + MLflow stack on 127.0.0.1")
    s.add_argument("action", choices=["up", "down", "status"])
    s.set_defaults(fn=cmd_stack)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    ds = d.add_parser("sample", help="build the demo dataset from photos bundled with scikit-image")
    ds.add_argument("--train", default="s3://srcluster/demo/train", help="where the training shards go")
    ds.add_argument("--val", default="s3://srcluster/demo/val", help="where the validation images go")
    ds.add_argument("--tile", type=int, default=128, help="HR tile size in pixels")
    ds.set_defaults(fn=cmd_data_sample)

    sh = sub.add_parser("shards", help="WebDataset shard sets").add_subparsers(dest="shards_command", required=True)
    sb = sh.add_parser("build", help="build a shard set from folders of HR images (resumable)",
                       description="Build WebDataset shards + manifest.json at DEST from image folders (or fsspec "
                                   "URLs). Re-running continues an interrupted build and does nothing for a "
                                   "finished one.")
    sb.add_argument("paths", nargs="+", metavar="SRC... DEST", help="HR folders or URLs, then the destination")
    sb.add_argument("--lq", action="append", metavar="FOLDER",
                    help="LR folder paired with the SRC at the same position (repeat for several SRC); needs --scale")
    sb.add_argument("--scale", type=int, default=1, help="HR / LR size ratio of the --lq folders")
    sb.add_argument("--tile", type=int, default=512, help="HR tile side in pixels; 0 stores whole images (default 512)")
    sb.add_argument("--stride", type=int, default=None, help="distance between tiles (default: the tile side)")
    sb.add_argument("--tile-min", type=int, default=None,
                    help="smallest tile side kept: smaller images are skipped, narrower edge strips dropped "
                         "(default: half the tile)")
    sb.add_argument("--format", choices=["webp", "png"], default="webp", help="lossless storage format")
    sb.add_argument("--alpha", choices=["drop", "white", "black"], default="drop",
                    help="what to do with transparency: drop it, or composite on white or black")
    sb.add_argument("--shard-size", type=parse_size, default=256 << 20, help="target shard size (default 256MiB)")
    sb.add_argument("--shard-samples", type=int, default=1000, help="most samples per shard")
    sb.add_argument("--max-bad", type=float, default=0.01,
                    help="fail when more than this fraction of the sources is bad (default 0.01)")
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

    c = sub.add_parser("check", help="validate a job file and print it resolved, without running it")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_check)

    t = sub.add_parser("train", help="run one training stage on Ray Train")
    t.add_argument("job")
    t.add_argument("--fresh", action="store_true", help="train again even if this config already ran (default: resume)")
    t.set_defaults(fn=cmd_train)

    pl = sub.add_parser("pipeline", help="run a three-stage recipe (2x fidelity -> 4x fidelity -> 4x GAN)")
    pl.add_argument("recipe")
    pl.add_argument("--fresh", action="store_true", help="train every stage again (default: skip finished, resume)")
    pl.add_argument("--plan", action="store_true", help="print each stage's derived config (diff against the previous "
                                                        "stage) without running anything")
    pl.add_argument("--json", action="store_true", help="with --plan: one JSON list of the stages' full job configs")
    pl.set_defaults(fn=cmd_pipeline)

    ev = sub.add_parser("evaluate", help="PSNR/SSIM (and LPIPS/DISTS/TOPIQ) of a model, or of bicubic, on HR images")
    ev.add_argument("--hr", required=True, help="folder or shard set of HR images (any fsspec URL)")
    ev.add_argument("--scale", type=int, required=True)
    ev.add_argument("--model", help="generator (.safetensors/.pth, path or URL); default: plain bicubic upscaling")
    ev.add_argument("--metrics", default="psnr,ssim", help="comma-separated: psnr, ssim, lpips, dists, topiq")
    ev.add_argument("--rgb", action="store_true", help="score RGB instead of the Y channel (psnr, ssim)")
    ev.add_argument("--tile", type=int, default=0, help="tile size for inference (0: whole image)")
    ev.add_argument("--tile-overlap", type=int, default=8)
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(fn=cmd_evaluate)

    dg = sub.add_parser("degrade", help="on-the-fly degradations").add_subparsers(dest="degrade_command", required=True)
    dp = dg.add_parser("preview", help="a grid of degraded LR variants of one image, each captioned with its steps")
    dp.add_argument("job")
    dp.add_argument("image")
    dp.add_argument("-n", type=int, default=16)
    dp.add_argument("-o", "--output", default="grid.png")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--size", type=int, default=None, help="centre crop of the image in px (default: up to 512)")
    dp.set_defaults(fn=cmd_degrade_preview)

    sy = sub.add_parser("sync", help="deliver tracking calls spooled while the MLflow server was down")
    sy.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or the local stack's server")
    sy.set_defaults(fn=cmd_sync)

    dm = sub.add_parser("demo", help="stack up, sample data, and the three-stage recipe at toy size")
    dm.set_defaults(fn=cmd_demo)
    from srcluster import upscale
    from srcluster.tracking import lineage  # promote, lineage
    for module in (lineage, upscale): module.add_commands(sub)
    from srcluster.cli.tune import add_commands as add_tune_commands  # tune
    add_tune_commands(sub)
    from srcluster.cli.launch import add_commands as add_launch_commands  # submit, jobs, render
    add_launch_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except SrclusterError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
