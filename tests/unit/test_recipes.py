"""The recipe's derivation rules: each stage's job follows from the shared config as the guideline says; the plan,
the recipe hash and the data lineage tags (the toy pipeline on the local stack: tests/integration/test_pipeline.py)."""

import json
from pathlib import Path

import pytest

from helpers.shared import shared_data
from srcluster.config import ConfigError, parse_job, read_yaml
from srcluster.recipes.demo import DEMO_RECIPE
from srcluster.recipes.pipeline import load_recipe, parse_recipe, plan

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
    assert [loss.type for loss in s1.train.losses] == ["charbonnierloss"] == [loss.type for loss in s2.train.losses]
    assert [(loss.type, loss.loss_weight) for loss in s3.train.losses] == [
        ("mssimloss", 0.5),
        ("perceptualloss", 0.01),
        ("hsluvloss", 1.0),
        ("ganloss", 0.1),
    ]
    assert (s1.train.optim_g.lr, s2.train.optim_g.lr, s3.train.optim_g.lr, s3.train.optim_d.lr) == (
        2e-4,
        1e-4,
        1e-4,
        1e-4,
    )
    assert s1.train.optim_g.weight_decay == 0.01  # shared options survive the rules
    assert (s1.train.total_iter, s2.train.total_iter) == (1000, 500)
    assert (s1.train.scheduler.milestones, s2.train.scheduler.milestones) == ([500, 800], [250, 400])
    assert s2.path.strict_load_g is False and s3.path.strict_load_g is True
    assert s2.datasets.train.lq_size == s1.datasets.train.lq_size == 48
    assert s2.datasets.train.batch_size_per_gpu == 6
    assert s3.uses_gan and s3.network_d.type == "unetdiscriminatorsn" and s1.network_d is None
    assert s1.name == "r-fidelity_2x"
    # LR: bicubic for the fidelity stages, Real-ESRGAN's second-order degradations for the GAN stage
    assert s1.datasets.train.degradations is None and s2.datasets.train.degradations is None
    assert s3.datasets.train.degradations.high_order_degradation


def test_shared_degradation_keys_only_reach_the_gan_stage():
    shared = {
        **SHARED,
        "high_order_degradation": True,
        "jpeg_range": [60, 95],
        "datasets": {"train": {**SHARED["datasets"]["train"], "blur_kernel_size": 11}},
    }
    recipe = parse_recipe(shared, "r.yml")
    s1, s2, s3 = (recipe.job(s, pretrain="s3://b/g.safetensors") for s in recipe.stages)
    assert s1.datasets.train.degradations is None and s2.datasets.train.degradations is None
    assert list(s3.datasets.train.degradations.jpeg_range) == [60, 95]


def test_stage_overrides_win_over_rules():
    recipe = parse_recipe(
        {
            **SHARED,
            "stages": {
                "fidelity_2x": {},
                "fidelity_4x": {"train": {"total_iter": 42}},
                "gan_4x": {"datasets": {"train": {"lq_size": 96, "batch_size_per_gpu": 2}}},
            },
        },
        "r.yml",
    )
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
    # the GAN stage runs the guideline's losses (srcluster demo drops perceptualloss only without VGG19 weights)
    assert [loss.type for loss in jobs[2].train.losses] == ["mssimloss", "perceptualloss", "hsluvloss", "ganloss"]


def test_gan_stage_without_vgg19_weights_fails_before_training(tmp_path, monkeypatch):
    from srcluster.errors import SrclusterError
    from srcluster.train.stage import check_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    recipe = parse_recipe(SHARED, "r.yml")
    check_weights(recipe.job("fidelity_4x", "x"))  # no pretrained weights needed
    with pytest.raises(SrclusterError, match=r"vgg19-dcbb9e9d\.pth"):
        check_weights(recipe.job("gan_4x", "x"))


# --- plan ---------------------------------------------------------------------------------------------------------


def test_plan_prints_first_stage_in_full_then_diffs(tmp_path, capsys):
    import yaml

    from srcluster.cli import main

    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({**SHARED, "srcluster": {"mlflow": {"tracking_uri": "http://u:hunter2@host:5000"}}}))
    assert main(["pipeline", "--plan", str(path)]) == 0
    out = capsys.readouterr().out
    first, second, third = out.split("# stage ")[1:]
    assert first.startswith("1: fidelity_2x -> registered as r-fidelity_2x")
    assert yaml.safe_load(first.split("\n", 1)[1])["train"]["total_iter"] == 1000  # stage 1 in full, as YAML
    assert "~ scale: 2 -> 4" in second and "~ train.total_iter: 1000 -> 500" in second
    assert "~ train.scheduler.milestones: [500, 800] -> [250, 400]" in second
    assert "~ path.pretrain_network_g: None -> 'models:/r-fidelity_2x/" in second
    assert "datasets.train.lq_size" not in second  # unchanged keys are not repeated
    assert (
        "+ network_d.type: 'unetdiscriminatorsn'" in third
        and "~ train.losses.0.type: 'charbonnierloss' -> 'mssimloss'" in third
    )
    assert "hunter2" not in out

    assert main(["pipeline", "--plan", "--json", str(path)]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in stages] == ["fidelity_2x", "fidelity_4x", "gan_4x"]
    assert [s["pretrain_from"] for s in stages] == [None, "fidelity_2x", "fidelity_4x"]
    jobs = [s["job"] for s in stages]
    assert [j["scale"] for j in jobs] == [2, 4, 4] and jobs[2]["train"]["optim_d"]["lr"] == 1e-4
    assert (
        jobs[1]["path"]["pretrain_network_g"].startswith("models:/r-fidelity_2x/")
        and jobs[1]["path"]["strict_load_g"] is False
    )
    assert jobs[0]["srcluster"]["mlflow"]["tracking_uri"] == "http://u:***@host:5000"
    assert [parse_job(j).name for j in jobs] == [
        "r-fidelity_2x",
        "r-fidelity_4x",
        "r-gan_4x",
    ]  # full, valid job configs


def test_recipe_hash_follows_training_config_not_cluster_settings():
    from srcluster.recipes.pipeline import recipe_hash

    base = recipe_hash(parse_recipe(SHARED, "r.yml"))
    assert recipe_hash(parse_recipe({**SHARED, "srcluster": {"workers": 3}}, "r.yml")) == base
    assert recipe_hash(parse_recipe({**SHARED, "train": {**SHARED["train"], "total_iter": 999}}, "r.yml")) != base


DAT2_RECIPE = Path(__file__).resolve().parents[2] / "jobs" / "dat2-recipe.yml"
TEMPLATES = shared_data("trainner-redux-templates")


def test_shipped_dat2_recipe_follows_the_official_templates():
    stages = plan(load_recipe(DAT2_RECIPE))
    jobs = {s["stage"]: s["job"] for s in stages}
    assert {j["network_g"]["type"] for j in jobs.values()} == {"dat_2"}
    assert [jobs[s]["scale"] for s in ("fidelity_2x", "fidelity_4x", "gan_4x")] == [2, 4, 4]
    assert jobs["gan_4x"]["network_d"]["type"] == "dunet"
    if not TEMPLATES.is_dir():
        pytest.skip(f"{TEMPLATES} is absent: cannot compare with traiNNer-redux's DAT_2 templates")
    fidelity, gan = (read_yaml(str(TEMPLATES / f"DAT_2_{kind}.yml")) for kind in ("fidelity", "gan"))
    for stage in ("fidelity_2x", "fidelity_4x"):
        train = jobs[stage]["datasets"]["train"]
        assert (train["lq_size"], train["batch_size_per_gpu"], train["accum_iter"]) == (
            fidelity["datasets"]["train"]["lq_size"],
            fidelity["datasets"]["train"]["batch_size_per_gpu"],
            fidelity["datasets"]["train"]["accum_iter"],
        )
    assert jobs["fidelity_2x"]["train"]["total_iter"] == fidelity["train"]["total_iter"]
    assert jobs["fidelity_2x"]["train"]["scheduler"]["milestones"] == fidelity["train"]["scheduler"]["milestones"]
    assert jobs["gan_4x"]["datasets"]["train"]["lq_size"] == gan["datasets"]["train"]["lq_size"]
    weights = {loss["type"].lower(): loss["loss_weight"] for loss in gan["train"]["losses"] if loss["loss_weight"] > 0}
    assert {loss["type"]: loss["loss_weight"] for loss in jobs["gan_4x"]["train"]["losses"]} == weights


def test_data_lineage_pins_each_manifest_by_sha256(tmp_path):
    import hashlib

    from srcluster.recipes.pipeline import data_lineage
    from srcluster.storage import StorageSettings

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_bytes(b'{"format": "srcluster-shards/2"}')
    (tmp_path / "folder").mkdir()
    recipe = parse_recipe(
        {**SHARED, "datasets": {"train": {"dataroot_gt": [str(tmp_path / "shards"), str(tmp_path / "folder")]}}},
        "r.yml",
    )
    tags = data_lineage(recipe.job("fidelity_2x"), StorageSettings.resolve())
    assert tags["srcluster.data_manifest"] == f"{tmp_path / 'shards'}/manifest.json,{tmp_path / 'folder'}"
    digest = hashlib.sha256(b'{"format": "srcluster-shards/2"}').hexdigest()
    assert tags["srcluster.data_sha256"] == f"{digest},none"
