"""The shape of the command line: one module per command group under srcluster/cli, no argparse anywhere else, no heavy
library imported until a command runs, and the helper the sbatch script runs is where the template says it is."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import srcluster
from srcluster.cli import parser
from srcluster.cli.nodes import main as wait_nodes_main

PACKAGE = Path(srcluster.__file__).parent
SLURM_TEMPLATE = PACKAGE / "launch" / "templates" / "slurm.sbatch.j2"

# what `srcluster --help` lists, in its order: scripts and docs call these names
COMMANDS = [
    "stack",
    "data",
    "shards",
    "check",
    "train",
    "pipeline",
    "evaluate",
    "compare",
    "degrade",
    "sync",
    "demo",
    "promote",
    "lineage",
    "upscale",
    "export",
    "tune",
    "submit",
    "jobs",
    "render",
    "weights",
]


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, check=False)


def test_every_command_is_registered_in_the_order_help_lists_it():
    (subparsers,) = [a for a in parser()._actions if a.dest == "command"]
    assert list(subparsers.choices) == COMMANDS


def test_the_parser_and_help_import_no_torch_ray_or_mlflow():
    # a fresh interpreter: this test session has long imported torch
    code = (
        "import sys, contextlib, io\n"
        "import srcluster.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "cli.parser().parse_args(['upscale', 'model.safetensors', 'in.png', '-o', 'out.png'])\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_only_the_cli_package_uses_argparse():
    users = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if "argparse" in names:
                users.append(str(path.relative_to(PACKAGE)))
    assert users == []


def test_python_m_srcluster_cli_runs_the_command():
    result = run_python("-m", "srcluster.cli", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"srcluster {srcluster.__version__}"


def test_the_module_the_sbatch_script_waits_with_runs():
    (module,) = set(re.findall(r'"\$PYTHON" -m ([\w.]+) --expect', SLURM_TEMPLATE.read_text()))
    result = run_python("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "--expect" in result.stdout and "--pids" in result.stdout


def test_waiting_for_nodes_fails_at_once_when_a_node_process_has_exited(capsys):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    code = wait_nodes_main(["--expect", "2", "--timeout", "60", "--address", "127.0.0.1:1", "--pids", f"{ended.pid}"])
    assert code == 1
    assert f"(pid {ended.pid}) exited before 2 node(s) were up" in capsys.readouterr().err
