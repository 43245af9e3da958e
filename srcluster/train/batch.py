"""One loader item -> what a training step needs, on the training device: the LR input and each loss's target.

The loader yields uint8 HR (LR = MATLAB bicubic, or `lq_resize_mode`'s resize, made here), `(hr, lr)` (paired
data, or degradations already applied in the data workers), or `(hr, plan)` (degradations drawn in the workers,
applied here on the device in one batched call, then the pair cut from the larger crop: `degrade.pipeline.pair` never
waits for the device). Real-ESRGAN's `l1_gt_usm` / `percep_gt_usm` / `gan_gt_usm` choose whether the pixel losses,
the perceptual losses and the discriminator's real input see the sharpened GT.

With `otf_draws: per_batch` and degradations on the device, each degraded pair goes through redux's training-pair pool
(`degrade/pool.py`, `queue_size`) before anything else, as in redux's `feed_data`.

With a teacher generator (`network_g_teacher`, train/eco.py) its output replaces the HR target of given-LR data
(distillation, before MoA), and with `train.eco` the pair is mixed with the teacher's last of all, the discriminator
still seeing the real HR.

With `train.use_moa` the pair then goes through traiNNer-redux's mixture of augmentations (`degrade/moa.py`), in all
three forms, after the LR is made (redux augments after its degradations) and before the GT is sharpened, so that
every target, sharpened or not, is the GT of the augmented input. (redux 686293190 sharpens no GT; the Real-ESRGAN
code it comes from sharpened before augmenting and left the sharpened GT unaugmented, out of step with the input.)
Validation never comes here: it reads whole images through `train/validate.py`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from srcluster.config import Job
from srcluster.degrade.filters import usm_sharpen
from srcluster.degrade.moa import Mixer
from srcluster.degrade.pipeline import Plan, pair
from srcluster.degrade.pool import PairPool
from srcluster.degrade.resize import imresize, otf_resize
from srcluster.train.eco import eco_alpha, eco_mix, end_iteration, teacher_sr

# Losses that compare features rather than pixels: they take `percep_gt_usm`'s target; every other loss `l1_gt_usm`'s.
PERCEPTUAL_LOSSES = frozenset({"perceptualloss", "perceptualfp16loss", "distsloss"})


@dataclass
class Batch:
    lr: torch.Tensor
    pixel_gt: torch.Tensor
    percep_gt: torch.Tensor
    gan_gt: torch.Tensor  # the discriminator's "real"

    def target(self, loss: str) -> torch.Tensor:
        return self.percep_gt if loss in PERCEPTUAL_LOSSES else self.pixel_gt


def _float(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True).float().div_(255)


# Tags the MoA stream and the training-pair pool's apart from the data streams drawn from the same job seed.
MOA_STREAM = 0x6D6F61
POOL_STREAM = 0x706F6F6C


@dataclass
class _JobStreams:
    """What one job's batches carry from step to step in this process, each made when first used."""

    mixer: Mixer | None = None  # train.use_moa
    pool: PairPool | None = None  # otf_draws: per_batch with degradations on the device


# Each job object's streams in this process, by id(job) (a Job is not hashable), beside a weak reference that tells
# a live job from a new one at a reused address and drops the entry with the job.
_streams: dict[int, tuple[weakref.ref, _JobStreams]] = {}


def _streams_for(job: Job) -> _JobStreams:
    """Like redux's one generator per process: one stream per job continued batch after batch, seeded by the job's seed
    and the rank (ranks draw differently); a job parsed afresh (a new run in the same process) starts afresh, so a run
    repeats exactly."""
    key = id(job)
    entry = _streams.get(key)
    if entry is not None and entry[0]() is job:
        return entry[1]
    streams = _JobStreams()
    _streams[key] = (weakref.ref(job, lambda _ref: _streams.pop(key, None)), streams)
    return streams


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def mixer_for(job: Job) -> Mixer:
    """The MoA mixer of `job` (`train.moa_augs`, `train.moa_probs`) in this process (see `_streams_for`)."""
    streams = _streams_for(job)
    if streams.mixer is None:
        rng = np.random.default_rng([job.manual_seed or 0, _rank(), MOA_STREAM])
        streams.mixer = Mixer(job.train.moa_augs, job.train.moa_probs, job.scale, rng)
    return streams.mixer


def _pool_for(job: Job) -> PairPool | None:
    """The training-pair pool of `job` in this process, where its per_batch degradations run on the device."""
    cfg = job.datasets.train.degradations
    if cfg is None or cfg.otf_draws != "per_batch" or not cfg.queue_size or job.degrade_in_workers:
        return None
    streams = _streams_for(job)
    if streams.pool is None:
        seed = int(np.random.default_rng([job.manual_seed or 0, _rank(), POOL_STREAM]).integers(1 << 62))
        streams.pool = PairPool(cfg.queue_size, seed)
    return streams.pool


def lr_of(hr: torch.Tensor, job: Job) -> torch.Tensor:
    """The LR of HR-only data: `datasets.train.lq_resize_mode`'s resize as traiNNer-redux makes it (its resize_pt), or
    by default MATLAB's bicubic, what SR benchmarks and redux's paired data are made with."""
    mode = job.datasets.train.lq_resize_mode
    if mode is None:
        return imresize(hr, 1 / job.scale, kernel="bicubic").clamp_(0, 1)
    return otf_resize(hr, (hr.shape[-2] // job.scale, hr.shape[-1] // job.scale), mode)


def distills(job: Job) -> bool:
    """Whether a teacher's output replaces the HR target: traiNNer-redux's SRModel does so for data whose LR is given
    (paired data; here also the bicubic LR of HR-only data, which stands for it), without ECO. Its Real-ESRGAN models
    (on-the-fly LR) and its `lq_resize_mode` LR keep the HR."""
    cfg = job.datasets.train.degradations
    makes_lr = (cfg is not None and cfg.makes_lr) or job.datasets.train.lq_resize_mode is not None
    return job.network_g_teacher is not None and not job.train.eco.enabled and not makes_lr


def to_batch(
    item,
    job: Job,
    device: torch.device,
    mixer: Mixer | None = None,
    *,
    teacher: nn.Module | None = None,
    iteration: int = 1,
) -> Batch:
    """LR and targets, float in [0, 1] on `device`, from one loader item (see the module docstring). `mixer`: the
    MoA draws to use with `train.use_moa` (default: this process's stream for the job, `mixer_for`). `teacher`: the
    stage's `network_g_teacher` (distillation, ECO at `iteration`, the step being made, 1-based: train/eco.py)."""
    if isinstance(item, tuple) and isinstance(item[1], Plan):
        hr, lr = pair(_float(item[0], device), item[1])  # degrade the whole crop, then cut the pair
        pool = _pool_for(job)
        if pool is not None:  # per_batch draws: redux's training-pair pool mixes the batches (degrade/pool.py)
            hr, lr = pool.swap(hr, lr)
    elif isinstance(item, tuple):
        hr, lr = _float(item[0], device), _float(item[1], device)
    else:
        hr = _float(item, device)
        lr = lr_of(hr, job)
    if teacher is not None and distills(job):
        hr = teacher_sr(teacher, lr)
    if job.train.use_moa:
        hr, lr = (mixer or mixer_for(job))(hr, lr)
    real = hr  # what the discriminator sees as real, ECO or not (redux's `_real_hr`)
    eco = job.train.eco
    if teacher is not None and eco.enabled:  # the last step, as in redux
        alpha = eco_alpha(iteration, end_iteration(job.train.total_iter, eco.end_ratio))
        lr, hr = eco_mix(teacher, lr, hr, alpha, job.scale, eco.mode)
    cfg = job.datasets.train.degradations
    if cfg is None or not cfg.sharpens_gt:
        return Batch(lr, hr, hr, real)
    sharp = usm_sharpen(hr)  # Real-ESRGAN's USMSharp: radius 50, weight 0.5, threshold 10
    sharp_real = sharp if real is hr else usm_sharpen(real)
    return Batch(
        lr,
        sharp if cfg.l1_gt_usm else hr,
        sharp if cfg.percep_gt_usm else hr,
        sharp_real if cfg.gan_gt_usm else real,
    )
