"""A job -> the small specs its components and its data are built from. The only place that reads the job schema for
them: `build_stage` builds from `stage_specs(job)`, the worker and the Tune trial load data from `train_data(job)`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from srcluster.components.specs import (
    GAN_LOSS_TYPES,
    EMASpec,
    LossSpec,
    NetworkSpec,
    OptimizerSpec,
    PretrainSpec,
    SchedulerSpec,
)
from srcluster.config import Job, Network, Optimizer
from srcluster.data.spec import DataPath, DataSizing, TrainData, per_core_rate, step_rate


@dataclass(frozen=True)
class StageSpecs:
    scale: int
    seed: int
    generator: NetworkSpec
    losses: tuple[LossSpec, ...]  # the terms with a nonzero weight (< 0: against the LR's bicubic), in the job's order
    optim_g: OptimizerSpec
    scheduler: SchedulerSpec
    ema: EMASpec | None  # None: no EMA (ema_decay 0)
    pretrain_g: PretrainSpec | None = None  # path as configured (a URL or models:/ URI is resolved by build_stage)
    pretrain_g_ema: PretrainSpec | None = None  # the EMA's starting weights; only with an EMA
    discriminator: NetworkSpec | None = None  # only with a ganloss
    optim_d: OptimizerSpec | None = None
    pretrain_d: PretrainSpec | None = None


def network_spec(network: Network) -> NetworkSpec:
    return NetworkSpec(network.type, network.options())


def optimizer_spec(options: Optimizer) -> OptimizerSpec:
    return options.spec()


def stage_specs(job: Job) -> StageSpecs:
    train, path = job.train, job.path
    losses = tuple(LossSpec(loss.type, loss.loss_weight, loss.options()) for loss in train.losses if loss.loss_weight)
    gan = any(loss.type in GAN_LOSS_TYPES for loss in losses)
    scheduler = SchedulerSpec.of(
        train.scheduler.type, train.total_iter, train.warmup_iter, train.scheduler.given(), train.optim_g.lr
    )
    specs = StageSpecs(
        scale=job.scale,
        seed=job.manual_seed or 0,
        generator=network_spec(job.network_g),
        losses=losses,
        optim_g=optimizer_spec(train.optim_g),
        scheduler=scheduler,
        ema=EMASpec(train.ema_decay, train.ema_power, train.ema_update_after_step, train.ema_switch_iter)
        if train.ema_decay > 0
        else None,
        pretrain_g=PretrainSpec(path.pretrain_network_g, path.param_key_g, path.strict_load_g)
        if path.pretrain_network_g
        else None,
        # redux loads it with strict_load_g and the key params_ema, falling back to the file's other layouts: what
        # no param_key does here (params_ema first)
        pretrain_g_ema=PretrainSpec(path.pretrain_network_g_ema, None, path.strict_load_g)
        if path.pretrain_network_g_ema and train.ema_decay > 0
        else None,
    )
    if not gan:
        return specs
    assert job.network_d is not None  # the config validator guarantees it
    return replace(
        specs,
        discriminator=network_spec(job.network_d),
        optim_d=optimizer_spec(train.optim_d or train.optim_g),
        pretrain_d=PretrainSpec(path.pretrain_network_d, path.param_key_d, path.strict_load_d)
        if path.pretrain_network_d
        else None,
    )


def train_data(job: Job, world: int) -> TrainData:
    """The training loader's spec on `world` workers (the per-worker batch follows the job's batch plan)."""
    data = job.datasets.train
    batch_size, _ = job.batch_plan(world)
    return TrainData(
        dataroot_gt=data.dataroot_gt,
        dataroot_lq=data.dataroot_lq,
        crop=data.lq_size * job.scale,
        batch_size=batch_size,
        scale=job.scale,
        num_workers=size_data(job).workers,  # num_worker_per_gpu unless srcluster.loader_workers says otherwise
        seed=job.manual_seed or 0,
        use_hflip=data.use_hflip,
        use_rot=data.use_rot,
        degradations=data.degradations,
        degrade_in_workers=job.degrade_in_workers,
        crops_per_tile=job.srcluster.crops_per_tile,
    )


# --- how much data a job's GPU eats, and how many loader cores make it (rates: data/spec.py) ----------------------


def data_path(job: Job) -> DataPath:
    """How the job's LR is made, which decides what a loader core does per sample. Paired LR mixed into on-the-fly LR
    (`dataroot_lq_prob`) is costed as its on-the-fly path, the expensive one: an upper bound (a paired batch is not
    degraded), so the loader cores it asks for never starve the GPU."""
    data = job.datasets.train
    if data.degradations is not None and data.degradations.makes_lr:
        return "otf-workers" if job.degrade_in_workers else "otf-device"
    if data.dataroot_lq is not None:
        return "paired"
    return "bicubic"


def size_data(job: Job) -> DataSizing:
    """The job's data rates and loader workers.

    `srcluster.loader_workers` decides the workers: unset, `datasets.train.num_worker_per_gpu` (traiNNer-redux's key,
    as before); a number, that many; `auto`, the cores the GPU's rate needs (`cores`), at most cpus_per_worker - 1
    (one CPU runs the step). Where the need is unknown (an architecture without a step rate, or training on CPUs)
    auto takes all cpus_per_worker - 1: a worker waiting on a full prefetch queue costs no CPU, a starved GPU does.
    """
    data, cluster = job.datasets.train, job.srcluster
    path = data_path(job)
    per_core = per_core_rate(path, data.lq_size * job.scale, job.scale, cluster.crops_per_tile)
    rate = step_rate(job.network_g.type, data.lq_size) if cluster.use_gpu else None
    # a worker with a share of a GPU (gpus_per_worker < 1) feeds only its share of the GPU's rate
    needed = None if rate is None or not cluster.gpus_per_worker else rate * min(1.0, cluster.gpus_per_worker)
    rates = DataSizing(job.network_g.type, path, cluster.crops_per_tile, per_core, needed, 0, "")
    setting = cluster.loader_workers
    if setting is None:
        return replace(rates, workers=data.num_worker_per_gpu, source="datasets.train.num_worker_per_gpu")
    if setting == "auto":
        spare = max(0, math.floor(cluster.cpus_per_worker) - 1)
        workers = spare if rates.cores is None else min(spare, rates.cores)
        return replace(rates, workers=workers, source="srcluster.loader_workers: auto")
    return replace(rates, workers=setting, source="srcluster.loader_workers")


def crops_to_fit(job: Job, cores: int, most: int = 32) -> int | None:
    """The fewest crops per tile, above the job's, at which `cores` loader cores keep up with its GPU; None: none up
    to `most` (the schema's limit) does, or the need is unknown."""
    sizing = size_data(job)
    if sizing.needed is None or cores < 1:
        return None
    crop = job.datasets.train.lq_size * job.scale
    for k in range(sizing.crops_per_tile + 1, most + 1):
        if cores * per_core_rate(sizing.path, crop, job.scale, k) >= sizing.needed:
            return k
    return None
