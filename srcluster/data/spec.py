"""What the training loader needs, in one small spec: the worker and the Tune trial build their loader from it; and
the rates that say how many loader cores a data path needs to keep one GPU busy (`train/specs.py: size_data` applies
them to a job; `srcluster check` prints it, `render` checks it against the CPUs asked for, and
`srcluster.loader_workers: auto` uses it).

Torch-free on purpose (the train layer composes it from a job on the driver side too, and `check` never imports
torch); `loader()` imports the stream module, which imports torch, only when a loader is actually built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from srcluster.data.stream import TrainStream
    from srcluster.degrade.config import Degradations

Urls = str | list[str]


@dataclass(frozen=True)
class TrainData:
    dataroot_gt: Urls
    crop: int  # HR crop size: lq_size * scale
    batch_size: int  # per worker and micro-batch
    scale: int
    dataroot_lq: Urls | None = None  # paired LR; None: LR is made on the fly (bicubic, or `degradations`)
    num_workers: int = 0
    seed: int = 0
    use_hflip: bool = True
    use_rot: bool = True
    degradations: Degradations | None = None  # Real-ESRGAN's on-the-fly pipeline; None: bicubic LR
    degrade_in_workers: bool = True  # degrade in the DataLoader workers (else in the training step, on the device)
    crops_per_tile: int = 1  # crops cut from each decoded sample, each with its own seed

    def loader(self, *, rank: int, world: int, start: int, steps: int) -> TrainStream:
        """Exactly `steps` batches for `rank` of `world`, continuing the data order from iteration `start`."""
        from srcluster.data import stream  # torch: only where a loader is built (this module stays torch-free)

        return stream.train_loader(
            self.dataroot_gt,
            crop=self.crop,
            batch_size=self.batch_size,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            seed=self.seed,
            epoch=start,
            steps=steps,
            use_hflip=self.use_hflip,
            use_rot=self.use_rot,
            lq=self.dataroot_lq,
            scale=self.scale,
            degradations=self.degradations,
            degrade_in_workers=self.degrade_in_workers,
            crops_per_tile=self.crops_per_tile,
        )


# --- how much data a GPU eats, and how many cores make it -----------------------------------------------------------

# Samples/s that one A100 trains at lq_size REFERENCE_LQ (x4, traiNNer-redux's templates: AMP, fidelity losses), as
# (low, high); sizing takes the high end, so the GPU is not the one left waiting. Architectures not listed: unknown.
REFERENCE_LQ = 64
STEP_RATES: dict[str, tuple[float, float]] = {
    # srcluster issue #16: "a SPAN fidelity step on an A100 needs ~800-1300 samples/s per GPU"
    "span": (800.0, 1300.0),
    # not measured here (no GPU): SPAN's figures x traiNNer-redux's measured inference speed of dat_2 over span at 4x
    # (0.28 / 82.25 FPS, RTX 4090, its docs/source/benchmarks.md); bench/gpu_step.py --device cuda measures it
    "dat_2": (2.7, 4.4),
}

# One loader core's CPU seconds per sample, from bench/data_sizing.py (2026-12-07, the 2-core development machine, one
# thread, the process's CPU time, busy with other work): decoding one 512 px lossless WebP tile from a shard set (the
# default of `srcluster shards build`; 3.44 ms timed alone, 291 tiles/s), and per 256 px HR crop: cutting it (crop,
# flips, copy into the batch), plus drawing its Real-ESRGAN x4plus degradations (`otf-device`: the step applies them)
# or drawing and applying them (`otf-workers`: a 288 px crop degraded whole). The per-crop figures solve the
# crops_per_tile 1 and 4 cases (bicubic 257 / 761 samples/s, otf-device 196 / 433, otf-workers 31 / 30: noise
# around ~30 ms). A crop's cost grows with its area; a decode is shared by the crops of a tile. Paired data decodes
# the LR partner too (1 / scale^2 of the pixels) and crops like bicubic.
MEASURED_TILE, MEASURED_CROP = 512, 256
DECODE_S = 0.00344
CROP_S: dict[str, float] = {"bicubic": 0.00046, "otf-device": 0.0015, "otf-workers": 0.030}

DataPath = Literal["bicubic", "paired", "otf-device", "otf-workers"]


def per_core_rate(path: DataPath, crop: int, scale: int, crops_per_tile: int) -> float:
    """Samples/s one loader core makes on `path` for HR crops of `crop` px from 512 px tiles."""
    decode = DECODE_S * (1 + 1 / scale**2 if path == "paired" else 1)
    per_crop = CROP_S["bicubic" if path == "paired" else path] * (crop / MEASURED_CROP) ** 2
    return 1 / (decode / crops_per_tile + per_crop)


def step_rate(arch: str, lq_size: int) -> float | None:
    """Samples/s one GPU trains `arch` at (the high end of its STEP_RATES, scaled by LR area), or None: unknown."""
    rates = STEP_RATES.get(arch.lower())
    return None if rates is None else rates[1] * (REFERENCE_LQ / lq_size) ** 2


@dataclass(frozen=True)
class DataSizing:
    arch: str
    path: DataPath
    crops_per_tile: int
    per_core: float  # samples/s one loader core makes on this path
    needed: float | None  # samples/s one training worker's GPU takes; None: unknown arch, or training on CPUs
    workers: int  # the DataLoader workers the job uses
    source: str  # which setting decided `workers`

    @property
    def cores(self) -> int | None:
        """Loader cores that keep up with `needed` (None: unknown)."""
        return None if self.needed is None else max(1, math.ceil(self.needed / self.per_core))

    @property
    def cpus_needed(self) -> int | None:
        """CPUs a training worker needs: its loader cores plus one for the process that runs the step."""
        return None if self.cores is None else self.cores + 1
