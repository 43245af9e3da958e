"""`srcluster tune`: a hyperparameter search over a training stage with Ray Tune."""

from __future__ import annotations

import argparse
from pathlib import Path

from srcluster.cli.output import VERBOSE_HELP, console, warn


def cmd_tune(args: argparse.Namespace) -> int:
    # the search modules import ray and torch: only this command pays for them, and `--check` only for the file's
    from srcluster.tune.space import load_search

    search = load_search(args.search)
    warn(search.base_job.warnings, to=console)
    if args.check:
        console.print(
            f"{search.name}: {len(search.dists)} searched keys, objective {search.metric} ({search.mode}), "
            f"{search.spec.num_samples} trials of {search.workers} worker(s): ok"
        )
        return 0
    # the Tuner driver and the training loop: only a real search loads them
    from srcluster.console import quiet
    from srcluster.tune.report import trial_table
    from srcluster.tune.run import run_search

    with quiet(search.name, verbose=args.verbose) as log_file:
        outcome = run_search(
            search,
            output_dir=Path(args.output) if args.output else None,
            log=lambda m: console.print(m, highlight=False, markup=False),
        )
    if log_file:
        console.print(f"log: {log_file}", highlight=False, soft_wrap=True)
    console.print(trial_table(outcome, search))
    if outcome.best is None:
        console.print("[red]no trial finished[/]: see the failed trials above")
        return 1
    console.print(f"best: trial {outcome.best.trial_id}, {outcome.metric} {outcome.best.last:.4f}")
    if outcome.candidate is not None:
        console.print(f"registered: {outcome.candidate.name} version {outcome.candidate.version} (@candidate)")
    for file in outcome.files:
        console.print(f"wrote {file}")
    return 0


def register(subparsers) -> None:
    t = subparsers.add_parser("tune", help="hyperparameter search over a training stage with Ray Tune (resumable)")
    t.add_argument("search", help="search file (base stage, space, metric, algorithms)")
    t.add_argument("--check", action="store_true", help="validate the search file and stop")
    t.add_argument("--output", help="folder for the trial table and plot (default: $SRCLUSTER_HOME/tune/<search>)")
    t.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    t.set_defaults(fn=cmd_tune)
