"""`srcluster degrade preview`: one HR image through the configured degradations n times, as a captioned grid.

Users tune degradations by looking: each tile is one LR variant, enlarged with nearest-neighbour (so its pixels and
artifacts stay visible) to the HR crop's size, with the steps applied to it written under it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import apply, describe, draw
from srcluster.degrade.seeds import sample_seed
from srcluster.storage import StorageSettings

MAX_SIDE = 512  # default HR crop: the centre square of the image, at most this big
MARGIN = 4


def read_image(image: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 from a local path or any URL srcluster can read (s3://... through its storage settings)."""
    text = str(image)
    if "://" in text:
        fs, path = StorageSettings.resolve().filesystem(text)
        data: bytes = fs.cat_file(path)  # pyright: ignore[reportAssignmentType]  # fsspec reads "rb": always bytes
    else:
        data = Path(text).read_bytes()
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB"))


def centre_crop(rgb: np.ndarray, scale: int, size: int | None = None) -> np.ndarray:
    side = size or min(rgb.shape[0], rgb.shape[1], MAX_SIDE)
    side = min(side, rgb.shape[0], rgb.shape[1]) // scale * scale
    if side < scale:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is smaller than the scale {scale}")
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return rgb[top : top + side, left : left + side]


def _wrap(text: str, width: int, draw_: ImageDraw.ImageDraw, font) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and draw_.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def preview(
    cfg: Degradations,
    image: str | Path,
    scale: int,
    n: int = 16,
    out_path: str | Path = "grid.png",
    seed: int = 0,
    size: int | None = None,
) -> Path:
    """Write a grid of `n` degraded LR variants of `image` (its centre crop, `size` or at most 512 px) to `out_path`."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    crop = centre_crop(read_image(image), scale, size)
    side = crop.shape[0]
    hr = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255)
    # the whole crop is shown: no pair is cut from it. Each tile is one draw of what a sample can get, so the tiles
    # draw per sample: per-batch draws would give all of them the same switches, resize and noise kind
    cfg = cfg.model_copy(update={"otf_draws": "per_sample"})
    plan = draw(cfg, [sample_seed(seed, 0, f"preview/{i}") for i in range(n)], scale, side, crop=side)
    lr = apply(hr.unsqueeze(0).repeat(n, 1, 1, 1), plan)
    tiles = (lr.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour enlargement

    font = ImageFont.load_default()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [
        [line for step in describe(plan, i) for line in _wrap(step, side - 2 * MARGIN, scratch, font)] for i in range(n)
    ]
    # Pillow built without FreeType gives a bitmap font, which has no metrics: its glyph box gives the height instead
    text_height = sum(font.getmetrics()) if isinstance(font, ImageFont.FreeTypeFont) else int(font.getbbox("Ag")[3])
    line_height = text_height + 2
    caption = max(len(c) for c in captions) * line_height + 2 * MARGIN
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell_w, cell_h = side + MARGIN, side + caption + MARGIN
    grid = Image.new("RGB", (cols * cell_w + MARGIN, rows * cell_h + MARGIN), "white")
    pen = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = MARGIN + (i % cols) * cell_w, MARGIN + (i // cols) * cell_h
        grid.paste(Image.fromarray(tiles[i]), (x, y))
        for j, line in enumerate(captions[i]):
            pen.text((x + MARGIN, y + side + MARGIN + j * line_height), line, fill="black", font=font)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
