"""The tune tests' search files: a tiny GAN job (two workers, shards on the local S3) and a search over five of its
keys."""

from __future__ import annotations

import yaml

TRAIN, VAL = "s3://srcluster/tune-e2e/train", "s3://srcluster/tune-e2e/val"


def gan_job(**overrides) -> dict:
    job = {
        "name": "tunegan",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {
            "train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": VAL},
        },
        "network_g": {"type": "superultracompact"},
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {
            "total_iter": 8,
            "optim_g": {"lr": 1.0e-3},
            "optim_d": {"lr": 1.0e-4},
            "losses": [
                {"type": "charbonnierloss", "loss_weight": 1.0},
                {"type": "hsluvloss", "loss_weight": 0.5},
                {"type": "ganloss", "loss_weight": 0.1},
            ],
        },
        "val": {
            "val_freq": 4,
            "metrics_enabled": True,
            "metrics": {"psnr": {"type": "calculate_psnr", "test_y_channel": True}},
        },
        "logger": {"print_freq": 4, "save_checkpoint_freq": 4},
        "srcluster": {"workers": 2, "cpus_per_worker": 1},
    }
    job.update(overrides)
    return job


def search_file(tmp_path, job: dict | None = None, **overrides) -> dict:
    path = tmp_path / "base.yml"
    path.write_text(yaml.safe_dump(job or gan_job()))
    search = {
        "name": "tg",
        "base": {"job": str(path)},
        "space": {
            "train.optim_g.lr": {"loguniform": [1.0e-4, 1.0e-2]},
            "train.losses.ganloss.loss_weight": {"uniform": [0.01, 0.2]},
            "datasets.train": {
                "choice": [{"lq_size": 16, "batch_size_per_gpu": 2}, {"lq_size": 8, "batch_size_per_gpu": 4}]
            },
            "train.optim_g.betas": {"choice": [[0.9, 0.99], [0.5, 0.9]]},
            "network_d.type": {"choice": ["unetdiscriminatorsn", "dunet"]},
        },
    }
    search.update(overrides)
    return search
