"""`srcluster weights pull --to s3://...` stages weights from the hub cache in the session's real S3, and a Ray worker
with an empty hub cache and no internet, told only what `worker_env` carries, builds the perceptual loss from there."""

from __future__ import annotations

import uuid

import torch

from helpers.fake_weights import first_conv_file, pinned
from srcluster.cli import main
from srcluster.components import hub
from srcluster.storage import StorageSettings
from srcluster.train.stage import worker_env


def test_pull_to_s3_stages_cached_weights_that_workers_read(s3, ray_cluster, tmp_path, monkeypatch, capsys):
    cached = first_conv_file(tmp_path / "driver" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    entry = pinned("vgg19", cached)
    monkeypatch.setitem(hub.FILES, "vgg19", entry)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "driver"))  # in the cache: `pull` downloads nothing
    dest = f"s3://srcluster/tests/weights-{uuid.uuid4().hex[:8]}"

    assert main(["weights", "pull", "vgg19", "--to", dest]) == 0
    out = capsys.readouterr().out
    assert f"staged at {dest}/vgg19-dcbb9e9d.pth" in out and f"{hub.WEIGHTS_URL_ENV}={dest}" in out
    settings = StorageSettings.resolve()
    fs, path = settings.filesystem(f"{dest}/vgg19-dcbb9e9d.pth")
    assert fs.cat_file(path) == cached.read_bytes()

    def build_perceptual_loss_on_a_node(entry: hub.HubFile) -> tuple[list[float], bytes]:
        """Runs in a Ray worker (nested, so cloudpickle ships it by value): the entry the test pinned, then the loss
        as a training stage builds it."""
        import urllib.error

        from srcluster.components import hub, losses

        def offline(url, dest):
            raise urllib.error.URLError("this node has no internet")

        hub.FILES[entry.name] = entry
        hub.download = offline
        loss = losses.build_loss("perceptualloss", layer_weights={"conv1_1": 1.0})
        return loss.vgg.body[0].bias.tolist(), hub.cache_path(entry.name).read_bytes()

    monkeypatch.setenv(hub.WEIGHTS_URL_ENV, dest)
    env = {**worker_env(settings, None), "TORCH_HOME": str(tmp_path / "node")}  # the node's own, empty hub cache
    task = ray_cluster.remote(build_perceptual_loss_on_a_node).options(runtime_env={"env_vars": env})
    bias, copied = ray_cluster.get(task.remote(entry), timeout=300)
    assert copied == cached.read_bytes()
    assert bias == torch.load(cached, weights_only=True)["features.0.bias"].tolist()
