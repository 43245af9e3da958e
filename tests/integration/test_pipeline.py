"""The recipe's derivation rules: each stage's job follows from the shared config as the guideline says."""

import json
from pathlib import Path

import pytest

from helpers.drivers import checkpoint_recorded, kill_when
from srcluster.config import ConfigError, parse_job
from srcluster.config import read_yaml
from srcluster.recipes.demo import DEMO_RECIPE
from srcluster.recipes.pipeline import STAGES, load_recipe, parse_recipe, plan
from helpers.shared import shared_data

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
    # LR: bicubic for the fidelity stages, Real-ESRGAN's second-order degradations for the GAN stage
    assert s1.datasets.train.degradations is None and s2.datasets.train.degradations is None
    assert s3.datasets.train.degradations.high_order_degradation


def test_shared_degradation_keys_only_reach_the_gan_stage():
    shared = {**SHARED, "high_order_degradation": True, "jpeg_range": [60, 95],
              "datasets": {"train": {**SHARED["datasets"]["train"], "blur_kernel_size": 11}}}
    recipe = parse_recipe(shared, "r.yml")
    s1, s2, s3 = (recipe.job(s, pretrain="s3://b/g.safetensors") for s in recipe.stages)
    assert s1.datasets.train.degradations is None and s2.datasets.train.degradations is None
    assert list(s3.datasets.train.degradations.jpeg_range) == [60, 95]


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
    assert "+ network_d.type: 'unetdiscriminatorsn'" in third and "~ train.losses.0.type: 'charbonnierloss' -> 'mssimloss'" in third
    assert "hunter2" not in out

    assert main(["pipeline", "--plan", "--json", str(path)]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in stages] == ["fidelity_2x", "fidelity_4x", "gan_4x"]
    assert [s["pretrain_from"] for s in stages] == [None, "fidelity_2x", "fidelity_4x"]
    jobs = [s["job"] for s in stages]
    assert [j["scale"] for j in jobs] == [2, 4, 4] and jobs[2]["train"]["optim_d"]["lr"] == 1e-4
    assert jobs[1]["path"]["pretrain_network_g"].startswith("models:/r-fidelity_2x/") and jobs[1]["path"]["strict_load_g"] is False
    assert jobs[0]["srcluster"]["mlflow"]["tracking_uri"] == "http://u:***@host:5000"
    assert [parse_job(j).name for j in jobs] == ["r-fidelity_2x", "r-fidelity_4x", "r-gan_4x"]  # full, valid job configs


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
            fidelity["datasets"]["train"]["lq_size"], fidelity["datasets"]["train"]["batch_size_per_gpu"],
            fidelity["datasets"]["train"]["accum_iter"])
    assert jobs["fidelity_2x"]["train"]["total_iter"] == fidelity["train"]["total_iter"]
    assert jobs["fidelity_2x"]["train"]["scheduler"]["milestones"] == fidelity["train"]["scheduler"]["milestones"]
    assert jobs["gan_4x"]["datasets"]["train"]["lq_size"] == gan["datasets"]["train"]["lq_size"]
    weights = {l["type"].lower(): l["loss_weight"] for l in gan["train"]["losses"] if l["loss_weight"] > 0}
    assert {l["type"]: l["loss_weight"] for l in jobs["gan_4x"]["train"]["losses"]} == weights


# --- a toy pipeline on the local stack: registry, lineage, kill and resume, report ----------------------------------

LINEAGE_TRAIN, LINEAGE_VAL = "s3://srcluster/lineage/train", "s3://srcluster/lineage/val"


def toy_recipe() -> dict:
    """Stage 2 runs long enough (160 iterations, a checkpoint every 20) to be killed in the middle."""
    return {
        "name": "lineage", "manual_seed": 5,
        "datasets": {"train": {"dataroot_gt": LINEAGE_TRAIN, "lq_size": 16, "batch_size_per_gpu": 2,
                               "num_worker_per_gpu": 0},
                     "val": {"dataroot_gt": LINEAGE_VAL}},
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": 8, "losses": [{"type": "charbonnierloss"}]},
        "val": {"val_freq": 4},
        "logger": {"print_freq": 4, "save_checkpoint_freq": 4},
        "srcluster": {"workers": 2},
        "stages": {
            "fidelity_2x": {},
            "fidelity_4x": {"train": {"total_iter": 160}, "val": {"val_freq": 20},
                            "logger": {"print_freq": 20, "save_checkpoint_freq": 20}},
            "gan_4x": {"network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
                       "train": {"total_iter": 4, "scheduler": {"milestones": []},
                                 "losses": [{"type": "mssimloss", "loss_weight": 0.5},
                                            {"type": "hsluvloss", "loss_weight": 1.0},
                                            {"type": "ganloss", "loss_weight": 0.1}]}},
        },
    }


@pytest.mark.slow
def test_pipeline_registers_chains_resumes_and_reports(stack, ray_cluster, tmp_path, capsys):
    import hashlib
    import os
    import subprocess
    import sys

    import yaml
    from PIL import Image

    from srcluster.cli import main
    from srcluster.data.sample import build_sample_dataset
    from srcluster.storage import StorageSettings
    from srcluster.tracking.tracker import Tracker
    from srcluster.components.archs import build_generator
    from srcluster.train.stage import run_key
    from srcluster.components.weights import load_pretrain
    from srcluster.tracking.models import weights_file

    build_sample_dataset(LINEAGE_TRAIN, LINEAGE_VAL, tile=64, val_size=64, progress=False)
    path = tmp_path / "lineage.yml"
    path.write_text(yaml.safe_dump(toy_recipe()))
    recipe = parse_recipe(toy_recipe(), str(path))
    stage2_runs = f"s3://srcluster/runs/{run_key(recipe.job('fidelity_4x', 'models:/lineage-fidelity_2x/1'))}"
    fs, _ = StorageSettings.resolve().filesystem(stage2_runs)
    command = [sys.executable, "-m", "srcluster.cli", "pipeline", str(path)]

    # 1. run, and kill -9 the whole process group once stage 2 has a checkpoint Ray recorded as complete
    kill_when(command, lambda: checkpoint_recorded(fs, stage2_runs, 20), timeout=420)

    client = Tracker().client
    experiment = client.get_experiment_by_name("lineage").experiment_id

    def stage_runs():
        runs = client.search_runs([experiment])
        return {r.data.tags["srcluster.stage"]: r for r in runs if r.data.tags.get("srcluster.kind") != "pipeline"}

    before = stage_runs()
    assert set(before) == {"fidelity_2x", "fidelity_4x"} and before["fidelity_2x"].info.status == "FINISHED"
    assert before["fidelity_4x"].info.status == "RUNNING"  # killed mid-run: nobody closed it

    # 2. rerun: stage 1 is reused (not retrained, not registered again), stage 2's run is reopened and resumed
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"already trained in MLflow run {before['fidelity_2x'].info.run_id}" in output
    assert f"resuming MLflow run {before['fidelity_4x'].info.run_id}" in output
    assert "resumed from checkpoint at iteration " in output
    assert "pretrain: loaded" in output and "from models:/lineage-fidelity_4x/1" in output  # stage 3, via the registry

    runs = stage_runs()
    assert {s: r.info.run_id for s, r in runs.items()} == {
        **{s: r.info.run_id for s, r in before.items()}, "gan_4x": runs["gan_4x"].info.run_id}
    parents = client.search_runs([experiment], "tags.`srcluster.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the killed execution was continued
    parent = parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    # the stage rules: stage 2 loads loosely (2x -> 4x), stage 3 trains G against D with the GAN losses
    assert runs["fidelity_4x"].data.params["path.strict_load_g"] == "False"
    assert runs["gan_4x"].data.params["path.strict_load_g"] == "True" and runs["gan_4x"].data.params["scale"] == "4"
    assert {"l_g_gan", "l_g_mssimloss", "l_g_hsluvloss", "l_d_real", "l_d_fake"} <= set(runs["gan_4x"].data.metrics)

    # 3. three registered models, one version each, with lineage chaining through the registry
    for stage in STAGES:
        versions = client.search_model_versions(f"name = 'lineage-{stage}'")
        assert [(v.version, v.run_id) for v in versions] == [("1", runs[stage].info.run_id)]
    manifest = fs.cat_file(f"{LINEAGE_TRAIN}/manifest.json".split("://", 1)[1])
    upstream = {"fidelity_2x": None, "fidelity_4x": "fidelity_2x", "gan_4x": "fidelity_4x"}
    hashes = set()
    for stage, source in upstream.items():
        run_tags = runs[stage].data.tags
        version_tags = client.get_model_version(f"lineage-{stage}", "1").tags
        for tags in (run_tags, version_tags):
            assert tags["srcluster.stage"] == stage
            assert tags["srcluster.pretrain_model"] == (f"models:/lineage-{source}/1" if source else "none")
            assert tags["srcluster.pretrain_run_id"] == (runs[source].info.run_id if source else "none")
            assert tags["srcluster.data_manifest"] == f"{LINEAGE_TRAIN}/manifest.json"
            assert tags["srcluster.data_sha256"] == hashlib.sha256(manifest).hexdigest()
            assert tags["srcluster.version"] and tags["srcluster.recipe_hash"]
            hashes.add(tags["srcluster.recipe_hash"])
        assert run_tags["srcluster.registered_model"] == f"models:/lineage-{stage}/1"
        assert version_tags["srcluster.key_metric"] == "val_psnr" and float(version_tags["srcluster.key_metric_value"]) > 0
    assert len(hashes) == 1

    # 4. the report: same crops through every stage, logged to the parent run and written locally
    report = output.split("report: ", 1)[1].split()[0]
    width, height = Image.open(report).size
    assert width > 500 and height > 400
    assert [f.path for f in client.list_artifacts(parent, "report")] == [f"report/{os.path.basename(report)}"]

    # 5. promote, lineage, and the alias as a pretrain source
    assert main(["promote", "lineage-gan_4x", "1", "--alias", "champion", "--reason", "e2e"]) == 0
    capsys.readouterr()
    assert main(["lineage", "models:/lineage-gan_4x@champion"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("models:/lineage-gan_4x/1 @champion  stage gan_4x")
    assert lines[1].startswith("  <- models:/lineage-fidelity_4x/1  stage fidelity_4x") and "val_psnr" in lines[1]
    assert lines[2].startswith("  <- models:/lineage-fidelity_2x/1  stage fidelity_2x")
    assert lines[3].startswith(f"  <- data {LINEAGE_TRAIN}/manifest.json  sha256 {hashlib.sha256(manifest).hexdigest()}")
    assert len(lines) == 4
    assert main(["lineage", "models:/lineage-gan_4x@champion", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert [c["run_id"] for c in chain] == [runs[s].info.run_id for s in ("gan_4x", "fidelity_4x", "fidelity_2x")]

    report_load = load_pretrain(build_generator("superultracompact", 4), weights_file("models:/lineage-gan_4x@champion"), strict=True)
    assert report_load.loaded > 0 and not report_load.missing


def test_data_lineage_pins_each_manifest_by_sha256(tmp_path):
    import hashlib

    from srcluster.recipes.pipeline import data_lineage
    from srcluster.storage import StorageSettings

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_bytes(b'{"format": "srcluster-shards/2"}')
    (tmp_path / "folder").mkdir()
    recipe = parse_recipe({**SHARED, "datasets": {"train": {"dataroot_gt": [str(tmp_path / "shards"),
                                                                            str(tmp_path / "folder")]}}}, "r.yml")
    tags = data_lineage(recipe.job("fidelity_2x"), StorageSettings.resolve())
    assert tags["srcluster.data_manifest"] == f"{tmp_path / 'shards'}/manifest.json,{tmp_path / 'folder'}"
    digest = hashlib.sha256(b'{"format": "srcluster-shards/2"}').hexdigest()
    assert tags["srcluster.data_sha256"] == f"{digest},none"
