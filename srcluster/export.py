"""A generator -> an ONNX file, verified by running it in onnxruntime against torch (traiNNer-redux's
convert_to_onnx.py and its `onnx:` options, without NVIDIA's modelopt).

It knows only networks and files: `srcluster export` loads the model through the one inference path
(`infer/upscaler.py`), a stage (`train/stage.py`) builds its generator from the checkpoint, and both pass the module
here. TorchScript export (redux's default, `dynamo: false`) caps the opset at 20 as redux does.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from srcluster.errors import SrclusterError

DType = Literal["fp32", "fp16", "bf16"]
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_TORCHSCRIPT_OPSET = 20  # torch's TorchScript exporter stops there (redux's MAX_LEGACY_OPSET)
MIN_OPSET = 9  # the oldest torch's exporter writes
INPUT_NAME, OUTPUT_NAME = "input", "output"  # redux's names, which vs-mlrt and chaiNNer's ONNX nodes expect
# the largest |onnxruntime - torch| accepted, per dtype (redux's atol: fp32 1e-3, fp16 1e-2)
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}
DYNAMIC_AXES = {0: "batch_size", 2: "height", 3: "width"}  # redux's axis names (channels stay fixed)


@dataclass(frozen=True)
class OnnxSettings:
    """redux's `onnx:` options that srcluster acts on (the schema's `onnx:` section and `srcluster export`'s flags)."""

    opset: int = 20
    dtype: DType = "fp32"
    shape: str = "1x3x32x32"  # redux's NxCxHxW: a number is a fixed axis, a letter a dynamic one
    slim: bool = False  # onnxslim (redux: `optimize`)
    verify: bool = True
    side: int = 32  # a dynamic height or width's size in the example input (redux: 16, 32 or 64 by architecture)

    def example_shape(self) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """(the traced input's shape, which axes are dynamic), as redux parses `onnx.shape`."""
        parts = [p.strip() for p in self.shape.lower().split("x")]
        if len(parts) != 4 or not all(p.isdigit() or p.isalpha() for p in parts) or parts[1] != "3":
            raise SrclusterError(
                f"onnx.shape: {self.shape!r} is not NxCxHxW with 3 channels (numbers fixed, letters dynamic, "
                "e.g. 1x3xHxW)"
            )
        defaults = (1, 3, self.side, self.side)
        dims = tuple(int(p) if p.isdigit() else d for p, d in zip(parts, defaults, strict=True))
        if 0 in dims:
            raise SrclusterError(f"onnx.shape: {self.shape!r} has an axis of size 0")
        return dims, tuple(not p.isdigit() for p in parts)


@dataclass(frozen=True)
class Exported:
    path: Path
    opset: int
    max_abs_error: float | None  # None: not verified (bf16: onnxruntime has no bf16 kernels for these ops)
    tolerance: float | None

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_error is None or self.tolerance is None or self.max_abs_error <= self.tolerance


def file_name(name: str, scale: int, settings: OnnxSettings) -> str:
    """`2x_span_g_NxCxHxW_dyn-NHW_fp32_op20_onnxslim.onnx`: what was exported (as redux names its files)."""
    dims, dynamic = settings.example_shape()
    shape = "x".join(label if free else str(d) for label, d, free in zip("NCHW", dims, dynamic, strict=True))
    free = "".join(label for label, f in zip("NCHW", dynamic, strict=True) if f)
    shape += f"_dyn-{free}" if free else "_static"
    stem = re.sub(r"[^\w.\-]+", "_", name).strip("_") or "model"
    slim = "_onnxslim" if settings.slim else ""
    return f"{scale}x_{stem}_{shape}_{settings.dtype}_op{effective_opset(settings)}{slim}.onnx"


def effective_opset(settings: OnnxSettings) -> int:
    if settings.opset < MIN_OPSET:
        raise SrclusterError(f"onnx.opset: {settings.opset} is older than the oldest torch exports ({MIN_OPSET})")
    return min(settings.opset, MAX_TORCHSCRIPT_OPSET)


def export_onnx(net: nn.Module, scale: int, out: Path, settings: OnnxSettings) -> Exported:
    """Write `net` (float (B, 3, h, w) -> (B, 3, h*scale, w*scale)) to `out` as ONNX and verify it in onnxruntime."""
    opset = effective_opset(settings)
    dtype = TORCH_DTYPES[settings.dtype]
    net = net.eval().to("cpu", dtype)
    dims, dynamic = settings.example_shape()
    example = torch.rand(*dims, generator=torch.Generator().manual_seed(0))
    axes = {axis: name for axis, name in DYNAMIC_AXES.items() if dynamic[axis]}
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # redux's default path (dynamo: false): torch calls it legacy and says so on every export; the user chose it
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net,
                (example.to(dtype),),
                str(out),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if axes else None,
            )
    except Exception as exc:  # an operator the exporter cannot write at this opset, a data-dependent shape, ...
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SrclusterError(f"ONNX export at opset {opset} failed: {message}") from None
    model = onnx.load(str(out))
    if settings.slim:
        import onnxslim  # only with --slim / onnx.optimize: it imports much of its own

        slimmed = onnxslim.slim(model)
        assert isinstance(slimmed, onnx.ModelProto)  # given a ModelProto and no output path, slim returns one
        model = slimmed
        onnx.save(model, str(out))
    onnx.checker.check_model(model)
    if not settings.verify or settings.dtype == "bf16":
        return Exported(out, opset, None, None)
    # dynamic axes: verify at another batch and size than the one traced, which a static graph could not run
    grow = {0: 1, 2: 8, 3: 4}
    shape = tuple(d + grow[axis] if dynamic[axis] else d for axis, d in enumerate(dims))
    error = max_abs_error(net, out, shape, dtype)
    return Exported(out, opset, error, TOLERANCE[settings.dtype])


def max_abs_error(net: nn.Module, path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """max |onnxruntime(x) - torch(x)| on one random input in [0, 1] (torch in float32, as the reference)."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net.float()(x).float().numpy()
    net.to(dtype)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: x.numpy().astype(np.float16 if dtype == torch.float16 else np.float32)}
    got = np.asarray(session.run([OUTPUT_NAME], feed)[0])
    if got.shape != expected.shape:
        raise SrclusterError(f"ONNX model {path} gives shape {got.shape} where torch gives {expected.shape}")
    return float(np.abs(got.astype(np.float32) - expected).max())
