"""`srcluster export MODEL --onnx [--opset N] [--fp16|--bf16] [--dynamic] [--slim] [-o OUT]`: a generator from a path,
URL or `models:/` URI as an ONNX file, checked in onnxruntime against torch (the max abs error printed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from srcluster.cli.output import console, warn
from srcluster.errors import SrclusterError


def cmd_export(args: argparse.Namespace) -> int:
    import torch  # the command boundary: torch, onnx and onnxruntime load only when an export runs

    from srcluster.export import OnnxSettings, export_onnx, file_name
    from srcluster.infer.upscaler import load_upscaler

    if not args.onnx:
        raise SrclusterError("export: name a format (--onnx); safetensors is what training already writes")
    settings = OnnxSettings(
        opset=args.opset,
        dtype="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        shape=args.shape or ("Nx3xHxW" if args.dynamic else f"1x3x{args.size}x{args.size}"),
        slim=args.slim,
        side=args.size,
    )
    model = load_upscaler(args.model, "cpu")
    net = model.net.model if hasattr(model.net, "model") else model.net  # spandrel's descriptor holds the module
    if not isinstance(net, torch.nn.Module):
        net = as_module(net)
    name = args.model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors").removesuffix(".pth")
    out = Path(args.output) if args.output else Path(file_name(f"{model.name}_{name}", model.scale, settings))
    if out.is_dir():
        out = out / file_name(f"{model.name}_{name}", model.scale, settings)
    result = export_onnx(net, model.scale, out, settings)
    if args.opset != result.opset:
        warn([f"--opset {args.opset}: TorchScript export writes at most opset {result.opset}; used {result.opset}"])
    if result.max_abs_error is None:
        verified = "not verified (onnxruntime runs no bf16 convolutions)"
    else:
        verified = f"max abs error vs torch {result.max_abs_error:.2e} (tolerance {result.tolerance:g})"
    console.print(f"{result.path}: opset {result.opset}, {settings.dtype}, {verified}", highlight=False, soft_wrap=True)
    if not result.within_tolerance:
        raise SrclusterError(f"{result.path}: onnxruntime differs from torch by {result.max_abs_error:.2e}")
    return 0


def as_module(fn):
    """A module around a callable generator (a registry model built from its recorded arch), for the exporter."""
    import torch

    class Wrapped(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return Wrapped()


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "export", help="write a generator (path, URL or models:/ URI) as ONNX, verified in onnxruntime"
    )
    e.add_argument("model", help="weights file, URL or models:/NAME/VERSION")
    e.add_argument("--onnx", action="store_true", help="export to ONNX (the one format for now)")
    e.add_argument("--opset", type=int, default=20, help="ONNX opset (TorchScript export: at most 20; default 20)")
    precision = e.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="half-precision graph (verified within 1e-2)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 graph (not verified: onnxruntime lacks it)")
    e.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (default: static shape)")
    e.add_argument("--shape", help="redux's onnx.shape instead: NxCxHxW, numbers fixed, letters dynamic (1x3xHxW)")
    e.add_argument("--slim", action="store_true", help="simplify the graph with onnxslim")
    e.add_argument("--size", type=int, default=32, help="height and width of the example input (default 32)")
    e.add_argument("-o", "--output", help="file or folder to write (default: a descriptive name here)")
    e.set_defaults(fn=cmd_export)
