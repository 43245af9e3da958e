"""Resuming as users expect, on the real stack (SeaweedFS S3, MLflow, Ray Train): a rerun with a raised total_iter and a
new milestone continues the same MLflow run from its last checkpoint; `path.resume_state` starts a new run from a
stage's checkpoint URI, and a resume state that does not exist is refused before Ray starts."""

from __future__ import annotations

import pytest

from helpers.jobs import tiny_job
from srcluster.config import parse_job
from srcluster.data.sample import build_sample_dataset
from srcluster.errors import SrclusterError
from srcluster.page import ComparePage
from srcluster.storage import StorageSettings
from srcluster.tracking import tags
from srcluster.tracking.tracker import Tracker
from srcluster.train.stage import run_stage

pytestmark = pytest.mark.slow

TRAIN, VAL = "s3://srcluster/resume/train", "s3://srcluster/resume/val"


@pytest.fixture(scope="module")
def sample_data(stack):
    return build_sample_dataset(TRAIN, VAL, tile=64, val_size=64, progress=False)


def job(name: str, total_iter: int, **overrides) -> dict:
    """One worker, a checkpoint every 2 iterations, validation at the end only."""
    return tiny_job(
        name=name,
        datasets={
            "train": {"dataroot_gt": TRAIN, "lq_size": 16, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": VAL},
        },
        train={"total_iter": total_iter, "losses": [{"type": "charbonnierloss", "loss_weight": 1.0}], **overrides},
        val={"val_freq": 1000},
        logger={"print_freq": 2, "save_checkpoint_freq": 2},
        srcluster={"workers": 1, "checkpoints": {"keep_last": 4}},
    )


def lr_history(run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in Tracker().client.get_metric_history(run_id, "lr")]


def test_a_raised_total_iter_continues_the_run_and_resume_state_starts_a_new_one(
    stack, ray_cluster, sample_data, tmp_path
):
    first = run_stage(parse_job(job("resume", 4)))
    assert first.iterations == 4

    lines: list[str] = []
    second = run_stage(parse_job(job("resume", 8, scheduler={"milestones": [6]})), log=lines.append)
    assert second.run_id == first.run_id and not second.reused and second.iterations == 8
    assert (
        f"resume: continuing MLflow run {first.run_id} from its checkpoint at iteration 4 with "
        "train.scheduler.milestones [] -> [6]; train.total_iter 4 -> 8"
    ) in lines
    # the iterations went on from the checkpoint (not 2, 4 again) under the new schedule: gamma 0.1 from iteration 6
    history = lr_history(first.run_id)
    assert [step for step, _ in history] == [2, 4, 6, 8]
    assert [lr for _, lr in history] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-5])
    run = Tracker().client.get_run(first.run_id)
    assert run.data.tags[tags.TOTAL_ITER] == "8" and run.data.tags[tags.ITERATIONS] == "8"
    assert run.data.tags[tags.CONTINUED].startswith("at iteration 4: train.scheduler.milestones")
    fs, _ = StorageSettings.resolve().filesystem(second.checkpoint_uri)
    run_folder = second.checkpoint_uri.rsplit("/", 1)[0]
    assert {f"checkpoint_000000{i}" for i in (4, 6, 8)} <= {p.rsplit("/", 1)[-1] for p in fs.ls(run_folder)}
    # the comparison page went on from the first try's: its validation at 4, then the continued run's at 8
    page = Tracker().client.download_artifacts(first.run_id, "compare/validation.html", str(tmp_path))
    assert [s.name for s in ComparePage.read(page).sources if s.step is not None] == ["resume@4", "resume@8"]

    again: list[str] = []
    third = run_stage(parse_job(job("resume", 8, scheduler={"milestones": [6]})), log=again.append)
    assert third.reused and third.run_id == first.run_id and third.iterations == 8

    # a new run (another name) from the stage's checkpoint URI: it starts at iteration 8, not 0
    started = run_stage(parse_job({**job("resume-from", 10), "path": {"resume_state": second.checkpoint_uri}}))
    assert started.run_id != first.run_id and started.iterations == 10
    assert [step for step, _ in lr_history(started.run_id)] == [10]


def test_a_missing_resume_state_is_refused_before_ray_starts(stack, sample_data):
    missing = "s3://srcluster/resume/nothing/checkpoint_0000004"
    with pytest.raises(SrclusterError, match=f"^path.resume_state {missing}: no state.pt there"):
        run_stage(parse_job({**job("resume-missing", 4), "path": {"resume_state": missing}}))
    assert Tracker().client.get_experiment_by_name("resume-missing") is None  # no MLflow run was started
