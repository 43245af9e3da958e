"""`srcluster tune`: the search file, and real searches on Ray Tune (S3 shards, Ray Train trials, MLflow registry)."""

from __future__ import annotations

import copy

import pytest
import yaml

from helpers.drivers import kill_when
from srcluster.config import ConfigError
from srcluster.tune.space import parse_search

TRAIN, VAL = "s3://srcluster/tune-e2e/train", "s3://srcluster/tune-e2e/val"


def gan_job(**overrides) -> dict:
    job = {
        "name": "tunegan",
        "scale": 2,
        "manual_seed": 3,
        "datasets": {"train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
                     "val": {"dataroot_gt": VAL}},
        "network_g": {"type": "superultracompact"},
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {"total_iter": 8, "optim_g": {"lr": 1.0e-3}, "optim_d": {"lr": 1.0e-4},
                  "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}, {"type": "hsluvloss", "loss_weight": 0.5},
                             {"type": "ganloss", "loss_weight": 0.1}]},
        "val": {"val_freq": 4, "metrics": {"psnr": {"type": "calculate_psnr", "test_y_channel": True}}},
        "logger": {"print_freq": 4, "save_checkpoint_freq": 4},
        "srcluster": {"workers": 2, "cpus_per_worker": 1},
    }
    job.update(overrides)
    return job


def search_file(tmp_path, job: dict | None = None, **overrides) -> dict:
    path = tmp_path / "base.yml"
    path.write_text(yaml.safe_dump(job or gan_job()))
    search = {"name": "tg", "base": {"job": str(path)},
              "space": {"train.optim_g.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                        "train.losses.ganloss.loss_weight": {"uniform": [0.01, 0.2]},
                        "datasets.train": {"choice": [{"lq_size": 16, "batch_size_per_gpu": 2},
                                                      {"lq_size": 8, "batch_size_per_gpu": 4}]},
                        "train.optim_g.betas": {"choice": [[0.9, 0.99], [0.5, 0.9]]},
                        "network_d.type": {"choice": ["unetdiscriminatorsn", "patchgan"]}}}
    search.update(overrides)
    return search


# --- the search file --------------------------------------------------------------------------------------------------


def test_space_maps_dotted_paths_into_the_job(tmp_path):
    search = parse_search(search_file(tmp_path), "s.yml")
    assert search.metric == "val_psnr" and search.mode == "max"  # no DISTS/LPIPS weights on this machine
    sampled = {"train.optim_g.lr": 3e-4, "train.losses.ganloss.loss_weight": 0.05, "datasets.train": 1,
               "train.optim_g.betas": 1, "network_d.type": "patchgan"}
    job = search.trial_job(sampled, "tg-t1")
    assert job.train.optim_g.lr == 3e-4 and job.train.optim_g.betas == (0.5, 0.9)
    assert [(l.type, l.loss_weight) for l in job.train.losses] == [("charbonnierloss", 1.0), ("hsluvloss", 0.5),
                                                                   ("ganloss", 0.05)]
    assert (job.datasets.train.lq_size, job.datasets.train.batch_size_per_gpu) == (8, 4)
    assert job.datasets.train.dataroot_gt == TRAIN  # merged into the section, not replacing it
    assert job.network_d.type == "patchgan" and job.name == "tg-t1"
    # every report carries the objective, so the trial reports (and checkpoints) at each validation
    assert job.logger.print_freq == job.logger.save_checkpoint_freq == job.val.val_freq == 4
    assert search.dists["datasets.train"].by_index and not search.dists["network_d.type"].by_index
    spec = search_file(tmp_path)
    spec["base"]["overrides"] = {"val.val_freq": 2, "train.losses.hsluvloss.loss_weight": 0.25}
    fixed = parse_search(spec, "s.yml").trial_job({"train.optim_g.lr": 1e-3}, "t")
    assert fixed.val.val_freq == 2 and fixed.train.losses[1].loss_weight == 0.25 and fixed.logger.print_freq == 2


def test_default_objective_is_perceptual_when_its_weights_are_here(tmp_path, monkeypatch):
    from helpers.fake_weights import fake_torch_home

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert parse_search(search_file(tmp_path), "s.yml").metric == "val_psnr"
    monkeypatch.setenv("TORCH_HOME", str(fake_torch_home(tmp_path / "torch", ("vgg16",), seed=0)))
    search = parse_search(search_file(tmp_path), "s.yml")
    assert (search.metric, search.mode) == ("val_dists", "min")
    assert search.trial_job({"train.optim_g.lr": 1e-3}, "t").val.metrics["dists"].type == "dists"
    # an explicit objective wins, in the direction its metric says is better
    assert parse_search(search_file(tmp_path, metric="val_psnr"), "s.yml").mode == "max"


@pytest.mark.parametrize("change, message", [
    ({"space": {"train.optim_g.lrr": {"uniform": [0.1, 0.2]}}}, "space.train.optim_g.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
    ({"space": {"train.losses.perceptualloss.loss_weight": {"uniform": [0.1, 0.2]}}},
     "space.train.losses.perceptualloss.loss_weight: train.losses has no 'perceptualloss'"),
    ({"space": {"train.optim_g.lr": {"loguniformm": [1e-4, 1e-3]}}}, "unknown distribution 'loguniformm' (did you mean 'loguniform'?)"),
    ({"space": {"train.optim_g.lr": {"loguniform": [0, 1e-3]}}}, "loguniform needs a positive low end"),
    ({"space": {"train.optim_g.lr": {"uniform": [1e-3]}}}, "uniform takes a list of 2 numbers"),
    ({"space": {"train.optim_g.lr": {"uniform": [-1, 1e-3]}}}, "space.train.optim_g.lr: uniform value -1 makes an invalid job"),
    ({"space": {"network_d.type": {"choice": ["unetdiscriminatorsn", "patchgann"]}}}, "unknown discriminator 'patchgann'"),
    ({"space": {"netwrk_d.type": {"choice": ["patchgan"]}}}, "did you mean 'network_d'?"),
    ({"base": {"job": "JOB", "overrides": {"val.val_freqq": 2}}}, "base.overrides.val.val_freqq: unknown key 'val_freqq' (did you mean 'val_freq'?)"),
    ({"base": {"job": "JOB", "overrides": {"val.val_freq": 0}}}, "base.overrides: val.val_freq: Input should be greater than 0"),
    ({"metric": "val_lpipss"}, "metric: 'val_lpipss' is not a validation metric"),
    ({"schedulr": {"type": "asha"}}, "schedulr: unknown key (did you mean 'scheduler'?)"),
    ({"scheduler": {"type": "pbt"}}, "scheduler.type pbt runs single-worker trials: set trial.workers: 1"),
    ({"scheduler": {"type": "pbt"}, "trial": {"workers": 1}}, "PBT continues trials from other trials' checkpoints"),
    ({"search": {"algorithm": "optuna"}, "space": {"train.optim_g.lr": {"grid": [1e-3, 1e-4]}}}, "grid is for search.algorithm random"),
])
def test_bad_search_files_name_the_path(tmp_path, change, message):
    spec = search_file(tmp_path)
    change = copy.deepcopy(change)
    if change.get("base", {}).get("job") == "JOB":
        change["base"]["job"] = spec["base"]["job"]
    spec.update(change)
    with pytest.raises(ConfigError) as err:
        parse_search(spec, "s.yml")
    assert message in str(err.value) and str(err.value).startswith("s.yml")


def test_recipe_stage_base_needs_its_pretrain(tmp_path):
    recipe = {**gan_job(name="rec"), "stages": {"fidelity_2x": {}, "gan_4x": {
        "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
        "train": {"losses": [{"type": "hsluvloss", "loss_weight": 1.0}, {"type": "ganloss", "loss_weight": 0.1}]}}}}
    recipe.pop("network_d")
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    spec = {"name": "r", "base": {"recipe": "recipe.yml", "stage": "gan_4x"},
            "space": {"train.losses.ganloss.loss_weight": {"uniform": [0.01, 0.2]}}}
    (tmp_path / "search.yml").write_text(yaml.safe_dump(spec))
    from srcluster.tune.space import load_search

    with pytest.raises(ConfigError, match="base.pretrain: stage gan_4x starts from the previous stage's generator"):
        load_search(tmp_path / "search.yml")
    spec["base"]["pretrain"] = "s3://srcluster/x/net_g_ema.safetensors"
    (tmp_path / "search.yml").write_text(yaml.safe_dump(spec))
    search = load_search(tmp_path / "search.yml")  # the recipe path is relative to the search file
    assert search.base_job.scale == 4 and search.base_job.path.pretrain_network_g.endswith("net_g_ema.safetensors")
    assert search.params()["base.pretrain"] == "s3://srcluster/x/net_g_ema.safetensors"


# --- real searches ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tune_data(stack):
    from srcluster.data.sample import build_sample_dataset

    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


def trial_runs(search_run_id: str):
    from srcluster.tracking.tracker import Tracker

    client = Tracker().client
    parent = client.get_run(search_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`srcluster.tune.search_run` = '{search_run_id}'")


@pytest.mark.slow
def test_asha_search_of_distributed_gan_trials_registers_a_candidate_and_survives_a_diverging_trial(
        stack, ray_cluster, tune_data, tmp_path):
    from srcluster.tracking.models import resolve_model_uri
    from srcluster.tracking.tracker import Tracker
    from srcluster.tune.run import run_search

    # 4 trials x 2 workers x 0.5 CPU: all four at once on the session's 4-CPU Ray cluster
    job = gan_job(srcluster={"workers": 2, "cpus_per_worker": 0.5, "nonfinite_patience": 2})
    # lr 1e30 diverges at once; the other three train. grid: every value once, in this order.
    spec = search_file(tmp_path, job, name="asha-gan", num_samples=1,
                       space={"train.optim_g.lr": {"grid": [1.0e-3, 1.0e+30, 3.0e-3, 2.0e-4]},
                              "train.losses.ganloss.loss_weight": {"uniform": [0.05, 0.2]}},
                       scheduler={"type": "asha", "grace_period": 4}, search={"algorithm": "random", "seed": 1})
    search = parse_search(spec, "asha.yml")
    outcome = run_search(search, output_dir=tmp_path / "out")

    assert len(outcome.rows) == 4
    by_lr = {row.params["train.optim_g.lr"]: row for row in outcome.rows}
    assert by_lr[1.0e30].status == "ERROR" and "non-finite" in by_lr[1.0e30].error
    finished = [r for lr, r in by_lr.items() if lr != 1.0e30]
    assert all(r.status == "TERMINATED" and r.last is not None for r in finished)
    assert max(r.iterations for r in finished) == 8  # at least the first trial runs the whole budget
    assert outcome.best in finished and outcome.best.last == max(r.last for r in finished)

    client = Tracker().client
    runs = {r.data.tags["srcluster.tune.trial_id"]: r for r in trial_runs(outcome.parent_run_id)}
    assert set(runs) == {r.trial_id for r in outcome.rows}
    assert runs[by_lr[1.0e30].trial_id].info.status == "FAILED"
    assert all(runs[r.trial_id].info.status == "FINISHED" for r in finished)
    for row in finished:  # sampled params and the metric curve of each trial
        run = runs[row.trial_id]
        assert float(run.data.params["tune.train.optim_g.lr"]) == row.params["train.optim_g.lr"]
        assert [i for i, _ in row.curve] == list(range(4, row.iterations + 1, 4))
        # a trial ASHA stops may log one more validation to MLflow while its Ray Train run is being torn down
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_psnr"))
        assert steps[: len(row.curve)] == [i for i, _ in row.curve]
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_val_psnr"] == pytest.approx(outcome.best.last)
    artifacts = {f.path for f in client.list_artifacts(outcome.parent_run_id, "search")}
    assert {"search/metric_curves.png", "search/trials.txt", "search/trials.csv"} <= artifacts
    assert (tmp_path / "out" / "metric_curves.png").stat().st_size > 10_000

    ref = outcome.candidate
    version = client.get_model_version_by_alias(ref.name, "candidate")
    assert version.version == ref.version and version.run_id == outcome.best.run_id
    assert version.tags["srcluster.tune.search_run"] == outcome.parent_run_id
    weights, arch, _, scale = resolve_model_uri(f"models:/{ref.name}@candidate")
    assert arch == "superultracompact" and scale == 2


def test_restored_optimizer_takes_the_mutated_learning_rate(tmp_path):
    """PBT restarts a trial from another trial's checkpoint with a mutated lr: the restored optimizer state carries
    the donor's lr, so it must be put back, and the next step must move the weights by the new lr."""
    import torch

    from srcluster.components.optim import apply_optimizer_options
    from srcluster.train.state import build_stage
    from srcluster.train.step import train_step
    from srcluster.tune.space import validate_job

    def stage_with(lr: float):
        data = gan_job(train={"total_iter": 8, "warmup_iter": 4, "optim_g": {"lr": lr},
                              "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]})
        data.pop("network_d")
        return build_stage(validate_job(data, "t"), torch.device("cpu"), log=lambda m: None)

    torch.manual_seed(0)
    batches = iter([torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8) for _ in range(4)])
    donor = stage_with(1e-3)
    for _ in range(2):
        train_step(donor, batches, 1)
    state = donor.state()
    next_batch = next(batches)

    def step_from_state(lr: float, apply: bool) -> tuple[float, torch.Tensor]:
        stage = stage_with(lr)
        stage.load_state(copy.deepcopy(state))  # as from a checkpoint file: no tensors shared between the loads
        if apply:
            apply_optimizer_options(stage.optim_g, stage.sched_g, stage.job.train.optim_g)
        before = [p.detach().clone() for p in stage.raw_g.parameters()]
        used = stage.optim_g.param_groups[0]["lr"]
        train_step(stage, iter([next_batch]), 1)
        delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(stage.raw_g.parameters(), before)])
        return used, delta

    stale_lr, _ = step_from_state(4e-3, apply=False)
    assert stale_lr == pytest.approx(1e-3 * 3 / 4)  # without the fix: the donor's lr, 3/4 through the warmup
    used_a, delta_a = step_from_state(1e-3, apply=True)
    used_b, delta_b = step_from_state(4e-3, apply=True)
    assert used_b == pytest.approx(4e-3 * 3 / 4)  # the mutated lr, at the same point of the warmup
    # same state, same batch, same gradients: Adam's step scales with the lr alone
    assert torch.allclose(delta_b, 4 * delta_a, rtol=1e-3, atol=1e-7) and delta_a.abs().max() > 1e-4


def charbonnier_job(**overrides) -> dict:
    job = gan_job(**overrides)
    job.pop("network_d")
    job["train"] = {**job["train"], "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}]}
    job["train"].pop("optim_d", None)
    return job


@pytest.mark.slow
def test_pbt_mutates_the_learning_rate_and_trials_train_with_it(stack, ray_cluster, tune_data, tmp_path):
    from srcluster.tracking.tracker import Tracker
    from srcluster.tune.run import run_search

    job = charbonnier_job(train={"total_iter": 8}, val={"val_freq": 2}, srcluster={"workers": 1, "cpus_per_worker": 1})
    spec = search_file(tmp_path, job, name="pbt", num_samples=2, trial={"workers": 1},
                       space={"train.optim_g.lr": {"loguniform": [1.0e-4, 5.0e-3]}},
                       scheduler={"type": "pbt", "perturbation_interval": 4, "quantile_fraction": 0.5,
                                  "resample_probability": 0.0, "synch": True}, search={"seed": 3})
    outcome = run_search(parse_search(spec, "pbt.yml"), output_dir=tmp_path / "out")
    assert [r.status for r in outcome.rows] == ["TERMINATED", "TERMINATED"]
    assert all(r.iterations == 8 for r in outcome.rows)

    client = Tracker().client
    changed = 0
    for row in outcome.rows:
        lrs = [m.value for m in sorted(client.get_metric_history(row.run_id, "lr"), key=lambda m: m.step)]
        config_lrs = [m.value for m in sorted(client.get_metric_history(row.run_id, "hp.train.optim_g.lr"),
                                              key=lambda m: m.step)]
        assert len(lrs) == len(config_lrs) >= 4
        # the lr the optimizer stepped with is the trial's current (possibly mutated) config lr at every report
        assert lrs == pytest.approx(config_lrs)
        changed += len(set(config_lrs)) > 1
    # at iteration 4 the worse trial continued from the better one's checkpoint with its lr x0.8 or x1.2
    assert changed == 1


@pytest.mark.slow
def test_interrupted_search_resumes_without_redoing_finished_trials(stack, ray_cluster, tune_data, tmp_path):
    import os
    import sys

    from srcluster.tracking.tracker import Tracker
    from srcluster.tracking import tags
    from srcluster.tune.run import run_search

    job = charbonnier_job(train={"total_iter": 8}, val={"val_freq": 4}, srcluster={"workers": 1, "cpus_per_worker": 1})
    spec = search_file(tmp_path, job, name="resume", num_samples=1, trial={"workers": 1}, scheduler={"type": "fifo"},
                       search={"max_concurrent": 1}, space={"train.optim_g.lr": {"grid": [1.0e-3, 2.0e-3, 3.0e-3]}})
    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(spec))
    search = parse_search(spec, str(path))
    client = Tracker().client

    def runs():
        parent = Tracker().find_run("resume", {tags.TUNE_KEY: search.key()})
        return trial_runs(parent.info.run_id) if parent else []

    # the first try is killed (driver and all it started) once one trial has finished
    kill_when([sys.executable, "-m", "srcluster.cli", "tune", str(path)],
              lambda: any(r.info.status == "FINISHED" for r in runs()), timeout=300,
              settle=3, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})  # Tune saves its state every second here
    finished = {r.info.run_id: r.info.end_time for r in runs() if r.info.status == "FINISHED"}
    assert 1 <= len(finished) < 3

    messages = []
    outcome = run_search(search, output_dir=tmp_path / "out", log=messages.append)
    assert any("resuming the interrupted search" in m for m in messages)
    assert [r.status for r in outcome.rows] == ["TERMINATED"] * 3 and all(r.iterations == 8 for r in outcome.rows)
    after = runs()
    assert len(after) == 3  # one MLflow run per trial: none was started over
    for run in after:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_psnr"))
        if run.info.run_id in finished:  # not trained again: same end, each validation logged once
            assert run.info.end_time == finished[run.info.run_id] and steps == [4, 8]
        else:  # the interrupted one may repeat the validation after its last checkpoint
            assert set(steps) == {4, 8}
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"


def test_optuna_suggests_configs_that_make_valid_trial_jobs(tmp_path):
    from srcluster.tune.run import make_search_alg

    search = parse_search(search_file(tmp_path, search={"algorithm": "optuna", "seed": 0}), "s.yml")
    searcher = make_search_alg(search, 2)
    assert searcher.set_search_properties(search.metric, search.mode,
                                          {p: d.domain() for p, d in search.dists.items()})
    for i in range(2):
        config = searcher.suggest(f"t{i}")
        assert set(config) == set(search.dists)
        job = search.trial_job(config, f"t{i}")
        assert 1e-4 <= job.train.optim_g.lr <= 1e-2 and job.network_d.type in ("unetdiscriminatorsn", "patchgan")
    assert searcher.suggest("t2") is None  # max_concurrent 2: the third waits for one to finish
    searcher.on_trial_complete("t0", {search.metric: 30.0})
    assert set(searcher.suggest("t2")) == set(search.dists)


def test_cli_checks_a_search_file_and_reports_mistakes_in_one_line(tmp_path, capsys):
    from srcluster.cli import main

    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(search_file(tmp_path)))
    assert main(["tune", str(path), "--check"]) == 0
    assert "5 searched keys, objective val_psnr (max)" in capsys.readouterr().out
    spec = search_file(tmp_path)
    spec["space"]["train.optim_g.lr"] = {"loguniform": [1e-3, 1e-4]}
    path.write_text(yaml.safe_dump(spec))
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err
    assert "space.train.optim_g.lr: loguniform needs low < high" in err and len(err.strip().splitlines()) == 1
