"""Generators no maintained library ships, written here from traiNNer-redux's description of them: one module per
family, each with redux's module names (so its state dicts load strictly) and its preset names.

Each module names its presets in `REDUX_PRESETS` (redux name -> (class name, preset options)); its classes take the
job's scale as `scale` and otherwise redux's own option names. `components/archs.py` registers every module found here,
so a new family is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any


def presets() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(redux name, module path, class name, preset options) for every preset of every module in this package."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):  # shared layers (`_layers`), not a family
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, (cls, options) in module.REDUX_PRESETS.items():
            yield name, module.__name__, cls, options
