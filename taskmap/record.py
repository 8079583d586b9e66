"""What a run did, as data: `RunStats`, kept on the graph as ``graph.stats``.

It sits below `graph` in the layers so that a graph can carry its last run's
record; it holds data only.  The driver fills a `Timeline` (flat lists indexed by
task id, cheap to write on the hot path); `RunStats` turns it into per-task
`TaskStats` rows and per-lane figures when they are first asked for.

Times are ``time.perf_counter()`` readings while recording, and seconds since the
run started in `TaskStats`.  Worker processes on this machine report their own
readings of the same clock (it is system-wide), so a worker's span is the time
its task really ran, without the trip through the pipe.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .checkpoint import CacheStats, Explanation

__all__ = ["RunStats", "TaskOutcome", "TaskStats", "Timeline", "union_length"]


class TaskOutcome(enum.Enum):
    """How a task ended in a run."""

    DONE = "done"  #: it ran and returned a value
    CACHED = "cached"  #: its value was loaded from the cache; it did not run
    FAILED = "failed"  #: it raised (on its last attempt), or timed out
    SKIPPED = "skipped"  #: not run: an ancestor failed
    STOPPED = "stopped"  #: not run, or cancelled: the run stopped (fail_fast)


_OUTCOMES = (None, *TaskOutcome)  # Timeline.outcome codes: 0 = the run did not decide it
DONE, CACHED, FAILED, SKIPPED, STOPPED = range(1, 6)


@dataclass(frozen=True, slots=True)
class TaskStats:
    """One task in one run.

    Attributes:
        task: the task's name.
        outcome: how it ended.
        lane: where it ran: ``'main'`` (`run`), ``'loop'`` (the driver's event
            loop), ``'thread'`` (a thread of the driver), ``'worker-N'`` (worker
            process N; a replacement takes the dead worker's number), or
            ``'host/pid[/thread]'`` for a foreign executor such as Dask; None when
            it did not run.
        start: seconds from the start of the run to its first attempt's start
            (its lookup, when cached); None when it did not run.
        end: seconds from the start of the run to its last attempt's end.
        attempts: how many times it was called (0 when it did not run).
    """

    task: Hashable
    outcome: TaskOutcome
    lane: str | None
    start: float | None
    end: float | None
    attempts: int

    @property
    def duration(self) -> float | None:
        """``end - start`` in seconds (across every attempt), or None."""
        return None if self.start is None or self.end is None else self.end - self.start

    @property
    def cached(self) -> bool:
        """Whether its value came from the cache."""
        return self.outcome is TaskOutcome.CACHED


class Timeline:
    """The raw record of a run, written by the driver.  Not thread-safe: the
    driver's thread only."""

    __slots__ = ("attempts", "end", "lane", "lanes", "outcome", "start", "t0", "t_end", "wall")

    def __init__(self, tasks: int) -> None:
        self.wall = time.time()
        self.t0 = time.perf_counter()
        self.t_end = self.t0
        self.start = [0.0] * tasks
        self.end = [0.0] * tasks
        self.lane = [0] * tasks  # index into lanes; 0: did not run
        self.lanes: list[str] = ["", "main", "loop", "thread"]
        self.outcome = bytearray(tasks)
        self.attempts: dict[int, int] = {}  # only tasks called more than once

    def grow(self, tasks: int) -> None:
        """Make room for ``tasks`` more tasks (instances of an expanded task)."""
        self.start.extend([0.0] * tasks)
        self.end.extend([0.0] * tasks)
        self.lane.extend([0] * tasks)
        self.outcome.extend(bytes(tasks))

    def lane_id(self, name: str) -> int:
        """The index of lane ``name``, added when new."""
        try:
            return self.lanes.index(name)
        except ValueError:
            self.lanes.append(name)
            return len(self.lanes) - 1


#: lane ids every Timeline starts with
MAIN, LOOP, THREAD = 1, 2, 3


@dataclass
class RunStats:
    """The last run of a graph: what each task did, where and when, and the cache.

    Attributes:
        cache: hits, misses, entries and bytes written and read; None when the
            graph has no cache.
        why: for each task the run decided about, why it ran or was served from
            the cache (an `Explanation`); empty without a cache.
        started: when the run started (seconds since the epoch).
        makespan: seconds from the start of the run to its end.
        workers: how many CPU tasks could run at once: the worker processes (or
            the executor's workers seen running tasks), 1 for `run` and `run_async`.
    """

    cache: CacheStats | None = None
    why: dict[Hashable, Explanation] = field(default_factory=dict)
    started: float = 0.0
    makespan: float = 0.0
    workers: int = 1
    _names: Sequence[Hashable] = field(default=(), repr=False)
    _timeline: Timeline | None = field(default=None, repr=False)

    @cached_property
    def tasks(self) -> dict[Hashable, TaskStats]:
        """Task -> its `TaskStats`, for every task this run ran, loaded or skipped,
        in order of start (tasks that did not run last)."""
        t = self._timeline
        if t is None:
            return {}
        t0, start, end, lane, lanes = t.t0, t.start, t.end, t.lane, t.lanes
        attempts, names = t.attempts, self._names
        rows = []
        for tid, code in enumerate(t.outcome):
            if not code:
                continue
            ran = lane[tid] != 0
            rows.append(
                TaskStats(
                    names[tid],
                    _OUTCOMES[code],
                    lanes[lane[tid]] if ran else None,
                    start[tid] - t0 if ran else None,
                    end[tid] - t0 if ran else None,
                    attempts.get(tid, 1) if ran and code != CACHED else 0,
                )
            )
        rows.sort(key=lambda r: (r.start is None, r.start or 0.0))
        return {row.task: row for row in rows}

    @cached_property
    def busy(self) -> dict[str, float]:
        """Lane -> seconds it ran at least one task (overlaps on the event loop count
        once); cached tasks do not count."""
        spans: dict[str, list[tuple[float, float]]] = {}
        for row in self.tasks.values():
            if row.lane is not None and not row.cached:
                assert row.start is not None
                assert row.end is not None
                spans.setdefault(row.lane, []).append((row.start, row.end))
        return {lane: union_length(intervals) for lane, intervals in sorted(spans.items())}

    def count(self, outcome: TaskOutcome) -> int:
        """How many tasks ended with ``outcome``."""
        return sum(1 for row in self.tasks.values() if row.outcome is outcome)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: overlaps count once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
