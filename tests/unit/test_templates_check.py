"""`srcluster check` over every traiNNer-redux training template (../shared, commit 686293190), in one process: the
count that passes can only go up, and every file that fails says why in one line naming the key."""

from __future__ import annotations

import json
import re

from srcluster.cli import main
from tests.helpers.shared import require, shared_data

TEMPLATES = shared_data("trainner-redux-templates", "all")

# templates that pass `check` today; raise it when support grows (the test fails if the count drops below it)
PASSING_FLOOR = 373

ERROR_LINE = re.compile(r"^\S+\.yml: [\w\-.\[\]]+[:( ]")  # "<file>: <key path>: what is wrong"


def test_the_templates_check_and_every_failure_names_its_key(capsys):
    files = sorted(str(p) for p in require(TEMPLATES).glob("*/*.yml"))
    assert len(files) == 390, "the template folder changed: update the floor with the new count"
    code = main(["check", *files, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == len(files)
    assert report["passed"] >= PASSING_FLOOR, f"only {report['passed']} of {len(files)} templates pass"
    assert code == (0 if report["passed"] == len(files) else 2)
    failures = [f for f in report["files"] if f["error"] is not None]
    assert len(failures) == len(files) - report["passed"]
    for failure in failures:
        assert "\n" not in failure["error"] and failure["errors"], failure
        for line in failure["errors"]:
            assert ERROR_LINE.match(line), line
            assert "Traceback" not in line


def test_several_files_print_one_line_each_and_a_summary(tmp_path, capsys):
    good = tmp_path / "good.yml"
    good.write_text(
        "name: good\nscale: 2\ndatasets: {train: {dataroot_gt: /nowhere/hr}}\nnetwork_g: {type: span}\n"
        "train: {total_iter: 10, losses: [{type: l1loss, loss_weight: 1}]}\n"
    )
    bad = tmp_path / "bad.yml"
    bad.write_text(good.read_text().replace("span", "spam"))
    code = main(["check", str(good), str(bad)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 2
    assert lines[0] == f"OK {good}"  # the dataset folder does not exist: check does not touch datasets
    assert lines[1].startswith(f"FAIL {bad}: network_g.type") and "span" in lines[1]
    assert lines[2] == "1 of 2 files pass"
