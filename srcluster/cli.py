"""The `srcluster` command. Each subcommand is a thin shell over one module; user errors print as one line."""

from __future__ import annotations

import argparse
import json
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


def cmd_check(args: argparse.Namespace) -> int:
    from srcluster.config import load_job

    job = load_job(args.job)
    resolved = job.model_dump(mode="json")
    if args.json:
        print(json.dumps({"job": resolved, "effective_batch": job.effective_batch, "warnings": job.warnings}, indent=2))
    else:
        import yaml

        console.print(yaml.safe_dump(resolved, sort_keys=False), end="", markup=False, highlight=False)
        console.print(f"effective batch: {job.datasets.train.batch_size_per_gpu} per worker x "
                      f"{job.srcluster.workers} workers x {job.datasets.train.accum_iter} accum = {job.effective_batch}")
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
    from srcluster.pipeline import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    for summary in run_recipe(recipe, fresh=args.fresh):
        console.print(f"{summary.stage}: {summary.iterations} it, PSNR {summary.psnr}, {summary.checkpoint_uri}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from srcluster.demo import run_demo

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
    pl.set_defaults(fn=cmd_pipeline)

    dm = sub.add_parser("demo", help="stack up, sample data, and the three-stage recipe at toy size")
    dm.set_defaults(fn=cmd_demo)
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
