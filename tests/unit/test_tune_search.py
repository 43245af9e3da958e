"""`srcluster tune`'s search file: parsing, validation and one-line errors, the optimizer a mutated trial restores,
Optuna's suggestions, `--check` (the searches on Ray Tune: tests/integration/test_tune.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from helpers.search_files import TRAIN, gan_job, search_file
from srcluster.config import ConfigError
from srcluster.tune.space import parse_search

# --- the search file --------------------------------------------------------------------------------------------------


def test_space_maps_dotted_paths_into_the_job(tmp_path):
    search = parse_search(search_file(tmp_path), "s.yml")
    assert search.metric == "val_psnr" and search.mode == "max"  # no DISTS/LPIPS weights on this machine
    sampled = {
        "train.optim_g.lr": 3e-4,
        "train.losses.ganloss.loss_weight": 0.05,
        "datasets.train": 1,
        "train.optim_g.betas": 1,
        "network_d.type": "dunet",
    }
    job = search.trial_job(sampled, "tg-t1")
    assert job.train.optim_g.lr == 3e-4 and job.train.optim_g.betas == (0.5, 0.9)
    assert [(loss.type, loss.loss_weight) for loss in job.train.losses] == [
        ("charbonnierloss", 1.0),
        ("hsluvloss", 0.5),
        ("ganloss", 0.05),
    ]
    assert (job.datasets.train.lq_size, job.datasets.train.batch_size_per_gpu) == (8, 4)
    assert job.datasets.train.dataroot_gt == TRAIN  # merged into the section, not replacing it
    assert job.network_d.type == "dunet" and job.name == "tg-t1"
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
    # ... unless the job's metric says otherwise (`better:`, as in traiNNer-redux's templates)
    job = gan_job()
    job["val"]["metrics"]["psnr"]["better"] = "lower"
    assert parse_search(search_file(tmp_path, job, metric="val_psnr"), "s.yml").mode == "min"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"space": {"train.optim_g.lrr": {"uniform": [0.1, 0.2]}}},
            "space.train.optim_g.lrr: unknown key 'lrr' (did you mean 'lr'?)",
        ),
        (
            {"space": {"train.losses.perceptualloss.loss_weight": {"uniform": [0.1, 0.2]}}},
            "space.train.losses.perceptualloss.loss_weight: train.losses has no 'perceptualloss'",
        ),
        (
            {"space": {"train.optim_g.lr": {"loguniformm": [1e-4, 1e-3]}}},
            "unknown distribution 'loguniformm' (did you mean 'loguniform'?)",
        ),
        ({"space": {"train.optim_g.lr": {"loguniform": [0, 1e-3]}}}, "loguniform needs a positive low end"),
        ({"space": {"train.optim_g.lr": {"uniform": [1e-3]}}}, "uniform takes a list of 2 numbers"),
        (
            {"space": {"train.optim_g.lr": {"uniform": [-1, 1e-3]}}},
            "space.train.optim_g.lr: uniform value -1 makes an invalid job",
        ),
        (
            {"space": {"network_d.type": {"choice": ["unetdiscriminatorsn", "patchgann"]}}},
            "unknown discriminator 'patchgann'",
        ),
        ({"space": {"netwrk_d.type": {"choice": ["dunet"]}}}, "did you mean 'network_d'?"),
        (
            {"base": {"job": "JOB", "overrides": {"val.val_freqq": 2}}},
            "base.overrides.val.val_freqq: unknown key 'val_freqq' (did you mean 'val_freq'?)",
        ),
        (
            {"base": {"job": "JOB", "overrides": {"val.val_freq": 0}}},
            "base.overrides: val.val_freq: Input should be greater than 0",
        ),
        ({"metric": "val_lpipss"}, "metric: 'val_lpipss' is not a validation metric"),
        ({"schedulr": {"type": "asha"}}, "schedulr: unknown key (did you mean 'scheduler'?)"),
        ({"scheduler": {"type": "pbt"}}, "scheduler.type pbt runs single-worker trials: set trial.workers: 1"),
        (
            {"scheduler": {"type": "pbt"}, "trial": {"workers": 1}},
            "PBT continues trials from other trials' checkpoints",
        ),
        (
            {"search": {"algorithm": "optuna"}, "space": {"train.optim_g.lr": {"grid": [1e-3, 1e-4]}}},
            "grid is for search.algorithm random",
        ),
    ],
)
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
    recipe = {
        **gan_job(name="rec"),
        "stages": {
            "fidelity_2x": {},
            "gan_4x": {
                "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
                "train": {
                    "losses": [{"type": "hsluvloss", "loss_weight": 1.0}, {"type": "ganloss", "loss_weight": 0.1}]
                },
            },
        },
    }
    recipe.pop("network_d")
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    spec = {
        "name": "r",
        "base": {"recipe": "recipe.yml", "stage": "gan_4x"},
        "space": {"train.losses.ganloss.loss_weight": {"uniform": [0.01, 0.2]}},
    }
    (tmp_path / "search.yml").write_text(yaml.safe_dump(spec))
    from srcluster.tune.space import load_search

    with pytest.raises(ConfigError, match=r"base\.pretrain: stage gan_4x starts from the previous stage's generator"):
        load_search(tmp_path / "search.yml")
    spec["base"]["pretrain"] = "s3://srcluster/x/net_g_ema.safetensors"
    (tmp_path / "search.yml").write_text(yaml.safe_dump(spec))
    search = load_search(tmp_path / "search.yml")  # the recipe path is relative to the search file
    assert search.base_job.scale == 4 and search.base_job.path.pretrain_network_g.endswith("net_g_ema.safetensors")
    assert search.params()["base.pretrain"] == "s3://srcluster/x/net_g_ema.safetensors"


def test_restored_optimizer_takes_the_mutated_learning_rate(tmp_path):
    """PBT restarts a trial from another trial's checkpoint with a mutated lr: the restored optimizer state carries
    the donor's lr, so it must be put back, and the next step must move the weights by the new lr."""
    import torch

    from srcluster.components.optim import apply_optimizer_options
    from srcluster.train.state import build_stage
    from srcluster.train.step import train_step
    from srcluster.tune.space import validate_job

    def stage_with(lr: float):
        data = gan_job(
            train={
                "total_iter": 8,
                "warmup_iter": 4,
                "optim_g": {"lr": lr},
                "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}],
            }
        )
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
        delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(stage.raw_g.parameters(), before, strict=False)])
        return used, delta

    stale_lr, _ = step_from_state(4e-3, apply=False)
    assert stale_lr == pytest.approx(4e-3 * 2 / 4)  # load_state itself follows the job's options (follow_config)
    _used_a, delta_a = step_from_state(1e-3, apply=True)
    used_b, delta_b = step_from_state(4e-3, apply=True)
    assert used_b == pytest.approx(4e-3 * 2 / 4)  # the mutated lr, at the same point of redux's warmup (step 3)
    # same state, same batch, same gradients: Adam's step scales with the lr alone
    assert torch.allclose(delta_b, 4 * delta_a, rtol=1e-3, atol=1e-7) and delta_a.abs().max() > 1e-4


def test_optuna_suggests_configs_that_make_valid_trial_jobs(tmp_path):
    from srcluster.tune.run import make_search_alg

    search = parse_search(search_file(tmp_path, search={"algorithm": "optuna", "seed": 0}), "s.yml")
    searcher = make_search_alg(search, 2)
    assert searcher.set_search_properties(search.metric, search.mode, {p: d.domain() for p, d in search.dists.items()})
    for i in range(2):
        config = searcher.suggest(f"t{i}")
        assert set(config) == set(search.dists)
        job = search.trial_job(config, f"t{i}")
        assert 1e-4 <= job.train.optim_g.lr <= 1e-2 and job.network_d.type in ("unetdiscriminatorsn", "dunet")
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
