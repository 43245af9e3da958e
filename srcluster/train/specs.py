"""A job -> the small specs its components and its data are built from. The only place that reads the job schema for
them: `build_stage` builds from `stage_specs(job)`, the worker and the Tune trial load data from `train_data(job)`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from srcluster.components.specs import EMASpec, LossSpec, NetworkSpec, OptimizerSpec, PretrainSpec, SchedulerSpec
from srcluster.config import Job, Network, Optimizer
from srcluster.data.spec import TrainData


@dataclass(frozen=True)
class StageSpecs:
    scale: int
    seed: int
    generator: NetworkSpec
    losses: tuple[LossSpec, ...]  # the terms with a weight > 0, in the job's order
    optim_g: OptimizerSpec
    scheduler: SchedulerSpec
    ema: EMASpec | None  # None: no EMA (ema_decay 0)
    pretrain_g: PretrainSpec | None = None  # path as configured (a URL or models:/ URI is resolved by build_stage)
    discriminator: NetworkSpec | None = None  # only with a ganloss
    optim_d: OptimizerSpec | None = None
    pretrain_d: PretrainSpec | None = None


def network_spec(network: Network) -> NetworkSpec:
    return NetworkSpec(network.type, network.options())


def optimizer_spec(options: Optimizer) -> OptimizerSpec:
    return OptimizerSpec(options.type, options.lr, options.weight_decay, options.betas)


def stage_specs(job: Job) -> StageSpecs:
    train, path = job.train, job.path
    losses = tuple(LossSpec(loss.type, loss.loss_weight, loss.options()) for loss in train.losses if loss.loss_weight)
    gan = any(loss.type == "ganloss" for loss in losses)
    scheduler = SchedulerSpec(
        train.scheduler.type,
        train.total_iter,
        tuple(train.scheduler.milestones),
        train.scheduler.gamma,
        train.scheduler.eta_min,
        train.warmup_iter,
    )
    specs = StageSpecs(
        scale=job.scale,
        seed=job.manual_seed or 0,
        generator=network_spec(job.network_g),
        losses=losses,
        optim_g=optimizer_spec(train.optim_g),
        scheduler=scheduler,
        ema=EMASpec(train.ema_decay, train.ema_power) if train.ema_decay > 0 else None,
        pretrain_g=PretrainSpec(path.pretrain_network_g, path.param_key_g, path.strict_load_g)
        if path.pretrain_network_g
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
        num_workers=data.num_worker_per_gpu,
        seed=job.manual_seed or 0,
        use_hflip=data.use_hflip,
        use_rot=data.use_rot,
        degradations=data.degradations,
        degrade_in_workers=job.degrade_in_workers,
    )
