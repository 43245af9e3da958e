"""How much the on-the-fly bicubic LR costs: srcluster's batched MATLAB-compatible imresize (torch, in the training
step) against a per-image PIL bicubic resize (what a per-sample data loader would do), on the same HR crops.

Prints one JSON line: images/s of each on one CPU thread and the ratio srcluster/PIL.
"""

import json
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

from srcluster.degrade.resize import imresize

CROP, SCALE, BATCH, ROUNDS = 128, 4, 16, 30


def crops() -> np.ndarray:
    photo = data.astronaut()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(BATCH):
        y, x = rng.integers(0, photo.shape[0] - CROP, 2)
        out.append(photo[y : y + CROP, x : x + CROP])
    return np.stack(out)


def rate(fn) -> float:
    fn()  # warm-up: weight tables, allocator
    start = time.perf_counter()
    for _ in range(ROUNDS):
        fn()
    return ROUNDS * BATCH / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(1)
    hr = crops()
    images = [Image.fromarray(a) for a in hr]
    batch = torch.from_numpy(hr).permute(0, 3, 1, 2).float().div(255)

    def pil():
        for image in images:
            np.asarray(image.resize((CROP // SCALE, CROP // SCALE), Image.BICUBIC))

    def batched():
        imresize(batch, 1 / SCALE, kernel="bicubic").clamp_(0, 1)

    pil_rate, torch_rate = rate(pil), rate(batched)
    print(
        json.dumps(
            {
                "bench": "lr_on_the_fly",
                "crop": CROP,
                "scale": SCALE,
                "batch": BATCH,
                "threads": 1,
                "pil_images_per_s": round(pil_rate, 1),
                "srcluster_images_per_s": round(torch_rate, 1),
                "ratio_srcluster_over_pil": round(torch_rate / pil_rate, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
