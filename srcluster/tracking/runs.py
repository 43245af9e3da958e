"""The life cycle of an MLflow run, written once: find an earlier try, reuse it, reopen it or start anew, and end it.

    with runs.run(tracker, experiment, match={tags.RUN_KEY: key}, name=job.name, params=..., tags=...,
                  reuse_if=lambda previous: tags.CHECKPOINT_URI in previous.data.tags) as run:
        if run.reused:
            return result_of(run.previous)  # finished before: train nothing
        ...                                 # train; the run ends FINISHED here,
                                            # FAILED on an exception, KILLED on Ctrl-C

Stages find their earlier run by their run key, a pipeline's parent by its recipe hash, a search by its key and a
trial by its trial id; each passes its own rule for what to do with a run that already finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from srcluster.errors import Preempted
from srcluster.tracking.tracker import Tracker


@dataclass
class Run:
    tracker: Tracker
    id: str
    state: Literal["new", "reopened", "reused"]
    previous: Any = None  # the earlier try (an mlflow.entities.Run) when one was found
    status: str = "FINISHED"  # how the run ends when the block exits normally; set it to leave another status

    @property
    def reused(self) -> bool:
        """An earlier run finished: the caller returns its result and trains nothing (the run is left as it is)."""
        return self.state == "reused"

    @property
    def url(self) -> str:
        return self.tracker.run_url(self.id)


@contextmanager
def run(
    tracker: Tracker,
    experiment: str,
    *,
    name: str,
    match: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    fresh: bool = False,
    reuse_if: Callable[[Any], bool] | None = None,
    reopen_finished: bool = True,
    log: Callable[[str], None] | None = None,
) -> Iterator[Run]:
    """The run in `experiment` that carries every tag of `match`, or a new one carrying them.

    - an earlier run that FINISHED and passes `reuse_if` is handed back as `reused` and left untouched;
    - an unfinished earlier run (or, with `reopen_finished`, a finished one that is not reused) is reopened;
    - otherwise (or with `fresh`) a new run starts, with `params`, `match` + `tags` and the parent.
    A new or reopened run ends FINISHED when the block exits (or `Run.status`), FAILED on an exception, KILLED on
    KeyboardInterrupt or `Preempted`; the caller never ends it itself.
    """
    previous = None if fresh or not match else tracker.find_run(experiment, match)
    finished = previous is not None and previous.info.status == "FINISHED"
    if previous is not None and finished and reuse_if is not None and reuse_if(previous):
        yield Run(tracker, previous.info.run_id, "reused", previous)
        return
    if previous is not None and (reopen_finished or not finished):
        handle = Run(tracker, previous.info.run_id, "reopened", previous)
        tracker.reopen(handle.id)
        if log:
            log(f"{name}: continuing MLflow run {handle.id}")
    else:
        run_id = tracker.start_run(
            experiment, name, params=params, tags={**(match or {}), **(tags or {})}, parent_run_id=parent_run_id
        )
        handle = Run(tracker, run_id, "new")
    try:
        yield handle
    except (KeyboardInterrupt, Preempted):  # stopped from outside: a rerun continues it
        tracker.end_run(handle.id, "KILLED")
        raise
    except BaseException:
        tracker.end_run(handle.id, "FAILED")
        raise
    tracker.end_run(handle.id, handle.status)
