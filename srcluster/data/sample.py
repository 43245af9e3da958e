"""The demo dataset: real photographs that ship inside scikit-image, so a first run needs no download.

Only images whose file is inside the installed `skimage/data` folder are used (others in `skimage.data` fetch from
the network through pooch). Chosen: camera photographs of scenes, objects and surface textures. Left out: synthetic or
drawn images (chessboard, logo, phantom, horse, colorwheel), microscopy and medical images (cell, ihc, retina,
microaneurysms), the mostly black hubble_deep_field, the motion-blurred clock, and motorcycle_right (a near copy of
motorcycle_left). Gray photographs become 3 equal channels, since the models are RGB.

Training: every photo except the held-out ones, cut into `tile` x `tile` HR tiles, as WebDataset shards.
Validation: the held-out photos, centre-cropped to `val_size`, as `<name>.png` files in a folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import skimage.data

from srcluster.data.build import TileSettings, tile_samples
from srcluster.data.images import encode
from srcluster.data.manifest import MANIFEST, read_manifest
from srcluster.data.shards import Sample, is_local, write_shards
from srcluster.data.sources import join_url
from srcluster.errors import StorageError
from srcluster.storage import StorageSettings, is_s3

log = logging.getLogger(__name__)

# name -> skimage.data function; the order here is the order of the tiles in the shards.
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut",  # 512x512 RGB portrait
    "camera": "camera",  # 512x512 gray, man with a camera
    "chelsea": "chelsea",  # 300x451 RGB, a cat: fur and whiskers
    "coffee": "coffee",  # 400x600 RGB, a cup of coffee
    "coins": "coins",  # 303x384 gray, coins on a table
    "moon": "moon",  # 512x512 gray, the lunar surface
    "rocket": "rocket",  # 427x640 RGB, a rocket on its launch pad
    "motorcycle": "stereo_motorcycle",  # 500x741 RGB, left view of a stereo pair
    "brick": "brick",  # 512x512 gray, a brick wall
    "grass": "grass",  # 512x512 gray, grass
    "gravel": "gravel",  # 512x512 gray, gravel
    "text": "text",  # 172x448 gray, a photographed sign
}
DEFAULT_VAL = ("chelsea", "coffee")  # two colour photos with fine detail, held out of training
GENERATOR = "srcluster.data.sample/2"  # bump when the tiles change, so an older dataset is rebuilt (/2: WebP)
SHARD_SAMPLES = 32  # ~4-5 shards: each slot (rank x worker) reads whole shards and at most two cut ones


def sample_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) for every demo photo, in a fixed order."""
    photos = []
    for name, function in PHOTOS.items():
        image = getattr(skimage.data, function)()
        if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
            image = image[0]
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append((name, np.ascontiguousarray(image[..., :3])))
    return photos


def encode_png(image: np.ndarray) -> bytes:
    return encode(image, "png")


def tiles(name: str, image: np.ndarray, tile: int, stride: int) -> Iterator[Sample]:
    """Every full `tile` x `tile` window at multiples of `stride`, as the shard builder cuts them (lossless WebP);
    a border narrower than a tile is dropped."""
    settings = TileSettings(tile=tile, stride=stride, min_size=tile)
    yield from tile_samples(name, image, None, settings, {"source": f"skimage.data.{PHOTOS[name]}", "photo": name})


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} photo cannot give a {size}x{size} centre crop")
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def _write_val(photos: dict[str, np.ndarray], val_dest: str, val_size: int) -> list[str]:
    settings = StorageSettings.resolve()
    if is_s3(val_dest):
        settings.check(val_dest, create_bucket=False)
    fs, root = settings.filesystem(val_dest)
    root = root.rstrip("/")
    urls = []
    try:
        if is_local(fs):  # object stores have no folders (and s3fs.makedirs may try to create a bucket)
            fs.makedirs(root, exist_ok=True)
        for name, image in photos.items():
            fs.pipe_file(f"{root}/{name}.png", encode_png(center_crop(image, val_size)))
            urls.append(join_url(val_dest, f"{name}.png"))
    except OSError as exc:
        raise StorageError(f"cannot write validation images to {val_dest}: {exc}") from None
    return urls


def _existing(train_dest: str) -> dict | None:
    fs, path = StorageSettings.resolve().filesystem(join_url(train_dest, MANIFEST))
    try:
        found = fs.exists(path)
    except OSError:
        return None
    return read_manifest(train_dest) if found else None


def _val_complete(val_dest: str, names: tuple[str, ...]) -> bool:
    fs, root = StorageSettings.resolve().filesystem(val_dest)
    try:
        return all(fs.exists(f"{root.rstrip('/')}/{name}.png") for name in names)
    except OSError:
        return False


def build_sample_dataset(
    train_dest: str,
    val_dest: str,
    *,
    tile: int = 128,
    stride: int | None = None,
    val_names: tuple[str, ...] = DEFAULT_VAL,
    val_size: int = 128,
    progress: bool = True,
) -> dict:
    """Write the demo training shards and validation folder; do nothing when an identical build is already there."""
    stride = stride or tile
    if tile < 1 or stride < 1:
        raise ValueError("tile and stride must be positive")
    if val_size < 4 or val_size % 4:
        raise ValueError(f"val_size {val_size} must be a positive multiple of 4 (for x2 and x4 models)")
    unknown = set(val_names) - PHOTOS.keys()
    if unknown or not val_names:
        raise ValueError(f"val_names must be some of {sorted(PHOTOS)}; unknown: {sorted(unknown)}")
    train_names = [name for name in PHOTOS if name not in val_names]
    settings = {
        "generator": GENERATOR,
        "tile": tile,
        "stride": stride,
        "train_photos": train_names,
        "val_photos": list(val_names),
        "val_size": val_size,
    }
    summary = {"train": train_dest, "val": val_dest, "settings": settings}
    storage = StorageSettings.resolve()
    for dest in (train_dest, val_dest):  # one line naming the fix (no stack, no keys, no bucket) before any work
        if is_s3(dest):
            storage.check(dest, create_bucket=False)

    manifest = _existing(train_dest)
    if manifest is not None and manifest.get("sample_dataset") == settings and _val_complete(val_dest, val_names):
        log.info("sample dataset already at %s (%d tiles); nothing to do", train_dest, manifest["samples"])
        return {
            **summary,
            "created": False,
            "tiles": manifest["samples"],
            "shards": len(manifest["shards"]),
            "val_images": [join_url(val_dest, f"{name}.png") for name in val_names],
            "manifest": manifest,
        }

    photos = dict(sample_photos())
    samples = (sample for name in train_names for sample in tiles(name, photos[name], tile, stride))
    manifest = write_shards(
        samples, train_dest, max_samples=SHARD_SAMPLES, progress=progress, manifest_extra={"sample_dataset": settings}
    )
    val_urls = _write_val({name: photos[name] for name in val_names}, val_dest, val_size)
    return {
        **summary,
        "created": True,
        "tiles": manifest["samples"],
        "shards": len(manifest["shards"]),
        "val_images": val_urls,
        "manifest": manifest,
    }
