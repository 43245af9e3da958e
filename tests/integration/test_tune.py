"""`srcluster tune`: real searches on Ray Tune (S3 shards, Ray Train trials, MLflow registry); the search file
itself: tests/unit/test_tune_search.py."""

from __future__ import annotations

import pytest
import yaml

from helpers.drivers import kill_when
from helpers.search_files import TRAIN, VAL, gan_job, search_file
from srcluster.tune.space import parse_search

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
    stack, ray_cluster, tune_data, tmp_path
):
    from srcluster.tracking.models import resolve_model_uri
    from srcluster.tracking.tracker import Tracker
    from srcluster.tune.run import run_search

    # 4 trials x 2 workers x 0.5 CPU: all four at once on the session's 4-CPU Ray cluster
    job = gan_job(srcluster={"workers": 2, "cpus_per_worker": 0.5, "nonfinite_patience": 2})
    # lr 1e30 diverges at once; the other three train. grid: every value once, in this order.
    spec = search_file(
        tmp_path,
        job,
        name="asha-gan",
        num_samples=1,
        space={
            "train.optim_g.lr": {"grid": [1.0e-3, 1.0e30, 3.0e-3, 2.0e-4]},
            "train.losses.ganloss.loss_weight": {"uniform": [0.05, 0.2]},
        },
        scheduler={"type": "asha", "grace_period": 4},
        search={"algorithm": "random", "seed": 1},
    )
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
    _weights, arch, _, scale = resolve_model_uri(f"models:/{ref.name}@candidate")
    assert arch == "superultracompact" and scale == 2


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
    spec = search_file(
        tmp_path,
        job,
        name="pbt",
        num_samples=2,
        trial={"workers": 1},
        space={"train.optim_g.lr": {"loguniform": [1.0e-4, 5.0e-3]}},
        scheduler={
            "type": "pbt",
            "perturbation_interval": 4,
            "quantile_fraction": 0.5,
            "resample_probability": 0.0,
            "synch": True,
        },
        search={"seed": 3},
    )
    outcome = run_search(parse_search(spec, "pbt.yml"), output_dir=tmp_path / "out")
    assert [r.status for r in outcome.rows] == ["TERMINATED", "TERMINATED"]
    assert all(r.iterations == 8 for r in outcome.rows)

    client = Tracker().client
    changed = 0
    for row in outcome.rows:
        lrs = [m.value for m in sorted(client.get_metric_history(row.run_id, "lr"), key=lambda m: m.step)]
        config_lrs = [
            m.value for m in sorted(client.get_metric_history(row.run_id, "hp.train.optim_g.lr"), key=lambda m: m.step)
        ]
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

    from srcluster.tracking import tags
    from srcluster.tracking.tracker import Tracker
    from srcluster.tune.run import run_search

    job = charbonnier_job(train={"total_iter": 8}, val={"val_freq": 4}, srcluster={"workers": 1, "cpus_per_worker": 1})
    spec = search_file(
        tmp_path,
        job,
        name="resume",
        num_samples=1,
        trial={"workers": 1},
        scheduler={"type": "fifo"},
        search={"max_concurrent": 1},
        space={"train.optim_g.lr": {"grid": [1.0e-3, 2.0e-3, 3.0e-3]}},
    )
    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(spec))
    search = parse_search(spec, str(path))
    client = Tracker().client

    def runs():
        parent = Tracker().find_run("resume", {tags.TUNE_KEY: search.key()})
        return trial_runs(parent.info.run_id) if parent else []

    # the first try is killed (driver and all it started) once one trial has finished
    kill_when(
        [sys.executable, "-m", "srcluster.cli", "tune", str(path)],
        lambda: any(r.info.status == "FINISHED" for r in runs()),
        timeout=300,
        settle=3,
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
    )  # Tune saves its state every second here
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
