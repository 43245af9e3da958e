"""Four traiNNer-redux training options (commit 686293190) srcluster acts on: path.pretrain_network_g_ema,
train.restart_scheduler, train.adaptive_d (with adaptive_d_ema_decay and adaptive_d_threshold) and negative loss
weights.

Expected values are derived from redux's code, as each test says: models/sr_model.py (init_training_settings builds
the EMA with `ema_model=`, optimize_parameters holds adaptive_d and the negative-weight target), models/base_model.py
(resume_training's restart_scheduler, l_g_gan_ema starting at 0.0) and ema-pytorch's `EMA.update`, which copies the
online model on the update that finds the EMA not yet initialised, whether or not an `ema_model` was given. Nothing
here imports redux.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.multiprocessing.spawn import start_processes

from srcluster.components import archs
from srcluster.config import parse_job
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.train import resume
from srcluster.train.batch import to_batch
from srcluster.train.state import Stage, build_stage, write_checkpoint
from srcluster.train.step import adaptive_d_skips, step_values, train_step

CPU = torch.device("cpu")
NETWORK = {"type": "compact", "num_feat": 8, "num_conv": 2}


def job(**overrides):
    data = {
        "name": "redux-options",
        "scale": 2,
        "manual_seed": 7,
        "datasets": {"train": {"dataroot_gt": "memory://none", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": NETWORK,
        "train": {"total_iter": 20, "losses": [{"type": "charbonnierloss"}], "optim_g": {"lr": 1e-3}},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_job(data)


def gan_job(**train):
    return job(
        network_d={"type": "unetdiscriminatorsn", "num_feat": 8},
        train={
            "total_iter": 20,
            "losses": [{"type": "charbonnierloss"}, {"type": "ganloss", "loss_weight": 0.1}],
            "optim_g": {"lr": 1e-3},
            **train,
        },
    )


def hr_batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return iter([torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(n)])


def built(config) -> Stage:
    return build_stage(config, CPU, log=lambda _: None)


def tensors(net: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in net.state_dict().values()]


def parameters(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- path.pretrain_network_g_ema --------------------------------------------------------------------------------------


def ema_file(folder: Path, layout: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A generator's weights unlike the stage's own (shifted by 1), as redux's files hold them: a plain safetensors
    file (save_network's default), a .pth with params_ema beside params, or a .pth with params alone."""
    torch.manual_seed(1)
    weights = {k: v + 1 for k, v in archs.build_generator("compact", 2, num_feat=8, num_conv=2).state_dict().items()}
    if layout == "safetensors":
        path = folder / "net_g_ema.safetensors"
        save_file(weights, str(path))
    elif layout == "params_ema":
        path = folder / "net_g_ema.pth"
        torch.save({"params": {k: v * 0 for k, v in weights.items()}, "params_ema": weights}, path)
    else:
        path = folder / "net_g.pth"
        torch.save({"params": weights}, path)
    return str(path), weights


@pytest.mark.parametrize("layout", ["safetensors", "params_ema", "params"])
def test_the_ema_starts_from_pretrain_network_g_ema_and_its_first_update_copies_g(tmp_path, layout):
    # redux: load_network(init_net_g_ema, path, strict_load_g, "params_ema") (params_ema where the file has it, else
    # the file's other layout), then EMA(net_g, ema_model=init_net_g_ema, ...): G keeps its own weights
    path, weights = ema_file(tmp_path, layout)
    stage = built(job(path={"pretrain_network_g_ema": path}, train={"ema_decay": 0.999}))
    assert stage.ema is not None
    for name, got in stage.ema.net.state_dict().items():
        assert torch.equal(got, weights[name]), name
    assert not any(torch.equal(got, weights[name]) for name, got in stage.raw_g.state_dict().items())
    # ema-pytorch's update: `if not self.initted: copy_params_from_model_to_ema(); ...; return`, ema_model or not
    train_step(stage, hr_batches(1), 1)
    assert stage.ema.step == 1
    assert same(tensors(stage.ema.net), tensors(stage.raw_g))


def test_pretrain_network_g_ema_is_not_read_without_an_ema(tmp_path):
    # redux builds (and loads) the EMA only when ema_decay > 0: a path that does not exist is never opened
    stage = built(job(path={"pretrain_network_g_ema": str(tmp_path / "missing.safetensors")}))
    assert stage.ema is None


def test_pretrain_network_g_ema_loads_as_strictly_as_strict_load_g(tmp_path):
    torch.manual_seed(1)
    wider = archs.build_generator("compact", 2, num_feat=16, num_conv=2).state_dict()
    save_file(wider, str(tmp_path / "wide.safetensors"))
    config = {"path": {"pretrain_network_g_ema": str(tmp_path / "wide.safetensors")}, "train": {"ema_decay": 0.999}}
    with pytest.raises(SrclusterError, match=r"^strict_load_g: pretrain .*wide.safetensors does not match the model"):
        built(job(**config))
    loose = built(job(**{**config, "path": {**config["path"], "strict_load_g": False}}))  # loads what matches
    assert loose.ema is not None


def test_a_resumed_ema_comes_from_the_checkpoint_not_from_pretrain_network_g_ema(tmp_path):
    source = built(job(train={"ema_decay": 0.999}))
    for batch in hr_batches(2):
        train_step(source, iter([batch]), 1)
    assert source.ema is not None
    folder = tmp_path / "checkpoint_0000002"
    folder.mkdir()
    write_checkpoint(source, folder)
    path, _ = ema_file(tmp_path, "safetensors")
    stage = built(job(path={"pretrain_network_g_ema": path, "resume_state": str(folder)}, train={"ema_decay": 0.999}))
    resume.start_from(stage, str(folder), StorageSettings.resolve(), log=lambda _: None)
    assert stage.ema is not None and stage.ema.step == source.ema.step == 2
    assert same(tensors(stage.ema.net), tensors(source.ema.net))


# --- train.restart_scheduler ------------------------------------------------------------------------------------------

LR = 1e-3
SAVED = {"milestones": [2], "gamma": 0.5}  # the run that saved: lr halved after step 2
CHANGED = {"milestones": [5], "gamma": 0.5}  # the rerun's config: lr halved after step 5


def lrs_run(stage: Stage, steps: int, seed: int = 1) -> list[float]:
    """The lr each of the next `steps` optimiser steps runs at."""
    used = []
    for batch in hr_batches(steps, seed=seed):
        used.append(stage.optim_g.param_groups[0]["lr"])
        train_step(stage, iter([batch]), 1)
    return used


def saved_at_4() -> dict:
    stage = built(job(train={"scheduler": SAVED}))
    assert lrs_run(stage, 4, seed=0) == pytest.approx([LR, LR, LR / 2, LR / 2])
    return stage.state()


@pytest.mark.parametrize("restart", [False, True])
def test_a_rerun_follows_its_changed_schedule_whatever_restart_scheduler_says(restart):
    """srcluster's rerun of a job continues from its own checkpoint with the job's schedule (a rerun may add
    milestones or raise total_iter): the config's schedule at the resumed iteration 4 (before its milestone [5]: the
    full lr), halved after step 5. restart_scheduler decides for `path.resume_state`, as redux's resume (below)."""
    state = saved_at_4()
    stage = built(job(train={"scheduler": CHANGED, "restart_scheduler": restart}))
    stage.load_state(state)  # a run's own checkpoint (Ray's restore), as a rerun with a new config reads it
    assert stage.iteration == 4
    assert lrs_run(stage, 3) == pytest.approx([LR, LR / 2, LR / 2])


# redux's resume_training without restart_scheduler: schedulers[i].load_state_dict(saved), milestones and all, so the
# saved [2] goes on and the config's [5] never applies; with it, the config's schedule at the resumed iteration
@pytest.mark.parametrize(("restart", "at_4"), [(False, LR / 2), (True, LR)])
def test_restart_scheduler_applies_to_resume_state_from_a_checkpoint(tmp_path, restart, at_4):
    source = built(job(train={"scheduler": SAVED}))
    lrs_run(source, 4, seed=0)
    write_checkpoint(source, tmp_path)
    stage = built(job(train={"scheduler": CHANGED, "restart_scheduler": restart}))
    lines: list[str] = []
    resume.start_from(stage, str(tmp_path), StorageSettings.resolve(), lines.append)
    assert stage.optim_g.param_groups[0]["lr"] == pytest.approx(at_4)
    schedule = "this job's schedule (restart_scheduler)" if restart else "the saved schedule"
    assert lines == [
        f"starting from {tmp_path} at iteration 4 (srcluster checkpoint); optimizer options from this job, {schedule}"
    ]


def redux_state(root: Path, iteration: int) -> Path:
    """What redux saves after `iteration` steps of G alone (save_network, save_training_state): models/net_g_<iter>
    and training_states/<iter>.state, its MultiStepLR at milestones [2], gamma 0.5, as an older torch saves it
    (`verbose`, no `_is_initial`)."""
    torch.manual_seed(11)
    net_g = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    optimizer = torch.optim.AdamW(net_g.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, **SAVED)
    for _ in range(iteration):
        optimizer.zero_grad()
        net_g(torch.rand(1, 3, 8, 8)).mean().backward()
        optimizer.step()
        scheduler.step()
    (root / "models").mkdir(parents=True)
    (root / "training_states").mkdir()
    save_file(net_g.state_dict(), str(root / "models" / f"net_g_{iteration}.safetensors"))
    saved = {k: v for k, v in scheduler.state_dict().items() if k != "_is_initial"} | {"verbose": False}
    state = {"epoch": 0, "iter": iteration, "optimizers": [optimizer.state_dict()], "schedulers": [saved]}
    path = root / "training_states" / f"{iteration}.state"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("restart", "expected"), [(False, [LR / 2, LR / 2, LR / 2]), (True, [LR, LR / 2, LR / 2])])
def test_restart_scheduler_applies_to_an_imported_redux_state(tmp_path, restart, expected):
    path = redux_state(tmp_path / "experiments" / "2x", 4)
    stage = built(job(train={"scheduler": CHANGED, "restart_scheduler": restart}))
    resume.start_from(stage, str(path), StorageSettings.resolve(), log=lambda _: None)
    assert stage.iteration == 4
    assert lrs_run(stage, 3) == pytest.approx(expected)


def test_a_restarted_warm_restarts_schedule_stands_where_it_would_have_from_the_start():
    # CosineAnnealingWarmRestarts counts within its cycle (T_cur), not only last_epoch: the restarted schedule goes on
    # as the job's would have from step 1 (torch's own scheduler, stepped from the start, gives the reference)
    scheduler = {"type": "CosineAnnealingWarmRestarts", "T_0": 3}
    state = built(job(train={"scheduler": {"type": "CosineAnnealingWarmRestarts", "T_0": 5}})).state()
    state["iteration"] = 4  # as if saved after 4 steps of a 5-iteration cycle
    stage = built(job(train={"scheduler": scheduler, "restart_scheduler": True}))
    stage.load_state(state)
    reference_optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=LR)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference_optimizer, T_0=3)
    expected = []
    for _ in range(4 + 5):
        expected.append(reference_optimizer.param_groups[0]["lr"])
        reference_optimizer.step()
        reference.step()
    assert lrs_run(stage, 5) == pytest.approx(expected[4:])


def test_an_unchanged_schedule_resumes_the_same_either_way():
    state = saved_at_4()
    runs = []
    for restart in (False, True):
        stage = built(job(train={"scheduler": SAVED, "restart_scheduler": restart}))
        stage.load_state(state)
        runs.append(lrs_run(stage, 3))
    assert runs[0] == runs[1] == pytest.approx([LR / 2] * 3)


# --- train.adaptive_d -------------------------------------------------------------------------------------------------


def test_adaptive_d_rule_on_a_sequence_of_gan_losses():
    # redux's optimize_parameters, per G pass: new = decay * ema + (1 - decay) * l_g_gan; skip D if new > ema *
    # threshold; ema = new. From ema 0.0 with decay 0.5 and threshold 1.02, by hand:
    #   l 1   -> 0.5       > 0        skip      l 1   -> 0.984375  > 0.988125   no: D trains
    #   l 1   -> 0.75      > 0.51     skip      l 0.5 -> 0.7421875 > 1.0040625  no
    #   l 1   -> 0.875     > 0.765    skip      l 2   -> 1.3710938 > 0.7570313  skip
    #   l 1   -> 0.9375    > 0.8925   skip      l 1.3 -> 1.3355469 > 1.3985156  no
    #   l 1   -> 0.96875   > 0.95625  skip
    stage = built(gan_job(adaptive_d=True, adaptive_d_ema_decay=0.5, adaptive_d_threshold=1.02))
    assert stage.gan_loss_ema is not None and stage.gan_loss_ema.item() == 0.0
    losses = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 2.0, 1.3]
    skips = [adaptive_d_skips(stage, torch.tensor(loss)).value() for loss in losses]
    assert skips == [True] * 5 + [False, False, True, False]
    assert stage.gan_loss_ema.item() == pytest.approx(1.3355469, abs=1e-6)


# Each rank's GAN losses: the same for five G passes, then rank 0's rises and rank 1's falls. Alone, rank 0 would skip
# D on the sixth (0.5 * 0.96875 + 0.5 * 1.5 = 1.234375 > 0.988125) and rank 1 not; their mean, 1.0, skips on neither.
RANK_LOSSES = [[1.0] * 5 + [1.5], [1.0] * 5 + [0.5]]


def adaptive_d_rank(rank: int, world: int, root: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root / 'rendezvous'}", rank=rank, world_size=world)
    try:
        stage = built(gan_job(adaptive_d=True, adaptive_d_ema_decay=0.5, adaptive_d_threshold=1.02))
        skips = [adaptive_d_skips(stage, torch.tensor(loss)).value() for loss in RANK_LOSSES[rank]]
        torch.save({"skips": skips, "ema": stage.gan_loss_ema}, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_adaptive_d_decides_on_the_mean_over_the_ranks(tmp_path):
    # under DDP every rank must skip the same D passes (D's backward all-reduces its gradients): the ranks' losses
    # are averaged, and redux's rule runs on the mean, the single-process loss of the whole batch
    start_processes(adaptive_d_rank, args=(2, tmp_path), nprocs=2, join=True, start_method="fork")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    means = [sum(losses) / 2 for losses in zip(*RANK_LOSSES, strict=True)]
    for result in results:
        assert result["skips"] == expected_skips(means, 0.5, 1.02) == [True] * 5 + [False]
        assert result["ema"].item() == pytest.approx(0.984375)


class Recorded(nn.Module):
    """The stage's GAN loss, recording G's unweighted values (what redux's EMA takes) as it goes."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss, self.g_values = loss, []

    def forward(self, logits, target_is_real, is_disc=False):
        value = self.loss(logits, target_is_real, is_disc=is_disc)
        if not is_disc:
            self.g_values.append(value.item())
        return value


def expected_skips(values: list[float], decay: float, threshold: float) -> list[bool]:
    """redux's rule, in float32 as its 0-d tensors compute it."""
    ema, skips = torch.tensor(0.0), []
    for value in values:
        moved = decay * ema + (1 - decay) * torch.tensor(value)
        skips.append(bool(moved > ema * threshold))
        ema = moved
    return skips


@pytest.mark.parametrize("accum", [1, 2])
def test_adaptive_d_skips_d_passes_and_update_as_redux(accum):
    decay, threshold = 0.5, 1.02
    stage = built(gan_job(adaptive_d=True, adaptive_d_ema_decay=decay, adaptive_d_threshold=threshold))
    assert stage.gan is not None and stage.raw_d is not None and stage.optim_d is not None
    recorded = Recorded(stage.gan[1])
    stage.gan = (stage.gan[0], recorded)
    d_passes = []
    stage.raw_d.register_forward_hook(lambda *_: d_passes.append(1))
    data = hr_batches(8 * accum)
    changed, skipped_values, passes = [], [], []
    for _ in range(8):
        # D's weights (G's GAN pass still moves its spectral-norm estimates, buffers, as redux's does)
        before = parameters(stage.raw_d)
        d_passes.clear()
        values = step_values(stage, train_step(stage, data, accum))
        changed.append(not same(before, parameters(stage.raw_d)))
        skipped_values.append(values["d_skipped"])
        passes.append(len(d_passes))
        assert ("grad_norm_d" in values) == changed[-1]  # redux logs D's norm only with D's step
    skips = expected_skips(recorded.g_values, decay, threshold)
    per_step = [skips[i : i + accum] for i in range(0, len(skips), accum)]
    assert skips[0] and not all(skips)  # from 0.0 the first G pass always skips D; later ones train it here
    assert changed == [not step[-1] for step in per_step]  # D's update goes with the last micro-batch's decision
    assert skipped_values == [sum(step) / accum for step in per_step]
    # every micro-batch: one D pass for G's GAN loss, and real + fake for D's own loss unless skipped
    assert passes == [sum(1 if skip else 3 for skip in step) for step in per_step]


def test_adaptive_d_skip_waits_on_ds_schedule():
    # redux marks D's optimizer skipped; update_learning_rate steps only the schedulers of optimizers not skipped.
    # D's milestone at 1: the first step skips D (ema 0.0), so its lr halves only after the first step D takes.
    stage = built(gan_job(adaptive_d=True, adaptive_d_ema_decay=0.5, scheduler={"milestones": [1], "gamma": 0.5}))
    assert stage.optim_d is not None and stage.gan is not None
    recorded = Recorded(stage.gan[1])
    stage.gan = (stage.gan[0], recorded)
    data = hr_batches(8)
    d_lrs, skipped = [], []
    for _ in range(8):
        skipped.append(step_values(stage, train_step(stage, data, 1))["d_skipped"] == 1.0)
        d_lrs.append(stage.optim_d.param_groups[0]["lr"])
    assert skipped == expected_skips(recorded.g_values, 0.5, 1.02)
    taken = skipped.index(False)  # the first step D took
    assert d_lrs == [LR] * taken + [LR / 2] * (8 - taken)
    assert stage.optim_g.param_groups[0]["lr"] == LR / 2  # G's schedule stepped every step


def test_adaptive_d_ema_is_checkpointed_and_continues_on_resume():
    stage = built(gan_job(adaptive_d=True))
    data = hr_batches(3)
    for _ in range(3):
        train_step(stage, data, 1)
    assert stage.gan_loss_ema is not None and stage.gan_loss_ema.item() > 0
    state = stage.state()
    assert torch.equal(state["gan_loss_ema"], stage.gan_loss_ema)
    resumed = built(gan_job(adaptive_d=True))
    resumed.load_state(state)
    assert resumed.gan_loss_ema is not None and torch.equal(resumed.gan_loss_ema, stage.gan_loss_ema)
    # without adaptive_d there is nothing to keep, and no d_skipped step value
    plain = built(gan_job())
    assert plain.gan_loss_ema is None and "gan_loss_ema" not in plain.state()
    assert "d_skipped" not in train_step(plain, hr_batches(1), 1)


# --- negative loss_weight ---------------------------------------------------------------------------------------------


def charbonnier(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((a - b) ** 2 + 1e-12).mean()  # redux's charbonnier_loss, eps 1e-12, mean


def losses_of(config, batch: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The step's loss values on `batch`, with G's output before the step and the step's LR input."""
    stage = built(config)
    lr = to_batch(batch, stage.job, CPU).lr
    with torch.no_grad():
        sr = stage.raw_g(lr).float()
    return step_values(stage, train_step(stage, iter([batch]), 1)), sr, lr


def test_a_negative_weight_compares_with_the_bicubic_upscale_of_the_lr():
    # redux: for loss_weight < 0, target = clamp(F.interpolate(lq, scale_factor=scale, mode="bicubic",
    # antialias=True), 0, 1), and the term is |loss_weight| * loss(output, target)
    batch = next(hr_batches(1))
    mixed = [{"type": "charbonnierloss", "loss_weight": -1.0}, {"type": "l1loss", "loss_weight": 0.5}]
    values, sr, lr = losses_of(job(train={"losses": mixed}), batch)
    upscaled = torch.clamp(F.interpolate(lr, scale_factor=2, mode="bicubic", antialias=True), 0, 1)
    hr = batch.float() / 255
    assert values["l_g_charbonnier"] == pytest.approx(charbonnier(sr, upscaled).item(), rel=1e-5)
    assert values["l_g_l1"] == pytest.approx(0.5 * (sr - hr).abs().mean().item(), rel=1e-5)  # a positive one: the GT
    assert values["l_g_total"] == pytest.approx(values["l_g_charbonnier"] + values["l_g_l1"], rel=1e-6)
    # the weight's size scales the term as a positive weight would
    halved, _, _ = losses_of(job(train={"losses": [{"type": "charbonnierloss", "loss_weight": -0.5}]}), batch)
    assert halved["l_g_charbonnier"] == pytest.approx(0.5 * values["l_g_charbonnier"], rel=1e-6)
    # not the GT: the same loss with weight 1 differs
    positive, _, _ = losses_of(job(), batch)
    assert positive["l_g_charbonnier"] == pytest.approx(charbonnier(sr, hr).item(), rel=1e-5)
    assert not math.isclose(positive["l_g_charbonnier"], values["l_g_charbonnier"], rel_tol=1e-3)
