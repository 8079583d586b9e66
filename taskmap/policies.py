"""Per-task execution policies: retries, timeouts, channels, priorities, normalised once.

`create_graph` checks what the user gave (``retries=``, ``timeouts=``,
``channels=``, ``priorities=``) and keeps it as one `Policies` value; a run takes
``limits=`` (channel -> how many of its tasks may run at once), checked against
the graph's channels by `check_limits`.  Every runner applies the same policies:
the frontier enforces limits and priorities, the drivers retries and timeouts.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import with_article

__all__ = ["IO_CHANNEL", "Policies", "Retry", "check_limits", "make_policies"]

#: The channel every io-bound task belongs to: ``limits={'io': 20}`` caps how many
#: io-bound tasks run at once.
IO_CHANNEL = "io"


@dataclass(frozen=True, slots=True)
class Retry:
    """How a failing task is tried again: exponential backoff with jitter.

    The wait before retry ``n`` (1, 2, ...) is ``min(max_delay, delay * backoff **
    (n - 1))``, less a random part of up to ``jitter`` of it (``jitter=0.5`` is the
    "equal jitter" of AWS's backoff study), so that tasks failing together do not
    retry together.  The task keeps its channel slots while it waits.

    Args:
        times: how many times to retry after the first attempt fails.
        delay: seconds before the first retry.
        backoff: factor by which the wait grows with each retry.
        max_delay: the longest wait, in seconds.
        jitter: the fraction of each wait that is random, from 0 to 1.
        on: the exception types to retry; any other fails the task at once.

    Example:
        >>> create_graph(funcs, deps, retries={'fetch': Retry(5, on=(ConnectionError,))})
    """

    times: int = 3
    delay: float = 0.5
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.5
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 0:
            raise ValueError(f"Retry times must be an integer >= 0 (got {self.times!r})")
        for what in ("delay", "max_delay"):
            _check_seconds(f"Retry {what}", getattr(self, what), zero=True)
        if not _is_number(self.backoff) or self.backoff < 1:
            raise ValueError(f"Retry backoff must be a number >= 1 (got {self.backoff!r})")
        if not _is_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ValueError(f"Retry jitter must be a number from 0 to 1 (got {self.jitter!r})")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        bad = [t for t in on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad or not on:
            raise TypeError(
                f"Retry on must be an exception type or a tuple of them (got {self.on!r})"
            )
        object.__setattr__(self, "on", on)

    def wait(self, retry: int, random: float) -> float:
        """Seconds to wait before retry number ``retry`` (from 1); ``random`` in [0, 1)."""
        base = min(self.max_delay, self.delay * self.backoff ** (retry - 1))
        return base * (1.0 - self.jitter * random)

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is of a type this policy retries."""
        return isinstance(error, self.on)


@dataclass(frozen=True, slots=True)
class Policies:
    """The policies of a graph's tasks, by task name; a task not listed has none.

    Attributes:
        retries: task -> its `Retry`.
        timeouts: task -> seconds it may run (per attempt).
        channels: task -> the channels it belongs to (io-bound tasks also belong
            to ``'io'``, added at run time).
        priorities: task -> a number; among ready tasks (io-bound ones still first)
            the highest starts first.
    """

    retries: Mapping[Hashable, Retry] = field(default_factory=dict)
    timeouts: Mapping[Hashable, float] = field(default_factory=dict)
    channels: Mapping[Hashable, tuple[str, ...]] = field(default_factory=dict)
    priorities: Mapping[Hashable, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.retries or self.timeouts or self.channels or self.priorities)

    def channel_names(self) -> set[str]:
        """Every channel some task belongs to."""
        return {c for names in self.channels.values() for c in names}


def make_policies(
    retries: Mapping[Hashable, int | Retry] | Iterable[Hashable] | None,
    timeouts: Mapping[Hashable, float] | None,
    channels: Mapping[Hashable, str | Iterable[str]] | None,
    priorities: Mapping[Hashable, float] | None,
) -> Policies:
    """Check and normalise `create_graph`'s policy arguments (task names are checked
    by the caller).

    ``retries`` maps a task to a number of retries or a `Retry`; a plain list of
    names gives each the default ``Retry()``.
    """
    return Policies(
        retries=_retries(retries),
        timeouts={
            t: _check_seconds(f"timeout of task {t!r}", s) for t, s in _items("timeouts", timeouts)
        },
        channels={t: _channels(t, c) for t, c in _items("channels", channels)},
        priorities={t: _priority(t, p) for t, p in _items("priorities", priorities)},
    )


def check_limits(limits: Mapping[str, int] | None, policies: Policies) -> dict[str, int]:
    """Check a run's ``limits=`` against the graph's channels; return it as a dict.

    Raises:
        TypeError: ``limits`` is not a mapping of channel names.
        ValueError: a limit is not a positive integer, or names a channel no task
            belongs to (``'io'`` always exists).
    """
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise TypeError(
            "limits must be a mapping of channel name -> the most tasks of that channel "
            f"running at once (got {with_article(type(limits).__name__)})"
        )
    known = policies.channel_names() | {IO_CHANNEL}
    for channel, limit in limits.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(
                f"limit of channel {channel!r} must be an integer >= 1 (got {limit!r})"
            )
    unknown = sorted(repr(c) for c in limits if c not in known)
    if unknown:
        raise ValueError(
            f"limits name channels no task belongs to: {', '.join(unknown)} (channels: "
            f"{', '.join(sorted(repr(c) for c in known))}; give tasks channels with "
            "create_graph(channels={task: [channel, ...]}))"
        )
    return dict(limits)


def _items(where: str, values: Mapping[Hashable, Any] | None) -> Iterable[tuple[Hashable, Any]]:
    if values is None:
        return ()
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{where} must be a mapping of task names (got {with_article(type(values).__name__)})"
        )
    return values.items()


def _retries(
    retries: Mapping[Hashable, int | Retry] | Iterable[Hashable] | None,
) -> dict[Hashable, Retry]:
    if retries is None:
        return {}
    if isinstance(retries, Mapping):
        out = {}
        for task, policy in retries.items():
            if isinstance(policy, Retry):
                out[task] = policy
            elif isinstance(policy, int) and not isinstance(policy, bool) and policy >= 0:
                out[task] = Retry(times=policy)
            else:
                raise TypeError(
                    f"retries of task {task!r} must be a number of retries or a "
                    f"taskmap.Retry (got {policy!r})"
                )
        return out
    if isinstance(retries, str | bytes) or not isinstance(retries, Iterable):
        raise TypeError(
            "retries must be a mapping of task names to a number of retries or a Retry, "
            f"or a list of task names (got {with_article(type(retries).__name__)})"
        )
    return dict.fromkeys(retries, Retry())


def _check_seconds(what: str, seconds: object, *, zero: bool = False) -> float:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        value = float(seconds)
        if math.isfinite(value) and (value > 0 or (zero and value == 0)):
            return value
    must = ">= 0" if zero else "> 0"
    raise ValueError(f"{what} must be a number of seconds {must} (got {seconds!r})")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _channels(task: Hashable, channels: str | Iterable[str]) -> tuple[str, ...]:
    names = (channels,) if isinstance(channels, str) else channels
    if isinstance(names, Iterable):
        names = tuple(names)
        if all(isinstance(c, str) for c in names):
            return tuple(dict.fromkeys(names))
    raise TypeError(
        f"channels of task {task!r} must be a channel name or a list of them (got {channels!r})"
    )


def _priority(task: Hashable, priority: object) -> float:
    if _is_number(priority) and math.isfinite(priority):  # type: ignore[arg-type]
        return priority  # type: ignore[return-value]
    raise ValueError(f"priority of task {task!r} must be a finite number (got {priority!r})")
