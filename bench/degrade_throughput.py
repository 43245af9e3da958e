"""Real-ESRGAN second-order degradations on CPU: a per-image NumPy/OpenCV pipeline in BasicSR's style
(bench/basicsr_degradations.py) against srcluster's batched pipeline (srcluster.degrade.pipeline), same settings
(Real-ESRGAN x4plus's, in traiNNer-redux's option names), same HR crops, one thread each, as in a data worker.

Rounds alternate between the two so that a busy machine slows both alike. srcluster's time includes drawing the plan
(kernels included), as the baseline's includes drawing its parameters. Then srcluster again with the h264 step on for
every image, and srcluster with per-sample draws (`otf_draws: per_sample`) against its default, traiNNer-redux's
once-per-batch draws (one fixed shape per batch, no per-sample steps). Prints one JSON line: images/s of each, the ratio
srcluster/baseline, the h264 rate and the per_batch / per_sample ratio, by wall-clock time and by the process's CPU time
(both sides use one thread, so on a shared machine the CPU-time ratio is the steadier one). Warm-up rounds come first:
tables, codec libraries, and oneDNN's convolutions, which it builds once per shape (a training run makes thousands of
batches, so the steady state is what counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import basicsr_degradations as baseline

from srcluster.degrade.config import Degradations
from srcluster.degrade.pipeline import apply, draw
from srcluster.degrade.seeds import sample_seed

# Real-ESRGAN's train_realesrgan_x4plus.yml in traiNNer-redux's keys (its blur is always on: blur_prob 1).
AREA_BILINEAR_BICUBIC = {"resize_mode_list": ["area", "bilinear", "bicubic"], "resize_mode_prob": [1, 1, 1]}
SETTINGS = {
    "high_order_degradation": True,
    "blur_prob": 1.0,
    "kernel_range": [7, 21],
    "sinc_prob": 0.1,
    "blur_sigma": [0.2, 3],
    "betag_range": [0.5, 4],
    "betap_range": [1, 2],
    "resize_prob": [0.2, 0.7, 0.1],
    "resize_range": [0.15, 1.5],
    **AREA_BILINEAR_BICUBIC,
    "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30],
    "poisson_scale_range": [0.05, 3],
    "gray_noise_prob": 0.4,
    "jpeg_prob": 1.0,
    "jpeg_range": [30, 95],
    "blur_prob2": 0.8,
    "kernel_range2": [7, 21],
    "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5],
    "resize_prob2": [0.3, 0.4, 0.3],
    "resize_range2": [0.3, 1.2],
    **{k + "2": v for k, v in AREA_BILINEAR_BICUBIC.items()},
    "gaussian_noise_prob2": 0.5,
    "noise_range2": [1, 25],
    "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4,
    "jpeg_prob2": 1.0,
    "jpeg_range2": [30, 95],
    "final_sinc_prob": 0.8,
    "final_kernel_range": [7, 21],
    **{k + "3": v for k, v in AREA_BILINEAR_BICUBIC.items()},
}


def crops(count: int, size: int) -> np.ndarray:
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - size + 1)
        x = rng.integers(0, photo.shape[1] - size + 1)
        out.append(photo[y : y + size, x : x + size])
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    hr_u8 = crops(args.batch, args.crop)
    hr_np = [image.astype(np.float32) / 255 for image in hr_u8]
    hr = torch.from_numpy(hr_u8).permute(0, 3, 1, 2).float().div(255)
    cfg = Degradations.model_validate(SETTINGS)
    codec_cfg = cfg.model_copy(update={"video_codec_prob": 1.0, "video_codec_list": ["h264"]})
    sample_cfg = cfg.model_copy(update={"otf_draws": "per_sample"})  # cfg draws as redux, per batch (the default)
    options = cfg.model_dump()  # the same settings, defaults filled in, for the baseline

    def ours(config: Degradations, round_: int) -> None:
        seeds = [sample_seed(0, round_, f"crop{i}") for i in range(args.batch)]
        apply(hr, draw(config, seeds, args.scale, args.crop, crop=args.crop))  # the same crop as the baseline

    def theirs(round_: int) -> None:
        rng = np.random.default_rng(round_)
        for image in hr_np:
            baseline.degrade(image, rng, options, args.scale)

    for w in range(args.warmup):  # other seeds than the timed rounds
        ours(cfg, 10**6 + w), ours(codec_cfg, 10**6 + w), ours(sample_cfg, 10**6 + w), theirs(10**6 + w)
    spent = {"baseline": 0.0, "srcluster": 0.0, "h264": 0.0, "per_sample": 0.0}
    cpu = dict(spent)
    for r in range(args.rounds):
        for name, run in (
            ("baseline", partial(theirs, r)),
            ("srcluster", partial(ours, cfg, r)),
            ("h264", partial(ours, codec_cfg, r)),
            ("per_sample", partial(ours, sample_cfg, r)),
        ):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            spent[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    images = args.rounds * args.batch
    rate = {name: images / seconds for name, seconds in spent.items()}
    cpu_rate = {name: images / seconds for name, seconds in cpu.items()}
    print(
        json.dumps(
            {
                "bench": "degrade_throughput",
                "settings": "Real-ESRGAN x4plus (traiNNer-redux keys)",
                "crop": args.crop,
                "scale": args.scale,
                "batch": args.batch,
                "rounds": args.rounds,
                "threads": 1,
                "baseline_images_per_s": round(rate["baseline"], 1),
                "srcluster_images_per_s": round(rate["srcluster"], 1),
                "ratio_srcluster_over_baseline": round(rate["srcluster"] / rate["baseline"], 3),
                "srcluster_h264_images_per_s": round(rate["h264"], 1),
                "baseline_images_per_cpu_s": round(cpu_rate["baseline"], 1),
                "srcluster_images_per_cpu_s": round(cpu_rate["srcluster"], 1),
                "ratio_by_cpu_time": round(cpu_rate["srcluster"] / cpu_rate["baseline"], 3),
                "srcluster_h264_images_per_cpu_s": round(cpu_rate["h264"], 1),
                "srcluster_per_sample_images_per_cpu_s": round(cpu_rate["per_sample"], 1),
                "ratio_per_batch_over_per_sample_by_cpu_time": round(cpu_rate["srcluster"] / cpu_rate["per_sample"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
