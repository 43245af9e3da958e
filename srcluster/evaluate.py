"""Benchmark evaluation as SR papers do it: HR images mod-cropped to the scale, LR made by MATLAB-compatible bicubic,
the model's output saved as 8-bit, and metrics (PSNR/SSIM on Y with a `scale`-pixel border by default) per image and
on average. `model=None` scores plain bicubic upscaling, the baseline row of every SR table (Set5 x4: 28.43 dB /
0.8113).

`evaluate()` returns a JSON-ready dict; `format_table()` renders it for a terminal. Models run through the one
inference path (`infer.upscaler`), tiled so large images fit in memory.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from srcluster.components.metrics import quantize
from srcluster.components.perceptual import METRICS, Y_CHANNEL_METRICS, Metric, build_metric
from srcluster.data.stream import iter_images
from srcluster.degrade.resize import bicubic_downscale
from srcluster.errors import SrclusterError
from srcluster.infer.upscaler import Network, bicubic_upscaler, load_model, tiled_upscale


def metric_options(name: str, scale: int, test_y_channel: bool) -> dict[str, Any]:
    """Paper conventions: a `scale`-pixel border is cropped for every metric; PSNR/SSIM may be taken on Y."""
    options: dict[str, Any] = {"crop_border": scale}
    if name in Y_CHANNEL_METRICS:
        options["test_y_channel"] = test_y_channel
    return options


def evaluate(
    hr_dir: str,
    scale: int,
    model: str | None = None,
    metrics: Iterable[str] = ("psnr", "ssim"),
    test_y_channel: bool = True,
    tile_size: int = 0,
    tile_overlap: int = 8,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Score `model` (None: bicubic) at `scale` on every image of `hr_dir` (a folder or shard set, any fsspec URL).

    Returns {"hr_dir", "scale", "model", "test_y_channel", "metrics": {name: "higher"|"lower"},
    "images": [{"name", "size": [h, w], <metric>: value, ...}], "mean": {<metric>: value}}.
    """
    names = [m.removeprefix("calculate_").lower() for m in metrics]
    for name in names:
        try:
            METRICS.check(name, "metrics")
        except ValueError as exc:  # a typo on the command line: one line, with the closest names
            raise SrclusterError(str(exc)) from None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scorers: dict[str, Metric] = {
        name: build_metric(name, **metric_options(name, scale, test_y_channel)) for name in names
    }
    net: Network = load_model(model, scale, device) if model else bicubic_upscaler(scale)

    rows: list[dict[str, Any]] = []
    for name, image in iter_images(hr_dir):
        # a gray image is scored as gray RGB, as MATLAB's rgb2ycbcr sees it
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        h, w = (rgb.shape[1] // scale) * scale, (rgb.shape[2] // scale) * scale
        if h == 0 or w == 0:
            raise SrclusterError(f"{name}: {rgb.shape[1]}x{rgb.shape[2]} is smaller than the scale {scale}")
        hr = rgb[:3, :h, :w].contiguous()
        lr = bicubic_downscale(hr, scale).to(device).float().div_(255)[None]
        with torch.inference_mode():
            sr = quantize(tiled_upscale(net, lr, scale, tile_size, tile_overlap))  # papers score saved 8-bit images
        hr_batch = hr.to(device)[None]
        row: dict[str, Any] = {"name": name, "size": [h, w]}
        row.update({metric: float(scorer(sr, hr_batch)[0]) for metric, scorer in scorers.items()})
        rows.append(row)
    if not rows:
        raise SrclusterError(f"{hr_dir}: no images found")
    return {
        "hr_dir": hr_dir,
        "scale": scale,
        "model": model or "bicubic",
        "test_y_channel": test_y_channel,
        "metrics": {name: scorer.better for name, scorer in scorers.items()},
        "images": rows,
        "mean": {name: math.fsum(row[name] for row in rows) / len(rows) for name in scorers},
    }


def format_table(result: dict[str, Any]) -> str:
    """The per-image values and their mean as a rich table, under a line saying what was scored."""
    better = result["metrics"]
    table = Table()
    table.add_column("image")
    for name, direction in better.items():
        table.add_column(f"{name} {'↑' if direction == 'higher' else '↓'}", justify="right")
    digits = {"psnr": 2}  # dB to 2 decimals as papers print; similarity scores to 4
    for row in result["images"]:
        table.add_row(row["name"], *(f"{row[n]:.{digits.get(n, 4)}f}" for n in better))
    table.add_section()
    table.add_row("mean", *(f"{result['mean'][n]:.{digits.get(n, 4)}f}" for n in better), style="bold")
    text = io.StringIO()
    console = Console(file=text, width=120, color_system=None)
    channel = "Y channel" if result.get("test_y_channel") else "RGB"
    console.print(
        f"{result['model']} x{result['scale']} on {result['hr_dir']} ({channel}, "
        f"border {result['scale']}; ↑ higher is better, ↓ lower is better)",
        highlight=False,
    )
    console.print(table)
    return text.getvalue()
