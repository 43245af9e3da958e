"""Free ports for the test servers. A module of its own: with tests/faults/conftest.py beside tests/conftest.py, the
name `conftest` is ambiguous to import from."""

from __future__ import annotations

import random

from srcluster import stack as local_stack

# Below Linux's ephemeral range (32768+) and above Ray's worker ports (10000-19999), so nothing else grabs them
# meanwhile.
TEST_PORTS = range(20000, 32000)


def free_port_block(size: int, avoid: frozenset[int] | set[int] = frozenset()) -> int:
    """The first of `size` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(TEST_PORTS.start, TEST_PORTS.stop - size)
        block = range(base, base + size)
        if not avoid & set(block) and all(local_stack.port_free(p) for p in block):
            return base
    raise RuntimeError(f"no {size} consecutive free ports in {TEST_PORTS}")
