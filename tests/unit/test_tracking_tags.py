"""Every MLflow tag is spelled once, in srcluster/tracking/tags.py: no other module writes one by hand."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import srcluster
from srcluster.tracking import tags

PACKAGE = Path(srcluster.__file__).parent
HOLE = "\x00"


def tag_values() -> set[str]:
    return {
        value
        for name, value in vars(tags).items()
        if name.isupper() and isinstance(value, str) and value.startswith(tags.PREFIX) and value != tags.PREFIX
    }


def family_prefixes() -> set[str]:
    """What the tag families' f-strings start with ("srcluster.resize.", "srcluster.alias.", ...)."""
    prefixes = set()
    for function in vars(tags).values():
        if inspect.isfunction(function) and function.__module__ == tags.__name__:
            arguments = [HOLE] * len(inspect.signature(function).parameters)
            prefixes.add(function(*arguments).split(HOLE)[0])
    return prefixes


def hand_spelled(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `source` that is a tag name or starts a tag family; an f-string's
    leading text is a constant of its own, so f"srcluster.resize.{i}" is found too."""
    values, prefixes = tag_values(), family_prefixes()
    found = []
    for node in ast.walk(ast.parse(source)):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and (node.value in values or node.value.startswith(tuple(prefixes))):
            found.append((node.lineno, node.value))
    return found


def test_tags_are_unique_and_namespaced():
    constants = [v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str) and k != "PREFIX"]
    assert len(constants) == len(set(constants)) == len(tag_values())  # every name is a distinct srcluster.* tag
    assert set(tags.RUN_ONLY) <= tag_values()
    assert family_prefixes() == {"srcluster.resize.", "srcluster.reused.", "srcluster.alias.", "srcluster.tune."}


def test_the_check_finds_tags_spelled_by_hand():
    # what the modules held before tags.py: a plain tag, a family f-string, and config text that is no tag
    source = (
        'x = {"srcluster.checkpoint_uri": uri}\n'
        'y = {f"srcluster.resize.{iteration}": change}\n'
        'raise ValueError(f"srcluster.workers: {n} cannot be held")\n'
        'GENERATOR = "srcluster.data.sample/2"\n'
    )
    assert hand_spelled(source) == [(1, "srcluster.checkpoint_uri"), (2, "srcluster.resize.")]


def test_no_module_spells_a_tag_by_hand():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != Path(tags.__file__)
        for line, text in hand_spelled(path.read_text())
    ]
    assert not offenders, "spell these through srcluster.tracking.tags:\n" + "\n".join(offenders)
