"""What the training loader needs, in one small spec: the worker and the Tune trial build their loader from it.

Torch-free on purpose (the train layer composes it from a job on the driver side too); `loader()` imports the stream
module, which imports torch, only when a loader is actually built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
        )
