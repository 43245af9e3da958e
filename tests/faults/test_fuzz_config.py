"""Fault 7: job files typed in a hurry. Real job files (traiNNer-redux's templates, srcluster's own job) are mutated by
hypothesis (keys deleted, values of the wrong type or out of range, unknown keys added) and run through `srcluster
check` in-process: every case ends with exit 0 or 2, a failure is short lines that name a key, never a traceback, and
nothing is started (no Ray, no subprocess, no network connection).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers.shared import shared_data
from srcluster import cli

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = shared_data("trainner-redux-templates")
EXAMPLES = int(os.environ.get("SRCLUSTER_FUZZ_EXAMPLES", "150"))  # more for a deeper search; CI keeps 150


def base_configs() -> dict[str, dict]:
    """Name -> parsed job file. traiNNer-redux's templates when the shared data is there, srcluster's job always."""
    files = sorted(TEMPLATES.glob("*.yml")) if TEMPLATES.is_dir() else []
    files.append(REPO / "jobs" / "local-2x-fidelity.yml")
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


BASES = base_configs()

# Values of the wrong type for any key, and out-of-range values for numbers.
WRONG_TYPES = [None, "", "banana", 7, -3, 2.5, True, [], [1, "x"], {}, {"nested": {"deeper": 1}}, "1e9", "[1, 2]"]
OUT_OF_RANGE = [0, -1, -0.5, 10**12, -(10**12), 1e308, float("inf"), float("-inf"), float("nan"), 2**63, 0.0]
UNKNOWN_KEYS = [
    "learning_rate",
    "batch_size",
    "num_workerz",
    "lq_sizes",
    "srcluster_",
    "extra",
    "type_",
    "__proto__",
    "0",
    "datasets",
]


def paths(node, prefix=()) -> list[tuple]:
    """Every key path (dict keys and list indices) below `node`."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


def containers(node, prefix=()) -> list[tuple]:
    """Paths of the mappings below (and including) `node`: where an unknown key can go."""
    out = [prefix] if isinstance(node, dict) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out += containers(value, (*prefix, key))
    return out


def at(node, path: tuple):
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated_jobs(draw) -> tuple[str, dict, list[str]]:
    name = draw(st.sampled_from(sorted(BASES)))
    data = copy.deepcopy(BASES[name])
    done = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "wrong_type", "out_of_range", "unknown_key"]))
        if kind == "unknown_key":
            where = draw(st.sampled_from(containers(data)))
            key = draw(st.sampled_from(UNKNOWN_KEYS))
            at(data, where)[key] = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))  # never share the originals
            done.append(f"unknown key {'.'.join(map(str, (*where, key)))}")
            continue
        candidates = paths(data)
        if kind == "out_of_range":
            candidates = [p for p in candidates if isinstance(at(data, p), (int, float))] or candidates
        if not candidates:
            continue
        path = draw(st.sampled_from(candidates))
        parent, key = at(data, path[:-1]), path[-1]
        if kind == "delete":
            del parent[key]
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES if kind == "wrong_type" else OUT_OF_RANGE)))
        done.append(f"{kind} {'.'.join(map(str, path))}")
    return name, data, done


def pinned(mutation: str, change) -> tuple[str, dict, list[str]]:
    """A case an earlier, longer fuzz run found, kept as an explicit example (on srcluster's own job file)."""
    name = "local-2x-fidelity.yml"
    data = copy.deepcopy(BASES[name])
    change(data)
    return name, data, [mutation]


# Found by SRCLUSTER_FUZZ_EXAMPLES=1500: an error without the file name (a registry check inside a validator), and a
# cross-key error whose text did not start with the key.
PINNED = [
    pinned("unknown key network_g.learning_rate", lambda d: d["network_g"].update(learning_rate=7)),
    pinned(
        "gan loss without network_d",
        lambda d: d["train"]["losses"].append({"type": "ganloss", "gan_type": "vanilla", "loss_weight": 0.1}),
    ),
]


class StartedSomething(AssertionError):
    pass


@pytest.fixture(scope="module")
def nothing_starts(tmp_path_factory):
    """Record every attempt to start Ray, a process or a network connection while the module's checks run.

    Each unmutated job is checked once first, unguarded: importing an architecture's libraries may run `ldconfig -p`
    once per process (ctypes.util.find_library), which is loading code, not starting anything.
    """
    import ray

    folder = tmp_path_factory.mktemp("bases")
    for name, data in BASES.items():
        (folder / name).write_text(yaml.safe_dump(data, sort_keys=False))
        code, _, err = run_check(folder / name)
        assert code == 0, (name, err)
    attempts: list[str] = []
    patch = pytest.MonkeyPatch()

    def refuse(what):
        def record(*args, **kwargs):
            attempts.append(f"{what} {args[1:3]!r}")
            raise StartedSomething(what)

        return record

    popen_init = subprocess.Popen.__init__

    def record_popen(self, *args, **kwargs):
        attempts.append(f"subprocess {args[:1]!r}")
        popen_init(self, *args, **kwargs)

    patch.setattr(ray, "init", refuse("ray.init"))
    patch.setattr(subprocess.Popen, "__init__", record_popen)
    patch.setattr(socket.socket, "connect", refuse("socket.connect"))
    patch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    yield attempts
    patch.undo()


def run_check(path: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["check", str(path), *extra])
        except BaseException as exc:  # a crash is a finding: report it with the mutation, not as a bare error
            code = f"raised {exc.__class__.__name__}: {exc}"
    return code, out.getvalue(), err.getvalue()


ERROR_LINE = re.compile(r"^(error: )?\S+\.yml: [\w\-.\[\]]+[:(]")  # "<file>: <key path>: what is wrong"


def test_unmutated_bases_pass(tmp_path, nothing_starts):
    for name, data in BASES.items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        for extra in ((), ("--json",)):
            code, _out, err = run_check(path, *extra)
            assert code == 0, (name, err)
    assert nothing_starts == []


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated_jobs())
@example(case=PINNED[0])
@example(case=PINNED[1])
def test_mutated_job_files(tmp_path, nothing_starts, fault_record, case):
    name, data, mutations = case
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    code, out, err = run_check(path)
    context = f"{name} after {mutations}: exit {code}\n{err[-2000:]}"
    assert code in (0, 2), context
    assert "Traceback" not in out + err, context
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and all(ERROR_LINE.match(line) for line in lines), context  # each line names a key
        assert all(len(line) < 400 for line in lines), context
        assert len(lines) <= 12, context
    STATS["cases"] += 1
    STATS["rejected" if code == 2 else "accepted"] += 1
    assert nothing_starts == [], nothing_starts


STATS = {"cases": 0, "rejected": 0, "accepted": 0}


def test_fuzz_summary(nothing_starts, fault_record):
    """Runs after the fuzz test (file order): one table row for the whole fuzz run."""
    if STATS["cases"] < EXAMPLES:
        pytest.skip("the fuzz test did not run (deselected or failed)")
    fault_record(
        f"bad job files: {STATS['cases']} mutated configs from {len(BASES)} real ones",
        True,
        note=f"{STATS['rejected']} rejected with key-naming errors, {STATS['accepted']} still valid; "
        "no traceback, nothing started",
    )
