"""Event records of a run, and the fan-out to observers.

The driver emits these; observers (logging, and later progress, the run record and
the checkpoint store) learn about a run only from them.  When a run has no
observer the driver creates no event at all, so the hot path pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

__all__ = [
    "EVENT_TYPES",
    "Event",
    "Observer",
    "RunFinished",
    "RunStarted",
    "TaskExpanded",
    "TaskFailed",
    "TaskFinished",
    "TaskQueued",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "fan_out",
]


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run began; ``tasks`` is the number of tasks it will finish or skip."""

    graph: str
    tasks: int


@dataclass(frozen=True, slots=True)
class TaskExpanded:
    """The expanded task grew ``instances`` instances, ``(task, 0)`` on: the run has
    that many more tasks to finish or skip."""

    task: Hashable
    instances: int


@dataclass(frozen=True, slots=True)
class TaskQueued:
    """The task's dependencies are all done: it is ready to start."""

    task: Hashable


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The task was handed to a backend; ``lane`` says where (``'main'``, ``'loop'``...)."""

    task: Hashable
    lane: str


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """The task returned a value, or (``cached``) its value was loaded from the cache."""

    task: Hashable
    cached: bool = False


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task raised ``error``."""

    task: Hashable
    error: BaseException


@dataclass(frozen=True, slots=True)
class TaskRetrying:
    """Attempt ``attempt`` of ``attempts`` of the task raised ``error``; it is tried
    again in ``delay`` seconds (``create_graph(retries=...)``)."""

    task: Hashable
    attempt: int
    attempts: int
    error: BaseException
    delay: float


@dataclass(frozen=True, slots=True)
class TaskSkipped:
    """The task was not run, or was cancelled; ``error`` says why."""

    task: Hashable
    error: BaseException


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run ended (normally, or interrupted when ``interrupted`` is true)."""

    graph: str
    interrupted: bool = False


Event = (
    RunStarted
    | TaskExpanded
    | TaskQueued
    | TaskStarted
    | TaskFinished
    | TaskFailed
    | TaskRetrying
    | TaskSkipped
    | RunFinished
)
Observer = Callable[[Event], None]
"""Any callable taking an event.  It may have an ``events`` attribute, a collection of
the event classes it wants; without one it gets every event.  The driver creates no
event that no observer wants, so an observer interested in failures costs nothing
per successful task."""

EVENT_TYPES = (
    RunStarted,
    TaskExpanded,
    TaskQueued,
    TaskStarted,
    TaskFinished,
    TaskFailed,
    TaskRetrying,
    TaskSkipped,
    RunFinished,
)


def fan_out(observers: Sequence[Observer], kind: type | None = None) -> Observer | None:
    """One callable passing each event to every observer that wants ``kind`` (None: all).

    Returns None when no observer wants it.
    """
    if kind is not None:
        observers = [o for o in observers if kind in getattr(o, "events", EVENT_TYPES)]
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    chain = tuple(observers)

    def emit(event: Event) -> None:
        for observer in chain:
            observer(event)

    return emit
