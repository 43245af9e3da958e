"""The three-stage recipe on the local stack and Ray: registry, lineage, kill and resume, report (the derivation rules
and the plan: tests/unit/test_recipes.py)."""

import json
from pathlib import Path

import pytest

from helpers.drivers import checkpoint_recorded, kill_when
from srcluster.page import read_data
from srcluster.recipes.pipeline import STAGES, parse_recipe

LINEAGE_TRAIN, LINEAGE_VAL = "s3://srcluster/lineage/train", "s3://srcluster/lineage/val"


def toy_recipe() -> dict:
    """Stage 2 runs long enough (160 iterations, a checkpoint every 20) to be killed in the middle."""
    return {
        "name": "lineage",
        "manual_seed": 5,
        "datasets": {
            "train": {"dataroot_gt": LINEAGE_TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": LINEAGE_VAL},
        },
        "network_g": {"type": "superultracompact"},
        "train": {"total_iter": 8, "losses": [{"type": "charbonnierloss"}]},
        "val": {"val_freq": 4, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        "logger": {"print_freq": 4, "save_checkpoint_freq": 4},
        "srcluster": {"workers": 2},
        "stages": {
            "fidelity_2x": {},
            "fidelity_4x": {
                "train": {"total_iter": 160},
                "val": {"val_freq": 20},
                "logger": {"print_freq": 20, "save_checkpoint_freq": 20},
            },
            "gan_4x": {
                "network_d": {"type": "unetdiscriminatorsn", "num_feat": 8},
                "train": {
                    "total_iter": 4,
                    "scheduler": {"milestones": []},
                    "losses": [
                        {"type": "mssimloss", "loss_weight": 0.5},
                        {"type": "hsluvloss", "loss_weight": 1.0},
                        {"type": "ganloss", "loss_weight": 0.1},
                    ],
                },
            },
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
    from srcluster.components.archs import build_generator
    from srcluster.components.weights import load_pretrain
    from srcluster.data.sample import build_sample_dataset
    from srcluster.storage import StorageSettings
    from srcluster.tracking.models import weights_file
    from srcluster.tracking.tracker import Tracker
    from srcluster.train.stage import run_key

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
    second = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)  # asserted below
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"already trained in MLflow run {before['fidelity_2x'].info.run_id}" in output
    assert f"continuing MLflow run {before['fidelity_4x'].info.run_id}" in output
    assert "resumed from checkpoint at iteration " in output
    assert "pretrain: loaded" in output and "from models:/lineage-fidelity_4x/1" in output  # stage 3, via the registry

    runs = stage_runs()
    assert {s: r.info.run_id for s, r in runs.items()} == {
        **{s: r.info.run_id for s, r in before.items()},
        "gan_4x": runs["gan_4x"].info.run_id,
    }
    parents = client.search_runs([experiment], "tags.`srcluster.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the killed execution was continued
    parent = parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    # the stage rules: stage 2 loads loosely (2x -> 4x), stage 3 trains G against D with the GAN losses
    assert runs["fidelity_4x"].data.params["path.strict_load_g"] == "False"
    assert runs["gan_4x"].data.params["path.strict_load_g"] == "True" and runs["gan_4x"].data.params["scale"] == "4"
    assert {"l_g_gan", "l_g_mssim", "l_g_hsluv_hue", "l_d_real", "l_d_fake"} <= set(runs["gan_4x"].data.metrics)

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
        assert (
            version_tags["srcluster.key_metric"] == "val_psnr" and float(version_tags["srcluster.key_metric_value"]) > 0
        )
    assert len(hashes) == 1

    # 4. the report: same crops through every stage, logged to the parent run and written locally
    report = output.split("report: ", 1)[1].split()[0]
    width, height = Image.open(report).size
    assert width > 500 and height > 400
    assert [f.path for f in client.list_artifacts(parent, "report")] == [f"report/{os.path.basename(report)}"]
    # and the comparison page: every stage, bicubic and HR on the validation images, logged to the parent run
    page = output.split("comparison page: ", 1)[1].split()[0]
    assert [f.path for f in client.list_artifacts(parent, "compare")] == [f"compare/{os.path.basename(page)}"]
    shown = read_data(Path(page).read_text())
    assert [s["name"] for s in shown["sources"]] == ["lr", "bicubic", "fidelity_2x", "fidelity_4x", "gan_4x", "hr"]

    # 5. promote, lineage, and the alias as a pretrain source
    assert main(["promote", "lineage-gan_4x", "1", "--alias", "champion", "--reason", "e2e"]) == 0
    capsys.readouterr()
    assert main(["lineage", "models:/lineage-gan_4x@champion"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("models:/lineage-gan_4x/1 @champion  stage gan_4x")
    assert lines[1].startswith("  <- models:/lineage-fidelity_4x/1  stage fidelity_4x") and "val_psnr" in lines[1]
    assert lines[2].startswith("  <- models:/lineage-fidelity_2x/1  stage fidelity_2x")
    assert lines[3].startswith(
        f"  <- data {LINEAGE_TRAIN}/manifest.json  sha256 {hashlib.sha256(manifest).hexdigest()}"
    )
    assert len(lines) == 4
    assert main(["lineage", "models:/lineage-gan_4x@champion", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert [c["run_id"] for c in chain] == [runs[s].info.run_id for s in ("gan_4x", "fidelity_4x", "fidelity_2x")]

    report_load = load_pretrain(
        build_generator("superultracompact", 4), weights_file("models:/lineage-gan_4x@champion"), strict=True
    )
    assert report_load.loaded > 0 and not report_load.missing
