"""A name -> builder table per kind of component (architectures, losses, ...), instead of if-chains."""

from __future__ import annotations

import difflib
import inspect
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

    def check_options(self, name: str, options: dict, key: str) -> None:
        """Raise ValueError naming `key` when the builder takes none of some option (typos in a job file)."""
        builder = self._builders[name.lower()]
        params = inspect.signature(builder).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = [p for p in params if p not in ("self", "args", "kwargs")]
        for option in options:
            if option not in accepted:
                close = difflib.get_close_matches(option, accepted, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(accepted) or 'none'}"
                raise ValueError(f"{key}: {name} has no option {option!r} ({hint})")

    def build(self, name: str, **options) -> T:
        self.check(name, self.kind)
        return self._builders[name.lower()](**options)
