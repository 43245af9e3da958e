"""`../shared` beside the checkout (CI lays it there too): the traiNNer-redux templates, Set5/Set14, the KubeRay CRDs.

Tests that need it skip with the path they looked at when it is absent (a fresh clone somewhere else)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
SHARED = CHECKOUT.parent / "shared"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data (it may not exist: see `require`)."""
    return SHARED.joinpath("data", *parts)


def require(path: Path) -> Path:
    """`path`, or skip the calling test with the reason a reader needs."""
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (beside the checkout, as CI lays it) holds it")
    return path
