"""`srcluster demo`: the whole path on real services at toy size.

Local stack up (SeaweedFS S3 + MLflow) -> sample photos cut into HR tiles and written as WebDataset shards to S3 ->
the three-stage recipe on 2 Ray workers, each stage an MLflow run -> a summary table and where to look.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from srcluster import home, stack
from srcluster.components import hub
from srcluster.config import read_yaml
from srcluster.data.sample import build_sample_dataset
from srcluster.errors import SrclusterError
from srcluster.recipes.pipeline import Recipe, latest_page, parse_recipe, run_recipe
from srcluster.tracking.tracker import Tracker

DEMO_RECIPE = resources.files("srcluster") / "recipes" / "demo.yml"


def drop_perceptual_without_vgg19(recipe: Recipe) -> str | None:
    """The GAN stage runs the guideline's losses when VGG19 weights are here, staged or downloadable (this finds or
    fetches them once, for every stage and worker on this machine). Otherwise it runs without perceptualloss, and the
    line returned says so and why."""
    train = recipe.stages["gan_4x"]["train"]
    if not any(loss["type"] == "perceptualloss" for loss in train["losses"]):
        return None
    try:
        hub.locate("vgg19")
    except SrclusterError as exc:
        train["losses"] = [loss for loss in train["losses"] if loss["type"] != "perceptualloss"]
        return f"gan_4x runs without perceptualloss: {exc}"
    return None


def run_demo(console: Console | None = None) -> list:
    console = console or Console()
    if not console.is_terminal:  # CI logs and pipes: keep the summary table's URIs on one line
        console.width = max(console.width, 200)
    console.rule("[bold]1/3 local stack")
    services = stack.up()
    for service in services.values():
        console.print(f"  {service.name:7s} {service.url}")

    recipe = parse_recipe(read_yaml(str(DEMO_RECIPE)), "demo.yml (embedded)")
    dropped = drop_perceptual_without_vgg19(recipe)
    if dropped:
        console.print(dropped, highlight=False, soft_wrap=True)
    datasets = recipe.job("fidelity_2x").datasets
    train_url = datasets.train.dataroot_gt
    val_url = datasets.val.dataroot_gt if datasets.val is not None else None
    if not isinstance(train_url, str) or not isinstance(val_url, str):  # the sample data is written to one URL each
        raise SrclusterError("demo.yml: stage fidelity_2x must name one train and one val dataroot_gt URL")
    console.rule("[bold]2/3 sample data")
    summary = build_sample_dataset(train_url, val_url)
    console.print(
        f"  {summary['tiles']} HR tiles in {summary['shards']} shards at {train_url}; "
        f"{len(summary['val_images'])} validation images at {val_url}"
    )

    console.rule("[bold]3/3 three-stage recipe on Ray")
    out_dir = home.home() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []

    def fetch_grid(stage_summary, result) -> None:
        images.extend(
            Tracker(recipe.job(stage_summary.stage).srcluster.mlflow.tracking_uri).download_latest(
                result.run_id, "comparisons", out_dir / stage_summary.stage
            )
        )

    summaries = run_recipe(recipe, on_stage_done=fetch_grid)

    table = Table(title="srcluster demo: three chained stages")
    for column in ("stage", "iterations", "final PSNR (Y)", "checkpoint", "MLflow run"):
        table.add_column(column, overflow="fold")
    for s in summaries:
        table.add_row(
            s.stage, str(s.iterations), f"{s.psnr:.2f} dB" if s.psnr is not None else "-", s.checkpoint_uri, s.run_id
        )
    console.print(table)
    console.print(f"MLflow UI: {stack.mlflow_url()}  (experiment '{recipe.name}')")
    for image in images:
        console.print(f"comparison (bicubic | model | HR): {image}")
    page = latest_page(recipe.name)
    if page is not None:
        console.print(f"comparison page (every stage, bicubic, HR; slider and zoom): {page.as_uri()}", soft_wrap=True)
    return summaries
