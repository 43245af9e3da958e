"""`srcluster check`, `srcluster train` and `srcluster pipeline`: validate a job file, run one stage, run a recipe."""

from __future__ import annotations

import argparse
import json

import yaml

from srcluster.cli.output import console, warn
from srcluster.config import load_job
from srcluster.recipes.pipeline import format_plan, load_recipe, plan, run_recipe
from srcluster.train.stage import run_stage


def cmd_check(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    resolved = job.model_dump(mode="json")
    if args.json:
        print(json.dumps({"job": resolved, "effective_batch": job.effective_batch, "warnings": job.warnings}, indent=2))
    else:
        console.print(yaml.safe_dump(resolved, sort_keys=False), end="", markup=False, highlight=False)
        cluster = job.srcluster
        console.print(
            f"effective batch: {job.datasets.train.batch_size_per_gpu} per worker x "
            f"{cluster.max_workers} workers x {job.datasets.train.accum_iter} accum = {job.effective_batch}"
        )
        if cluster.min_workers < cluster.max_workers:
            plans = ", ".join(
                f"{w} workers: batch {b} x accum {a}"
                for w in range(cluster.min_workers, cluster.max_workers)
                for b, a in [job.batch_plan(w)]
            )
            console.print(f"elastic: held at {job.effective_batch} with {plans}")
        warn(job.warnings, to=console)
        console.print(f"[green]{args.job}: OK[/]" + (f" ({len(job.warnings)} warnings)" if job.warnings else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    warn(job.warnings)
    result = run_stage(job, fresh=args.fresh)
    console.print(
        f"[green]done[/]: {result.iterations} iterations, val PSNR "
        f"{result.metrics.get('val_psnr', float('nan')):.2f} dB"
    )
    console.print(f"generator: {result.generator_uri}")
    console.print(f"MLflow run: {result.run_url}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    if args.plan:
        stages = plan(recipe)
        print(json.dumps(stages, indent=2) if args.json else format_plan(stages))
        return 0
    for summary in run_recipe(recipe, fresh=args.fresh):
        psnr = f"{summary.psnr:.2f} dB" if summary.psnr is not None else "-"
        console.print(
            f"{summary.stage}: {summary.iterations} it, val PSNR {psnr}, {summary.model_uri} "
            f"({summary.checkpoint_uri})",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def register(subparsers) -> None:
    c = subparsers.add_parser("check", help="validate a job file and print it resolved, without running it")
    c.add_argument("job")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_check)

    t = subparsers.add_parser("train", help="run one training stage on Ray Train")
    t.add_argument("job")
    t.add_argument("--fresh", action="store_true", help="train again even if this config already ran (default: resume)")
    t.set_defaults(fn=cmd_train)

    pl = subparsers.add_parser("pipeline", help="run a three-stage recipe (2x fidelity -> 4x fidelity -> 4x GAN)")
    pl.add_argument("recipe")
    pl.add_argument("--fresh", action="store_true", help="train every stage again (default: skip finished, resume)")
    pl.add_argument(
        "--plan",
        action="store_true",
        help="print each stage's derived config (diff against the previous stage) without running anything",
    )
    pl.add_argument("--json", action="store_true", help="with --plan: one JSON list of the stages' full job configs")
    pl.set_defaults(fn=cmd_pipeline)
