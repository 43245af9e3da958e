"""Tiny job files the tests train or launch: small enough for 2 CPU cores, real enough to run every stage part."""

from __future__ import annotations

from pathlib import Path

import yaml

TRAIN, VAL = "s3://srcluster/e2e/train", "s3://srcluster/e2e/val"
# PSNR and SSIM scored at each validation (traiNNer-redux scores nothing unless told)
SCORED = {
    "metrics_enabled": True,
    "metrics": {"psnr": {"type": "calculate_psnr"}, "ssim": {"type": "calculate_ssim"}},
}


def tiny_job(**overrides) -> dict:
    job = {
        "name": "e2e",
        "scale": 2,
        "manual_seed": 5,
        "datasets": {
            "train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": VAL},
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": 20, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
        "val": {"val_freq": 10, **SCORED},
        "logger": {"print_freq": 10, "save_checkpoint_freq": 10},
        "srcluster": {"workers": 2},
    }
    job.update(overrides)
    return job


LAUNCH_TRAIN, LAUNCH_VAL = "s3://srcluster/launch/train", "s3://srcluster/launch/val"
CANARY = "canary-secret-0123456789abcdef"


def launch_job(name: str, **overrides) -> dict:
    """The tiny stage of test_train_e2e on its own data prefix: 1 worker, 4 iterations."""
    return tiny_job(
        **{
            "name": name,
            "datasets": {
                "train": {"dataroot_gt": LAUNCH_TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
                "val": {"dataroot_gt": LAUNCH_VAL},
            },
            "train": {"total_iter": 4, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]},
            "val": {"val_freq": 4, **SCORED},
            "logger": {"print_freq": 2, "save_checkpoint_freq": 4},
            "srcluster": {"workers": 1},
            **overrides,
        }
    )


def write_job(folder: Path, job: dict, name: str = "job.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path
