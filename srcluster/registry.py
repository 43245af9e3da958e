"""A name -> builder table per kind of component (architectures, losses, ...), instead of if-chains."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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
        close = difflib.get_close_matches(name.lower(), self._builders, n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(self.names())}"
        raise ValueError(f"{key}: unknown {self.kind} {name!r} ({hint})")

    def build(self, name: str, **options) -> T:
        self.check(name, self.kind)
        return self._builders[name.lower()](**options)
