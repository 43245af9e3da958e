"""Run a generator on image files or folders, tile by tile, into PNGs (`srcluster upscale MODEL INPUT... -o OUT`).

MODEL is a .safetensors/.pth path or URL, or a registry URI (`models:/name@alias`, `models:/name/version`). spandrel
recognises the architecture from the weights; when it cannot, the arch name, options and scale recorded in the registry
build it (`infer.upscaler`). Large images go through overlapping tiles (no seams for models whose receptive field fits
in the overlap); on CUDA the network runs under bf16 autocast. Users judge perceptual models by eye: this is
how they look at them.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from srcluster.data.images import ImageError, decode_rgb
from srcluster.data.remote import read_bytes
from srcluster.data.sources import list_image_files
from srcluster.errors import SrclusterError
from srcluster.infer.upscaler import load_upscaler, upscale_array


def output_path(out: Path, rel: str, single_file: bool) -> Path:
    if single_file and out.suffix.lower() == ".png":
        return out
    return out / (posixpath.splitext(rel)[0] + ".png")


def upscale_files(
    model_source: str,
    inputs: list[str],
    out: str | Path,
    *,
    tile: int = 512,
    overlap: int = 32,
    device: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Upscale every image of `inputs` (files or folders, any fsspec URL) into PNGs under `out`, keeping each
    folder's relative paths; `out` ending in .png names the output of a single input file."""
    if tile < 0 or overlap < 0:
        raise SrclusterError("--tile and --tile-overlap must be >= 0")
    files = [f for source in inputs for f in list_image_files(source)]
    if not files:
        raise SrclusterError(f"no images found in {', '.join(inputs)}")
    out = Path(out)
    single = len(files) == 1 and files[0].url == inputs[0]
    targets: dict[Path, str] = {}
    for image in files:
        target = output_path(out, image.rel, single)
        if target in targets:
            raise SrclusterError(
                f"{image.url} and {targets[target]} would both be written to {target}; "
                "upscale them into separate output folders"
            )
        targets[target] = image.url
    model = load_upscaler(model_source, device)
    written = []
    for image, target in tqdm(
        list(zip(files, targets, strict=True)), desc=f"upscaling x{model.scale}", unit="image", disable=not progress
    ):
        try:
            rgb = decode_rgb(read_bytes(image.url))
        except ImageError as exc:
            raise SrclusterError(f"{image.url}: {exc}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(upscale_array(model, rgb, tile, overlap)).save(target)
        written.append(target)
    return written
