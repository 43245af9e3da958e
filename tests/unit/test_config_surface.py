"""The configuration surface: every option of the job schema does something, or says that it does not.

In the spirit of torchtitan's frozen-options test: a field of `Job` (recursively, every pydantic model under it) must be
read somewhere in srcluster outside the schema modules, or be listed in `srcluster.config.NOT_READ` with the reason.
"Read" is an attribute read `.<field>` (or `getattr(x, "<field>")`) anywhere in srcluster/; inside the schema modules
only the properties and methods that are themselves read elsewhere count (`Job.degrade_in_workers` reads
`srcluster.degrade_on` for the training loop), never the validators. The scan goes by name, so a field named like
something else (`type`, `name`) always looks read; the guard is for the options with names of their own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, create_model

import srcluster
from srcluster.config import IGNORED, NOT_READ, Job, Strict
from srcluster.registry import did_you_mean

SOURCE = Path(srcluster.__file__).parent
# the modules that define the job's models: their reads are checks and plumbing, not uses
SCHEMA_MODULES = {SOURCE / "config" / "schema.py", SOURCE / "degrade" / "config.py"}
VALIDATORS = {"field_validator", "model_validator"}


def schema_fields(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """Dotted key path -> field name, for every field of `model` and of every model inside it."""
    fields: dict[str, str] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        fields[path] = name
        annotations = [field.annotation]
        while annotations:
            annotation = annotations.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                fields.update(schema_fields(annotation, f"{path}."))
            annotations.extend(typing.get_args(annotation))
    return fields


def reads(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(attribute names read, prefixes of names read as getattr(x, "prefix" + suffix))."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            names.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                names.add(name.value)
            elif isinstance(name, ast.BinOp) and isinstance(getattr(name.left, "value", None), str):
                prefixes.add(name.left.value)  # getattr(cfg, "kernel_list" + s): kernel_list, kernel_list2
    return names, prefixes


def _is_validator(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if getattr(target, "id", None) in VALIDATORS:
            return True
    return False


def read_names(source: Path = SOURCE, schema_modules: set[Path] = SCHEMA_MODULES) -> tuple[set[str], set[str]]:
    """Every field name srcluster reads outside the schema modules, plus what the schema's properties and methods read
    when they are read themselves (to a fixed point: one property may read another)."""
    names: set[str] = set()
    prefixes: set[str] = set()
    methods: dict[str, tuple[set[str], set[str]]] = {}
    for path in sorted(source.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if path not in schema_modules:
            more_names, more_prefixes = reads(tree)
            names |= more_names
            prefixes |= more_prefixes
            continue
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for function in cls.body:
                if isinstance(function, ast.FunctionDef) and not _is_validator(function):
                    known = methods.setdefault(function.name, (set(), set()))
                    more_names, more_prefixes = reads(function)
                    known[0].update(more_names)
                    known[1].update(more_prefixes)
    counted: set[str] = set()
    while pending := (names & methods.keys()) - counted:
        for method in pending:
            names |= methods[method][0]
            prefixes |= methods[method][1]
        counted |= pending
    return names, prefixes


def unread(model: type[BaseModel], source: Path = SOURCE, schema_modules: set[Path] = SCHEMA_MODULES) -> set[str]:
    names, prefixes = read_names(source, schema_modules)

    def is_read(name: str) -> bool:
        return name in names or any(name.startswith(p) and name[len(p) :] in ("", *"0123456789") for p in prefixes)

    return {path for path, name in schema_fields(model).items() if not is_read(name)}


def test_every_job_option_is_read_or_named_as_not_read():
    nobody_reads = unread(Job)
    assert nobody_reads - NOT_READ.keys() == set(), (
        "job options srcluster accepts and reads nowhere: act on them, or warn (job.warnings) and list them in "
        "srcluster.config.NOT_READ with why"
    )
    assert NOT_READ.keys() - nobody_reads == set(), "read now (or not a job option): remove them from NOT_READ"
    assert all(why.strip() for why in NOT_READ.values())


PROBE_SCHEMA = """
class Probe:
    @property
    def on_device(self):
        return self.where == "device"

    @model_validator(mode="after")
    def consistent(self):
        assert self.checked_only
        return self

    def nobody_calls_this(self):
        return self.orphan
"""
PROBE_USER = """
def use(job, cfg, suffix):
    return job.on_device, job.plain, getattr(cfg, "kernel_list" + suffix)
"""


def test_the_scan_finds_an_option_nobody_reads_and_follows_properties_and_getattr(tmp_path):
    (tmp_path / "schema.py").write_text(PROBE_SCHEMA)
    (tmp_path / "user.py").write_text(PROBE_USER)
    probe = create_model(
        "Probe",
        __base__=Strict,
        where=(str, "auto"),
        checked_only=(bool, True),
        orphan=(int, 0),
        plain=(int, 0),
        kernel_list=(int, 0),
        kernel_list2=(int, 0),
        unused=(int, 0),
    )
    # where: read by a property that is read; checked_only: only by a validator; orphan: by a method nobody calls
    assert unread(probe, tmp_path, {tmp_path / "schema.py"}) == {"checked_only", "orphan", "unused"}


def test_keys_lifted_out_as_ignored_are_not_also_schema_fields():
    """lift_ignored removes these keys before validation, so a schema field of the same path could never be set."""
    fields = schema_fields(Job)
    paths = {key.replace("*", dataset) for key in IGNORED for dataset in ("train", "val")}
    assert paths & fields.keys() == set()


def test_importing_the_schema_does_not_import_torch():
    """A subprocess: other tests have imported torch into this one. The CLI and launcher read job files without it."""
    check = "import sys, srcluster.config; assert 'torch' not in sys.modules, 'srcluster.config imported torch'"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "known", "n", "spell", "expected"),
    [
        ("lq_siz", ["lq_size", "batch_size_per_gpu"], 1, str, "did you mean 'lq_size'?"),
        ("compakt", ["compact", "compact2", "span"], 3, str, "did you mean 'compact' or 'compact2'?"),
        (
            "kernel_lst",
            ["kernel_list", "jpeg_range"],
            1,
            lambda k: f"datasets.train.{k}",
            "did you mean 'datasets.train.kernel_list'?",
        ),
        ("zzz", ["lq_size"], 1, str, None),
    ],
)
def test_one_did_you_mean_for_every_hint(name, known, n, spell, expected):
    assert did_you_mean(name, known, n=n, spell=spell) == expected


def test_no_module_words_its_own_did_you_mean():
    """difflib's suggestions are worded once, in srcluster.registry, so every hint reads the same."""
    users = sorted(str(p.relative_to(SOURCE)) for p in SOURCE.rglob("*.py") if "difflib" in p.read_text())
    assert users == ["registry.py"]
