"""Pretrained weight files (VGG19, VGG16, AlexNet, TOPIQ, ...): where each comes from and how a process finds it.

One table, `FILES`: a short name -> the file torchvision or pyiqa would download, its URL and its digest: a sha256 (the
full digest, or the prefix that the file name carries and torch.hub checks) or, for a file published only inside a git
repository at a pinned commit, its git blob SHA-1 (what `git ls-tree` shows). `locate(name)` looks, in order, at

1. the path the user gave (a loss or metric option), used as it is;
2. torch's hub cache, `$TORCH_HOME/hub/<folder>/<file>` (default `~/.cache/torch/hub`), where torchvision and pyiqa
   themselves keep these files;
3. the staged copy at `$SRCLUSTER_WEIGHTS_URL/<file>` (object storage, for nodes without internet; staged once by
   `srcluster weights pull --to`, carried to workers by `train.stage.worker_env`), copied into the hub cache;
4. the internet (torch.hub's downloader, with a progress bar), into the hub cache.

Every copy that lands in the cache is checked against the table's digest first. When none of these works, the error is
one line naming the file, the folder to put it in and the command that fetches it.

torch is imported inside the functions that need it: `train.stage.worker_env` (imported by the launchers) reads
`WEIGHTS_URL_ENV` from here without loading torch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings, is_s3

WEIGHTS_URL_ENV = "SRCLUSTER_WEIGHTS_URL"  # object-storage folder holding staged copies, e.g. s3://bucket/weights
PROBE_TIMEOUT_S = 20  # a node whose firewall drops packets fails after this, instead of hanging in the download


@dataclass(frozen=True)
class HubFile:
    """Exactly one of `sha256` and `git_blob_sha1` is set: the digest a copy must have to be used."""

    name: str  # what users type: `srcluster weights pull vgg19`
    file: str  # the file name torchvision / pyiqa use in the hub cache
    url: str
    sha256: str  # full hex digest, or the leading hex digits that the file name carries; "" with git_blob_sha1
    folder: str  # under torch.hub.get_dir(): torchvision's "checkpoints", pyiqa's "pyiqa"
    used_by: str  # which losses and metrics read it
    # for files that are published only as part of a git repository (no sha256 anywhere): the blob id of the file at
    # the pinned commit in the URL, a full 40-digit SHA-1 that `git ls-tree <commit> <path>` shows
    git_blob_sha1: str = ""

    def __post_init__(self) -> None:
        if bool(self.sha256) == bool(self.git_blob_sha1):
            raise ValueError(f"hub entry {self.name}: give exactly one of sha256 and git_blob_sha1")

    def digest(self) -> tuple[str, str]:
        """(kind, expected hex digits): ("sha256", ...) or ("git blob sha1", ...)."""
        return ("sha256", self.sha256.lower()) if self.sha256 else ("git blob sha1", self.git_blob_sha1.lower())


# the traiNNer-redux commit srcluster follows: files taken from its repository are pinned to it
REDUX_COMMIT = "686293190aca3e432a42b6155dbc94ea51c4bf9f"


def _torchvision(name: str, file: str, sha256_prefix: str, used_by: str) -> HubFile:
    """torchvision's ImageNet weights: the hex at the end of the file name is the sha256 prefix torch.hub checks."""
    return HubFile(name, file, f"https://download.pytorch.org/models/{file}", sha256_prefix, "checkpoints", used_by)


FILES: dict[str, HubFile] = {
    "vgg19": _torchvision("vgg19", "vgg19-dcbb9e9d.pth", "dcbb9e9d", "perceptualloss"),
    "vgg16": _torchvision("vgg16", "vgg16-397923af.pth", "397923af", "dists metric, distsloss, lpips net: vgg"),
    "alexnet": _torchvision("alexnet", "alexnet-owt-7be5be79.pth", "7be5be79", "lpips metric"),
    # TOPIQ's CFANet files, as traiNNer-redux (and pyiqa) download them into the hub cache's "pyiqa" folder: the whole
    # network, ResNet50 backbone included. Their names carry the sha256 prefix as BasicSR's publishing script writes it.
    "topiq": HubFile(
        "topiq",
        "cfanet_fr_kadid_res50-2c4cc61d.pth",
        "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/cfanet_fr_kadid_res50-2c4cc61d.pth",
        "2c4cc61d",
        "pyiqa",
        "topiq metric",
    ),
    "topiq_nr": HubFile(
        "topiq_nr",
        "cfanet_nr_koniq_res50-9a73138b.pth",
        "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/cfanet_nr_koniq_res50-9a73138b.pth",
        "9a73138b",
        "pyiqa",
        "topiq_nr metric",
    ),
    # RF5's ResNet50 trained on Danbooru2018's top 6000 tags, at the URL traiNNer-redux's perceptualanimeloss reads.
    # Its name carries the sha256 prefix by torch.hub's convention (no digest is published beside it).
    "danbooru_resnet50": HubFile(
        "danbooru_resnet50",
        "resnet50-13306192.pth",
        "https://github.com/RF5/danbooru-pretrained/releases/download/v0.1/resnet50-13306192.pth",
        "13306192",
        "checkpoints",
        "perceptualanimeloss",
    ),
    # Sketch-line extractor of traiNNer-redux's linedistillerloss, which ships it inside its repository (no release,
    # no sha256): fetched from the commit srcluster follows and checked against that commit's blob id.
    "line_distiller": HubFile(
        "line_distiller",
        "line_distiller_weights.pth",
        f"https://raw.githubusercontent.com/the-database/traiNNer-redux/{REDUX_COMMIT}/traiNNer/losses/"
        "line_distiller_weights.pth",
        "",
        "traiNNer-redux",
        "linedistillerloss",
        git_blob_sha1="84e2cce82b4af09f54db040698ec68aa60c9547f",
    ),
}


def entry(name: str) -> HubFile:
    if name not in FILES:
        raise SrclusterError(f"no pretrained weights named {name!r} (known: {', '.join(FILES)})")
    return FILES[name]


def hub_dir() -> Path:
    import torch.hub  # torch only when a file is looked up: see the module docstring

    return Path(torch.hub.get_dir())


def cache_path(name: str) -> Path:
    """Where torchvision / pyiqa keep `name`'s file: the place `locate` looks first and downloads to."""
    found = entry(name)
    return hub_dir() / found.folder / found.file


def staged_folder() -> str | None:
    """The object-storage folder with staged copies, from $SRCLUSTER_WEIGHTS_URL (None when unset)."""
    return os.environ.get(WEIGHTS_URL_ENV, "").rstrip("/") or None


def _hash_file(path: Path, digest: hashlib._Hash) -> str:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    return _hash_file(path, hashlib.sha256())


def git_blob_sha1_of(path: Path) -> str:
    """The id git gives the file's content: SHA-1 over a "blob <size>\\0" header, then the bytes."""
    digest = hashlib.sha1(usedforsecurity=False)  # git's object id, compared with a pinned one
    digest.update(b"blob %d\0" % path.stat().st_size)
    return _hash_file(path, digest)


DIGESTS = {"sha256": sha256_of, "git blob sha1": git_blob_sha1_of}


def check_digest(name: str, path: Path, origin: str) -> None:
    """`path` must be the file the table names (by whichever digest its entry carries); `origin` says where it came
    from, for the error."""
    found = entry(name)
    kind, expected = found.digest()
    actual = DIGESTS[kind](path)
    if not actual.startswith(expected):
        raise SrclusterError(
            f"{found.file} from {origin} has {kind} {actual[:16]}…, expected {expected[:16]}…: "
            "a truncated or different file; it was not used"
        )


def download(url: str, dest: Path) -> None:
    """Fetch `url` into `dest` with torch.hub's downloader (progress bar on stderr). The only network access here;
    tests replace it. A HEAD request with a timeout first: torch.hub's own request has none and would hang on a network
    that drops packets."""
    from torch.hub import download_url_to_file  # torch only when something is downloaded

    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "srcluster"})
    urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
    download_url_to_file(url, str(dest), hash_prefix=None, progress=True)


def _into_cache(name: str, origin: str, fill: Callable[[Path], object]) -> Path:
    """Run `fill(temporary path)`, check the digest, then move the file into the cache: the cache never holds a partial
    or wrong file, and ranks that fill it at the same time each move a whole file."""
    target = cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fill(tmp)
        check_digest(name, tmp, origin)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def fetch_staged(name: str, folder: str, settings: StorageSettings | None = None) -> Path | None:
    """Copy `name`'s staged file from `folder` (object storage) into the hub cache; None when it is not there."""
    url = f"{folder}/{entry(name).file}"
    settings = settings or StorageSettings.resolve()
    if is_s3(url):
        settings.check(url)  # an unreachable endpoint or a missing bucket is one line, not a botocore traceback
    fs, path = settings.filesystem(url)
    if not fs.exists(path):
        return None
    return _into_cache(name, url, lambda tmp: fs.get_file(path, str(tmp)))


def fetch(name: str) -> Path:
    """Download `name` into the hub cache (checked); network errors propagate as they are."""
    found = entry(name)
    return _into_cache(name, found.url, lambda tmp: download(found.url, tmp))


def fix_hint(name: str, option: str | None = None) -> str:
    found = entry(name)
    place = f"put {found.file} in {cache_path(name).parent}/ (set TORCH_HOME to use another cache folder)"
    if option:
        place += f" or give {option}"
    return (
        f"{place}, or run `srcluster weights pull {name}` on a machine with internet (add `--to s3://<bucket>/weights`"
        f" and set {WEIGHTS_URL_ENV}=s3://<bucket>/weights where nodes have none)"
    )


def locate(name: str, path: str | None = None, option: str | None = None) -> Path:
    """The local file with `name`'s weights, found as the module docstring says. `option` names the setting that takes
    a path (for the error message)."""
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise SrclusterError(f"{name} weights file {given} does not exist")
        return given
    cached = cache_path(name)
    if cached.is_file():
        return cached
    folder = staged_folder()
    if folder is not None:
        staged = fetch_staged(name, folder)
        if staged is not None:
            return staged
    found = entry(name)
    try:
        return fetch(name)
    except (OSError, http.client.HTTPException) as exc:  # offline, DNS, refused, timed out, HTTP errors, cut short
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        staged_note = f" (not staged at {folder} either)" if folder else ""
        raise SrclusterError(
            f"{name} weights {found.file} are not on this machine{staged_note} and could not be downloaded from "
            f"{found.url} ({reason}): {fix_hint(name, option)}"
        ) from None


def stage(name: str, folder: str, settings: StorageSettings) -> str:
    """Copy `name`'s cached file to `folder` in object storage (skipped when a copy of the same size is there);
    returns its URL."""
    local = cache_path(name)
    url = f"{folder.rstrip('/')}/{local.name}"
    fs, path = settings.filesystem(url)
    if fs.exists(path) and fs.size(path) == local.stat().st_size:
        return url
    fs.put_file(str(local), path)
    return url
