"""`srcluster train` and `srcluster pipeline`: run one stage, run a recipe (`srcluster check` is cli/check.py)."""

from __future__ import annotations

import argparse
import json

from srcluster.cli.output import VERBOSE_HELP, console, warn
from srcluster.config import load_job
from srcluster.console import quiet
from srcluster.recipes.pipeline import format_plan, load_recipe, plan, run_recipe
from srcluster.train.stage import run_stage


def cmd_train(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    warn(job.warnings)
    with quiet(job.name, verbose=args.verbose) as log_file:
        result = run_stage(job, fresh=args.fresh)
    console.print(
        f"[green]done[/]: {result.iterations} iterations, val PSNR "
        f"{result.metrics.get('val_psnr', float('nan')):.2f} dB"
    )
    console.print(f"generator: {result.generator_uri}")
    console.print(f"MLflow run: {result.run_url}")
    if job.validates and job.val.save_img:
        from srcluster.page import STAGE_PAGE_FOLDER, STAGE_PAGE_NAME  # numpy and PIL: only when a stage ran

        page = f"{result.run_url}/artifacts/{STAGE_PAGE_FOLDER}/{STAGE_PAGE_NAME}"
        console.print(f"comparison page: {page}", highlight=False, soft_wrap=True)
    if log_file:
        console.print(f"log: {log_file}", highlight=False, soft_wrap=True)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    if args.plan:
        stages = plan(recipe)
        print(json.dumps(stages, indent=2) if args.json else format_plan(stages))
        return 0
    with quiet(recipe.name, verbose=args.verbose) as log_file:
        summaries = run_recipe(recipe, fresh=args.fresh)
    for summary in summaries:
        psnr = f"{summary.psnr:.2f} dB" if summary.psnr is not None else "-"
        console.print(
            f"{summary.stage}: {summary.iterations} it, val PSNR {psnr}, {summary.model_uri} "
            f"({summary.checkpoint_uri})",
            highlight=False,
            soft_wrap=True,
        )
    if log_file:
        console.print(f"log: {log_file}", highlight=False, soft_wrap=True)
    return 0


def register(subparsers) -> None:
    t = subparsers.add_parser("train", help="run one training stage on Ray Train")
    t.add_argument("job")
    t.add_argument("--fresh", action="store_true", help="train again even if this config already ran (default: resume)")
    t.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
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
    pl.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    pl.set_defaults(fn=cmd_pipeline)
