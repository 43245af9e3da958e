"""The CLI shells over evaluate and degrade preview, as a user calls them."""

import json

import pytest
from PIL import Image

from helpers.shared import shared_data
from srcluster.cli import main

SHARED = shared_data()
TEMPLATES = SHARED / "trainner-redux-templates"
needs_shared = pytest.mark.skipif(not (SHARED / "Set5").is_dir(), reason=f"Set5 not found at {SHARED}")


@needs_shared
def test_evaluate_bicubic_baseline_json(capsys):
    assert main(["evaluate", "--hr", str(SHARED / "Set5" / "HR"), "--scale", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mean"]["psnr"] == pytest.approx(28.43, abs=0.02)


def test_evaluate_missing_folder_is_one_line(capsys, tmp_path):
    assert main(["evaluate", "--hr", str(tmp_path / "nope"), "--scale", "4"]) == 2
    assert "Traceback" not in capsys.readouterr().err


@needs_shared
def test_degrade_preview_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "degrade",
                "preview",
                str(TEMPLATES / "Compact_OTF_gan.yml"),
                str(SHARED / "Set5" / "HR" / "butterfly.png"),
                "-n",
                "4",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).size[0] > 0
