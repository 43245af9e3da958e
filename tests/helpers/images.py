"""Test images made from the photographs bundled with scikit-image: folders, paired HR/LR sets, shard tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from srcluster.data.sample import tiles
from srcluster.data.shards import Sample

PHOTO = skimage.data.astronaut()


def save(path: Path, image: Image.Image | np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kw)


def pool(image: np.ndarray, s: int) -> np.ndarray:
    """Box downscale by `s`: flips and rotations commute with it, so augmented HR/LR crops must still match."""
    h, w = image.shape[0] // s, image.shape[1] // s
    return ((image.reshape(h, s, w, s, 3).astype(np.int32).sum((1, 3)) + s * s // 2) // (s * s)).astype(np.uint8)


def make_paired_folders(root: Path) -> tuple[Path, Path]:
    """HR/LR folders (x4) with two good pairs (extensions differ), a missing partner, a wrong LR size, two LR
    candidates for one HR, and an LR file without HR."""
    hr, lr = root / "hr", root / "lr"
    a, b = PHOTO[:64, :96], PHOTO[200:328, 256:320]
    save(hr / "a.png", a), save(lr / "a.webp", pool(a, 4), lossless=True)
    save(hr / "sub" / "b.png", b), save(lr / "sub" / "b.png", pool(b, 4))
    save(hr / "c.png", a)
    save(hr / "d.png", a), save(lr / "d.png", pool(a, 4)[:, :20])
    save(hr / "e.png", a), save(lr / "e.png", pool(a, 4)), save(lr / "e.bmp", pool(a, 4))
    save(lr / "z.png", pool(a, 4))
    return hr, lr


PER_SHARD = 6


def photo_tiles(size: int = 48) -> list[Sample]:
    """48 real photo tiles: the top of the astronaut photo in size x size windows."""
    return list(tiles("astronaut", skimage.data.astronaut(), size, size))[:48]


def astronaut_tiles(count: int, size: int = 32) -> list[Sample]:
    """Real photo tiles (astronaut, 512x512): 256 of 32 x 32 available."""
    return list(tiles("astronaut", skimage.data.astronaut(), size, size))[:count]
