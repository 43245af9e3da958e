"""Resuming as users expect: a run is its name plus what makes the model; training options may change between reruns
(the run continues from its checkpoint and follows the new schedule); `path.resume_state` starts a new run from an
srcluster checkpoint or imports a traiNNer-redux `.state` with its networks, or refuses it in one line."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from srcluster.components import archs
from srcluster.config import parse_job
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.tracking import tags
from srcluster.train import resume
from srcluster.train.stage import (
    identity_tag,
    option_changes,
    run_identity,
    run_key,
    run_params,
    say_what_changed,
    trained_far_enough,
)
from srcluster.train.state import build_stage, write_checkpoint
from srcluster.train.step import train_step

pytestmark = pytest.mark.usefixtures("single_thread")

NETWORK = {"type": "compact", "num_feat": 8, "num_conv": 2}


def job(**overrides):
    data = {
        "name": "identity",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": "memory://train", "lq_size": 8, "batch_size_per_gpu": 2}},
        "network_g": NETWORK,
        "train": {"total_iter": 10, "ema_decay": 0.9, "losses": [{"type": "charbonnierloss"}]},
        "logger": {"print_freq": 5},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_job(data)


def hr_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, 16, 16), generator=g, dtype=torch.uint8) for _ in range(n)]


def trained(config, steps: int):
    stage = build_stage(config, torch.device("cpu"), log=lambda _: None)
    for batch in hr_batches(steps):
        train_step(stage, iter([batch]), 1)
    return stage


# --- the run's identity -----------------------------------------------------------------------------------------------

SAME_MODEL = {
    "total_iter": {"train": {"total_iter": 40}},
    "milestones": {"train": {"scheduler": {"milestones": [5, 8]}}},
    "val_freq": {"val": {"val_freq": 7}},
    "print_freq": {"logger": {"print_freq": 3}},
    "lr": {"train": {"optim_g": {"lr": 1e-4}}},
    "workers": {"srcluster": {"workers": 4}},
}


@pytest.mark.parametrize("change", SAME_MODEL.values(), ids=SAME_MODEL.keys())
def test_training_options_keep_the_run(change):
    assert run_key(job(**change)) == run_key(job())


OTHER_MODEL = {
    "arch": ({"network_g": {**NETWORK, "type": "superultracompact"}}, "network_g.type compact -> superultracompact"),
    "arch option": ({"network_g": {**NETWORK, "num_feat": 16}}, "network_g.num_feat 8 -> 16"),
    "scale": ({"scale": 4}, "scale 2 -> 4"),
    "data": (
        {"datasets": {"train": {"dataroot_gt": "memory://other", "lq_size": 8, "batch_size_per_gpu": 2}}},
        "datasets.train.dataroot_gt memory://train -> memory://other",
    ),
    "pretrain": (
        {"path": {"pretrain_network_g": "net.safetensors"}},
        "path.pretrain_network_g none -> net.safetensors",
    ),
}


@pytest.mark.parametrize(("change", "named"), OTHER_MODEL.values(), ids=OTHER_MODEL.keys())
def test_a_changed_model_starts_a_new_run_and_says_what_changed(change, named):
    before, after = job(), job(**change)
    assert run_key(after) != run_key(before)
    earlier = SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(tags={tags.IDENTITY: identity_tag(run_identity(before))}),
    )
    tracker: Any = SimpleNamespace(  # the one Tracker call it makes: the stage's latest run
        find_run=lambda experiment, match: earlier if match == {tags.STAGE: "identity"} else None
    )
    lines = []
    say_what_changed(after, tracker, "identity", lines.append)
    expected = f"identity: the model changed since MLflow run r1 ({named}): starting a new run (the earlier run "
    assert lines == [expected + "keeps its checkpoints)"]


def test_the_discriminator_counts_only_when_a_gan_loss_trains_it():
    gan_losses = [{"type": "charbonnierloss"}, {"type": "ganloss", "loss_weight": 0.1}]
    d = {"type": "unetdiscriminatorsn", "num_feat": 8}
    plain = job(network_d=d)
    assert run_key(plain) == run_key(job(network_d={**d, "num_feat": 16}))  # no ganloss: D is never built
    gan = job(network_d=d, train={"losses": gan_losses})
    assert run_key(gan) != run_key(job(network_d={**d, "num_feat": 16}, train={"losses": gan_losses}))
    assert run_key(gan) != run_key(plain)


def test_a_long_dataset_list_fits_an_mlflow_tag_and_still_shows_a_change():
    shards = [f"s3://bucket/train/shard-{i:05d}.tar" for i in range(400)]
    data = {"train": {"dataroot_gt": shards, "lq_size": 8, "batch_size_per_gpu": 2}}
    tag = identity_tag(run_identity(job(datasets=data)))
    assert len(tag) < 5000
    other = job(datasets={"train": {**data["train"], "dataroot_gt": shards[:-1]}})
    earlier = SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=SimpleNamespace(tags={tags.IDENTITY: tag}))
    lines = []
    tracker: Any = SimpleNamespace(find_run=lambda *_: earlier)
    say_what_changed(other, tracker, "identity", lines.append)
    assert "datasets.train.dataroot_gt sha256:" in lines[0]


def test_a_finished_run_is_reused_only_when_it_trained_as_far_as_asked():
    def finished(**run_tags):
        return SimpleNamespace(data=SimpleNamespace(tags={tags.CHECKPOINT_URI: "s3://b/c", **run_tags}))

    assert trained_far_enough(finished(**{tags.TOTAL_ITER: "10", tags.ITERATIONS: "6"}), job())  # plateau stop at 6
    assert not trained_far_enough(finished(**{tags.TOTAL_ITER: "10"}), job(train={"total_iter": 20}))
    assert not trained_far_enough(SimpleNamespace(data=SimpleNamespace(tags={tags.TOTAL_ITER: "10"})), job())


def test_the_continuing_line_names_the_changed_training_options():
    before = {k: str(v) for k, v in run_params(job()).items()}
    changed = option_changes(before, job(train={"total_iter": 20, "scheduler": {"milestones": [15]}}))
    assert changed == ["train.scheduler.milestones [] -> [15]", "train.total_iter 10 -> 20"]
    assert option_changes(before, job(srcluster={"workers": 3})) == []


# --- the schedule follows the config after a restore --------------------------------------------------------------


def test_a_milestone_added_before_the_checkpoint_applies_on_resume():
    state = trained(job(), 4).state()
    later = job(train={"scheduler": {"milestones": [2], "gamma": 0.5}, "total_iter": 20})
    stage = build_stage(later, torch.device("cpu"))
    stage.load_state(state)
    assert stage.iteration == 4
    assert stage.optim_g.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5)


def test_a_raised_total_iter_stretches_the_cosine_from_the_checkpoint():
    cosine = {"type": "CosineAnnealingLR"}
    state = trained(job(train={"scheduler": cosine, "total_iter": 8}), 4).state()
    stage = build_stage(job(train={"scheduler": cosine, "total_iter": 16}), torch.device("cpu"))
    stage.load_state(state)
    assert stage.optim_g.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 4 / 16)))


def test_an_unchanged_schedule_resumes_bit_for_bit():
    cosine = {"type": "CosineAnnealingLR"}
    a = trained(job(train={"scheduler": cosine}), 3)
    b = build_stage(job(train={"scheduler": cosine}), torch.device("cpu"))
    b.load_state(a.state())
    assert b.optim_g.param_groups[0]["lr"] == a.optim_g.param_groups[0]["lr"]


# --- path.resume_state: srcluster checkpoints -------------------------------------------------------------------------


def test_resume_state_from_an_srcluster_checkpoint_folder(tmp_path):
    source = trained(job(), 4)
    folder = tmp_path / "checkpoint_0000004"
    folder.mkdir()
    write_checkpoint(source, folder)
    target = job(path={"resume_state": str(folder)}, train={"total_iter": 12})
    stage = build_stage(target, torch.device("cpu"))
    lines = []
    resume.start_from(stage, str(folder), StorageSettings.resolve(), lines.append)
    assert source.ema is not None and stage.ema is not None
    assert stage.iteration == 4 and stage.ema.step == source.ema.step
    for a, b in zip(source.raw_g.parameters(), stage.raw_g.parameters(), strict=True):
        assert torch.equal(a, b)
    expected = f"starting from {folder} at iteration 4 (srcluster checkpoint); optimizer options from this job"
    assert lines == [f"{expected}, the saved schedule"]


def test_resume_state_refuses_another_architecture_and_a_finished_state(tmp_path):
    source = trained(job(), 4)
    write_checkpoint(source, tmp_path)
    settings = StorageSettings.resolve()
    other = build_stage(job(network_g={**NETWORK, "num_feat": 16}), torch.device("cpu"))
    with pytest.raises(SrclusterError, match=r"^path.resume_state .*: net_g does not fit network_g \(.*shape"):
        resume.start_from(other, str(tmp_path), settings)
    short = build_stage(job(train={"total_iter": 4}), torch.device("cpu"))
    with pytest.raises(SrclusterError, match=r"it is at iteration 4, train\.total_iter is 4: raise total_iter$"):
        resume.start_from(short, str(tmp_path), settings)
    with pytest.raises(SrclusterError, match=r"no state\.pt there"):
        resume.start_from(short, str(tmp_path / "nothing"), settings)


# --- path.resume_state: traiNNer-redux states -------------------------------------------------------------------------


def redux_experiment(root: Path, *, iteration=6, optimizer=torch.optim.AdamW, discriminator=False, ema=True):
    """What traiNNer-redux leaves after `iteration` steps (models/base_model.py: save_network, save_training_state):
    training_states/<iter>.state, models/net_g_ema_<iter>.safetensors and models/resume_models/net_{g,d}_<iter>."""
    torch.manual_seed(11)
    net_g = archs.build_generator("compact", 2, num_feat=8, num_conv=2)
    nets = [net_g] + ([archs.build_discriminator("unetdiscriminatorsn", num_feat=8)] if discriminator else [])
    optimizers = [optimizer(net.parameters(), lr=2e-4) for net in nets]
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=[100], gamma=0.5) for o in optimizers]
    for _ in range(iteration):
        for net, o, s in zip(nets, optimizers, schedulers, strict=True):
            o.zero_grad()
            x = torch.rand(1, 3, 16, 16) if net is not net_g else torch.rand(1, 3, 8, 8)
            net(x).mean().backward()
            o.step()
            s.step()
    models = root / "models"
    (models / "resume_models").mkdir(parents=True)
    (root / "training_states").mkdir()
    if ema:
        ema_weights = {k: v * 0.5 for k, v in net_g.state_dict().items()}  # tell the EMA apart from G
        save_file(ema_weights, models / f"net_g_ema_{iteration}.safetensors")
        torch.save({"params": net_g.state_dict()}, models / "resume_models" / f"net_g_{iteration}.pth")
    else:
        save_file(net_g.state_dict(), models / f"net_g_{iteration}.safetensors")
    if discriminator:
        save_file(nets[1].state_dict(), models / "resume_models" / f"net_d_{iteration}.safetensors")
    state = {
        "epoch": 0,
        "iter": iteration,
        "optimizers": [o.state_dict() for o in optimizers],
        "schedulers": [s.state_dict() for s in schedulers],
        "ema_step": torch.tensor(iteration),
    }
    path = root / "training_states" / f"{iteration}.state"
    torch.save(state, path)
    return path, nets, optimizers


@pytest.mark.parametrize("restart", [True, False])
def test_a_redux_state_is_imported_with_its_networks(tmp_path, restart):
    path, (net_g,), (optimizer,) = redux_experiment(tmp_path / "experiments" / "4x_compact")
    schedule = {"milestones": [4], "gamma": 0.5}
    config = job(
        path={"resume_state": str(path)}, train={"total_iter": 20, "scheduler": schedule, "restart_scheduler": restart}
    )
    stage = build_stage(config, torch.device("cpu"))
    resume.start_from(stage, str(path), StorageSettings.resolve(), lambda _: None)
    assert stage.iteration == 6
    for a, b in zip(net_g.parameters(), stage.raw_g.parameters(), strict=True):
        assert torch.equal(a, b)
    assert stage.ema is not None and stage.ema.step == 6
    for (name, a), b in zip(net_g.state_dict().items(), stage.ema.net.state_dict().values(), strict=True):
        assert torch.equal(a * 0.5, b), name
    ours, theirs = stage.optim_g.state_dict()["state"], optimizer.state_dict()["state"]
    assert all(torch.equal(ours[i]["exp_avg"], theirs[i]["exp_avg"]) for i in theirs)
    # restart_scheduler: this job's milestone at 4; else, as redux by default, the saved schedule (its milestone at 100)
    assert stage.optim_g.param_groups[0]["lr"] == pytest.approx(1e-4 if restart else 2e-4)
    train_step(stage, iter(hr_batches(1)), 1)
    assert stage.iteration == 7


def test_a_redux_state_of_another_optimizer_family_imports_when_the_job_names_it(tmp_path):
    path, _, (optimizer,) = redux_experiment(tmp_path, optimizer=torch.optim.NAdam)
    stage = build_stage(job(train={"optim_g": {"type": "nadam", "lr": 2e-4}}), torch.device("cpu"))
    resume.start_from(stage, str(path), StorageSettings.resolve(), lambda _: None)
    saved = optimizer.state_dict()["state"]
    assert stage.iteration == 6 and isinstance(stage.optim_g, torch.optim.NAdam)
    assert all(torch.equal(stage.optim_g.state_dict()["state"][i]["exp_avg"], saved[i]["exp_avg"]) for i in saved)


def test_a_redux_state_without_ema_starts_the_ema_from_net_g(tmp_path):
    path, (net_g,), _ = redux_experiment(tmp_path, ema=False)
    stage = build_stage(job(), torch.device("cpu"))
    resume.start_from(stage, str(path), StorageSettings.resolve(), lambda _: None)
    assert stage.ema is not None and stage.ema.step == 0
    assert all(torch.equal(a, b) for a, b in zip(net_g.parameters(), stage.ema.net.parameters(), strict=True))


REFUSALS = {
    "gan state, no ganloss": (
        {"discriminator": True},
        {},
        "it trained a discriminator and this job has no ganloss: its D and D optimizer cannot be carried over",
    ),
    "another optimizer": (
        {"optimizer": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)},
        {},
        (
            r"optimizers\[0\] is the state of another optimizer \(it keeps momentum_buffer, which AdamW does not\): "
            r"set train.optim_g/optim_d.type to the one it trained with$"
        ),
    ),
    "another arch": (
        {},
        {"network_g": {**NETWORK, "num_conv": 4}},
        r"net_g does not fit network_g \(body.7.weight missing; .*; 4 more\): it cannot be carried over$",
    ),
}


@pytest.mark.parametrize(("experiment", "change", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_redux_state_that_does_not_fit_is_refused_in_one_line(tmp_path, experiment, change, message):
    path, _, _ = redux_experiment(tmp_path, **experiment)
    config = job(**change, path={"resume_state": str(path)})
    with pytest.raises(SrclusterError, match=f"^path.resume_state {path}: {message}") as caught:
        resume.check(config, StorageSettings.resolve())  # what the driver runs before Ray starts
    assert "\n" not in str(caught.value)


def test_a_redux_state_without_its_network_files_names_where_it_looked(tmp_path):
    path, _, _ = redux_experiment(tmp_path)
    (tmp_path / "models" / "resume_models" / "net_g_6.pth").unlink()
    stage = build_stage(job(), torch.device("cpu"))
    with pytest.raises(SrclusterError, match=f"no net_g_6.safetensors or .pth in {tmp_path}/models or"):
        resume.start_from(stage, str(path), StorageSettings.resolve())


def test_resume_state_replaces_the_pretrain_with_a_warning():
    config = job(path={"resume_state": "x/training_states/6.state", "pretrain_network_g": "net.safetensors"})
    assert any("path.pretrain_network_g: replaced by the networks of path.resume_state" in w for w in config.warnings)
