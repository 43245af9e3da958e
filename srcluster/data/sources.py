"""Finding images in folders (any fsspec URL) and pairing HR with LR images, for the builder and the stream alike.

Pairing follows traiNNer-redux's paired datasets (`dataroot_gt` / `dataroot_lq`): an HR image and its LR partner have
the same path relative to their folders up to the extension, which may differ (`a/0001.png` <-> `a/0001.webp`).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass

from srcluster.data.images import IMAGE_EXTS
from srcluster.data.remote import is_remote, reader_filesystem, retrying
from srcluster.errors import StorageError

SKIPPED_DIRS = ("_tmp", "_build")  # a shard set's work folders


@dataclass(frozen=True)
class ImageFile:
    url: str  # what to open: the folder URL joined with `rel`
    rel: str  # path below its folder, '/'-separated, with extension
    size: int = 0
    modified: str = ""  # modification time as the storage reports it ('' when unknown)

    @property
    def stem(self) -> str:
        """`rel` without its extension: the name that pairs HR with LR and names validation images."""
        return posixpath.splitext(self.rel)[0]


@dataclass(frozen=True)
class Pair:
    hr: ImageFile
    lr: ImageFile | None = None


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _modified(info: dict) -> str:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified", "")))
    return str(value)


def list_image_files(url: str) -> list[ImageFile]:
    """Every image under the folder `url`, recursively, sorted by relative path; or `url` itself if it is an image.

    Hidden files and folders (a leading dot) and shard-set work folders are left out.
    """
    fs, root = reader_filesystem(url)
    root = root.rstrip("/")
    call = (lambda f: retrying(f, f"listing {url}")) if is_remote(fs) else (lambda f: f())
    if url.lower().endswith(IMAGE_EXTS):
        try:
            info = call(lambda: fs.info(root))
        except FileNotFoundError:
            raise StorageError(f"image {url} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {url}: {exc}") from None
        return [ImageFile(url, posixpath.basename(root), int(info.get("size") or 0), _modified(info))]
    try:
        found = call(lambda: fs.find(root, detail=True))
    except OSError as exc:
        raise StorageError(f"cannot list {url}: {exc}") from None
    files = []
    for path, info in found.items():
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)
        parts = rel.split("/")
        if any(part.startswith(".") for part in parts) or parts[0] in SKIPPED_DIRS:
            continue
        if posixpath.splitext(rel)[1].lower() in IMAGE_EXTS:
            files.append(ImageFile(join_url(url, rel), rel, int(info.get("size") or 0), _modified(info)))
    return sorted(files, key=lambda f: f.rel)


def list_images(url: str) -> list[tuple[str, str]]:
    """(name, URL) of every image under `url`; the name is the relative path without extension."""
    return [(f.stem, f.url) for f in list_image_files(url)]


def pair_files(hr: list[ImageFile], lr: list[ImageFile] | None) -> tuple[list[Pair], list[tuple[str, str]], list[str]]:
    """(pairs, problems, LR files without an HR partner); a problem is (HR url, reason), and its HR is left out.

    Without `lr` every HR file is a pair of its own; problems are then only names that clash once extensions go.
    """
    by_stem: dict[str, list[ImageFile]] = defaultdict(list)
    for image in lr or []:
        by_stem[image.stem].append(image)
    pairs: list[Pair] = []
    problems: list[tuple[str, str]] = []
    first_with_stem: dict[str, ImageFile] = {}
    for image in hr:
        if (other := first_with_stem.setdefault(image.stem, image)) is not image:
            problems.append((image.url, f"same name as {other.rel} once the extension is removed"))
            continue
        if lr is None:
            pairs.append(Pair(image))
            continue
        partners = by_stem.get(image.stem, [])
        if not partners:
            problems.append((image.url, f"no LR partner {image.stem}.* in the LR folder"))
        elif len(partners) > 1:
            problems.append((image.url, f"several LR partners: {', '.join(p.rel for p in partners)}"))
        else:
            pairs.append(Pair(image, partners[0]))
    orphans = [image.url for stem, images in by_stem.items() if stem not in first_with_stem for image in images]
    return pairs, problems, sorted(orphans)
