"""`srcluster compare`: any mix of generators and built-ins upscaled on the same images and written as one interactive
page (srcluster/page): per image a slider between any two sources, a grid, synchronized zoom, and each source's
metrics.

SOURCES: a weights file (path or any fsspec URL), `models:/NAME@ALIAS` or `models:/NAME/VERSION`, `runs:/RUN_ID` (the
generators a stage run logged: its final and best; a pipeline's parent run: each stage's), `runs:/RUN_ID/STAGE` (one
stage of a pipeline run), and the built-ins `bicubic` (MATLAB-compatible bicubic of the LR), `lr` (the LR itself,
drawn with square pixels) and `hr` (the reference). A `NAME=SOURCE` form names a column.

Images: HR images (`--images`, LR made by MATLAB-compatible bicubic as `srcluster evaluate` does) or a job's validation
set (`--val JOB.yml`: its HR, its paired LR when it has one, its scale, its `val.metrics` and tiles). Models run through
the one inference path (`infer.upscaler`, tiled); their outputs are saved as 8-bit before scoring, as papers do. A
model of a smaller scale than the comparison (a 2x stage in a 4x comparison) runs on the same LR and its output is
resized to HR size by bicubic; its column says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from srcluster.components import perceptual
from srcluster.components.metrics import quantize
from srcluster.config import Job
from srcluster.config.load import load_job
from srcluster.data.stream import iter_images
from srcluster.degrade.resize import imresize
from srcluster.errors import SrclusterError
from srcluster.evaluate import metric_options
from srcluster.infer.upscaler import Upscaler, load_upscaler, upscale_tensor
from srcluster.page import ComparePage, Source
from srcluster.storage import StorageSettings
from srcluster.tracking.models import RunGenerator, run_generators
from srcluster.tracking.tracker import Tracker
from srcluster.train.validate import ValImage, build_metrics, load_set, prepare

BUILT_INS = ("bicubic", "lr", "hr")
# lpips, dists and topiq on request (--metrics): their weights are fetched once (`srcluster weights pull`)
DEFAULT_METRICS = ("psnr", "ssim")


@dataclass
class Column:
    """A resolved source: a generator to load (`uri`) or a built-in (`builtin`)."""

    source: Source
    uri: str | None = None
    builtin: str | None = None


def resolve(specs: list[str], tracker: Tracker | None = None) -> list[Column]:
    """SOURCES as the command line gives them -> columns, in order. `runs:/` URIs ask the tracking server."""
    columns: list[Column] = []
    for spec in specs:
        named = re.match(r"^[\w.@-]+=", spec) and not Path(spec).exists()  # a file may have "=" in its name
        label, _, target = spec.partition("=") if named else ("", "", spec)
        if target in BUILT_INS:
            columns.append(Column(Source(label or target), builtin=target))
        elif target.startswith("runs:/"):
            run_id, stage = _run_parts(target)
            tracker = tracker or Tracker()
            generators = run_generators(tracker, run_id, stage)
            columns.extend(Column(_run_source(g, label), g.uri) for g in generators)
        else:
            columns.append(Column(Source(label or _short_name(target)), target))
    names = [c.source.name for c in columns]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SrclusterError(f"compare: two sources are named {duplicates[0]!r}; name one with NAME=SOURCE")
    if not columns:
        raise SrclusterError("compare: no sources given")
    return columns


def _run_parts(uri: str) -> tuple[str, str | None]:
    parts = uri.removeprefix("runs:/").strip("/").split("/")
    if not parts[0] or len(parts) > 2:
        raise SrclusterError(f"{uri}: expected runs:/RUN_ID or runs:/RUN_ID/STAGE")
    return parts[0], parts[1] if len(parts) == 2 else None


def _run_source(generator: RunGenerator, label: str) -> Source:
    name = f"{label or generator.stage}@{generator.iteration}"
    return Source(name, group=label or generator.stage, step=generator.iteration, note=generator.note)


def _short_name(uri: str) -> str:
    """A column title for a weights file or model URI: the file name without extension, or the model URI."""
    if uri.startswith("models:/"):
        return uri.removeprefix("models:/")
    return Path(uri.rstrip("/")).stem or uri


@dataclass
class Plan:
    """What the page compares on: images, scale, metrics, tiles."""

    images: list[ValImage]
    scale: int
    metrics: dict[str, perceptual.Metric]
    tile: int = 0
    overlap: int = 8
    where: str = ""


def metrics_by_name(names: list[str], scale: int, test_y_channel: bool) -> dict[str, perceptual.Metric]:
    """The named metrics as `srcluster evaluate` builds them (a `scale`-pixel border, PSNR/SSIM on Y by default)."""
    built = {}
    for name in names:
        try:
            perceptual.METRICS.check(name, "metrics")
        except ValueError as exc:  # a typo on the command line: one line, with the closest names
            raise SrclusterError(str(exc)) from None
        built[name] = perceptual.build_metric(name, **metric_options(name, scale, test_y_channel))
    return built


def plan_from_images(
    url: str, scale: int, metrics: list[str] | None, test_y_channel: bool, tile: int, overlap: int
) -> Plan:
    names = [m.removeprefix("calculate_").lower() for m in (metrics or DEFAULT_METRICS)]
    images = prepare(iter_images(url), scale)
    if not images:
        raise SrclusterError(f"{url}: no images found")
    return Plan(images, scale, metrics_by_name(names, scale, test_y_channel), tile, overlap, url)


def validation_plan(job: Job) -> Plan | None:
    """A job's first validation set as its validation sees it (scale, scored `val.metrics`, tiles); None when the job
    has no validation set or no usable image in it. The pipeline's and the search's pages compare on this."""
    if job.datasets.val is None:
        return None
    images = load_set(job.datasets.val, job.scale)
    if not images:
        return None
    metrics = build_metrics(job.val.metrics if job.val.metrics_enabled else {}, job.scale)
    return Plan(images, job.scale, metrics, job.val.tile_size, job.val.tile_overlap, f"{job.name}'s validation images")


def plan_from_job(path: str, metrics: list[str] | None = None, test_y_channel: bool = True) -> Plan:
    """A job's validation set, scale, metrics and tiles, as its validation sees them; `metrics` (or, when the job
    scores none, `DEFAULT_METRICS`) are built as `srcluster evaluate` does instead."""
    job = load_job(path)
    val = job.datasets.val
    if val is None:
        raise SrclusterError(f"{path}: the job has no datasets.val to compare on")
    images = load_set(val, job.scale)
    if not images:
        raise SrclusterError(f"{path}: no usable validation image in {val.dataroot_gt}")
    if metrics is None and job.val.metrics_enabled and job.val.metrics:
        built = build_metrics(job.val.metrics, job.scale)
    else:
        names = [m.removeprefix("calculate_").lower() for m in (metrics or DEFAULT_METRICS)]
        built = metrics_by_name(names, job.scale, test_y_channel)
    return Plan(images, job.scale, built, job.val.tile_size, job.val.tile_overlap, str(val.dataroot_gt))


def _array(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).cpu().numpy()


def _model_output(model: Upscaler, lr: torch.Tensor, plan: Plan) -> torch.Tensor:
    """uint8 (3, H, W) at the plan's scale: the model's output (resized by bicubic when its scale is smaller)."""
    sr = upscale_tensor(model, lr.float()[None].div(255), plan.tile, plan.overlap)
    if model.scale != plan.scale:
        sr = imresize(sr, plan.scale / model.scale, kernel="bicubic")
    return quantize(sr)[0].cpu()


def load_models(columns: list[Column], device: torch.device, settings: StorageSettings) -> dict[str, Upscaler]:
    """Each generator column's model, loaded once."""
    return {c.source.name: load_upscaler(c.uri, device, settings=settings) for c in columns if c.uri is not None}


def scale_notes(models: dict[str, Upscaler], scale: int) -> dict[str, str]:
    """What the page says about a model of a smaller scale; a model that cannot reach `scale` is refused."""
    notes = {}
    for name, model in models.items():
        if model.scale > scale or scale % model.scale:
            raise SrclusterError(f"{name} is a x{model.scale} model: it cannot be shown in a x{scale} comparison")
        if model.scale != scale:
            notes[name] = f"x{model.scale}, then bicubic x{scale // model.scale}"
    return notes


def build_page(
    columns: list[Column], plan: Plan, title: str, models: dict[str, Upscaler], device: torch.device
) -> ComparePage:
    """Every column's picture of every image, scored against HR like `srcluster evaluate` (`lr` and `hr` unscored)."""
    notes = scale_notes(models, plan.scale)
    page = ComparePage(
        title, {name: metric.better for name, metric in plan.metrics.items()}, note=f"x{plan.scale} on {plan.where}"
    )
    with torch.inference_mode():
        for image in plan.images:
            hr = image.hr.to(device)
            for column in columns:
                source = column.source
                if source.name in notes:
                    note = "; ".join(filter(None, (source.note, notes[source.name])))
                    source = Source(source.name, source.group, source.step, note)
                if column.builtin in ("lr", "hr"):
                    page.add(image.name, source, _array(image.lr if column.builtin == "lr" else image.hr))
                    continue
                if column.builtin == "bicubic":
                    out = quantize(imresize(image.lr.float()[None].div(255), plan.scale, kernel="bicubic"))[0]
                else:
                    out = _model_output(models[source.name], image.lr, plan)
                scores = {
                    name: float(metric(out.to(device)[None], hr[None])[0]) for name, metric in plan.metrics.items()
                }
                page.add(image.name, source, _array(out), scores)
    return page


def compare(
    sources: list[str],
    *,
    images: str | None = None,
    val: str | None = None,
    scale: int | None = None,
    metrics: list[str] | None = None,
    test_y_channel: bool = True,
    tile: int = 0,
    overlap: int = 8,
    output: str | Path = "compare.html",
    embed: bool | None = None,
    device: str | None = None,
    title: str | None = None,
) -> Path:
    """Resolve `sources`, upscale the images with each, write the page; returns its path."""
    if (images is None) == (val is None):
        raise SrclusterError("compare: give the images with exactly one of --images DIR or --val JOB.yml")
    columns = resolve(sources)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = load_models(columns, torch_device, StorageSettings.resolve())
    if val is not None:
        plan = plan_from_job(val, metrics, test_y_channel)
    else:
        assert images is not None
        if scale is None and not models:
            raise SrclusterError("compare: only built-ins given; say the scale with --scale")
        scale = scale or max(m.scale for m in models.values())
        plan = plan_from_images(images, scale, metrics, test_y_channel, tile, overlap)
    page = build_page(columns, plan, title or "srcluster compare", models, torch_device)
    return page.write(output, embed)
