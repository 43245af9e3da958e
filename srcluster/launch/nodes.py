"""Wait until N Ray nodes are alive at a Ray address (`python -m srcluster.cli.nodes --expect N`).

Used by the rendered Slurm script between starting the nodes and running the stage, so training never starts on a
cluster that is still missing nodes (Ray Train would place fewer workers, or wait without saying why).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence


def alive_nodes() -> int:
    import ray  # heavy: loaded when the wait runs, not for `python -m srcluster.cli.nodes --help`

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def alive(pid: int) -> bool:
    """Running, and not a zombie its parent (the batch shell) has yet to reap."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except OSError:  # no /proc: trust kill
        return True


def wait(expect: int, timeout: float, address: str | None, pids: Sequence[int] = ()) -> int:
    import ray  # as in alive_nodes

    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        if dead := [pid for pid in pids if not alive(pid)]:
            # a `ray start` that failed does not come back: say so now rather than after the whole timeout
            print(
                f"srcluster: a Ray node's process (pid {dead[0]}) exited before {expect} node(s) were up; "
                "its error is above",
                file=sys.stderr,
                flush=True,
            )
            ray.shutdown()
            return 1
        try:
            if not ray.is_initialized():
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
            count = alive_nodes()
        except (ConnectionError, RuntimeError) as exc:  # the head's GCS is not up yet
            count, reason = 0, exc.__class__.__name__
            ray.shutdown()
        else:
            reason = ""
        if count != last:
            print(f"srcluster: {count}/{expect} Ray node(s) up{f' ({reason})' if reason else ''}", flush=True)
            last = count
        if count >= expect:
            ray.shutdown()
            return 0
        time.sleep(2)
    print(
        f"srcluster: only {max(last, 0)} of {expect} Ray node(s) joined {address} within {timeout:.0f}s; "
        "see the Ray logs on the missing nodes",
        file=sys.stderr,
        flush=True,
    )
    return 1
