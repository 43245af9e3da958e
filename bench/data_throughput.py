"""Does streaming shards from object storage cost anything against reading image files from a local disk?

On the same HR tiles (the sample photos cut into 256 px tiles, replicated with flips and rotations to a few hundred),
with the same crop, batch, number of DataLoader workers, decoder (OpenCV) and crop/augment code:

  (a) baseline: the tiles as individual PNG files in a local folder, read by a map-style Dataset through a PyTorch
      DataLoader with shuffling and persistent workers (the way traiNNer-redux's paired folder dataset reads them);
  (b) srcluster: `train_loader` streaming the shard set that `srcluster shards build` made from that folder (lossless
      WebP) from the local SeaweedFS S3 server, which this script starts and stops itself;
  (c) for reference: the same stream from PNG shards, so that the cost of streaming is seen apart from the format.

Each loader runs ROUNDS times, interleaved; the median rate counts. Timing starts after WARMUP batches, so worker
start-up and the filling of the stream's shuffle buffer (256 encoded samples per worker) are not measured: this is the
steady state of a training run. CPU seconds are those of every process involved (this one, its workers and the S3
server) during the timed batches; "per core" is the rate divided by the machine's cores. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

CROP, BATCH, WORKERS, TILE, STRIDE, COPIES = 128, 16, 2, 256, 128, 5
WARMUP, BATCHES, ROUNDS = 40, 200, 3


def make_tiles(folder: Path) -> int:
    """The sample photos in TILE px tiles, each also flipped and rotated, as PNG files (PIL's default compression)."""
    from PIL import Image

    from srcluster.data.images import iter_tiles
    from srcluster.data.sample import sample_photos

    count = 0
    for name, photo in sample_photos():
        for (y, x, _, _), tile in iter_tiles(photo, TILE, STRIDE, min_size=TILE):
            for copy in range(COPIES):
                variant = np.rot90(tile[:, ::-1] if copy % 2 else tile, k=copy // 2)
                Image.fromarray(np.ascontiguousarray(variant)).save(folder / f"{name}_{y}_{x}_{copy}.png")
                count += 1
    return count


class PngFolder(Dataset):
    """traiNNer-redux's way: a list of files, one read + decode + random crop + augment per item."""

    def __init__(self, folder: Path):
        self.paths = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from srcluster.data.crops import random_crop

        patch = random_crop(self.paths[index].read_bytes(), None, CROP, 1, _rng)[0]
        return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))


_rng = np.random.default_rng(0)


def _worker_init(worker: int) -> None:
    global _rng  # noqa: PLW0603  # each DataLoader worker process replaces the generator it inherited
    _rng = np.random.default_rng(worker)  # as the stream does: one generator per worker
    torch.set_num_threads(1)


def baseline_loader(folder: Path):
    dataset = PngFolder(folder)
    sampler = RandomSampler(dataset, num_samples=(WARMUP + BATCHES) * BATCH, generator=torch.Generator().manual_seed(0))
    return DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=WORKERS,
        persistent_workers=True,
        worker_init_fn=_worker_init,
    )


def stream_loader(url: str):
    from srcluster.data.stream import train_loader

    return train_loader(url, crop=CROP, batch_size=BATCH, num_workers=WORKERS, steps=WARMUP + BATCHES, seed=0)


# --- CPU time of a process tree -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, utime + stime ticks) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])


def cpu_seconds(root: int, group: int) -> float:
    """CPU seconds used so far by `root` and its descendants, and by process group `group` (the S3 server)."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    mine, frontier = set(), {root}
    while frontier:
        mine |= frontier
        frontier = {pid for pid, (parent, _, _) in stats.items() if parent in frontier} - mine
    ticks = sum(s[2] for pid, s in stats.items() if pid in mine or s[1] == group)
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(loader, s3_group: int) -> tuple[float, float]:
    """(samples per second, CPU seconds per sample) over BATCHES batches after WARMUP."""
    batches = iter(loader)
    for _ in range(WARMUP):
        next(batches)
    cpu0, start = cpu_seconds(os.getpid(), s3_group), time.perf_counter()
    for _ in range(BATCHES):
        batch = next(batches)
        assert batch.shape == (BATCH, 3, CROP, CROP) and batch.dtype == torch.uint8
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(os.getpid(), s3_group) - cpu0
    del batches
    return BATCHES * BATCH / elapsed, cpu / (BATCHES * BATCH)


def free_port_block(size: int) -> int:
    from srcluster import stack

    for _ in range(200):
        base = random.randrange(20000, 32000 - size)
        if all(stack.port_free(p) for p in range(base, base + size)):
            return base
    raise RuntimeError("no free ports")


def main() -> None:
    for name in [n for n in os.environ if n.startswith(("AWS_", "MLFLOW_"))]:
        del os.environ[name]  # the benchmark's own S3 server, never a configured one
    with tempfile.TemporaryDirectory(prefix="srcluster-bench-") as tmp:
        os.environ["SRCLUSTER_HOME"] = str(Path(tmp) / "home")
        from srcluster import stack
        from srcluster.data.build import TileSettings, build_shards

        services = stack.up(s3_port=free_port_block(len(stack.S3_PORT_ROLES)), mlflow=False, timeout=120)
        try:
            folder = Path(tmp) / "tiles"
            folder.mkdir()
            tiles = make_tiles(folder)
            shards = {}
            for fmt in ("webp", "png"):
                url = f"s3://srcluster/bench/{fmt}"
                build_shards(
                    str(folder),
                    url,
                    settings=TileSettings(tile=None, image_format=fmt),
                    max_samples=100,
                    workers=WORKERS,
                    progress=False,
                )
                shards[fmt] = url
            loaders = {
                "baseline": lambda: baseline_loader(folder),
                "srcluster": lambda: stream_loader(shards["webp"]),
                "srcluster_png": lambda: stream_loader(shards["png"]),
            }
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in loaders}
            for _ in range(ROUNDS):
                for name, make in loaders.items():
                    results[name].append(measure(make(), services["s3"].pid))
        finally:
            stack.down(grace=1)

    cores = len(os.sched_getaffinity(0))
    rate = {name: statistics.median(r for r, _ in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in results.items()}
    print(
        json.dumps(
            {
                "bench": "data_throughput",
                "tiles": tiles,
                "tile": TILE,
                "crop": CROP,
                "batch": BATCH,
                "workers": WORKERS,
                "cores": cores,
                "decoder": "opencv",
                "rounds": ROUNDS,
                "baseline_png_folder_samples_per_s": round(rate["baseline"], 1),
                "srcluster_s3_webp_shards_samples_per_s": round(rate["srcluster"], 1),
                "ratio_srcluster_over_baseline": round(rate["srcluster"] / rate["baseline"], 3),
                "baseline_samples_per_s_per_core": round(rate["baseline"] / cores, 1),
                "srcluster_samples_per_s_per_core": round(rate["srcluster"] / cores, 1),
                "baseline_samples_per_cpu_s": round(1 / cpu["baseline"], 1),
                "srcluster_samples_per_cpu_s": round(1 / cpu["srcluster"], 1),
                "srcluster_s3_png_shards_samples_per_s": round(rate["srcluster_png"], 1),
                "ratio_srcluster_png_over_baseline": round(rate["srcluster_png"] / rate["baseline"], 3),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
