"""A self-contained HTML comparison page: per image, a before/after slider between any two sources, a grid of all of
them, synchronized zoom and pan (nearest-neighbour pixels from 100 % up), keyboard shortcuts, a timeline scrubber over a
stage's checkpoints, and each source's metrics beside it.

Pure: uint8 RGB arrays and metric values in, one HTML file out (the viewer's JS/CSS inlined from `viewer.js` /
`viewer.css` beside this module; no network, no server). Each picture is cut into PNG tiles that the page decodes only
when they are on screen, so 50 images x 10 sources of large validation images stay usable.

Where the images live (`ComparePage.write(embed=...)`):

* embedded (default up to `EMBED_LIMIT` bytes of tiles): one file that works from file:// and inside MLflow's artifact
  viewer. MLflow shows an HTML artifact as a blob: URL in an iframe sandboxed to `allow-scripts` (an opaque origin, no
  base URL), so a page logged to MLflow must carry its images itself and must not touch storage APIs; the viewer uses
  neither.
* beside the page (larger sets): tiles in `<page>_files/`, loaded by relative URL; this works from file:// (keep the
  folder next to the page) but not inside MLflow's viewer.

A written page reads back as a `ComparePage` (`ComparePage.read`, or `from_data(read_data(html))`) with the same
sources, pictures (their PNG tiles as written) and metrics, so a resumed training stage goes on growing its page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 512  # picture pixels per tile side: a zoomed-in view decodes a few tiles, a whole one not too many
EMBED_LIMIT = 96 * 2**20  # bytes of PNG tiles a single-file page carries before its images go beside it
# a training stage's page: `<folder>/<name>` among its MLflow run's artifacts, rewritten at every validation
STAGE_PAGE_FOLDER, STAGE_PAGE_NAME = "compare", "validation.html"
STAGE_PAGE_LIMIT = 32 * 2**20  # its tiles' bytes: the whole page is uploaded again at every validation
DATA_ELEMENT_ID = "srcluster-page"  # the <script type="application/json"> element holding the page's data


@dataclass(frozen=True)
class Source:
    """One column of the comparison: a model, a checkpoint or a built-in (`bicubic`, `lr`, `hr`).

    Checkpoints of one stage share a `group` and differ by `step` (the iteration): the page's timeline scrubs through
    them in step order."""

    name: str
    group: str = ""
    step: int | None = None
    note: str = ""


@dataclass
class Picture:
    """One source's output for one image, as PNG tiles of `TILE` picture pixels (row-major), and its metrics."""

    width: int
    height: int
    tiles: list[list[bytes]]
    metrics: dict[str, float]

    @property
    def nbytes(self) -> int:
        return sum(len(tile) for row in self.tiles for tile in row)


def encode_tiles(rgb: np.ndarray, tile: int = TILE) -> list[list[bytes]]:
    """uint8 H x W x 3 (or H x W) -> PNG bytes of each `tile` x `tile` block, row by row."""
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] not in (1, 3, 4)):
        raise ValueError(f"a picture must be uint8 H x W x 3, got {rgb.dtype} {rgb.shape}")
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[..., 0]
    rows = []
    for top in range(0, rgb.shape[0], tile):
        row = []
        for left in range(0, rgb.shape[1], tile):
            buffer = io.BytesIO()
            # compress_level 3: most of level 9's size at a fraction of its time (pages are rewritten every validation)
            Image.fromarray(np.ascontiguousarray(rgb[top : top + tile, left : left + tile])).save(
                buffer, "PNG", compress_level=3
            )
            row.append(buffer.getvalue())
        rows.append(row)
    return rows


def _finite(value: float) -> float | str:
    """JSON has no inf/nan: PSNR of identical images is +inf (BasicSR's answer), kept as a string the page prints."""
    return value if math.isfinite(value) else str(value)


@dataclass
class ComparePage:
    """The images, sources and pictures of one comparison page; `write` renders it.

    `metrics`: name -> "higher" | "lower" (which way is better), in the order the page lists them."""

    title: str
    metrics: dict[str, str] = field(default_factory=dict)
    note: str = ""
    images: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (height, width) shown
    sources: list[Source] = field(default_factory=list)
    pictures: dict[tuple[str, str], Picture] = field(default_factory=dict)  # (image, source name) -> picture
    left_out: list[str] = field(default_factory=list)  # what `fit` dropped, said on the page

    def add(self, image: str, source: Source, rgb: np.ndarray, metrics: dict[str, float] | None = None) -> None:
        """Add `source`'s picture of `image` (uint8 H x W x 3). Pictures of one image may differ in size (`lr` is
        smaller): the page stretches each to the image's largest picture."""
        if source.name not in {s.name for s in self.sources}:
            self.sources.append(source)
        height, width = rgb.shape[:2]
        shown = self.images.get(image, (0, 0))
        self.images[image] = (max(shown[0], height), max(shown[1], width))
        self.pictures[(image, source.name)] = Picture(width, height, encode_tiles(rgb), dict(metrics or {}))

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pictures.values())

    def means(self) -> dict[str, dict[str, float]]:
        """source -> metric -> mean over the images that have it (finite values only)."""
        out: dict[str, dict[str, float]] = {}
        for source in self.sources:
            for metric in self.metrics:
                values = [
                    p.metrics[metric]
                    for (_, name), p in self.pictures.items()
                    if name == source.name and metric in p.metrics and math.isfinite(p.metrics[metric])
                ]
                if values:
                    out.setdefault(source.name, {})[metric] = math.fsum(values) / len(values)
        return out

    def drop_source(self, name: str) -> None:
        self.sources = [s for s in self.sources if s.name != name]
        self.pictures = {key: p for key, p in self.pictures.items() if key[1] != name}

    def drop_checkpoints(self, group: str, after: int) -> list[str]:
        """Drop `group`'s checkpoints with a step after `after` (a resumed stage redoes them); returns their names."""
        dropped = [s.name for s in self.sources if s.group == group and s.step is not None and s.step > after]
        for name in dropped:
            self.drop_source(name)
        return dropped

    def fit(self, limit: int = EMBED_LIMIT) -> None:
        """Thin long timelines until the tiles fit in `limit` bytes (a page logged to MLflow must embed its images):
        every other middle checkpoint of the longest group goes, the first and last stay; the page says what went."""
        while self.nbytes > limit:
            groups: dict[str, list[Source]] = {}
            for s in self.sources:
                if s.group and s.step is not None:
                    groups.setdefault(s.group, []).append(s)
            longest = max(groups.values(), key=len, default=[])
            if len(longest) <= 2:
                return
            ordered = sorted(longest, key=lambda s: s.step or 0)
            for s in ordered[1:-1:2]:
                self.drop_source(s.name)
                self.left_out.append(s.name)

    def data(self, tile_url: Callable[[int, int, int, int], str] | None = None) -> dict:
        """The page's data as the viewer reads it. `tile_url(image, source, row, col)`: where a tile is (beside the
        page); None embeds tiles as data: URLs."""
        images = []
        for index, (name, (height, width)) in enumerate(self.images.items()):
            pictures = {}
            for s_index, source in enumerate(self.sources):
                picture = self.pictures.get((name, source.name))
                if picture is None:
                    continue
                tiles = [
                    [
                        tile_url(index, s_index, r, c)
                        if tile_url
                        else "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                        for c, data in enumerate(row)
                    ]
                    for r, row in enumerate(picture.tiles)
                ]
                pictures[source.name] = {
                    "width": picture.width,
                    "height": picture.height,
                    "tiles": tiles,
                    "metrics": {k: _finite(v) for k, v in picture.metrics.items()},
                }
            images.append({"name": name, "width": width, "height": height, "pictures": pictures})
        return {
            "title": self.title,
            "note": self.note,
            "tile": TILE,
            "metrics": [{"name": m, "better": b} for m, b in self.metrics.items()],
            "sources": [{"name": s.name, "group": s.group, "step": s.step, "note": s.note} for s in self.sources],
            "images": images,
            "means": {s: {k: _finite(v) for k, v in m.items()} for s, m in self.means().items()},
            "left_out": self.left_out,
        }

    @classmethod
    def from_data(cls, data: dict, folder: Path | None = None) -> ComparePage:
        """The page whose `data()` this is (as `read_data` returns it): tiles kept as their PNG bytes, from data: URLs
        or, for tiles written beside the page, from files relative to `folder` (the page's own folder)."""
        page = cls(data["title"], {m["name"]: m["better"] for m in data["metrics"]}, note=data["note"])
        page.sources = [Source(s["name"], s["group"], s["step"], s["note"]) for s in data["sources"]]
        page.left_out = list(data["left_out"])
        for image in data["images"]:
            page.images[image["name"]] = (image["height"], image["width"])
            for source, picture in image["pictures"].items():
                page.pictures[(image["name"], source)] = Picture(
                    picture["width"],
                    picture["height"],
                    [[_tile_bytes(url, folder) for url in row] for row in picture["tiles"]],
                    {k: float(v) for k, v in picture["metrics"].items()},  # float("inf"): see `_finite`
                )
        return page

    @classmethod
    def read(cls, path: str | Path) -> ComparePage:
        """The page written to `path` by `write` (tiles embedded or beside it), ready to grow and be written again."""
        path = Path(path)
        return cls.from_data(read_data(path.read_text(encoding="utf-8")), path.parent)

    def _write_tiles(self, folder: Path) -> Callable[[int, int, int, int], str]:
        """Every tile as `folder/<image>/<source>/<row>_<col>.png` (indices: names may hold any character); returns
        the relative URL of a tile."""
        names = list(self.images)
        for (image, source_name), picture in self.pictures.items():
            i = names.index(image)
            s = next(k for k, s in enumerate(self.sources) if s.name == source_name)
            for r, row in enumerate(picture.tiles):
                for c, data in enumerate(row):
                    tile = folder / str(i) / str(s) / f"{r}_{c}.png"
                    tile.parent.mkdir(parents=True, exist_ok=True)
                    tile.write_bytes(data)
        return lambda i, s, r, c: f"{folder.name}/{i}/{s}/{r}_{c}.png"

    def write(self, path: str | Path, embed: bool | None = None) -> Path:
        """Write the page to `path`; its tiles are embedded, or (`embed=False`, or None and over `EMBED_LIMIT`) written
        to `<stem>_files/` beside it. Returns the page's path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if embed is None:
            embed = self.nbytes <= EMBED_LIMIT
        tile_url = None if embed else self._write_tiles(path.with_name(f"{path.stem}_files"))
        path.write_text(render_html(self.data(tile_url)), encoding="utf-8")
        return path


def _tile_bytes(url: str, folder: Path | None) -> bytes:
    """A tile's PNG bytes from its URL in a page's data: embedded (data:) or relative to the page's folder."""
    prefix = "data:image/png;base64,"
    if url.startswith(prefix):
        return base64.b64decode(url.removeprefix(prefix), validate=True)
    if folder is None:
        raise ValueError(f"tile {url!r} is beside its page, and the page's folder was not given")
    tile = (folder / url).resolve()
    if not tile.is_relative_to(folder.resolve()):  # a page's tiles are in its own `<stem>_files/`, never above it
        raise ValueError(f"tile {url!r} is outside the page's folder {folder}")
    return tile.read_bytes()


def _asset(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict) -> str:
    """The page: the viewer's markup, CSS and JS inlined, `data` as JSON in a script element ("</" escaped so no
    value can close it)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    values = {
        "title": html.escape(data["title"]),
        "css": _asset("viewer.css"),
        "data_id": DATA_ELEMENT_ID,
        "js": _asset("viewer.js"),
        "data": payload,
    }
    # one pass over the template: a value that happens to contain "{{js}}" is never substituted itself
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _asset("viewer.html"))


def read_data(text: str) -> dict:
    """The data of a page written by `ComparePage.write` (tests, and tools that extend a page)."""
    start_tag = f'<script id="{DATA_ELEMENT_ID}" type="application/json">'
    start = text.index(start_tag) + len(start_tag)
    end = text.index("</script>", start)
    return json.loads(text[start:end])  # "<\\/" is JSON's own escape of "/"
