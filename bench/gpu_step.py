"""The training step on a GPU: iterations/s, data-wait share, peak memory and host syncs per step, against the same
step that waits for the device every iteration (the step before srcluster issue #16: its skip decision read the losses
and gradient norms on the host before the optimizers stepped).

Stages are built by the real code (`parse_job`, `build_stage`) and stepped by `train_step`, on in-memory uint8 HR
batches (tests/helpers/batches.py's item format), cycled from a small pool, so the data wait is only what the step
itself spends taking the next item (~0). Per case:

  arch        span, dat_2 (x4)
  setup       fidelity (charbonnier) or gan (charbonnier + perceptual + gan, unetdiscriminatorsn)
  precision   fp32, tf32 (`fast_matmul`), bf16 (`use_amp` + `amp_bf16`)
  optimizer   adamw (torch's default, foreach: one host read per step remains) or adamw_fused (`fused: true`: the
              skip is decided on the device, nothing waits)
  lr          bicubic (made in the step), device (Real-ESRGAN degradations drawn beforehand, applied in the step as with
              `degrade_on: device`), device_per_batch (the same with traiNNer-redux's once-per-batch draws, `otf_draws:
              per_batch`, and its training-pair pool: one fixed shape per batch) or workers (LR made beforehand, as the
              data workers would: the step gets ready pairs; `worker_ms_per_batch` is what one worker spends per batch,
              on one CPU thread, and `workers_to_keep_up` how many data workers the step's rate needs)

Each case runs two modes on the same stage: `baseline` (`train_step(..., decide_on_host=True)`: one host read per
step before the optimizers, where the old step read every value) and `srcluster` (the step as the loop runs it, values
read at report points only: `logger.print_freq`). The ratio is srcluster it/s over baseline it/s. A CPU decides
skips on the host in both modes (`step.DEVICE_GATED`: nothing runs asynchronously there), so CPU ratios are ~1 and
the CPU run is a smoke test of the cases. On CUDA
`host_syncs_per_step` counts, over a few extra steps, the synchronizing calls torch's sync-debug mode reports.

    python bench/gpu_step.py --device cpu     # seconds: tiny sizes, a reduced set of cases (a smoke run)
    python bench/gpu_step.py --device cuda    # the real figures

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from srcluster.components import perceptual
from srcluster.config import parse_job
from srcluster.degrade.pipeline import crop_size, draw, pair
from srcluster.train.state import Stage, build_stage
from srcluster.train.step import step_values, train_step

SCALE = 4
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "tf32": {"fast_matmul": True},
    "bf16": {"use_amp": True, "amp_bf16": True},
}
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"type": "AdamW", "lr": 2e-4, "betas": [0.9, 0.99]},
    "adamw_fused": {"type": "AdamW", "lr": 2e-4, "betas": [0.9, 0.99], "fused": True},
}
# Real-ESRGAN's second-order pipeline with srcluster's defaults for everything not named
DEGRADATIONS = {"high_order_degradation": True}


def settings(device: str) -> dict[str, Any]:
    """Sizes and step counts: the templates' (64 px LR, batch 8) on CUDA, a smoke run on CPU."""
    if device == "cuda":
        return {"lq_size": 64, "batch": 8, "warmup": 10, "steps": 40, "print_freq": 100, "pool": 8}
    return {"lq_size": 8, "batch": 2, "warmup": 1, "steps": 3, "print_freq": 100, "pool": 2}


def cases(matrix: str, archs: list[str]) -> Iterator[dict[str, str]]:
    """`full`: every arch x setup x precision x optimizer with bicubic LR, then the three ways to degrade for each
    arch x setup at fp32 / adamw (36 cases). `quick` (the CPU's, where a DAT_2 step takes seconds): span's cases
    around fidelity / fp32 / adamw / bicubic one change at a time, and each other arch's base case."""
    if matrix == "full":
        for arch, setup, precision, optim in itertools.product(archs, ("fidelity", "gan"), PRECISIONS, OPTIMIZERS):
            yield {"arch": arch, "setup": setup, "precision": precision, "optimizer": optim, "lr": "bicubic"}
        for arch, setup, lr in itertools.product(archs, ("fidelity", "gan"), ("device", "device_per_batch", "workers")):
            yield {"arch": arch, "setup": setup, "precision": "fp32", "optimizer": "adamw", "lr": lr}
        return
    base = {"setup": "fidelity", "precision": "fp32", "optimizer": "adamw", "lr": "bicubic"}
    variations = [{}, {"setup": "gan"}, {"precision": "bf16"}, {"optimizer": "adamw_fused"}]
    variations += [{"lr": "device"}, {"lr": "device_per_batch"}, {"lr": "workers"}]
    for arch in archs:
        for change in variations if arch == "span" else [{}]:
            yield {"arch": arch, **base, **change}


def job_for(case: dict[str, str], size: dict[str, Any], vgg: Path):
    losses: list[dict[str, Any]] = [{"type": "charbonnierloss", "loss_weight": 1.0}]
    extra: dict[str, Any] = {}
    if case["setup"] == "gan":
        losses += [
            {"type": "perceptualloss", "loss_weight": 1.0, "vgg_weights_path": str(vgg)},
            {"type": "ganloss", "loss_weight": 0.1},
        ]
        extra["network_d"] = {"type": "unetdiscriminatorsn"}
    if case["lr"] != "bicubic":
        extra |= DEGRADATIONS
    if case["lr"].startswith("device"):
        extra["srcluster"] = {"degrade_on": "device"}
    if case["lr"] == "device_per_batch":
        extra["otf_draws"] = "per_batch"
    optim = OPTIMIZERS[case["optimizer"]]
    train = {"total_iter": 10**6, "ema_decay": 0.999, "losses": losses, "optim_g": optim}
    if case["setup"] == "gan":
        train["optim_d"] = {**optim, "lr": 1e-4}
    return parse_job(
        {
            "name": "gpu-step",
            "scale": SCALE,
            "manual_seed": 0,
            "datasets": {
                "train": {
                    "dataroot_gt": "memory://none",
                    "lq_size": size["lq_size"],
                    "batch_size_per_gpu": size["batch"],
                }
            },
            "network_g": {"type": case["arch"]},
            "train": train,
            "logger": {"print_freq": size["print_freq"]},
            **PRECISIONS[case["precision"]],
            **extra,
        }
    )


def pool_of_items(job, case: dict[str, str], size: dict[str, Any], device: torch.device) -> tuple[list, float | None]:
    """The loader items the step cycles through, pinned on CUDA as the loader's are; and, for LR made in the workers,
    the CPU milliseconds one batch costs there (drawing and applying the degradations, one thread)."""
    gt = size["lq_size"] * SCALE
    cfg = job.datasets.train.degradations
    crop = crop_size(cfg, gt, SCALE) if case["lr"] != "bicubic" else gt
    generator = torch.Generator().manual_seed(0)
    items: list = []
    worker_s = []
    for index in range(size["pool"]):
        hr = torch.randint(0, 256, (size["batch"], 3, crop, crop), dtype=torch.uint8, generator=generator)
        seeds = list(range(index * size["batch"], (index + 1) * size["batch"]))
        if case["lr"] == "bicubic":
            item = hr
        elif case["lr"].startswith("device"):
            item = (hr, draw(cfg, seeds, SCALE, gt, crop=crop))
        else:
            start = time.process_time()
            hr_patch, lr_patch = pair(hr.float().div_(255), draw(cfg, seeds, SCALE, gt, crop=crop))
            item = (hr_patch.mul(255).round_().to(torch.uint8), lr_patch.mul(255).round_().to(torch.uint8))
            worker_s.append(time.process_time() - start)
        items.append(pin(item) if device.type == "cuda" else item)
    return items, (1000 * sum(worker_s) / len(worker_s) if worker_s else None)


def pin(item):
    if isinstance(item, torch.Tensor):
        return item.pin_memory()
    if isinstance(item, tuple):
        return tuple(pin(part) for part in item)
    return item


def cycle(items: list) -> Iterator:
    while True:
        yield from items


def wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # the process's, all cases so far


def timed(stage: Stage, batches: Iterator, size: dict[str, Any], baseline: bool) -> dict[str, float]:
    """it/s and the data-wait share over `steps` steps after `warmup`, values read at report points as the loop does
    (the baseline's host read is inside its step)."""
    device = stage.device
    for _ in range(size["warmup"]):
        step_values(stage, train_step(stage, batches, 1, decide_on_host=baseline))
    wait(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data_wait = 0.0
    start = time.perf_counter()
    for index in range(1, size["steps"] + 1):
        step = train_step(stage, batches, 1, decide_on_host=baseline)
        data_wait += float(step.pop("data_wait_s"))
        if index % size["print_freq"] == 0 or index == size["steps"]:
            step_values(stage, step)
    wait(device)
    elapsed = time.perf_counter() - start
    return {
        "it_per_s": round(size["steps"] / elapsed, 3),
        "data_wait_share": round(data_wait / elapsed, 4),
        "peak_memory_mb": peak_mb(device),
    }


def syncs_per_step(stage: Stage, batches: Iterator, baseline: bool, steps: int = 3) -> float | None:
    """The synchronizing CUDA calls torch's sync-debug mode reports per step (None off CUDA)."""
    if stage.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                train_step(stage, batches, 1, decide_on_host=baseline)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return round(sum("synchroniz" in str(w.message) for w in seen) / steps, 2)


def run_case(case: dict[str, str], size: dict[str, Any], device: torch.device, vgg: Path) -> dict[str, Any]:
    job = job_for(case, size, vgg)
    stage = build_stage(job, device, log=lambda _: None)
    items, worker_ms = pool_of_items(job, case, size, device)
    batches = cycle(items)
    figures = {}
    for mode, baseline in (("baseline", True), ("srcluster", False)):
        figures[mode] = timed(stage, batches, size, baseline) | {
            "host_syncs_per_step": syncs_per_step(stage, batches, baseline)
        }
    line: dict[str, Any] = {"bench": "gpu_step", "device": torch_device_name(device), **case}
    line |= {"scale": SCALE, "lq_size": size["lq_size"], "batch": size["batch"], "steps": size["steps"]}
    for mode, values in figures.items():
        line |= {f"{mode}_{key}": value for key, value in values.items()}
    line["ratio_srcluster_over_baseline"] = round(figures["srcluster"]["it_per_s"] / figures["baseline"]["it_per_s"], 3)
    if worker_ms is not None:
        line["worker_ms_per_batch"] = round(worker_ms, 1)
        line["workers_to_keep_up"] = round(worker_ms / 1000 * figures["srcluster"]["it_per_s"], 2)
    return line


def torch_device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def stand_in_vgg(folder: Path) -> Path:
    """Random VGG19 `features` weights in torchvision's layout: the perceptual loss costs the same with any values
    (nothing is downloaded here; pass --vgg for the real file)."""
    net = perceptual.vgg_features("vgg19")
    path = folder / "vgg19-stand-in.pth"
    torch.save({f"features.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="span,dat_2", help="comma-separated generator types")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default: 40 on CUDA, 3 on CPU)")
    parser.add_argument("--matrix", choices=("full", "quick"), help="cases (default: full on CUDA, quick on CPU)")
    parser.add_argument("--vgg", type=Path, help="torchvision's vgg19 file for the perceptual loss (else random)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = settings(args.device)
    if args.steps:
        size["steps"] = args.steps
    if device.type == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        vgg = args.vgg or stand_in_vgg(Path(tmp))
        matrix = args.matrix or ("full" if device.type == "cuda" else "quick")
        for case in cases(matrix, args.archs.split(",")):
            line = run_case(case, size, device, vgg) | {"vgg": "real" if args.vgg else "random stand-in"}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
