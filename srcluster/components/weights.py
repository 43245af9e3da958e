"""Generator weights in and out: pretrain loading (strict or not), safetensors export, training-state checkpoints.

Everything read from a path, URL or checkpoint is loaded as safetensors or with `torch.load(weights_only=True)`, so a
checkpoint from object storage can never run code.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    source: str
    loaded: int
    skipped: list[str] = field(default_factory=list)  # "name: why"
    missing: list[str] = field(default_factory=list)  # model tensors the pretrain did not have

    def summary(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source}"
        if self.skipped:
            text += (
                f"; skipped {len(self.skipped)}: {', '.join(self.skipped[:6])}{' …' if len(self.skipped) > 6 else ''}"
            )
        if self.missing:
            text += f"; {len(self.missing)} left at their initial values"
        return text


def read_state_dict(
    source: str, param_key: str | None = None, *, settings: StorageSettings | None = None
) -> dict[str, torch.Tensor]:
    """A state dict from a local path or any fsspec URL; `.safetensors` or a `.pth` (params_ema/params/... keys).
    Registry URIs (`models:/...`) are resolved to a file one layer up (`tracking.models.weights_file`). `settings`: the
    process's storage settings, resolved once at its entry point (default: from the environment)."""
    if source.startswith("models:/"):
        raise SrclusterError(f"pretrain {source}: resolve registry URIs with tracking.models.weights_file first")
    fs, path = (settings or StorageSettings.resolve()).filesystem(source)
    try:
        data = cast(bytes, fs.cat_file(path))  # fsspec is untyped; cat_file reads in binary mode
    except FileNotFoundError:
        raise SrclusterError(f"pretrain {source} does not exist") from None
    if path.endswith(".safetensors"):
        return load_safetensors(data)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, or not a torch file at all
        raise SrclusterError(
            f"pretrain {source} is not a weights-only torch file or safetensors ({exc.__class__.__name__})"
        ) from None
    if param_key:
        if param_key not in state:
            raise SrclusterError(f"pretrain {source} has no key {param_key!r} (keys: {', '.join(map(str, state))})")
        return state[param_key]
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def load_pretrain(
    net: nn.Module,
    source: str,
    *,
    param_key: str | None = None,
    strict: bool = True,
    label: str | None = None,
    settings: StorageSettings | None = None,
    strict_key: str = "strict_load_g",
) -> LoadReport:
    """strict: every tensor must match in name and shape. Not strict: load what matches, report the rest. `label` names
    the pretrain in reports and errors as the user gave it (a `models:/` URI resolved to `source`, a local file);
    `strict_key` the job option that asked for strict loading (strict_load_g, strict_load_d).

    Not strict is how a 2x pretrain starts a 4x model: everything but the upsampler carries over.
    """
    incoming = {k.removeprefix("module."): v for k, v in read_state_dict(source, param_key, settings=settings).items()}
    own = net.state_dict()
    label = label or source
    report = LoadReport(label, 0)
    usable = {}
    for name, tensor in incoming.items():
        if name not in own:
            report.skipped.append(f"{name} (not in model)")
        elif own[name].shape != tensor.shape:
            report.skipped.append(f"{name} (shape {tuple(tensor.shape)} vs {tuple(own[name].shape)})")
        else:
            usable[name] = tensor
    report.missing = [name for name in own if name not in usable]
    if strict and (report.skipped or report.missing):
        problems = report.skipped + [f"{name} (missing in pretrain)" for name in report.missing]
        raise SrclusterError(
            f"{strict_key}: pretrain {label} does not match the model: {'; '.join(problems[:10])}"
            f"{' …' if len(problems) > 10 else ''} (set path.{strict_key}: false to load what matches)"
        )
    net.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


# safetensors header metadata naming the generator, for the families spandrel does not recognise from their weights
# (the hand-written ones, resselt's): `srcluster upscale model.safetensors` builds them from it
ARCH_KEY, SCALE_KEY, OPTIONS_KEY = "srcluster_arch", "srcluster_scale", "srcluster_options"


def generator_metadata(arch: str, scale: int, options: dict[str, Any]) -> dict[str, str]:
    return {ARCH_KEY: arch, SCALE_KEY: str(scale), OPTIONS_KEY: json.dumps(options, sort_keys=True)}


def export_generator(net: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save a plain state dict as safetensors (spandrel's ModelLoader recognises most architectures from it), with
    `generator_metadata` in its header so any srcluster generator loads by path."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def read_generator_metadata(source: str, settings: StorageSettings | None = None) -> tuple[str, int, dict] | None:
    """(arch, scale, options) from a safetensors file's header written by `export_generator`, or None (another
    format, or a file without them). Reads only the header (its length, then its JSON), from a path or any URL."""
    if not source.endswith(".safetensors"):
        return None
    fs, path = (settings or StorageSettings.resolve()).filesystem(source)
    with fs.open(path, "rb") as file:
        size = int.from_bytes(cast(bytes, file.read(8)), "little")  # the format: u64 header length, then its JSON
        header = json.loads(file.read(size)) if 0 < size < 100 << 20 else {}
    meta = header.get("__metadata__") or {}
    if ARCH_KEY not in meta:
        return None
    return meta[ARCH_KEY], int(meta[SCALE_KEY]), json.loads(meta.get(OPTIONS_KEY, "{}"))
