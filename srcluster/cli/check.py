"""`srcluster check FILE... [--build] [--json]`: validate job files without running them.

One file prints the job resolved (defaults filled in), its effective batch, the data rate one GPU needs and the loader
workers that make it (`train.specs.size_data`), and its warnings; a mistake is the one error line of any command.
Several files (a folder of templates, say) print one line each and a summary, in one process.
`--build` also builds G (and D, with a GAN loss) at the job's scale and runs one forward pass on a small input. Datasets
are not touched: a job checks on a machine that cannot reach its data (`train` checks the URLs before it starts).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from rich.markup import escape

from srcluster.cli.output import console, warn
from srcluster.config import Job, load_job
from srcluster.data.spec import MEASURED_TILE, REFERENCE_LQ, STEP_RATES, DataSizing
from srcluster.errors import SrclusterError
from srcluster.train.specs import size_data

# the LR side of --build's forward pass, as traiNNer-redux's convert_to_onnx.py sizes its example input: 16, or the
# 32 / 64 / 96 its arch_info lists for architectures whose windows or downsamplings need more (spandrel's window archs
# pad to their window themselves)
BUILD_LR_SIDE = 16
BUILD_LR_SIDES = {
    **dict.fromkeys(("dwt", "emt", "hit_srf", "realcugan", "escrealm", "escrealm_xl", "srformerv2"), 32),
    **dict.fromkeys(("cascadedgaze", "hit_lmlt", "hit_sir", "hit_sng", "lmlt_base", "lmlt_large", "lmlt_tiny"), 64),
    **dict.fromkeys(("metaflexnet", "scunet_aaf6aa", "swin2sr_l", "swin2sr_m", "swin2sr_s", "sst_large"), 64),
    "sst_large_plus": 96,
}


@dataclass
class FileCheck:
    """One file's outcome: `error` is the one line a user reads (None: it passed)."""

    file: str
    error: str | None = None  # the first mistake, and how many more `errors` holds
    errors: list[str] = field(default_factory=list)  # every mistake, one line each
    warnings: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)  # "network_g: span 1x3x32x32 -> 1x3x64x64"

    def fail(self, message: str) -> None:
        self.errors = [line for line in message.splitlines() if line.strip()]
        more = len(self.errors) - 1
        self.error = self.errors[0] + (f" (and {more} more)" if more else "")

    @property
    def ok(self) -> bool:
        return self.error is None


def check_file(path: str, build: bool) -> tuple[FileCheck, Job | None]:
    result = FileCheck(path)
    try:
        job = load_job(path)
    except SrclusterError as exc:
        result.fail(str(exc))
        return result, None
    result.warnings = list(job.warnings)
    if build:
        try:
            result.built = build_networks(job)
        except SrclusterError as exc:
            result.fail(f"{path}: {exc}")
    return result, job


def build_networks(job: Job) -> list[str]:
    """Build G (and D when a GAN loss uses it) as training would, and run each once on a small input, on the CPU."""
    import torch  # the command boundary: plain `check` never imports torch

    from srcluster.components import archs
    from srcluster.train.specs import stage_specs

    specs = stage_specs(job)
    torch.manual_seed(0)
    g = specs.generator
    side = BUILD_LR_SIDES.get(g.type.lower(), BUILD_LR_SIDE)
    lr = torch.rand(1, 3, side, side)
    sr = forward("network_g", g.type, lambda: archs.build_generator(g.type, specs.scale, **g.options), lr, job.scale)
    lines = [f"network_g: {g.type} {shape(lr)} -> {shape(sr)}"]
    if specs.discriminator is not None:
        d = specs.discriminator
        hr = sr.detach().clamp(0, 1)
        score = forward("network_d", d.type, lambda: archs.build_discriminator(d.type, **d.options), hr, None)
        lines.append(f"network_d: {d.type} {shape(hr)} -> {shape(score)}")
    return lines


def forward(key: str, name: str, build, x, scale: int | None):
    """Build a network and run it once; anything it raises becomes one line naming the key and the architecture."""
    import torch

    try:
        net = build().eval()
        with torch.inference_mode():
            y = net(x)
    except SrclusterError:
        raise
    except Exception as exc:  # an architecture's own error (shape, option type): the user needs the key and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SrclusterError(f"{key} ({name}): does not build and run: {type(exc).__name__}: {first}") from None
    if isinstance(y, (list, tuple)):  # multi-scale discriminators return one score map per scale
        y = y[0]
    if scale is not None and tuple(y.shape[-2:]) != (x.shape[-2] * scale, x.shape[-1] * scale):
        raise SrclusterError(f"{key} ({name}): output {shape(y)} for input {shape(x)} is not x{scale}")
    return y


def shape(t) -> str:
    return "x".join(str(s) for s in t.shape)


def data_fields(sizing: DataSizing) -> dict[str, Any]:
    return {
        "arch": sizing.arch,
        "path": sizing.path,
        "crops_per_tile": sizing.crops_per_tile,
        "per_core_samples_per_s": round(sizing.per_core, 1),
        "needed_samples_per_s_per_gpu": None if sizing.needed is None else round(sizing.needed, 1),
        "loader_cores_needed": sizing.cores,
        "loader_workers": sizing.workers,
        "loader_workers_from": sizing.source,
    }


def data_lines(job: Job, sizing: DataSizing) -> list[str]:
    """Two lines: what one GPU eats and what one loader core makes on this data path; the workers used."""
    lq = job.datasets.train.lq_size
    if not job.srcluster.use_gpu:
        need = "training on CPUs (srcluster.use_gpu: false): no GPU rate to keep up with"
    elif sizing.needed is None:
        need = f"{sizing.arch}: samples/s per GPU unknown (step rates known for {', '.join(STEP_RATES)})"
    else:
        need = f"{sizing.arch} trains ~{sizing.needed:.0f} samples/s per GPU (A100, lq_size {lq}"
        need += ")" if lq == REFERENCE_LQ else f"; measured at {REFERENCE_LQ}, scaled by area)"
    make = (
        f"{sizing.path} data from {MEASURED_TILE} px tiles, crops_per_tile {sizing.crops_per_tile}: "
        f"~{sizing.per_core:.0f} samples/s per core"
    )
    if sizing.cores is not None:
        make += f" -> {sizing.cores} loader cores per GPU"
    workers = f"loader workers: {sizing.workers} per training worker ({sizing.source})"
    if sizing.cores is not None and sizing.workers < sizing.cores:
        workers += f"; fewer than the {sizing.cores} cores the GPU's rate needs: raise srcluster.crops_per_tile or CPUs"
    return [f"data: {need}; {make}", workers]


def print_one(result: FileCheck, job: Job, as_json: bool) -> None:
    resolved = job.model_dump(mode="json")
    sizing = size_data(job)
    if as_json:
        out: dict[str, Any] = {"job": resolved, "effective_batch": job.effective_batch, "warnings": job.warnings}
        out["data"] = data_fields(sizing)
        if result.built:
            out["built"] = result.built
        print(json.dumps(out, indent=2))
        return
    console.print(yaml.safe_dump(resolved, sort_keys=False), end="", markup=False, highlight=False)
    cluster = job.srcluster
    console.print(
        f"effective batch: {job.datasets.train.batch_size_per_gpu} per worker x "
        f"{cluster.max_workers} workers x {job.datasets.train.accum_iter} accum = {job.effective_batch}"
    )
    if cluster.min_workers < cluster.max_workers:
        plans = ", ".join(
            f"{w} workers: batch {b} x accum {a}" + ("" if w * b * a == job.effective_batch else f" = {w * b * a}")
            for w in range(cluster.min_workers, cluster.max_workers)
            for b, a in [job.batch_plan(w)]
        )
        console.print(f"elastic: effective batch {job.effective_batch} held (or the closest) with {plans}")
    for line in data_lines(job, sizing):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for line in result.built:
        console.print(line, markup=False, highlight=False)
    warn(job.warnings, to=console)
    console.print(f"[green]{result.file}: OK[/]" + (f" ({len(job.warnings)} warnings)" if job.warnings else ""))


def print_many(results: list[FileCheck], as_json: bool, build: bool) -> None:
    passed = sum(r.ok for r in results)
    if as_json:
        print(json.dumps({"passed": passed, "total": len(results), "files": [asdict(r) for r in results]}, indent=2))
        return
    for r in results:
        if r.ok:
            notes = [*r.built, f"{len(r.warnings)} warnings"] if r.warnings else r.built
            line = r.file + (f" ({'; '.join(notes)})" if notes else "")
            console.print(f"[green]OK[/] {escape(line)}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[red]FAIL[/] {escape(r.error or '')}", highlight=False, soft_wrap=True)
    console.print(f"{passed} of {len(results)} files pass" + (" check --build" if build else ""))


def cmd_check(args: argparse.Namespace) -> int:
    if len(args.jobs) == 1:
        result, job = check_file(args.jobs[0], args.build)
        if result.error is not None:
            raise SrclusterError("\n".join(result.errors))  # one file: every mistake, as `train` would print them
        assert job is not None
        print_one(result, job, args.json)
        return 0
    results = [check_file(path, args.build)[0] for path in args.jobs]
    print_many(results, args.json, args.build)
    return 0 if all(r.ok for r in results) else 2


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "check",
        help="validate job files (one: print it resolved; several: one line each and a summary), without running them",
    )
    c.add_argument("jobs", nargs="+", metavar="FILE", help="job files")
    c.add_argument(
        "--build",
        action="store_true",
        help="also build G and D at the job's scale and run one forward pass on a small input on the CPU "
        f"({BUILD_LR_SIDE}x{BUILD_LR_SIDE}, larger where the architecture needs it)",
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(fn=cmd_check)
