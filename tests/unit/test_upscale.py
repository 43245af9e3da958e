"""`srcluster upscale`: output size is exactly scale x input, tiles give the untiled result, files and folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from srcluster.cli import main
from srcluster.components.archs import build_generator
from srcluster.components.weights import export_generator
from srcluster.infer.upscaler import load_upscaler, upscale_array

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_generator(build_generator("superultracompact", 4), tmp_path_factory.mktemp("m") / "g.safetensors")


def image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content plus noise: a random-weight network then gives outputs that vary across the image
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.stack([np.sin(xx / 5), np.cos(yy / 7), np.sin((xx + yy) / 9)], -1) + 1) * 100
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_output_is_scale_times_input_and_tiles_match_untiled(model_path, tmp_path, capsys):
    image(tmp_path / "in" / "a.png", 37, 53)
    assert (
        main(
            [
                "upscale",
                str(model_path),
                str(tmp_path / "in" / "a.png"),
                "-o",
                str(tmp_path / "whole"),
                "--tile",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "upscale",
                str(model_path),
                str(tmp_path / "in" / "a.png"),
                "-o",
                str(tmp_path / "tiled"),
                "--tile",
                "16",
                "--tile-overlap",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    whole = np.asarray(Image.open(tmp_path / "whole" / "a.png"))
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "a.png"))
    assert whole.shape == tiled.shape == (37 * 4, 53 * 4, 3)
    assert whole.std() > 1  # a real, varying output, so the comparison below means something
    # the receptive field of superultracompact fits in 16 LR pixels: the same pixels up to float rounding
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1

    # too little overlap shows at the seams: the overlap is what makes tiling exact
    model = load_upscaler(str(model_path), "cpu")
    rgb = np.asarray(Image.open(tmp_path / "in" / "a.png"))
    seams = upscale_array(model, rgb, tile=16, overlap=0)
    assert np.abs(whole.astype(int) - seams.astype(int)).max() > 1


def test_folders_and_several_inputs_keep_relative_paths(model_path, tmp_path, capsys):
    image(tmp_path / "set" / "x.png", 20, 24, seed=1)
    image(tmp_path / "set" / "sub" / "y.jpg", 12, 8, seed=2)
    image(tmp_path / "extra.png", 9, 11, seed=3)
    assert (
        main(
            [
                "upscale",
                str(model_path),
                str(tmp_path / "set"),
                str(tmp_path / "extra.png"),
                "-o",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    sizes = {p.relative_to(tmp_path / "out").as_posix(): Image.open(p).size for p in (tmp_path / "out").rglob("*.png")}
    assert sizes == {"x.png": (96, 80), "sub/y.png": (32, 48), "extra.png": (44, 36)}
    assert "wrote 3 image(s)" in capsys.readouterr().out

    assert (
        main(["upscale", str(model_path), str(tmp_path / "extra.png"), "-o", str(tmp_path / "one.png"), "--quiet"]) == 0
    )
    assert Image.open(tmp_path / "one.png").size == (44, 36)


def test_bad_inputs_are_one_line_errors(model_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["upscale", str(model_path), str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    image(tmp_path / "a" / "p.png", 8, 8)
    image(tmp_path / "b" / "p.png", 8, 8)
    assert main(["upscale", str(tmp_path / "nope.safetensors"), str(tmp_path / "a"), "-o", str(tmp_path / "o")]) == 2
    assert main(["upscale", str(model_path), str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no images found" in err and "nope.safetensors does not exist" in err
    assert "would both be written to" in err and "Traceback" not in err
