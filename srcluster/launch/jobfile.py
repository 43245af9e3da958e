"""A job or recipe file as the launchers see it: which srcluster command runs it, its stages validated, and the local
files it names.

A file with a `stages:` section is a recipe (`srcluster pipeline`), anything else one stage (`srcluster train`); both
are validated here exactly as those commands will validate them on the cluster, so a typo fails before anything is
queued.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from srcluster.config import Job, parse_job, read_yaml
from srcluster.errors import ConfigError, SrclusterError
from srcluster.recipes.pipeline import parse_recipe
from srcluster.storage import redact_url


@dataclass(frozen=True)
class JobFile:
    path: Path
    command: str  # the srcluster subcommand that runs it: "train" or "pipeline"
    name: str
    jobs: list[Job]  # one per stage
    text: str

    def training_env(self) -> dict[str, str]:
        """Every stage's `srcluster.env` (NCCL settings, ...), for the launchers to export on the cluster's nodes."""
        return {name: value for job in self.jobs for name, value in job.srcluster.env.items()}

    def local_refs(self) -> list[tuple[str, str]]:
        """(key, path) of every local file or folder the stages read: datasets, pretrained weights, resume states."""
        refs: list[tuple[str, str]] = []
        for job in self.jobs:
            named = {
                "path.pretrain_network_g": job.path.pretrain_network_g,
                "path.pretrain_network_d": job.path.pretrain_network_d,
                "path.pretrain_network_g_ema": job.path.pretrain_network_g_ema,
                "path.pretrain_network_g_teacher": job.path.pretrain_network_g_teacher,
                "path.resume_state": job.path.resume_state,
            }
            for split, dataset in {"train": job.datasets.train, **job.datasets.validation_sets}.items():
                for key in ("dataroot_gt", "dataroot_lq"):
                    value = getattr(dataset, key, None)
                    for i, url in enumerate([value] if isinstance(value, str) else value or []):
                        named[f"datasets.{split}.{key}" + (f"[{i}]" if isinstance(value, list) else "")] = url
            for key, value in named.items():
                if not value or ("://" in value and not value.startswith("file://")):
                    continue
                local = value.removeprefix("file://")
                if (key, local) not in refs:
                    refs.append((key, local))
            if job.path.resume_state and "://" not in job.path.resume_state:
                refs += [("path.resume_state", str(f)) for f in redux_networks(job.path.resume_state)]
        return refs

    def relative_files(self, base: Path | None = None) -> list[Path]:
        """The relative local paths the job names, which must travel with it; each must exist under `base` (the
        current folder, where `srcluster train` would resolve them)."""
        base = (base or Path.cwd()).resolve()
        found: list[Path] = []
        for key, value in self.local_refs():
            path = Path(value)
            if path.is_absolute() or value.startswith("~"):
                continue  # a path on the cluster's own filesystem: not ours to ship or check
            full = (base / path).resolve()
            if not full.is_relative_to(base):
                raise SrclusterError(
                    f"{self.path}: {key} names {value}, outside {base}; only files below the current "
                    "folder travel with the job (or give an absolute path on the cluster, or s3://)"
                )
            if not full.exists():
                raise SrclusterError(
                    f"{self.path}: {key} names {value}, which does not exist in {base}; "
                    "create it, or point the key at s3:// or a path on the cluster"
                )
            if full.relative_to(base) not in found:
                found.append(full.relative_to(base))
        return found

    def check_no_password(self) -> None:
        """Job files travel to clusters and into rendered manifests: a URL with a password in it must not."""
        for number, line in enumerate(self.text.splitlines(), 1):
            if redact_url(line) != line:
                raise SrclusterError(
                    f"{self.path}:{number}: a URL with a password; give credentials through the "
                    "cluster's environment (MLFLOW_TRACKING_PASSWORD, AWS_*), not the job file"
                )


def load(path: str | Path) -> JobFile:
    """Read and validate a job or recipe file, as `srcluster train` / `srcluster pipeline` will on the cluster."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a job or recipe YAML file")
    data = read_yaml(path)
    text = path.read_text()
    if isinstance(data, dict) and "stages" in data:
        recipe = parse_recipe(data, str(path))
        jobs = [
            recipe.job(stage, pretrain="pending://previous-stage" if i else None)
            for i, stage in enumerate(recipe.stages)
        ]
        return JobFile(path, "pipeline", recipe.name, jobs, text)
    job = parse_job(data, str(path))
    return JobFile(path, "train", job.name, [job], text)


def redux_networks(state: str) -> list[Path]:
    """The network files traiNNer-redux saved beside a local `.state` (`../models/[resume_models/]net_*_<iter>.*`),
    which `path.resume_state` reads with it (train/resume.py): they travel with the job too."""
    path = Path(state)
    if path.suffix != ".state":
        return []
    models = path.parent.parent / "models"
    return sorted(f for f in models.glob(f"**/net_*_{path.stem}.*") if f.is_file())


def relative_to_cwd(path: Path) -> Path:
    """Where the job file sits in the shipped working folder: at its path below the current folder, else at the top."""
    full, cwd = path.resolve(), Path(os.getcwd()).resolve()
    return full.relative_to(cwd) if full.is_relative_to(cwd) else Path(full.name)
