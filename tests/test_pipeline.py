"""The recipe's derivation rules: each stage's job follows from the shared config as the guideline says."""

import pytest

from srcluster.config import ConfigError
from srcluster.config import read_yaml
from srcluster.demo import DEMO_RECIPE
from srcluster.pipeline import parse_recipe

SHARED = {
    "name": "r",
    "datasets": {"train": {"dataroot_gt": "s3://b/train", "lq_size": 48, "batch_size_per_gpu": 6}},
    "network_g": {"type": "compact"},
    "train": {"total_iter": 1000, "scheduler": {"milestones": [500, 800]}, "optim_g": {"weight_decay": 0.01}},
}


def test_stage_rules():
    recipe = parse_recipe(SHARED, "r.yml")
    s1, s2, s3 = (recipe.job(s, pretrain="s3://b/g.safetensors") for s in recipe.stages)
    assert (s1.scale, s2.scale, s3.scale) == (2, 4, 4)
    assert [l.type for l in s1.train.losses] == ["charbonnierloss"] == [l.type for l in s2.train.losses]
    assert [(l.type, l.loss_weight) for l in s3.train.losses] == [
        ("mssimloss", 0.5), ("perceptualloss", 0.01), ("hsluvloss", 1.0), ("ganloss", 0.1)]
    assert (s1.train.optim_g.lr, s2.train.optim_g.lr, s3.train.optim_g.lr, s3.train.optim_d.lr) == (2e-4, 1e-4, 1e-4, 1e-4)
    assert s1.train.optim_g.weight_decay == 0.01  # shared options survive the rules
    assert (s1.train.total_iter, s2.train.total_iter) == (1000, 500)
    assert (s1.train.scheduler.milestones, s2.train.scheduler.milestones) == ([500, 800], [250, 400])
    assert s2.path.strict_load_g is False and s3.path.strict_load_g is True
    assert s2.datasets.train.lq_size == s1.datasets.train.lq_size == 48
    assert s2.datasets.train.batch_size_per_gpu == 6
    assert s3.uses_gan and s3.network_d.type == "unetdiscriminatorsn" and s1.network_d is None
    assert s1.name == "r-fidelity_2x"


def test_stage_overrides_win_over_rules():
    recipe = parse_recipe({**SHARED, "stages": {"fidelity_2x": {}, "fidelity_4x": {"train": {"total_iter": 42}},
                                                "gan_4x": {"datasets": {"train": {"lq_size": 96, "batch_size_per_gpu": 2}}}}},
                          "r.yml")
    assert recipe.job("fidelity_4x", "x").train.total_iter == 42
    gan = recipe.job("gan_4x", "x").datasets.train
    assert (gan.lq_size, gan.batch_size_per_gpu, gan.dataroot_gt) == (96, 2, "s3://b/train")


def test_recipe_errors_name_the_stage():
    with pytest.raises(ConfigError, match=r"stages.gan_8x: unknown stage"):
        parse_recipe({**SHARED, "stages": {"gan_8x": {}}}, "r.yml")
    with pytest.raises(ConfigError, match=r"r.yml \(stage fidelity_4x\): datasets.train.lq_sise: unknown key"):
        parse_recipe({**SHARED, "stages": {"fidelity_4x": {"datasets": {"train": {"lq_sise": 3}}}}}, "r.yml")


def test_demo_recipe_is_valid_and_small():
    recipe = parse_recipe(read_yaml(str(DEMO_RECIPE)), "demo.yml")
    assert list(recipe.stages) == ["fidelity_2x", "fidelity_4x", "gan_4x"]
    jobs = [recipe.job(s, "x") for s in recipe.stages]
    assert all(j.srcluster.workers == 2 for j in jobs)
    assert not any(l.type == "perceptualloss" for j in jobs for l in j.train.losses)  # needs no downloaded weights


def test_gan_stage_without_vgg19_weights_fails_before_training(tmp_path, monkeypatch):
    from srcluster.errors import SrclusterError
    from srcluster.train.stage import check_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    recipe = parse_recipe(SHARED, "r.yml")
    check_weights(recipe.job("fidelity_4x", "x"))  # no pretrained weights needed
    with pytest.raises(SrclusterError, match=r"vgg19-dcbb9e9d\.pth"):
        check_weights(recipe.job("gan_4x", "x"))
