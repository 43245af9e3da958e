"""The fault-injection suite's record: every test says which fault it injected and how the system came through.

    def test_something(fault_record, ...):
        ...inject the fault, run, assert...
        fault_record("kill -9 of one Ray Train worker", survived=True, iterations_lost=3, recover_s=12.4)

`pytest tests/faults` ends with the table (fault, survived, iterations lost, time to recover, note). A test that
uses `fault_record` and fails without recording anything gets a "no" row under its own name, so a failure is never
missing from the table. With SRCLUSTER_RECORD_FAULTS=1 the table also goes into bench/RESULTS.md as the dated
"Fault-injection suite" section: rows of this run replace rows of the same fault, rows of faults not run this time
stay (each row carries the date it was recorded).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

RESULTS_ENV = "SRCLUSTER_RECORD_FAULTS"
SECTION = "## Fault-injection suite"
COLUMNS = ("fault", "survived", "iterations lost", "time to recover", "note", "recorded")


@dataclass
class FaultResult:
    fault: str
    survived: bool
    iterations_lost: int | None = None
    recover_s: float | None = None
    note: str = ""
    test: str = ""
    recorded: str = ""

    def cells(self) -> list[str]:
        return [
            self.fault,
            "yes" if self.survived else "no",
            "—" if self.iterations_lost is None else str(self.iterations_lost),
            "—" if self.recover_s is None else f"{self.recover_s:.1f} s",
            self.note,
            self.recorded,
        ]


_results_key = pytest.StashKey[list[FaultResult]]()
_current_key = pytest.StashKey[str]()


def _results(config: pytest.Config) -> list[FaultResult]:
    return config.stash.setdefault(_results_key, [])


Record = Callable[..., None]


@pytest.fixture(scope="session")
def fault_record(request) -> Record:
    """record(fault, survived, iterations_lost=None, recover_s=None, note="") adds a row to the suite's table."""
    config = request.config

    def record(
        fault: str, survived: bool, iterations_lost: int | None = None, recover_s: float | None = None, note: str = ""
    ) -> None:
        _results(config).append(
            FaultResult(
                fault,
                bool(survived),
                iterations_lost,
                recover_s,
                note,
                config.stash.get(_current_key, ""),
                date.today().isoformat(),
            )
        )

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    item.config.stash[_current_key] = item.nodeid
    try:
        return (yield)
    finally:
        item.config.stash[_current_key] = ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and "fault_record" in getattr(item, "fixturenames", ()):
        results = _results(item.config)
        if not any(r.test == item.nodeid for r in results):
            crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)  # what `-ra` shows for it
            reason = (crash.message if crash else str(call.excinfo.value if call.excinfo else "failed")).strip()
            reason = (reason.splitlines() or ["failed"])[0][:120]
            results.append(
                FaultResult(
                    item.name, False, note=f"test failed: {reason}", test=item.nodeid, recorded=date.today().isoformat()
                )
            )
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _section_rows(section: str) -> list[list[str]]:
    """The rows of an earlier section's table (cells as written), header and rule left out."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| fault |") or set(line) <= set("|- "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == len(COLUMNS):
            rows.append(cells)
    return rows


def write_results(path: Path, results: list[FaultResult], today: str | None = None) -> None:
    """Write or replace the "Fault-injection suite" section of `path`, keeping rows of faults not run this time."""
    today = today or date.today().isoformat()
    text = path.read_text() if path.exists() else ""
    # the section runs up to the next heading
    pattern = re.compile(rf"^{re.escape(SECTION)}.*?(?=^#{{1,3}} |\Z)", re.DOTALL | re.MULTILINE)
    found = pattern.search(text)
    fresh = [r.cells() for r in results]
    names = {r.fault for r in results}
    kept = [row for row in _section_rows(found.group(0)) if row[0] not in names] if found else []
    section = (
        f"{SECTION} ({today})\n\n"
        "`pytest tests/faults` (`SRCLUSTER_RECORD_FAULTS=1` writes this section): each row is a real fault "
        "injected into a real run or stream.\n\n" + markdown_table(fresh + kept) + "\n\n"
    )
    if found:
        text = text[: found.start()] + section + text[found.end() :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section
    path.write_text(text.rstrip("\n") + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config.stash.get(_results_key, [])
    if not results:
        return
    rows = [r.cells()[:5] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(COLUMNS[:5])]
    terminalreporter.write_sep("=", "fault-injection suite")
    terminalreporter.write_line("  ".join(h.ljust(w) for h, w in zip(COLUMNS[:5], widths, strict=False)).rstrip())
    for row, result in zip(rows, results, strict=False):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        terminalreporter.write_line(line, red=not result.survived, green=result.survived)
    survived = sum(r.survived for r in results)
    terminalreporter.write_line(f"{survived} of {len(results)} fault(s) survived")
    if os.environ.get(RESULTS_ENV) == "1":
        target = Path(config.rootpath) / "bench" / "RESULTS.md"
        write_results(target, results)
        terminalreporter.write_line(f"written to {target}")
