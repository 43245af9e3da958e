"""A name -> builder table per kind of component (architectures, losses, ...), instead of if-chains."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str], n: int = 1, spell: Callable[[str], str] = str) -> str | None:
    """ "did you mean 'x'?" (or "'x' or 'y'", up to `n`) for the known names closest to a mistyped `name`, each
    written by `spell` (e.g. as its full key path); None when nothing is close, so callers can list what is known.
    The one place that words these hints, for registries, job files, degradation keys and search spaces alike."""
    close = difflib.get_close_matches(str(name), list(known), n=n)
    return f"did you mean {' or '.join(repr(spell(c)) for c in close)}?" if close else None


def listed(names: Iterable[str], most: int = 12) -> str:
    """Known names for an error line, which stays one short line however many there are."""
    names = list(names)
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, ... and {len(names) - most} more"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None):
        def add(builder: Callable[..., T]) -> Callable[..., T]:
            self._builders[(name or builder.__name__).lower()] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def check(self, name: str, key: str) -> None:
        """Raise ValueError naming `key`, the bad name and the closest known names."""
        if name.lower() in self._builders:
            return
        hint = did_you_mean(name.lower(), self._builders, n=3) or f"known: {listed(self.names())}"
        raise ValueError(f"{key}: unknown {self.kind} {name!r} ({hint})")

    def check_options(self, name: str, options: dict, key: str) -> None:
        """Raise ValueError naming `key` when the builder takes none of some option (typos in a job file)."""
        builder = self._builders[name.lower()]
        params = inspect.signature(builder).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = [p for p in params if p not in ("self", "args", "kwargs")]
        for option in options:
            if option not in accepted:
                hint = did_you_mean(option, accepted) or f"accepted: {', '.join(accepted) or 'none'}"
                raise ValueError(f"{key}: {name} has no option {option!r} ({hint})")

    def build(self, name: str, **options) -> T:
        self.check(name, self.kind)
        return self._builders[name.lower()](**options)
