"""Stand-ins for loop tests that need no data pipeline and no tracking: seeded uint8 HR batches (nothing skipped) and a
reporter that records what the loop reports, logs, uploads and publishes."""

from __future__ import annotations

import torch

from srcluster.train.reporters import Reporter


class HRBatches:
    def __init__(self, n: int, batch: int = 2, size: int = 16):
        g = torch.Generator().manual_seed(0)
        self.items = [torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]

    def __iter__(self):
        return iter(self.items)

    def counts(self) -> dict[str, int]:
        return {"data_skipped": 0}


class Recorder(Reporter):
    def __init__(self):
        super().__init__(tracker=None, run_id="r")
        self.reports, self.logged, self.artifacts, self.published = [], [], [], []

    def report(self, stage, metrics, *, save, validated):
        self.reports.append((metrics["iteration"], save, validated, metrics))

    def log(self, metrics, step):
        self.logged.append(step)

    def log_artifact(self, path, folder):
        assert path.stat().st_size > 0
        self.artifacts.append((path.name, folder))

    def publish_best(self, stage):
        self.published.append(stage.best.iteration)
