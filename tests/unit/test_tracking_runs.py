"""The MLflow run life cycle (srcluster/tracking/runs.py) against a real local store: find, reuse, reopen, start,
end."""

from __future__ import annotations

import pytest

from srcluster.tracking import runs, tags
from srcluster.tracking.tracker import Tracker

EXPERIMENT = "runs-test"


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"
    Tracker(uri).experiment_id(EXPERIMENT)  # creating the schema takes MLflow seconds: once per module
    return uri


@pytest.fixture
def tracker(sqlite_uri) -> Tracker:
    return Tracker(sqlite_uri)


def status(tracker: Tracker, run_id: str) -> str:
    return tracker.get_run(run_id).info.status


def test_a_new_run_carries_match_tags_params_and_parent_and_ends_finished(tracker):
    with runs.run(
        tracker,
        EXPERIMENT,
        name="stage",
        match={tags.RUN_KEY: "new-1"},
        params={"lr": 0.001},
        tags={tags.STAGE: "stage"},
        parent_run_id="parent-id",
    ) as run:
        assert (run.state, run.reused, run.previous) == ("new", False, None)
        assert status(tracker, run.id) == "RUNNING"
    found = tracker.get_run(run.id)
    assert found.info.status == "FINISHED" and found.info.run_name == "stage"
    assert found.data.params == {"lr": "0.001"}
    assert found.data.tags[tags.RUN_KEY] == "new-1" and found.data.tags[tags.STAGE] == "stage"
    assert found.data.tags["mlflow.parentRunId"] == "parent-id" and tags.VERSION in found.data.tags
    assert run.id in run.url


def test_a_finished_run_that_passes_reuse_if_is_handed_back_untouched(tracker):
    with runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "reuse-1"}) as first:
        tracker.set_tags(first.id, {tags.CHECKPOINT_URI: "s3://b/ckpt"})
    ended = tracker.get_run(first.id).info.end_time
    with runs.run(
        tracker,
        EXPERIMENT,
        name="stage",
        match={tags.RUN_KEY: "reuse-1"},
        reuse_if=lambda previous: tags.CHECKPOINT_URI in previous.data.tags,
    ) as again:
        assert again.reused and again.id == first.id
        assert again.previous.data.tags[tags.CHECKPOINT_URI] == "s3://b/ckpt"
    assert status(tracker, first.id) == "FINISHED" and tracker.get_run(first.id).info.end_time == ended


def test_an_unfinished_run_is_reopened_and_a_failing_block_ends_it_failed(tracker):
    with (
        pytest.raises(RuntimeError),
        runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "reopen-1"}) as first,
    ):
        raise RuntimeError("a worker died")
    assert status(tracker, first.id) == "FAILED"
    said = []
    with runs.run(
        tracker,
        EXPERIMENT,
        name="stage",
        match={tags.RUN_KEY: "reopen-1"},
        log=said.append,
        reuse_if=lambda previous: True,
    ) as again:  # FAILED is not finished: never reused
        assert again.state == "reopened" and again.id == first.id
        assert status(tracker, again.id) == "RUNNING"
    assert status(tracker, first.id) == "FINISHED"
    assert said == [f"stage: continuing MLflow run {first.id}"]


def test_a_finished_run_that_is_not_reused_is_reopened_or_left_by_reopen_finished(tracker):
    match = {tags.RECIPE: "r", tags.KIND: "pipeline"}
    with runs.run(tracker, EXPERIMENT, name="parent", match=match) as first:
        pass
    with runs.run(tracker, EXPERIMENT, name="parent", match=match, reuse_if=lambda previous: False) as reopened:
        assert reopened.state == "reopened" and reopened.id == first.id
    with runs.run(tracker, EXPERIMENT, name="parent", match=match, reopen_finished=False) as second:
        assert second.state == "new" and second.id != first.id
    assert tracker.get_run(second.id).data.tags[tags.KIND] == "pipeline"
    assert tracker.find_run(EXPERIMENT, match).info.run_id == second.id  # the newest is found next time


def test_fresh_starts_a_new_run_beside_an_unfinished_one(tracker):
    with (
        pytest.raises(RuntimeError),
        runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "fresh-1"}) as first,
    ):
        raise RuntimeError
    with runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "fresh-1"}, fresh=True) as second:
        assert second.state == "new" and second.id != first.id
    assert status(tracker, first.id) == "FAILED"


def test_ctrl_c_ends_the_run_killed_and_status_chooses_a_normal_end(tracker):
    with (
        pytest.raises(KeyboardInterrupt),
        runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "killed-1"}) as killed,
    ):
        raise KeyboardInterrupt
    assert status(tracker, killed.id) == "KILLED"
    with runs.run(tracker, EXPERIMENT, name="stage", match={tags.RUN_KEY: "status-1"}) as stopped:
        stopped.status = "KILLED"
    assert status(tracker, stopped.id) == "KILLED"
