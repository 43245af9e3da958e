"""`srcluster upscale`: output size is exactly scale x input, tiles give the untiled result, files and folders; the
validation tiling gives traiNNer-redux's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from srcluster.cli import main
from srcluster.components.archs import build_generator
from srcluster.components.weights import export_generator
from srcluster.infer.upscaler import load_upscaler, tiled_upscale, upscale_array
from srcluster.train.validate import Validator, ValImage, ValSet, to_uint8

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


# --- traiNNer-redux's validation tiling -------------------------------------------------------------------------------


def pattern(shape, step: float) -> torch.Tensor:
    """Fixed values without a random generator, so the reference numbers below do not depend on torch's RNG."""
    return torch.sin(torch.arange(torch.Size(shape).numel(), dtype=torch.float32) * step).reshape(shape)


class TinyNet(torch.nn.Module):
    """Two 3x3 convs, pixel shuffle and a sigmoid with fixed weights: it sees 2 LR pixels around each output pixel."""

    def __init__(self, scale: int):
        super().__init__()
        first, second = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 3 * scale * scale, 3, padding=1)
        self.body = torch.nn.Sequential(
            first, torch.nn.ReLU(), second, torch.nn.PixelShuffle(scale), torch.nn.Sigmoid()
        )
        with torch.no_grad():
            for conv in (first, second):
                assert conv.bias is not None
                conv.weight.copy_(pattern(conv.weight.shape, 0.7) * 0.3)
                conv.bias.copy_(pattern(conv.bias.shape, 1.3) * 0.1)

    def forward(self, x):
        return self.body(x)


# Reference numbers: traiNNer-redux's SRModel.infer_tiled (traiNNer/models/sr_model.py at 686293190) run once, outside
# this repository, on TinyNet(2) and these inputs: per-channel output sums and output pixels (row, col) -> RGB.
REDUX_TILED = {
    # LR 20 x 27, tile 8, overlap 3: both sides reflection-padded (to 24 x 32), the last row of tiles cut short
    (20, 27, 8, 3): (
        [952.559326171875, 946.457763671875, 937.9141845703125],
        {
            (1, 1): [0.482813, 0.507977, 0.524649],
            (20, 27): [0.32829, 0.347251, 0.372322],
            (39, 53): [0.695624, 0.725705, 0.734286],
            (37, 49): [0.366146, 0.449716, 0.531968],
            (5, 52): [0.254989, 0.34132, 0.425883],
        },
    ),
    # LR 6 x 20, tile 8, overlap 2: only the width is tiled, every tile reflection-padded to 8 rows
    (6, 20, 8, 2): (
        [205.7655029296875, 203.99624633789062, 201.91128540039062],
        {
            (1, 1): [0.344706, 0.429782, 0.5164],
            (6, 20): [0.026013, 0.036414, 0.068792],
            (11, 39): [0.06976, 0.087975, 0.12453],
            (9, 35): [0.910514, 0.955673, 0.972593],
            (5, 38): [0.722444, 0.617767, 0.477348],
        },
    ),
}


@pytest.mark.parametrize("case", list(REDUX_TILED))
def test_redux_tiling_gives_redux_numbers(case):
    h, w, tile, overlap = case
    sums, pixels = REDUX_TILED[case]
    net, lr = TinyNet(2).eval(), (pattern((1, 3, h, w), 0.37) + 1) / 2
    with torch.no_grad():
        tiled = tiled_upscale(net, lr, 2, tile, overlap, tiling="redux")
        whole = net(lr)
    assert tiled.shape == whole.shape == (1, 3, h * 2, w * 2) and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled.sum(dim=(0, 2, 3)), torch.tensor(sums), atol=2e-3, rtol=0)
    for (row, col), rgb in pixels.items():
        torch.testing.assert_close(tiled[0, :, row, col], torch.tensor(rgb), atol=2e-6, rtol=0)
    # redux's tent weights are 0 on each tile's first output row and column: the image's first row and column are black
    assert tiled[..., 0, :].abs().max() == 0 and tiled[..., :, 0].abs().max() == 0
    # where every tile covering a pixel sees its whole receptive field, the blend is the untiled output
    torch.testing.assert_close(tiled[..., 1, 1], whole[..., 1, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(tiled[..., h, w], whole[..., h, w], atol=1e-6, rtol=0)
    # and srcluster's context tiling (upscale, evaluate) is exact there, unlike redux's at its borders
    assert (tiled - whole).abs().max() > 0.1
    context = tiled_upscale(net, lr, 2, tile, 2)
    torch.testing.assert_close(context, whole, atol=1e-5, rtol=0)


def test_redux_tiling_of_an_image_within_one_tile_is_one_pass():
    net, lr = TinyNet(2).eval(), (pattern((1, 3, 8, 6), 0.37) + 1) / 2
    with torch.no_grad():
        assert tiled_upscale(net, lr, 2, 8, 3, tiling="redux").equal(net(lr))


def test_redux_tiling_refuses_an_overlap_as_large_as_the_tile():
    with pytest.raises(ValueError, match="tile overlap 8 must be at least 0 and smaller than the tile size 8"):
        tiled_upscale(TinyNet(2), torch.zeros(1, 3, 20, 20), 2, 8, 8, tiling="redux")


def test_validation_tiles_as_redux_by_default():
    net = TinyNet(2).eval()
    lr = ((pattern((3, 20, 27), 0.37) + 1) * 127.5).round().to(torch.uint8)
    hr = torch.zeros(3, 40, 54, dtype=torch.uint8)
    validator = Validator([ValSet("val", "val", [ValImage("a", hr, lr)])], {}, 2, tile_size=8, tile_overlap=3)
    validator(net)
    sr = validator.outputs["val"][0][1]
    with torch.no_grad():
        expected = tiled_upscale(net, lr.float()[None] / 255, 2, 8, 3, tiling="redux")
        context = tiled_upscale(net, lr.float()[None] / 255, 2, 8, 3)
    assert sr.equal(to_uint8(expected)[0])
    assert not sr.equal(to_uint8(context)[0])


def test_a_family_spandrel_does_not_know_loads_by_path_from_its_exported_header(tmp_path):
    """Hand-written generators (and resselt's) are not in spandrel's detection: srcluster's export names the arch,
    scale and options in the safetensors header, so `upscale`/`evaluate`/`compare` load the file by path alone."""
    from srcluster.components import archs, weights
    from srcluster.errors import SrclusterError

    net = archs.build_generator("sebica_mini", 2)
    path = weights.export_generator(net, tmp_path / "g.safetensors", weights.generator_metadata("sebica_mini", 2, {}))
    assert weights.read_generator_metadata(str(path)) == ("sebica_mini", 2, {})
    model = load_upscaler(str(path), "cpu")
    assert (model.name, model.scale) == ("sebica_mini", 2)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x).clamp(0, 1))
    bare = weights.export_generator(net, tmp_path / "bare.safetensors")  # no header: one line says what is missing
    with pytest.raises(SrclusterError, match="spandrel does not recognise its architecture"):
        load_upscaler(str(bare), "cpu")
