"""Generators in the MLflow registry on a plain local SQLite store: log + register, alias, resolve, load as pretrain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from srcluster.cli import main
from srcluster.components.archs import build_generator
from srcluster.components.weights import export_generator, load_pretrain
from srcluster.errors import SrclusterError
from srcluster.storage import StorageSettings
from srcluster.tracking.models import (
    ModelRef,
    find_registered,
    get_version,
    log_generator,
    resolve_model_uri,
    set_alias,
    weights_file,
)
from srcluster.tracking.tracker import Tracker

pytestmark = pytest.mark.usefixtures("single_thread")
LOCAL = StorageSettings()  # the generators here are local files


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"
    Tracker(uri).experiment_id("models-test")  # creating the schema takes MLflow seconds: once per module
    return uri


@pytest.fixture
def sqlite_tracker(sqlite_uri, monkeypatch) -> Tracker:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)  # what read_state_dict / the CLI resolve through
    return Tracker(sqlite_uri)


def exported(tmp_path, seed: int, scale: int = 2):
    torch.manual_seed(seed)
    net = build_generator("superultracompact", scale)
    return net, export_generator(net, tmp_path / f"g{seed}.safetensors")


def test_register_promote_resolve_and_pretrain_on_sqlite(sqlite_tracker, tmp_path, capsys):
    tracker = sqlite_tracker
    net, path = exported(tmp_path, 1)
    run_id = tracker.start_run(
        "models-test", "toy-stage", tags={"srcluster.stage": "fidelity_2x", "srcluster.pretrain_model": "none"}
    )
    ref = log_generator(
        tracker,
        run_id,
        path,
        arch="superultracompact",
        options={"num_feat": 24},
        scale=2,
        settings=LOCAL,
        registered_name="toy-fidelity_2x",
        tags={"srcluster.key_metric": "val_psnr", "srcluster.key_metric_value": "30.5"},
    )
    assert ref == ModelRef("toy-fidelity_2x", "1", "models:/toy-fidelity_2x/1", run_id)
    assert tracker.get_run(run_id).data.tags["srcluster.registered_model"] == ref.uri
    version = get_version(tracker, "toy-fidelity_2x", "1")
    assert version.tags["srcluster.stage"] == "fidelity_2x"  # the run's lineage tags travel with the version
    assert version.tags["srcluster.arch"] == "superultracompact" and version.tags["srcluster.scale"] == "2"
    assert "srcluster.version" in version.tags

    # a second generator of the same run is a new version; find_registered sees the newest
    _, path2 = exported(tmp_path, 2)
    ref2 = log_generator(
        tracker,
        run_id,
        path2,
        arch="superultracompact",
        options={},
        scale=2,
        settings=LOCAL,
        registered_name="toy-fidelity_2x",
    )
    assert ref2.version == "2" and find_registered(tracker, "toy-fidelity_2x", run_id) == ref2
    assert find_registered(tracker, "toy-fidelity_2x", "0" * 32) is None

    assert main(["promote", "toy-fidelity_2x", "1", "--alias", "champion", "--reason", "sharper"]) == 0
    tags = get_version(tracker, "toy-fidelity_2x", "1").tags
    assert tags["srcluster.alias.champion.reason"] == "sharper" and tags["srcluster.alias.champion.by"]
    assert tags["srcluster.alias.champion.at"].startswith("20")

    local, arch, options, scale = resolve_model_uri("models:/toy-fidelity_2x@champion")
    assert (arch, options, scale) == ("superultracompact", {"num_feat": 24}, 2)
    expected = net.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in load_file(local).items())
    assert resolve_model_uri("models:/toy-fidelity_2x/2")[0] != local

    torch.manual_seed(99)
    fresh = build_generator("superultracompact", 2)
    champion = weights_file("models:/toy-fidelity_2x@champion")  # the version's file, downloaded once
    report = load_pretrain(fresh, champion, label="models:/toy-fidelity_2x@champion")
    assert champion == local and report.loaded == len(expected)
    assert report.source == "models:/toy-fidelity_2x@champion"  # reports name the pretrain as the user gave it
    assert all(torch.equal(t, expected[k]) for k, t in fresh.state_dict().items())

    # moving the alias moves what the URI resolves to
    set_alias(tracker, "toy-fidelity_2x", "2", "champion")
    assert load_file(resolve_model_uri("models:/toy-fidelity_2x@champion")[0]).keys() == expected.keys()
    assert not torch.equal(
        load_file(resolve_model_uri("models:/toy-fidelity_2x@champion")[0])["body.0.weight"], expected["body.0.weight"]
    )


def test_registry_errors_are_one_line(sqlite_tracker, tmp_path, capsys):
    tracker = sqlite_tracker
    _, path = exported(tmp_path, 3)
    run_id = tracker.start_run("models-test", "toy")
    log_generator(
        tracker, run_id, path, arch="superultracompact", options={}, scale=2, settings=LOCAL, registered_name="toy-x"
    )
    with pytest.raises(SrclusterError, match=r"no registered model 'nope'"):
        resolve_model_uri("models:/nope@champion")
    with pytest.raises(SrclusterError, match=r"'toy-x' has no alias @gold"):
        resolve_model_uri("models:/toy-x@gold")
    with pytest.raises(SrclusterError, match=r"'toy-x' has no version 7"):
        resolve_model_uri("models:/toy-x/7")
    with pytest.raises(SrclusterError, match=r"not a registry model URI"):
        resolve_model_uri("models:/toy-x")
    with pytest.raises(SrclusterError, match=r"generator .*missing.safetensors does not exist"):
        log_generator(
            tracker,
            run_id,
            tmp_path / "missing.safetensors",
            arch="superultracompact",
            options={},
            scale=2,
            settings=LOCAL,
        )
    assert main(["promote", "toy-x", "5", "--alias", "champion"]) == 2
    err = capsys.readouterr().err
    assert "has no version 5" in err and "Traceback" not in err


def test_registered_generator_loads_as_an_mlflow_pyfunc_model(sqlite_tracker, tmp_path):
    import mlflow.pyfunc

    tracker = sqlite_tracker
    _, path = exported(tmp_path, 4)
    run_id = tracker.start_run("models-test", "toy")
    ref = log_generator(
        tracker, run_id, path, arch="superultracompact", options={}, scale=2, settings=LOCAL, registered_name="toy-py"
    )
    mlflow.set_tracking_uri(tracker.uri)
    model = mlflow.pyfunc.load_model(ref.uri)
    out = model.predict([np.zeros((12, 10, 3), np.uint8)])
    assert out[0].shape == (24, 20, 3) and out[0].dtype == np.uint8

    # the same registry URI works for `srcluster upscale`
    from PIL import Image

    Image.fromarray(np.full((7, 9, 3), 128, np.uint8)).save(tmp_path / "in.png")
    assert main(["upscale", ref.uri, str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "out.png").size == (18, 14)
