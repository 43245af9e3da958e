"""How many samples/s one loader core makes for each data path, with and without several crops per decoded tile, and
the cores per GPU that follow for SPAN's and DAT_2's step rates (srcluster issue #16, item 8).

Tiles: the sample photos (scikit-image; those smaller than 512 px upscaled first) cut into 512 px tiles, written as a
shard set by the project's shard writer (lossless WebP, as `srcluster shards build` stores them) in a temporary
folder: local files, not S3 (reading from object storage adds transfer, not decode or crop work; see
`data_throughput.py` for the S3 stream). Each case streams the shard set through `train_loader` in this process (no
DataLoader workers, one torch thread: what one worker does on one core) with x4 crops of 256 px, batch 8:

  bicubic      decode + crop + flips (the step makes bicubic LR on its device)
  otf-device   + drawing each crop's Real-ESRGAN x4plus degradations (the step applies them: `degrade_on: device`)
  otf-workers  + applying them here too (`degrade_on: workers`; 288 px crops degraded whole, as traiNNer-redux does)

each at crops_per_tile 1 and 4. The rate is samples over the process's CPU seconds after warm-up batches (the machine
is shared: CPU time, not wall time, is the per-core figure). One line more times the decode of a tile alone. The
cores per GPU are ceil(step rate / per-core rate) at the high end of `srcluster.data.spec.STEP_RATES` (samples/s one
A100 trains; lq_size 64), and the table's own prediction (`per_core_rate`) is printed beside each measurement.

    python bench/data_sizing.py            # a few minutes on 2 busy cores

Prints one JSON line per case.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from degrade_throughput import SETTINGS  # Real-ESRGAN x4plus in traiNNer-redux's keys

from srcluster.data.crops import decode_sample
from srcluster.data.sample import sample_photos, tiles
from srcluster.data.shards import write_shards
from srcluster.data.spec import STEP_RATES, per_core_rate
from srcluster.data.stream import resolve_units, train_loader
from srcluster.data.units import Tally, read_unit
from srcluster.degrade.config import Degradations

TILE, SCALE, CROP, BATCH = 512, 4, 256, 8
CROPS_PER_TILE = (1, 4)
WARMUP_BATCHES = 2
MIN_CPU_S, MIN_BATCHES = 6.0, 4  # per case: at least this much CPU time and this many timed batches
STORAGE = "local shard files in a temporary folder (no S3)"


def make_shards(dest: str) -> int:
    """The sample photos as 512 px tiles (stride 256) in a shard set; returns the number of tiles."""
    samples = []
    for name, photo in sample_photos():
        height, width = photo.shape[:2]
        image = photo
        if min(height, width) < TILE:
            factor = TILE / min(height, width)
            size = (math.ceil(width * factor), math.ceil(height * factor))
            image = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
        samples += list(tiles(name, image, TILE, TILE // 2))
    write_shards(samples, dest, max_samples=8, progress=False)
    return len(samples)


def decode_rate(dest: str) -> dict:
    """CPU seconds to decode one tile, alone."""
    encoded = [s for unit in resolve_units(dest) for s in read_unit(unit, False, Tally(), Counter())]
    for sample in encoded[:4]:
        decode_sample(sample.hr, None)  # warm-up
    start, count = time.process_time(), 0
    while time.process_time() - start < 2.0:
        for sample in encoded:
            decode_sample(sample.hr, None)
            count += 1
    cpu = time.process_time() - start
    return {
        "bench": "data_sizing",
        "case": "decode",
        "tile": TILE,
        "tiles_decoded": count,
        "cpu_s": round(cpu, 2),
        "decode_ms_per_tile": round(1000 * cpu / count, 3),
        "tiles_per_cpu_s": round(count / cpu, 1),
    }


def measure(dest: str, path: str, crops_per_tile: int) -> dict:
    degradations = Degradations.model_validate(SETTINGS) if path.startswith("otf") else None
    stream = train_loader(
        dest,
        crop=CROP,
        scale=SCALE,
        batch_size=BATCH,
        steps=10**6,
        seed=7,
        degradations=degradations,
        degrade_in_workers=path == "otf-workers",
        crops_per_tile=crops_per_tile,
    )
    batches = iter(stream)
    for _ in range(WARMUP_BATCHES):
        next(batches)
    start, wall, timed = time.process_time(), time.perf_counter(), 0
    while timed < MIN_BATCHES or time.process_time() - start < MIN_CPU_S:
        next(batches)
        timed += 1
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    del batches  # ends the stream
    rate = timed * BATCH / cpu
    table = per_core_rate(path, CROP, SCALE, crops_per_tile)  # type: ignore[arg-type]
    return {
        "bench": "data_sizing",
        "case": path,
        "crops_per_tile": crops_per_tile,
        "tile": TILE,
        "crop": CROP,
        "scale": SCALE,
        "batch": BATCH,
        "samples": timed * BATCH,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "samples_per_cpu_s": round(rate, 1),
        "table_samples_per_cpu_s": round(table, 1),
        "cores_per_gpu": {arch: math.ceil(high / rate) for arch, (_, high) in STEP_RATES.items()},
        "step_rates_per_gpu": {arch: high for arch, (_, high) in STEP_RATES.items()},
        "storage": STORAGE,
        "skipped": sum(stream.skipped.values()),
    }


def main() -> None:
    torch.set_num_threads(1)  # one loader worker's share: one core
    with tempfile.TemporaryDirectory() as tmp:
        dest = str(Path(tmp) / "tiles")
        count = make_shards(dest)
        print(json.dumps({**decode_rate(dest), "tiles": count, "storage": STORAGE}), flush=True)
        for path in ("bicubic", "otf-device", "otf-workers"):
            for crops_per_tile in CROPS_PER_TILE:
                print(json.dumps(measure(dest, path, crops_per_tile)), flush=True)


if __name__ == "__main__":
    main()
