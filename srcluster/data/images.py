"""Decoding, converting, encoding and tiling images: the pixel-level code shared by the shard builder and the stream.

Every image leaves this module as 8-bit RGB, whatever it was stored as:

    gray            -> three equal channels
    16-bit          -> 8-bit by rounding (v * 255 / 65535), not by dropping the low byte
    alpha (RGBA/LA) -> dropped (as traiNNer-redux's cv2 reading does), or composited on white or black (builder option)
    float / other   -> rejected with a reason, never guessed

Decoding uses OpenCV (per 512 px photo tile on one core: lossless WebP 3.2 ms, PNG 5.7 ms; PIL takes 5.4 and 6.5 ms),
with PIL as the fallback for the few files OpenCV cannot read. Before any pixel is decoded the header is read (PIL,
lazily; a few bytes for WebP): an image claiming more than MAX_PIXELS is refused, so a crafted header cannot make a
worker allocate gigabytes, and the EXIF orientation is applied (as a view: rotating costs nothing), so a camera JPEG
is used the way it is shown, at shard build and when streaming alike.

Storage is lossless WebP by default: it decodes 1.75x faster than PNG and is ~20% smaller (measurements in
shards/README.md); PNG remains available.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from typing import Literal

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
StoreFormat = Literal["webp", "png"]
AlphaPolicy = Literal["drop", "white", "black"]
STORE_FORMATS: tuple[StoreFormat, ...] = ("webp", "png")
ALPHA_POLICIES: tuple[AlphaPolicy, ...] = ("drop", "white", "black")
# libwebp's fastest lossless effort: it also decodes fastest, at ~15% more bytes than method 4 and an 8x faster build.
WEBP_METHOD = 0

cv2.setNumThreads(1)  # one image per worker process at a time: OpenCV's own threads would only oversubscribe cores
# A bad image is reported once, with its path, by whoever reads it; OpenCV's own warning line would only repeat it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# Refused from the header: PIL's own bound for opening an image (~179 MP, e.g. 16000 x 11000), applied to every
# decoder. PIL's warning for half that is replaced by this check. (PIL's setting is None only where a program turned
# its check off; this bound then stays at PIL's default.)
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 1024 * 1024 * 1024 // 4 // 3)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image that cannot be used; the message is the reason shown in reports."""


def decode(data: bytes) -> tuple[np.ndarray, bool]:
    """(pixels as stored, upright: H x W [x C], uint8 or uint16, possibly a view; whether the channel order is BGR)
    for any supported format. Images whose header claims more than MAX_PIXELS are refused before decoding."""
    if not data:
        raise ImageError("empty file")
    size, orientation = header(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(
            f"header claims {size[0]}x{size[1]} pixels, more than the limit of {MAX_PIXELS} (refused before decoding)"
        )
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # never applies EXIF orientation
    except cv2.error:  # OpenCV asserts on some malformed headers instead of returning None; PIL gets its say
        array = None
    bgr = array is not None
    if array is None:
        try:
            with Image.open(io.BytesIO(data)) as img:
                array = _pil_pixels(img)
        except ImageError:
            raise
        except Exception as exc:  # untrusted bytes: PIL raises many kinds
            raise ImageError(f"not a decodable image ({exc.__class__.__name__}: {exc})") from None
    return orient(array, orientation), bgr


def header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) or None when no header is recognised, EXIF orientation 1-8) without decoding pixels."""
    if (webp := _plain_webp_size(data)) is not None:
        return webp, 1
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
            return img.size, _orientation(img)
    except Image.DecompressionBombError as exc:  # PIL's check of the same bound, made before it hands out the size
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageError(
            f"header claims {claimed.group(1) if claimed else 'more'} pixels, more than the limit of "
            f"{MAX_PIXELS} (refused before decoding)"
        ) from None
    except Exception:  # not an image PIL knows: OpenCV may still read it, and has its own pixel bound
        return None, 1


def _plain_webp_size(data: bytes) -> tuple[int, int] | None:
    """The size of a WebP without an extended header (so without EXIF), the kind shards hold, read from its first
    30 bytes: PIL's WebP open parses the whole container (~0.2 ms, 5% of decoding a tile)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None  # VP8X (extended: EXIF, alpha, animation): PIL reads it


def _orientation(img: Image.Image) -> int:
    try:
        if img.format in ("TIFF", "MPO"):
            value = img.getexif().get(ORIENTATION_TAG, 1)
        elif raw := img.info.get("exif"):  # JPEG APP1, WebP EXIF chunk, PNG eXIf before the pixels: no decoding
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(ORIENTATION_TAG, 1)
        else:
            return 1
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """`pixels` turned upright for an EXIF orientation (as PIL's ImageOps.exif_transpose), as a view."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.swapaxes(0, 1)
    if orientation in (2, 3, 6, 7):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4, 7, 8):
        pixels = pixels[::-1]
    return pixels


def _pil_pixels(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)  # native byte order: I;16B arrives big-endian
    if img.mode == "I":  # 32-bit integer: how PIL opens some 16-bit files; values beyond 16 bits are not an image
        pixels = np.asarray(img)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ImageError("32-bit integer pixels outside the 16-bit range")
        return pixels.astype(np.uint16)
    if img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB"))
    raise ImageError(f"unsupported pixel mode {img.mode}")


def to_rgb8(pixels: np.ndarray, bgr: bool, alpha: AlphaPolicy = "drop") -> np.ndarray:
    """H x W x 3 uint8 RGB from what `decode` returned (or any window of it). May return a view."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"unsupported image shape {pixels.shape}")
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ImageError(f"unsupported sample type {pixels.dtype} (expected 8- or 16-bit integers)")
    channels = pixels.shape[2]
    color = pixels[..., :1] if channels <= 2 else pixels[..., :3]
    if bgr and channels >= 3:
        color = color[..., ::-1]
    if alpha != "drop" and channels in (2, 4):
        a = pixels[..., -1:].astype(np.uint16)
        background = 255 if alpha == "white" else 0
        color = ((color.astype(np.uint16) * a + background * (255 - a) + 127) // 255).astype(np.uint8)
    if color.shape[2] == 1:
        color = np.broadcast_to(color, (*color.shape[:2], 3))
    return color


def decode_rgb(data: bytes, alpha: AlphaPolicy = "drop") -> np.ndarray:
    """A whole encoded image as a contiguous H x W x 3 uint8 RGB array."""
    pixels, bgr = decode(data)
    return np.ascontiguousarray(to_rgb8(pixels, bgr, alpha))


def encode(rgb: np.ndarray, fmt: StoreFormat) -> bytes:
    """Lossless encoding of an H x W x 3 uint8 RGB array."""
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "webp":
        image.save(out, format="WEBP", lossless=True, quality=50, method=WEBP_METHOD)
    elif fmt == "png":
        image.save(out, format="PNG")
    else:
        raise ValueError(f"unknown storage format {fmt!r}; expected one of {STORE_FORMATS}")
    return out.getvalue()


# --- tiling -------------------------------------------------------------------------------------------------------


def _starts(length: int, tile: int, stride: int, min_size: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one axis."""
    if length < min_size:
        return []
    if length <= tile:
        return [(0, length)]
    starts = list(range(0, length - tile + 1, stride))
    remainder = length - (starts[-1] + tile)
    # A strip at the far edge too narrow for a tile of its own gets a tile flush with the edge (overlapping the one
    # before, as basicsr's extract_subimages does) when it is at least `min_size` wide; a narrower one is dropped.
    if remainder and remainder >= min_size:
        starts.append(length - tile)
    return [(start, tile) for start in starts]


def tile_boxes(
    height: int, width: int, tile: int | None, stride: int | None = None, min_size: int = 1
) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of every tile of a height x width image, row by row.

    Without `tile` the whole image is one box. Sides shorter than `tile` (but at least `min_size`) stay whole, so an
    image between `min_size` and `tile` is one smaller box; an image with a side under `min_size` gives none.
    """
    if tile is None:
        return [(0, 0, height, width)] if min(height, width) >= min_size else []
    stride = stride or tile
    rows, cols = _starts(height, tile, stride, min_size), _starts(width, tile, stride, min_size)
    return [(y, x, h, w) for y, h in rows for x, w in cols]


def iter_tiles(
    rgb: np.ndarray, tile: int | None, stride: int | None = None, min_size: int = 1
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    for box in tile_boxes(rgb.shape[0], rgb.shape[1], tile, stride, min_size):
        y, x, h, w = box
        yield box, rgb[y : y + h, x : x + w]
