"""The best generator by a validation metric, and the plateau stop ("train until PSNR/SSIM peak").

Ray Train keeps the newest checkpoints (resume points); the best one by a metric is kept here, beside them, under
`<storage>/<run key>/best/`: the generator is uploaded under its own name first and `best.json` (which names it) last,
so a reader never follows `best.json` to a half-written file.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from srcluster.config import Job
    from srcluster.storage import StorageSettings

BEST_FILE = "best.json"


@dataclass
class Best:
    metric: str  # the reported key, e.g. val_psnr
    higher_is_better: bool
    min_delta: float = 0.0
    patience: int = 0  # validations without improvement before the plateau stop; 0 = never stop early
    value: float | None = None
    iteration: int = 0
    stale: int = 0  # validations since the last improvement

    def update(self, value: float, iteration: int) -> bool:
        """Record one validation; True when it is the new best (better by more than min_delta)."""
        gain = (value - self.value if self.higher_is_better else self.value - value) if self.value is not None else None
        if gain is None or gain > self.min_delta:
            self.value, self.iteration, self.stale = value, iteration, 0
            return True
        self.stale += 1
        return False

    @property
    def plateaued(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state(self) -> dict:
        return {"value": self.value, "iteration": self.iteration, "stale": self.stale}

    def load_state(self, state: dict) -> None:
        self.value, self.iteration, self.stale = state["value"], int(state["iteration"]), int(state["stale"])


def for_job(job: Job, higher_is_better: bool) -> Best | None:
    """The job's best-checkpoint tracker (`srcluster.checkpoints.best`, `srcluster.plateau`); None without validation.
    `higher_is_better` comes from the metric, known where the metrics are built (rank 0)."""
    if not job.best_metric:
        return None
    plateau = job.srcluster.plateau
    return Best(job.best_metric, higher_is_better, plateau.min_delta, plateau.patience)


def publish(
    url: str, net: nn.Module, best: Best, settings: StorageSettings, metadata: dict[str, str] | None = None
) -> None:
    """Upload the generator of the new best, then point `best.json` at it, then drop the generators it replaced."""
    # torch: run_stage (imported by launch/submit for worker_env) reads best.json through this module
    from srcluster.components import weights

    fs, root = settings.filesystem(url)
    name = f"net_g_ema_{best.iteration:07d}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        weights.export_generator(net, local, metadata)
        fs.makedirs(root, exist_ok=True)
        fs.put_file(str(local), f"{root}/{name}")
    fs.pipe_file(f"{root}/{BEST_FILE}", json.dumps({**asdict(best), "generator": name}).encode())
    for old in fs.ls(root, detail=False):
        if old.rsplit("/", 1)[-1].startswith("net_g_ema_") and not old.endswith(name):
            fs.rm_file(old)


def read(url: str, settings: StorageSettings) -> dict | None:
    """`best.json` of a run (with `generator_uri` added), or None when no validation ever ran."""
    fs, root = settings.filesystem(url)
    try:
        data = json.loads(fs.cat_file(f"{root}/{BEST_FILE}"))
    except FileNotFoundError:
        return None
    data["generator_uri"] = f"{url.rstrip('/')}/{data['generator']}"
    return data
