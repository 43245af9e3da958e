"""TOPIQ (FR and NR) without pyiqa: our CFANet loads files in the published layout strictly and scores like
traiNNer-redux's CFANet; the metrics build from a job's `val.metrics` and fail in one line without their file.

Nothing is downloaded: the weight files are random tensors in the exact layout. The expected scores were computed once
by traiNNer-redux's `archs/topiq_arch.py` (commit 686293190; timm's features_only ResNet50 stood in for by torchvision's
ResNet50 returning the stem ReLU and layer1..4 outputs) with the same files and images, and are hard-coded here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from srcluster.components import hub, perceptual, topiq
from srcluster.config import Metric
from srcluster.errors import SrclusterError
from srcluster.train.validate import build_metrics, score

# traiNNer-redux's CFANet state dict, as sorted "key:shape" lines: (number of tensors, sha256 of the lines)
REDUX_LAYOUT = {
    True: (514, "d5fb33a8bae253e1c45a5b72627ab497f783f533cc36ea1ef46273dfcaf70570"),
    False: (524, "1fde71d29f4f4fb7bbc8d6ce11e5d819eba346cedd52c7257a2b56c9519bdca3"),
}
# traiNNer-redux's CFANet on `image_pair()` with `random_state(full_reference, SEED[...])`: (image 0, image 1)
REDUX_FR = (-0.10387232899665833, -0.06722423434257507)
REDUX_NR = (-1.0014671087265015, -1.01166832447052)
SEED = {True: 1, False: 2}

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny convolutions: threads on a shared CPU only slow them


def layout(state: dict[str, torch.Tensor]) -> tuple[int, str]:
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in sorted(state.items()))
    return len(state), hashlib.sha256(lines.encode()).hexdigest()


def random_state(full_reference: bool, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of CFANet, random but tame: LeCun-scaled weights keep activations O(1) through the ResNet, and
    batch-norm statistics are plausible, so the score depends on every part of the network."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in topiq.CFANet(full_reference).state_dict().items()}
    g = torch.Generator().manual_seed(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = 1 + 0.2 * torch.rand(shape, generator=g)
        elif key in ("h_emb", "w_emb"):
            state[key] = 0.5 * randn(shape)
        elif key.endswith("weight") and len(shape) == 1:  # batch and layer norm scales
            state[key] = 1 + 0.1 * randn(shape)
        elif key.endswith("weight"):
            state[key] = randn(shape) / math.sqrt(shape[1:].numel())
        else:  # biases, running means
            state[key] = 0.1 * randn(shape)
    return state


def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(sr, hr): two 64x64 uint8 RGB images each, sr a noisy copy of hr."""
    g = torch.Generator().manual_seed(7)
    hr = torch.rand(2, 3, 64, 64, generator=g)
    sr = (hr + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    return (sr * 255).round().to(torch.uint8), (hr * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[bool, Path]:
    """Files as published ({"params": state}), keyed by full_reference, under the hub cache's names."""
    folder = tmp_path_factory.mktemp("torch-home") / "hub" / "pyiqa"
    folder.mkdir(parents=True)
    files = {}
    for full_reference, name in ((True, "topiq"), (False, "topiq_nr")):
        files[full_reference] = folder / hub.FILES[name].file
        torch.save({"params": random_state(full_reference, SEED[full_reference])}, files[full_reference])
    return files


@pytest.mark.parametrize("full_reference", [True, False])
def test_state_dict_names_and_shapes_are_redux(full_reference):
    with torch.device("meta"):
        assert layout(topiq.CFANet(full_reference).state_dict()) == REDUX_LAYOUT[full_reference]


def test_scores_equal_redux_cfanet(weight_files):
    sr, hr = image_pair()
    fr = topiq.load_cfanet(weight_files[True], full_reference=True)
    nr = topiq.load_cfanet(weight_files[False], full_reference=False)  # from the file as published: {"params": ...}
    with torch.no_grad():
        ours_fr = fr(sr.float() / 255, hr.float() / 255)
        ours_nr = nr(sr.float() / 255)
        single = fr(sr[1:].float() / 255, hr[1:].float() / 255)
    torch.testing.assert_close(ours_fr, torch.tensor(REDUX_FR), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_nr, torch.tensor(REDUX_NR), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single, ours_fr[1:], atol=1e-6, rtol=1e-5)  # images in a batch do not mix
    assert not any(p.requires_grad for p in fr.parameters()) and not fr.train().training


def test_wrong_files_are_refused_in_one_line(weight_files, tmp_path):
    with pytest.raises(
        SrclusterError, match=r"is not no-reference TOPIQ \(CFANet\) weights: it lacks weight_pool\.0\."
    ):
        topiq.load_cfanet(weight_files[True], full_reference=False)
    state = random_state(True, 0)
    state["score_linear.6.weight"] = torch.zeros(2, 256)
    torch.save(state, tmp_path / "bad.pth")  # also without the "params" wrapper
    with pytest.raises(SrclusterError, match=r"score_linear\.6\.weight has shape \(2, 256\), expected \(1, 256\)$"):
        topiq.load_cfanet(tmp_path / "bad.pth", full_reference=True)


def test_metrics_build_from_val_metrics_and_score_like_validation(weight_files, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(weight_files[True].parents[2]))  # found in the hub cache: no download
    specs = {"topiq": Metric(type="calculate_topiq"), "nr": Metric(type="calculate_topiq_nr", better="lower")}
    metrics = build_metrics(specs, scale=2)
    assert {name: m.better for name, m in metrics.items()} == {"topiq": "higher", "nr": "lower"}
    sr, hr = image_pair()
    for i in range(2):
        scores = score(sr[i], hr[i], metrics)  # as the Validator scores one (3, H, W) uint8 image
        assert scores["topiq"] == pytest.approx(REDUX_FR[i], rel=1e-4, abs=1e-5)
        assert scores["nr"] == pytest.approx(REDUX_NR[i], rel=1e-4, abs=1e-5)
    # no-reference TOPIQ ignores the HR image; full-reference TOPIQ does not
    other = score(sr[0], torch.zeros_like(hr[0]), metrics)
    assert other["nr"] == pytest.approx(REDUX_NR[0], rel=1e-4, abs=1e-5)
    assert other["topiq"] != pytest.approx(REDUX_FR[0], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize(
    ("metric", "file"),
    [
        ("calculate_topiq", "cfanet_fr_kadid_res50-2c4cc61d.pth"),
        ("calculate_topiq_nr", "cfanet_nr_koniq_res50-9a73138b.pth"),
    ],
)
def test_missing_weights_offline_is_one_line_naming_the_file(tmp_path, monkeypatch, metric, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache; conftest makes every download fail
    with pytest.raises(SrclusterError) as error:
        perceptual.build_metric(metric)
    message = str(error.value)
    assert "\n" not in message
    assert f"{file} are not on this machine" in message and f"put {file} in {tmp_path / 'hub' / 'pyiqa'}/" in message
