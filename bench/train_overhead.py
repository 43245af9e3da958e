"""What does Ray Train add per training step, against plain `torchrun` DDP?

Same tiny model (srcluster's `build_stage` of a superultracompact 2x generator, Charbonnier loss, AdamW, EMA), same
batches (HR crops made in memory from one seeded generator per rank, LR by srcluster's bicubic), same number of steps,
2 processes over gloo, one torch thread each, run side by side:

  (a) baseline: `torchrun --nproc_per_node 2` running the step loop with torch.distributed and DDP;
  (b) srcluster: the same step loop inside a Ray Train V2 `TorchTrainer` with 2 workers (`prepare_model` DDP), on a
      local Ray cluster this script starts.

Each side times every step after WARMUP steps (rank 0); the median step time counts, so worker start-up is not
measured - this is the steady-state cost per step. The two sides alternate for ROUNDS rounds. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP, STEPS, ROUNDS, CROP, BATCH = 10, 60, 2, 64, 8

JOB = {
    "name": "overhead",
    "scale": 2,
    "manual_seed": 0,
    "datasets": {"train": {"dataroot_gt": "unused://", "lq_size": CROP // 2, "batch_size_per_gpu": BATCH}},
    "network_g": {"type": "superultracompact"},
    "train": {"total_iter": WARMUP + STEPS, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
}


def step_times(rank: int, world: int, wrap) -> list[float]:
    """The timed step loop both launchers run: srcluster's own stage and train_step on in-memory batches."""
    import torch

    from srcluster.config import parse_job
    from srcluster.train.state import build_stage
    from srcluster.train.step import train_step

    torch.set_num_threads(1)
    job = parse_job(JOB)
    stage = build_stage(job, torch.device("cpu"), wrap, log=lambda _: None)
    generator = torch.Generator().manual_seed(rank)
    batches = iter(lambda: torch.randint(0, 256, (BATCH, 3, CROP, CROP), dtype=torch.uint8, generator=generator), None)
    times = []
    for _ in range(WARMUP + STEPS):
        start = time.perf_counter()
        train_step(stage, batches, accum=1)
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


# --- (a) torchrun ---------------------------------------------------------------------------------------------------


def torchrun_worker(out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    times = step_times(rank, world, DistributedDataParallel)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def run_torchrun() -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                __file__,
                "--torchrun-worker",
                str(out),
            ],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return json.loads(out.read_text())


# --- (b) Ray Train ----------------------------------------------------------------------------------------------------


def ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    times = step_times(
        context.get_world_rank(),
        context.get_world_size(),
        lambda net: ray.train.torch.prepare_model(net, move_to_device=False),
    )
    if context.get_world_rank() == 0:  # same machine: a file is the simplest way back (Train V2 keeps no bare metrics)
        Path(config["out"]).write_text(json.dumps(times))


def run_ray(storage: str) -> list[float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(storage) / f"times-{time.time_ns()}.json"
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=out.stem, storage_path=storage),
    )
    trainer.fit()
    return json.loads(out.read_text())


def main() -> None:
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    baseline, ours = [], []
    with tempfile.TemporaryDirectory() as storage:
        for _ in range(ROUNDS):
            baseline += run_torchrun()
            ours += run_ray(storage)
    ray.shutdown()
    a, b = statistics.median(baseline), statistics.median(ours)
    print(
        json.dumps(
            {
                "bench": "train_overhead",
                "workers": 2,
                "backend": "gloo",
                "arch": "superultracompact",
                "crop": CROP,
                "batch": BATCH,
                "steps": STEPS * ROUNDS,
                "torchrun_step_ms": round(1000 * a, 2),
                "ray_train_step_ms": round(1000 * b, 2),
                "ratio_ray_over_torchrun": round(b / a, 3),
                "target": "<= 1.10",
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--torchrun-worker":
        torchrun_worker(sys.argv[2])
    else:
        main()
