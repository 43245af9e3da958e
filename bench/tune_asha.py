"""How much compute ASHA saves on a toy search, and what it costs in the best result.

The same 8 sampled configurations (random search, fixed seed) of a tiny 2x model run twice through `srcluster tune`'s
own driver: (a) every trial to the full budget (FIFO), (b) ASHA stopping the weak ones at validation rungs. Everything
is local and CPU-only: sample data in folders, MLflow in SQLite and Ray storage under a temporary $SRCLUSTER_HOME.

Prints one JSON line: total training iterations and best val_psnr of each, and the compute ratio (b)/(a).
Targets: ratio <= 0.5, best of (b) within 2% of (a).

    .venv/bin/python bench/tune_asha.py [--trials 8] [--iters 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path


def search_spec(data: Path, scheduler: str, trials: int, iters: int) -> dict:
    job = {
        "name": "bench",
        "scale": 2,
        "manual_seed": 1,
        "datasets": {
            "train": {
                "dataroot_gt": str(data / "train"),
                "lq_size": 16,
                "batch_size_per_gpu": 4,
                "num_worker_per_gpu": 0,
            },
            "val": {"dataroot_gt": str(data / "val")},
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": iters, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        "val": {"val_freq": iters // 8, "metrics": {"psnr": {"type": "calculate_psnr", "test_y_channel": True}}},
        "srcluster": {"workers": 1, "cpus_per_worker": 1},
    }
    (data / f"{scheduler}.yml").write_text(json.dumps(job))
    return {
        "name": f"bench-{scheduler}",
        "base": {"job": str(data / f"{scheduler}.yml")},
        # lr over three decades: some trials learn fast, some barely move, some overshoot
        "space": {"train.optim_g.lr": {"loguniform": [1.0e-5, 3.0e-2]}},
        "metric": "val_psnr",
        "num_samples": trials,
        "search": {"algorithm": "random", "seed": 7},
        "scheduler": {"type": scheduler, "grace_period": iters // 8, "reduction_factor": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--iters", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="srcluster-bench-tune-"))
    os.environ["SRCLUSTER_HOME"] = str(home)
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_"))]:
        del os.environ[name]  # MLflow in SQLite under the temporary home, Ray storage on local disk
    import ray

    from srcluster.data.sample import build_sample_dataset
    from srcluster.tune.run import run_search
    from srcluster.tune.space import parse_search

    data = home / "data"
    build_sample_dataset(str(data / "train"), str(data / "val"), tile=64, val_size=64, progress=False)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    out = {"trials": args.trials, "budget_iterations": args.iters}
    for scheduler in ("fifo", "asha"):
        search = parse_search(search_spec(data, scheduler, args.trials, args.iters), f"{scheduler}.yml")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # Tune's status tables; the JSON line is the output
            outcome = run_search(search, output_dir=home / scheduler, log=lambda m: None)
        out[scheduler] = {
            "total_iterations": outcome.total_iterations,
            "best_val_psnr": round(outcome.best.last, 4),
            "wall_s": round(time.perf_counter() - start, 1),
            "stopped_early": sum(r.iterations < args.iters for r in outcome.rows),
        }
    out["compute_ratio"] = round(out["asha"]["total_iterations"] / out["fifo"]["total_iterations"], 3)
    out["best_gap_pct"] = round(
        100 * (out["fifo"]["best_val_psnr"] - out["asha"]["best_val_psnr"]) / out["fifo"]["best_val_psnr"], 2
    )
    out["targets_met"] = out["compute_ratio"] <= 0.5 and out["best_gap_pct"] <= 2
    ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
