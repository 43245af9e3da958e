"""What a pipeline leaves to look at: a comparison page of every stage on the whole validation images (`write_page`,
logged to the parent run: slider, grid, synchronized zoom, metrics; srcluster/page), and a picture of the same crops
through every stage with every stage's metric curve (`write_report`).

Rows are validation images; columns are bicubic | stage 1 | stage 2 | ... | HR, all at the final scale from the same
LR (the HR crop downscaled by MATLAB-compatible bicubic). A stage trained at a smaller scale (the 2x fidelity stage)
gets that same LR; its output is then resized to the HR size with bicubic, and its column title says so: running it
twice would show a model that was never trained. Below, the validation metric of each stage against its iterations,
from MLflow's history. The eye is the final judge of a perceptual model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from srcluster import home
from srcluster.compare import Column, build_page, load_models, validation_plan
from srcluster.data.stream import iter_images
from srcluster.degrade.resize import bicubic_downscale, imresize
from srcluster.infer.upscaler import load_upscaler, upscale_tensor
from srcluster.page import Source
from srcluster.storage import StorageSettings
from srcluster.train.validate import centre_crop

MAX_IMAGES = 3
CROP = 192  # HR pixels per side


def _crops(val_url: str, scale: int) -> list[tuple[str, torch.Tensor]]:
    """(name, uint8 HR centre crop, a multiple of `scale`) for the first few validation images."""
    out = []
    for name, hr in iter_images(val_url):
        size = min(CROP, hr.shape[1], hr.shape[2]) // scale * scale
        if size == 0:
            continue
        out.append((name, centre_crop(hr[:3].expand(3, -1, -1) if hr.shape[0] == 1 else hr[:3], size).contiguous()))
        if len(out) == MAX_IMAGES:
            break
    return out


def _columns(results, scale: int, hr: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(title, float 3 x H x W in [0, 1]) for bicubic, each stage and HR."""
    lr = bicubic_downscale(hr, scale).float()[None] / 255
    columns = [(f"bicubic x{scale}", imresize(lr, scale, kernel="bicubic")[0])]
    for stage, _job, _result, ref in results:
        model = load_upscaler(ref.uri, "cpu")
        sr = upscale_tensor(model, lr, tile=0)
        title = f"{stage}\n{ref.name} v{ref.version}"
        if model.scale != scale:
            sr = imresize(sr, scale / model.scale, kernel="bicubic")
            title = f"{stage} (x{model.scale},\nthen bicubic x{scale // model.scale})"
        columns.append((title, sr[0]))
    columns.append(("HR", hr.float() / 255))
    return columns


def render(results, scale: int, crops, curves: dict[str, list[tuple[int, float]]], metric: str, path: Path) -> Path:
    ncols = len(results) + 2
    fig = Figure(figsize=(2.3 * ncols, 2.5 * len(crops) + 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(crops) + 1, ncols, height_ratios=[2.3] * len(crops) + [2.4])
    for row, (name, hr) in enumerate(crops):
        for col, (title, image) in enumerate(_columns(results, scale, hr)):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    ax = fig.add_subplot(grid[len(crops), :])
    for stage, points in curves.items():
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=stage)
    ax.set_xlabel("iteration (within each stage)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"x{scale} from the same bicubic LR; a stage of lower scale is shown upscaled by bicubic to HR size", fontsize=9
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_report(tracker, recipe_name: str, parent_run_id: str, results) -> Path | None:
    """Write the report under $SRCLUSTER_HOME/reports/ and log it to the parent run; None without validation data.

    `results`: (stage, job, StageResult, ModelRef) per stage, in order."""
    last_job = results[-1][1]
    if last_job.datasets.val is None:
        return None
    val = last_job.datasets.val.dataroot_gt
    val_url = val if isinstance(val, str) else val[0]
    scale = last_job.scale
    crops = _crops(val_url, scale)
    if not crops:
        return None
    metric = last_job.best_metric or "val_psnr"
    # each stage is scored at its own scale: the x2 stage's PSNR is not on the x4 stages' footing
    curves = {
        f"{stage} (x{job.scale})": tracker.metric_history(result.run_id, metric) for stage, job, result, _ref in results
    }
    path = home.home() / "reports" / f"{recipe_name}-{parent_run_id[:8]}.png"
    with torch.inference_mode():
        render(results, scale, crops, curves, metric, path)
    tracker.log_artifact(parent_run_id, path, "report")
    return path


PAGE_FOLDER = "compare"  # the parent run's artifact folder holding the page


def write_page(tracker, recipe_name: str, parent_run_id: str, results, settings: StorageSettings) -> Path | None:
    """The pipeline's comparison page: LR, bicubic, every stage's registered generator and HR on the last stage's
    validation images at its scale, scored with its `val.metrics`; written under $SRCLUSTER_HOME/reports/ and logged
    to the parent run. None without validation data. A stage of smaller scale runs on the same LR and is resized to HR
    size by bicubic (its column says so), as in the report image."""
    plan = validation_plan(results[-1][1])
    if plan is None:
        return None
    columns = [
        Column(Source("lr"), builtin="lr"),
        Column(Source("bicubic"), builtin="bicubic"),
        *(Column(Source(stage, note=f"{ref.name} v{ref.version}"), ref.uri) for stage, _job, _result, ref in results),
        Column(Source("hr"), builtin="hr"),
    ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    page = build_page(columns, plan, f"{recipe_name}: every stage", load_models(columns, device, settings), device)
    page.fit()  # MLflow's viewer shows only a page that carries its images
    path = page.write(home.home() / "reports" / f"{recipe_name}-{parent_run_id[:8]}.html", embed=True)
    tracker.log_artifact(parent_run_id, path, PAGE_FOLDER)
    return path
