"""traiNNer-redux's linedistillerloss: its weight file loads strictly from the hub cache, the loss equals redux's own
LineDistillerLoss on the same weights, and a downloaded file is used only when its git blob id is the pinned one.
Nothing is downloaded: the weights are random tensors in the real file's layout."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
import torch

from helpers.jobs import tiny_job
from srcluster.components import hub, losses
from srcluster.components.losses.linedistiller import LineDistiller, LineDistillerLoss
from srcluster.config import parse_job
from srcluster.errors import SrclusterError

RTOL = 1e-5
SIDE = 32  # the smallest input the network takes (sides must be multiples of 16) that still has 2x2 at the bottom
# traiNNer-redux's LineDistillerLoss (commit 686293190, CPU, float32) on line_distiller_state() and images()
REDUX_VALUES = {"l1": 0.35292112827301025, "charbonnier": 0.35292112827301025}


def line_distiller_state(seed: int = 5) -> dict[str, torch.Tensor]:
    """Random tensors for every key of the weight file: He-scaled convs, BatchNorm near identity with running
    statistics that still change the result, so the activations stay O(1) through the ~60 blocks."""
    with torch.device("meta"):
        layout = LineDistiller().state_dict()
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, meta in layout.items():
        shape = meta.shape
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif meta.dim() == 1:  # BatchNorm scale
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:  # conv: fan-in of a Conv2d is in*k*k; of a ConvTranspose2d (in, out, k, k) out*k*k, near enough
            state[key] = torch.randn(shape, generator=g) * math.sqrt(1 / meta[0].numel())
    return state


def images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 3, SIDE, SIDE, generator=g)
    sr = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return sr, gt


def built(**options) -> LineDistillerLoss:
    """The loss as a job builds it, by its traiNNer-redux name."""
    loss = losses.build_loss("linedistillerloss", **options)
    assert isinstance(loss, LineDistillerLoss)
    return loss


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def cached_weights(torch_home) -> Path:
    """The random weights where the hub looks first: a file in the cache is used as it is."""
    path = hub.cache_path("line_distiller")
    path.parent.mkdir(parents=True)
    torch.save(line_distiller_state(), path)
    return path


def test_hub_entry_is_redux_file_at_the_pinned_commit():
    entry = hub.FILES["line_distiller"]
    assert entry.url == (
        "https://raw.githubusercontent.com/the-database/traiNNer-redux/686293190aca3e432a42b6155dbc94ea51c4bf9f/"
        "traiNNer/losses/line_distiller_weights.pth"
    )
    assert entry.digest() == ("git blob sha1", "84e2cce82b4af09f54db040698ec68aa60c9547f")
    assert entry.sha256 == ""
    assert hub.cache_path("line_distiller").parts[-2:] == ("traiNNer-redux", "line_distiller_weights.pth")


def test_git_blob_id_is_git_s(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert hub.git_blob_sha1_of(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object hello.txt`
    path.write_bytes(b"")
    assert hub.git_blob_sha1_of(path) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


def test_an_entry_carries_exactly_one_digest():
    entry = hub.FILES["line_distiller"]
    with pytest.raises(ValueError, match="line_distiller: give exactly one of sha256 and git_blob_sha1"):
        dataclasses.replace(entry, git_blob_sha1="")
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(entry, sha256="abc")


def test_a_download_is_kept_only_when_its_git_blob_id_matches(tmp_path, torch_home, monkeypatch):
    served = tmp_path / "server" / "line_distiller_weights.pth"
    served.parent.mkdir()
    torch.save(line_distiller_state(), served)
    fetched: list[str] = []

    def download(url: str, dest: Path) -> None:  # the "server" is a local file
        fetched.append(url)
        Path(dest).write_bytes(Path(url).read_bytes())

    monkeypatch.setattr(hub, "download", download)
    entry = dataclasses.replace(hub.FILES["line_distiller"], url=str(served))
    monkeypatch.setitem(hub.FILES, "line_distiller", entry)
    cache = hub.cache_path("line_distiller")

    # a blob id that is not the file's: refused in one line naming the file, and nothing lands in the cache
    with pytest.raises(SrclusterError, match=r"line_distiller_weights\.pth from .* has git blob sha1 \w+…, expected "):
        hub.locate("line_distiller")
    assert not cache.exists() and list(cache.parent.iterdir()) == []

    pinned = dataclasses.replace(entry, git_blob_sha1=git_blob_sha1(served.read_bytes()))
    monkeypatch.setitem(hub.FILES, "line_distiller", pinned)
    assert hub.locate("line_distiller") == cache
    assert cache.read_bytes() == served.read_bytes()
    assert built().model.conv8[3].weight.shape == (1, 32, 3, 3)
    assert fetched == [str(served)] * 2  # the second build read the cache


def test_the_weight_file_loads_strictly(cached_weights):
    loss = built()
    state = line_distiller_state()
    own = loss.model.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[key], state[key]) for key in state)
    assert not any(p.requires_grad for p in loss.parameters())
    assert not loss.train().training and not loss.model.training  # BatchNorm keeps its running statistics

    state.pop("conv4.3.left.5.weight")
    torch.save(state, cached_weights)
    with pytest.raises(SrclusterError, match=r"is not traiNNer-redux's line distiller: it lacks conv4\.3\.left\.5"):
        built()
    torch.save({**line_distiller_state(), "conv9.weight": torch.zeros(1)}, cached_weights)
    with pytest.raises(SrclusterError, match=r"it has the unexpected key conv9\.weight"):
        built()


def test_without_the_file_one_line_names_it(torch_home):
    with pytest.raises(SrclusterError, match=r"line_distiller_weights\.pth are not on this machine") as error:
        built()
    assert "\n" not in str(error.value)
    assert "srcluster weights pull line_distiller" in str(error.value)


@pytest.mark.parametrize("criterion", ["l1", "charbonnier"])
def test_value_matches_trainner_redux(cached_weights, criterion):
    loss = built(criterion=criterion)
    sr, gt = images()
    assert loss(sr, gt).item() == pytest.approx(REDUX_VALUES[criterion], rel=RTOL)
    assert loss(gt, gt).item() == pytest.approx(0.0, abs=1e-5)


def test_criterion_acts(cached_weights):
    l1 = built(criterion="l1")
    charbonnier = built(criterion="charbonnier")
    sr, gt = images()
    sr_lines, gt_lines = l1.lines(sr), l1.lines(gt)
    assert l1(sr, gt).item() == pytest.approx((sr_lines - gt_lines).abs().mean().item(), rel=RTOL)
    # with eps 1e-12, charbonnier differs from L1 only where lines match closely: at equal inputs it is sqrt(eps)
    assert charbonnier(gt, gt).item() == pytest.approx(1e-6, rel=1e-3)
    assert l1(gt, gt).item() == 0.0
    with pytest.raises(ValueError, match=r"linedistillerloss\.criterion: 'l2' is not one of l1, charbonnier"):
        built(criterion="l2")


def test_gradients_flow_to_the_sr_only(cached_weights):
    loss = built()
    sr, gt = images()
    sr.requires_grad_(True)
    gt.requires_grad_(True)
    loss(sr, gt).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0 and sr.grad.isfinite().all()
    assert gt.grad is None


def test_float32_under_autocast(cached_weights):
    loss = built()
    sr, gt = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(sr.bfloat16(), gt)
    assert value.dtype == torch.float32
    # bfloat16 inputs hold SR to ~3 digits; the network itself ran in float32
    assert value.item() == pytest.approx(loss(sr.bfloat16().float(), gt).item(), rel=RTOL)


def test_sides_not_multiple_of_16_are_one_line(cached_weights):
    loss = built()
    with pytest.raises(ValueError, match=r"linedistillerloss: image sides must be multiples of 16, got 24x32"):
        loss(torch.rand(1, 3, 24, 32), torch.rand(1, 3, 24, 32))


def test_redux_debug_is_refused_when_true(cached_weights):
    with pytest.raises(ValueError, match=r"linedistillerloss\.debug: true writes traiNNer-redux's line images"):
        built(debug=True)
    assert built(debug=False).criterion is not None


def test_a_job_with_linedistillerloss_parses_without_reading_weights(torch_home):
    """Checking a job must not need the weights (nor try to download them): they are read when the stage builds it."""
    loss = {"type": "linedistillerloss", "loss_weight": 0.5, "criterion": "charbonnier"}
    job = parse_job(tiny_job(train={"total_iter": 20, "losses": [{"type": "l1loss", "loss_weight": 1.0}, loss]}))
    assert [spec.type for spec in job.train.losses] == ["l1loss", "linedistillerloss"]
    assert not hub.cache_path("line_distiller").exists()
