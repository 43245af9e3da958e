"""Soak: a long training run streaming from S3 while a shard build writes to the same S3 server.

On its own stack (SeaweedFS S3 + MLflow on free ports, in a temporary $SRCLUSTER_HOME) and a local Ray cluster:

  (a) baseline: the same stage (2 Ray Train workers, superultracompact, 64 px crops, shards on S3) unloaded, for
      BASELINE_S seconds of training;
  (b) soak: that stage for SOAK_S seconds (10 minutes by default) while `build_shards` rebuilds a shard set on the same
      S3 server over and over in another process.

Figures: throughput (it/s over the training steps, from the run's MLflow metrics) of each and their ratio (target:
within 20%), resident memory of each Ray Train worker sampled every 5 s (target: < 10% growth from the end of the
first minute to the end), errors (target: none). Prints one JSON line.

    python bench/soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_throughput import free_port_block

BASELINE_S, WARMUP_S, SAMPLE_EVERY_S = 120, 60, 5.0
TRAIN, VAL = "s3://srcluster/soak/train", "s3://srcluster/soak/val"


def job(name: str, iterations: int) -> dict:
    return {
        "name": name,
        "scale": 2,
        "manual_seed": 1,
        "datasets": {
            "train": {"dataroot_gt": TRAIN, "lq_size": 32, "batch_size_per_gpu": 4, "num_worker_per_gpu": 1},
            "val": {"dataroot_gt": VAL},
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": iterations, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        "val": {"val_freq": 10**9},
        "logger": {"print_freq": 20, "save_checkpoint_freq": 500},
        "srcluster": {"workers": 2},
    }


def worker_rss_kib() -> dict[int, int]:
    """VmRSS of every Ray Train worker process (Ray names them by actor class)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::RayTrainWorker" in (proc / "cmdline").read_bytes():
                status = (proc / "status").read_text()
                out[int(proc.name)] = int(status.split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            continue
    return out


def rebuild_forever(folder: str, stop, rounds) -> None:
    """The concurrent writer: build a shard set from the sample photos again and again (fresh destination each time).

    At the lowest CPU priority: in production the build runs on other machines and shares only the S3 server, and on
    a 2-core box its image encoding would otherwise take the trainers' CPU, measuring CPU sharing instead of S3."""
    from srcluster.data.build import TileSettings, build_shards

    os.nice(19)
    while not stop.is_set():
        build_shards(
            folder,
            f"s3://srcluster/soak/rebuild-{rounds.value % 3}-{time.time_ns()}",
            settings=TileSettings(tile=128),
            max_samples=50,
            workers=1,
            progress=False,
        )
        with rounds.get_lock():
            rounds.value += 1


def rate(run_id: str) -> float:
    """Steady-state it/s: the median of the per-window rates rank 0 logged, after the first windows."""
    from srcluster.tracking.tracker import Tracker

    history = sorted(Tracker().client.get_metric_history(run_id, "it_per_s"), key=lambda m: m.step)
    values = [m.value for m in history[len(history) // 5 :]] or [m.value for m in history]
    return statistics.median(values)


def timed_stage(name: str, iterations: int, sample: bool) -> tuple[str, dict[int, list[tuple[float, int]]], float]:
    from srcluster.config import parse_job
    from srcluster.train.stage import run_stage

    samples: dict[int, list[tuple[float, int]]] = {}
    done = threading.Event()
    start = time.monotonic()

    def sampler() -> None:
        while not done.wait(SAMPLE_EVERY_S):
            for pid, rss in worker_rss_kib().items():
                samples.setdefault(pid, []).append((time.monotonic() - start, rss))

    thread = threading.Thread(target=sampler, daemon=True)
    if sample:
        thread.start()
    try:
        result = run_stage(parse_job(job(name, iterations)), fresh=True)
    finally:
        done.set()
    return result.run_id, samples, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    soak_s = parser.parse_args().minutes * 60
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_", "RAY_ADDRESS"))]:
        del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="srcluster-soak-") as tmp:
        os.environ["SRCLUSTER_HOME"] = str(Path(tmp) / "home")
        import ray

        from srcluster import stack
        from srcluster.data.sample import build_sample_dataset, sample_photos

        s3_port = free_port_block(len(stack.S3_PORT_ROLES))
        mlflow_port = free_port_block(1)
        services = stack.up(s3_port=s3_port, mlflow_port=mlflow_port, timeout=180)
        os.environ["MLFLOW_TRACKING_URI"] = services["mlflow"].url
        try:
            build_sample_dataset(TRAIN, VAL, tile=128, val_size=64, progress=False)
            photos = Path(tmp) / "photos"
            photos.mkdir()
            from PIL import Image

            for name, image in sample_photos():
                Image.fromarray(image).save(photos / f"{name}.png")
            ray.init(address="local", num_cpus=4, include_dashboard=True, configure_logging=False, log_to_driver=False)

            probe_id, _, _ = timed_stage("soak-probe", 100, sample=False)  # the rate, to size the runs
            per_s = rate(probe_id)
            base_id, _, _ = timed_stage("soak-baseline", max(100, int(per_s * BASELINE_S)), sample=False)

            spawn = multiprocessing.get_context("spawn")
            stop, rounds = spawn.Event(), spawn.Value("i", 0)
            writer = spawn.Process(target=rebuild_forever, args=(str(photos), stop, rounds))
            writer.start()
            errors = []
            try:
                soak_id, samples, soak_wall = timed_stage("soak", max(200, int(per_s * soak_s)), sample=True)
            except Exception as exc:
                errors.append(f"{exc.__class__.__name__}: {str(exc)[:300]}")
                soak_id, samples, soak_wall = None, {}, 0.0
            finally:
                stop.set()
                writer.join(60)
                if writer.is_alive():
                    writer.kill()
            writer_ok = writer.exitcode in (0, None, -9)

            growth = {}
            for pid, points in samples.items():
                after = [rss for t, rss in points if t >= WARMUP_S]
                if len(after) >= 2:
                    growth[pid] = round(100 * (after[-1] - after[0]) / after[0], 1)
            base_rate = rate(base_id)
            soak_rate = rate(soak_id) if soak_id else 0.0
        finally:
            ray.shutdown()
            stack.down(grace=2)
    print(
        json.dumps(
            {
                "bench": "soak",
                "soak_minutes": round(soak_wall / 60, 1),
                "workers": 2,
                "baseline_it_per_s": round(base_rate, 2),
                "soak_it_per_s": round(soak_rate, 2),
                "ratio_soak_over_baseline": round(soak_rate / base_rate, 3) if base_rate else None,
                "worker_rss_growth_percent_after_warmup": sorted(growth.values()),
                "errors": errors,
                "writer_ok": writer_ok,
                "writer_builds": rounds.value,
                "writer_nice": 19,
                "targets": {"ratio": ">= 0.8", "rss_growth_percent": "< 10", "errors": "none"},
            }
        )
    )


if __name__ == "__main__":
    main()
