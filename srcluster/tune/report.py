"""A finished search for people: the trial table (terminal, text, CSV), the objective over iterations per trial, and a
comparison page of the top trials' generators on the validation images (srcluster/page)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from srcluster.compare import Column, build_page, load_models, validation_plan
from srcluster.page import Source
from srcluster.storage import StorageSettings
from srcluster.tune.space import LoadedSearch

TOP_TRIALS = 4  # trials on the comparison page: enough to see the trend, few enough to flip through by key


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return str(value)


def trial_table(outcome, search: LoadedSearch) -> Table:
    best_id = outcome.best.trial_id if outcome.best else None
    table = Table(title=f"{outcome.name}: {outcome.metric} ({outcome.mode}), {len(outcome.rows)} trials")
    table.add_column("trial")
    table.add_column("status")
    for path in search.dists:
        table.add_column(path, overflow="fold")
    table.add_column(f"last {outcome.metric}", justify="right")
    table.add_column(f"best {outcome.metric}", justify="right")
    table.add_column("iterations", justify="right")
    for row in outcome.rows:
        status = {"TERMINATED": "[green]done[/]", "ERROR": "[red]failed[/]"}.get(row.status, row.status)
        if row.status == "TERMINATED" and row.iterations < search.base_job.train.total_iter:
            status = "[yellow]stopped[/]"
        table.add_row(
            ("* " if row.trial_id == best_id else "") + row.trial_id,
            status,
            *(_short(row.params.get(p, "")) for p in search.dists),
            "" if row.last is None else f"{row.last:.4f}",
            "" if row.best is None else f"{row.best:.4f}",
            str(row.iterations),
        )
    return table


def table_text(outcome, search: LoadedSearch) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, no_color=True).print(trial_table(outcome, search))
    errors = [f"{r.trial_id}: {r.error}" for r in outcome.rows if r.error]
    return buffer.getvalue() + ("\nfailed trials:\n" + "\n".join(errors) + "\n" if errors else "")


def write_csv(outcome, search: LoadedSearch, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "trial",
                "status",
                *search.dists,
                f"last_{outcome.metric}",
                f"best_{outcome.metric}",
                "iterations",
                "mlflow_run",
                "generator",
                "error",
            ]
        )
        for r in outcome.rows:
            writer.writerow(
                [
                    r.trial_id,
                    r.status,
                    *(_short(r.params.get(p, "")) for p in search.dists),
                    r.last,
                    r.best,
                    r.iterations,
                    r.run_id,
                    r.generator_uri,
                    r.error or "",
                ]
            )
    return path


def plot_curves(outcome, path: Path) -> Path:
    # drawn on its own Agg canvas: no pyplot, so no display backend on cluster nodes and no global figure to close
    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in outcome.rows:
        if not row.curve:
            continue
        steps, values = zip(*row.curve, strict=True)
        best = outcome.best is not None and row.trial_id == outcome.best.trial_id
        style = {"linewidth": 2.5, "zorder": 3} if best else {"linewidth": 1, "alpha": 0.7}
        ax.plot(steps, values, marker="o", markersize=3, label=f"{row.trial_id} ({row.status.lower()})", **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{outcome.metric} ({'lower' if outcome.mode == 'min' else 'higher'} is better)")
    ax.set_title(f"{outcome.name}: {outcome.metric} per trial")
    ax.grid(alpha=0.3)
    if len(outcome.rows) <= 16:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_trials_page(outcome, search: LoadedSearch, path: Path, settings: StorageSettings) -> Path | None:
    """The top trials by the objective (those that left a generator), with bicubic and HR, on the base job's
    validation images and metrics; None when no trial left a generator or the job does not validate."""
    job = search.base_job
    ranked = sorted(
        (r for r in outcome.rows if r.generator_uri and r.last is not None),
        key=lambda r: r.last,
        reverse=outcome.mode == "max",
    )[:TOP_TRIALS]
    plan = validation_plan(job)
    if not ranked or plan is None:
        return None
    columns = [
        Column(Source("bicubic"), builtin="bicubic"),
        *(
            Column(
                Source(f"trial {r.trial_id}", note=f"{outcome.metric} {r.last:.4g}; {_short(r.params)}"),
                r.generator_uri,
            )
            for r in ranked
        ),
        Column(Source("hr"), builtin="hr"),
    ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    title = f"{outcome.name}: top {len(ranked)} trials by {outcome.metric} ({outcome.mode})"
    page = build_page(columns, plan, title, load_models(columns, device, settings), device)
    return page.write(path, embed=True)  # logged to MLflow, whose viewer needs the images inside the page
