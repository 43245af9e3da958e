"""Pretrained weights are found at the path given, in the hub cache, in a staged copy, or downloaded (checksum
verified); with none of these, one line says which file, where to put it and which command fetches it. Nothing is
downloaded: the downloader is replaced by a local copy, or pointed at a closed local port."""

import dataclasses
import socket
from pathlib import Path

import pytest
import torch

from helpers.fake_weights import first_conv_file, pinned
from srcluster.cli import main
from srcluster.components import hub, losses
from srcluster.config import read_yaml
from srcluster.errors import SrclusterError
from srcluster.recipes.demo import DEMO_RECIPE, drop_perceptual_without_vgg19
from srcluster.recipes.pipeline import parse_recipe
from srcluster.storage import StorageSettings
from srcluster.train.stage import worker_env

REAL_DOWNLOAD = hub.download  # captured at import, before conftest's autouse fixture makes downloads fail
CONV1_1 = {"conv1_1": 1.0}  # a perceptual loss that reads only features.0 of the file


def pin(monkeypatch, name: str, file: Path, **changes) -> hub.HubFile:
    entry = pinned(name, file, **changes)
    monkeypatch.setitem(hub.FILES, name, entry)
    return entry


def closed_port_url(file: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{file}"  # nothing listens there once the socket is closed


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """A downloader that copies the local file its URL names (tests point URLs at files they made), noting each URL."""
    seen: list[str] = []

    def fake(url: str, dest: Path) -> None:
        seen.append(url)
        Path(dest).write_bytes(Path(url.removeprefix("file://")).read_bytes())

    monkeypatch.setattr(hub, "download", fake)
    return seen


def test_a_given_path_is_used_as_it_is(tmp_path, torch_home, downloads):
    own = first_conv_file(tmp_path / "mine.pth")
    assert hub.locate("vgg19", str(own)) == own
    loss = losses.build_loss("perceptualloss", layer_weights=CONV1_1, vgg_weights_path=str(own))
    assert loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)).item() > 0
    with pytest.raises(SrclusterError, match=r"vgg19 weights file .*nope\.pth does not exist"):
        hub.locate("vgg19", str(tmp_path / "nope.pth"))
    assert downloads == []


def test_the_hub_cache_is_read_without_network(torch_home, downloads):
    cached = first_conv_file(torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    assert hub.cache_path("vgg19") == cached
    assert hub.locate("vgg19") == cached
    assert losses.build_loss("perceptualloss", layer_weights=CONV1_1).vgg.body[0].weight.shape == (64, 3, 3, 3)
    assert downloads == []


def test_a_missing_file_is_downloaded_once_into_the_cache(tmp_path, torch_home, downloads, monkeypatch):
    source = first_conv_file(tmp_path / "server" / "vgg19-dcbb9e9d.pth")
    pin(monkeypatch, "vgg19", source, url=str(source))
    loss = losses.build_loss("perceptualloss", layer_weights=CONV1_1)
    cached = torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert cached.read_bytes() == source.read_bytes()
    assert torch.equal(loss.vgg.body[0].weight, torch.load(source, weights_only=True)["features.0.weight"])
    losses.build_loss("perceptualloss", layer_weights=CONV1_1)
    assert downloads == [str(source)]  # the second build read the cache
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left behind


def test_a_download_with_the_wrong_checksum_is_refused_and_not_cached(tmp_path, torch_home, downloads, monkeypatch):
    source = first_conv_file(tmp_path / "server" / "vgg19-dcbb9e9d.pth")
    pin(monkeypatch, "vgg19", first_conv_file(tmp_path / "other.pth", seed=1), url=str(source))
    with pytest.raises(SrclusterError, match=r"vgg19-dcbb9e9d\.pth from .* has sha256 \w+…, expected \w+…"):
        hub.locate("vgg19")
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []


def test_torchvision_checksums_are_the_prefixes_in_their_file_names():
    for name in ("vgg19", "vgg16", "alexnet"):
        entry = hub.FILES[name]
        assert entry.file.removesuffix(".pth").endswith(f"-{entry.sha256}")
        assert entry.url == f"https://download.pytorch.org/models/{entry.file}"


def test_without_network_one_line_names_the_file_the_place_and_the_command(torch_home, monkeypatch, capsys):
    monkeypatch.setattr(hub, "download", REAL_DOWNLOAD)  # the real downloader, against a port nobody listens on
    url = closed_port_url("vgg19-dcbb9e9d.pth")
    monkeypatch.setitem(hub.FILES, "vgg19", dataclasses.replace(hub.FILES["vgg19"], url=url))
    with pytest.raises(SrclusterError) as error:
        losses.build_loss("perceptualloss")
    message = str(error.value)
    assert "\n" not in message
    assert f"could not be downloaded from {url}" in message
    assert f"put vgg19-dcbb9e9d.pth in {torch_home / 'hub' / 'checkpoints'}/" in message
    assert "perceptualloss.vgg_weights_path" in message and "`srcluster weights pull vgg19`" in message

    assert main(["weights", "pull", "vgg19"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: vgg19 weights") and "Traceback" not in err


def test_unknown_names_are_one_line(capsys):
    assert main(["weights", "pull", "vgg91"]) == 2
    known = "vgg19, vgg16, alexnet, topiq, topiq_nr, danbooru_resnet50, line_distiller"
    assert f"no pretrained weights named 'vgg91' (known: {known})" in capsys.readouterr().err


def test_a_staged_folder_fills_the_cache_and_is_checked(tmp_path, torch_home, monkeypatch):
    staged = first_conv_file(tmp_path / "staged" / "vgg19-dcbb9e9d.pth")
    monkeypatch.setenv(hub.WEIGHTS_URL_ENV, str(tmp_path / "staged"))
    pin(monkeypatch, "vgg19", first_conv_file(tmp_path / "other.pth", seed=1))
    with pytest.raises(SrclusterError, match=r"from .*staged/vgg19-dcbb9e9d\.pth has sha256"):
        hub.locate("vgg19")  # a staged copy that is not the pinned file is refused
    pin(monkeypatch, "vgg19", staged)
    assert hub.locate("vgg19").read_bytes() == staged.read_bytes()
    assert hub.cache_path("vgg19").is_file()
    # not staged there (and no network): the error says where it looked
    monkeypatch.setenv(hub.WEIGHTS_URL_ENV, str(tmp_path / "empty"))
    with pytest.raises(SrclusterError, match=r"alexnet-owt-7be5be79\.pth are not on this machine \(not staged at"):
        hub.locate("alexnet")


def test_pull_to_a_folder_stages_cached_files_for_nodes_without_internet(tmp_path, torch_home, capsys, monkeypatch):
    cached = first_conv_file(torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    pin(monkeypatch, "vgg19", cached)
    shared = tmp_path / "shared" / "weights"
    shared.mkdir(parents=True)
    assert main(["weights", "pull", "vgg19", "--to", str(shared)]) == 0
    out = capsys.readouterr().out
    assert (shared / cached.name).read_bytes() == cached.read_bytes()
    assert f"{hub.WEIGHTS_URL_ENV}={shared}" in out
    # a node with an empty cache and the variable set reads them from there
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "node"))
    monkeypatch.setenv(hub.WEIGHTS_URL_ENV, str(shared))
    losses.build_loss("perceptualloss", layer_weights=CONV1_1)
    assert (tmp_path / "node" / "hub" / "checkpoints" / cached.name).is_file()


def test_workers_get_the_staged_weights_url(monkeypatch):
    settings = StorageSettings.resolve()
    assert hub.WEIGHTS_URL_ENV not in worker_env(settings, None)
    monkeypatch.setenv(hub.WEIGHTS_URL_ENV, "s3://bucket/weights")
    assert worker_env(settings, None)[hub.WEIGHTS_URL_ENV] == "s3://bucket/weights"


# --- the demo's GAN stage ---------------------------------------------------------------------------------------------


def demo_gan_losses(recipe) -> list[str]:
    return [loss.type for loss in recipe.job("gan_4x", "x").train.losses]


def test_the_demo_runs_the_guideline_gan_losses_when_vgg19_is_here(torch_home, downloads):
    first_conv_file(torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    recipe = parse_recipe(read_yaml(str(DEMO_RECIPE)), "demo.yml")
    assert drop_perceptual_without_vgg19(recipe) is None
    assert demo_gan_losses(recipe) == ["mssimloss", "perceptualloss", "hsluvloss", "ganloss"]


def test_the_demo_says_in_one_line_which_loss_it_dropped_and_why(torch_home):
    recipe = parse_recipe(read_yaml(str(DEMO_RECIPE)), "demo.yml")
    line = drop_perceptual_without_vgg19(recipe)
    assert line is not None and "\n" not in line
    assert line.startswith("gan_4x runs without perceptualloss: vgg19 weights vgg19-dcbb9e9d.pth are not on this")
    assert "srcluster weights pull vgg19" in line
    assert demo_gan_losses(recipe) == ["mssimloss", "hsluvloss", "ganloss"]


def test_topiq_files_are_checked_and_cached_where_redux_keeps_them(tmp_path, torch_home, downloads, monkeypatch):
    for name in ("topiq", "topiq_nr"):  # the published names carry the sha256 prefix the table checks
        entry = hub.FILES[name]
        assert entry.file.removesuffix(".pth").endswith(f"-{entry.sha256}")
        assert entry.url == f"https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/{entry.file}"
        source = tmp_path / "server" / entry.file
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(f"{name} weights".encode())
        pin(monkeypatch, name, source, url=str(source))
        assert hub.locate(name) == torch_home / "hub" / "pyiqa" / entry.file  # traiNNer-redux's cache folder
    assert downloads == [str(tmp_path / "server" / hub.FILES[name].file) for name in ("topiq", "topiq_nr")]
