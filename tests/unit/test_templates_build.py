"""`srcluster check --build` on one traiNNer-redux template per architecture family that passes `check`: G and D
build at the template's scale and run one forward pass (tiny input, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from srcluster.cli import main
from srcluster.cli.check import check_file
from srcluster.components.archs import build_generator
from tests.helpers.shared import require, shared_data

TEMPLATES = shared_data("trainner-redux-templates", "all")


def generator_size(job) -> int:
    """G's parameter count, built on the meta device (no memory, no init): picks each family's lightest template."""
    try:
        with torch.device("meta"):
            net = build_generator(job.network_g.type, job.scale, **job.network_g.options())
    except Exception:  # an arch that computes with its tensors while it builds: rank it last, it still gets checked
        return 1 << 62
    return sum(p.numel() for p in net.parameters())


SIZE_WORDS = {"tiny": 0, "t": 0, "ul": 0, "xs": 0, "s": 0, "light": 0, "lite": 0, "m": 1, "l": 3, "large": 3, "xl": 4}


def size_rank(path: str) -> int:
    """The variant's size by its name (ATD_light < HAT_S < HAT_M < HAT < HAT_L): where G cannot be built on meta."""
    words = Path(path).stem.lower().split("_")
    return min((SIZE_WORDS[w] for w in words if w in SIZE_WORDS), default=2)


def one_passing_template_per_family(root: Path) -> list[str]:
    """Per family folder, the template that passes `check` with the lightest G (a GAN one first at equal size: it
    builds D too), so the whole test stays short on a loaded machine."""
    chosen = []
    for family in sorted(p for p in root.iterdir() if p.is_dir()):
        passing = [
            (str(p), job) for p in sorted(family.glob("*.yml")) for r, job in [check_file(str(p), False)] if r.ok
        ]
        if passing:
            chosen.append(
                min(passing, key=lambda pj: (generator_size(pj[1]), size_rank(pj[0]), "_gan" not in pj[0]))[0]
            )
    return chosen


def test_one_template_per_passing_family_builds_and_runs(capsys):
    files = one_passing_template_per_family(require(TEMPLATES))
    assert files
    code = main(["check", "--build", "--json", *files])
    report = json.loads(capsys.readouterr().out)
    failures = [f["error"] for f in report["files"] if f["error"]]
    assert code == 0 and not failures, "\n".join(failures)
    for result in report["files"]:
        assert result["built"][0].startswith("network_g: "), result
