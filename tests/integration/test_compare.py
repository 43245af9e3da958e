"""The comparison page on real services: a stage logs its page (one checkpoint per validation) to its MLflow run and
names it in the summary, and `srcluster compare runs:/<id>` pulls the run's generators from MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers.jobs import tiny_job
from srcluster.cli import main
from srcluster.data.sample import build_sample_dataset
from srcluster.page import read_data
from srcluster.tracking import tags
from srcluster.tracking.tracker import Tracker

pytestmark = pytest.mark.slow

TRAIN, VAL = "s3://srcluster/compare/train", "s3://srcluster/compare/val"


def compare_job() -> dict:
    return tiny_job(
        name="cmp",
        datasets={
            "train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": VAL},
        },
        val={"val_freq": 10, "metrics_enabled": True, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        srcluster={"workers": 1},
    )


def test_a_stage_logs_its_page_and_compare_reads_its_run(stack, ray_cluster, tmp_path, capfd):
    build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)
    job = tmp_path / "job.yml"
    job.write_text(yaml.safe_dump(compare_job()))
    assert main(["train", str(job)]) == 0
    out = capfd.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("comparison page: "))
    assert line.endswith("/artifacts/compare/validation.html")
    run_id = line.split("/runs/", 1)[1].split("/", 1)[0]

    client = Tracker().client
    page = read_data(Path(client.download_artifacts(run_id, "compare/validation.html", str(tmp_path))).read_text())
    assert [s["name"] for s in page["sources"]] == ["bicubic", "lr", "hr", "cmp@10", "cmp@20"]
    assert [(s["group"], s["step"]) for s in page["sources"][3:]] == [("cmp", 10), ("cmp", 20)]
    assert len(page["images"]) >= 1
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "val_psnr")}
    for step in (10, 20):  # the page's mean is the run's metric at that validation
        assert page["means"][f"cmp@{step}"]["psnr"] == pytest.approx(logged[step], abs=1e-6)

    html = tmp_path / "run.html"
    assert main(["compare", f"runs:/{run_id}", "bicubic", "hr", "--val", str(job), "-o", str(html)]) == 0
    data = read_data(html.read_text())
    best = int(client.get_run(run_id).data.tags[tags.BEST_ITERATION])
    generators = {"cmp@20": "final, best"} if best == 20 else {f"cmp@{best}": "best", "cmp@20": "final"}
    assert {s["name"]: s["note"] for s in data["sources"][:-2]} == generators
    assert [s["name"] for s in data["sources"][-2:]] == ["bicubic", "hr"]
    # the same generator on the same images; spandrel's network may round a pixel differently than the training one
    assert data["means"]["cmp@20"]["psnr"] == pytest.approx(logged[20], abs=0.01)
