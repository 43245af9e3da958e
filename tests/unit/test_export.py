"""`srcluster export --onnx`: SPAN and Compact generators round-trip through ONNX within 1e-3 in onnxruntime (static,
dynamic axes, onnxslim), and bad input is one line."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from srcluster.cli import main
from srcluster.components.archs import build_generator
from srcluster.components.weights import export_generator
from srcluster.config import parse_job
from srcluster.errors import SrclusterError
from srcluster.export import OnnxSettings, export_onnx
from srcluster.train.stage import generator_exports

REPORT = re.compile(r"opset (\d+), fp32, max abs error vs torch ([0-9.e+-]+) \(tolerance 0.001\)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {
        arch: export_generator(build_generator(arch, scale), folder / f"{arch}.safetensors")
        for arch, scale in (("span", 2), ("compact", 4))
    }


@pytest.mark.parametrize("arch", ["span", "compact"])
@pytest.mark.parametrize("flags", [(), ("--dynamic",), ("--dynamic", "--slim")], ids=["static", "dynamic", "slim"])
def test_export_round_trips_within_1e_3_in_onnxruntime(models, arch, flags, tmp_path, capsys):
    out = tmp_path / "g.onnx"
    assert main(["export", str(models[arch]), "--onnx", "--size", "24", *flags, "-o", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    match = REPORT.search(printed)
    assert match and float(match[2]) <= 1e-3, printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (shape,) = [i.shape for i in session.get_inputs()]
    if "--dynamic" in flags:  # batch, height and width are free: another size runs and scales
        assert isinstance(shape[0], str) and isinstance(shape[2], str) and isinstance(shape[3], str)
        x = np.random.default_rng(0).random((2, 3, 20, 28), dtype=np.float32)
        y = np.asarray(session.run(None, {"input": x})[0])
        scale = 2 if arch == "span" else 4
        assert y.shape == (2, 3, 20 * scale, 28 * scale)
    else:
        assert shape == [1, 3, 24, 24]


def test_an_opset_above_20_is_capped_as_redux_caps_it(tmp_path):
    net = build_generator("compact", 2)
    result = export_onnx(net, 2, tmp_path / "c.onnx", OnnxSettings(side=16, opset=30))
    assert result.opset == 20  # TorchScript export stops at 20, as redux caps it
    assert result.max_abs_error is not None and result.max_abs_error <= 1e-3


def test_bad_input_is_one_line(models, tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.safetensors"), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.safetensors does not exist" in err
    assert main(["export", str(models["span"])]) == 2
    assert "--onnx" in capsys.readouterr().err
    with pytest.raises(SrclusterError, match=r"onnx.opset: 7 is older"):
        export_onnx(build_generator("compact", 2), 2, tmp_path / "old.onnx", OnnxSettings(opset=7))


def stage_job(**sections):
    return parse_job(
        {
            "name": "t",
            "scale": 2,
            "datasets": {"train": {"dataroot_gt": "s3://srcluster/x"}},
            "network_g": {"type": "compact", "num_feat": 8, "num_conv": 2},
            "train": {"total_iter": 10, "losses": [{"type": "l1loss", "loss_weight": 1}]},
            **sections,
        },
        "job.yml",
    )


def test_a_stage_exports_its_generator_as_its_onnx_section_and_pth_ask(tmp_path):
    job = stage_job(
        logger={"save_checkpoint_format": "pth"},
        onnx={"dtype": "fp32", "shape": "1x3xHxW", "optimize": True, "opset": 17},
    )
    torch.manual_seed(0)
    net = build_generator("compact", 2, num_feat=8, num_conv=2)
    generator_file = export_generator(net, tmp_path / "net_g_ema_10.safetensors")
    said: list[str] = []
    pth, onnx_file = generator_exports(job, generator_file, said.append)

    assert pth.name == "net_g_ema_10.pth"  # redux's name with its format's suffix: a plain state dict
    saved = torch.load(pth, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert onnx_file.name == "2x_net_g_ema_10_compact_1x3xHxW_dyn-HW_fp32_op17_onnxslim.onnx"
    assert said and "max abs error vs torch" in said[0]
    x = torch.rand(1, 3, 20, 12)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    y = np.asarray(session.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        assert np.abs(y - net.eval()(x).numpy()).max() <= 1e-3


def test_a_stage_without_onnx_or_pth_exports_nothing_more(tmp_path):
    assert generator_exports(stage_job(), tmp_path / "unused.safetensors", print) == []


def test_onnx_section_options_srcluster_replaces_are_warnings_and_a_bad_shape_names_its_key():
    job = stage_job(onnx={"dynamo": True, "dtype": "bf16"})
    assert [w.split(":")[1].strip() for w in job.warnings if "onnx" in w] == [
        "onnx.dynamo",
        "onnx.bf16_exclude_depthwise",
    ]
    with pytest.raises(SrclusterError, match=r"job.yml: onnx.shape: .*'1x4xHxW' is not NxCxHxW"):
        stage_job(onnx={"shape": "1x4xHxW"})
