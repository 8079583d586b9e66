"""Where a CPU task executes, away from the driver's event loop.

The asyncio driver runs coroutines on its loop, io-bound plain functions in a
thread pool and, without a CPU backend, other plain functions inline; those
placements are a few lines each in `taskmap.driver`, with what they share here:
`loop` (the event loop, timeouts and the blocked-loop watch of a coroutine) and
`threads` (a timed plain function in a daemon thread).  A CPU backend takes the
rest: the built-in pool of worker processes (`processes.ProcessPool`) or any
`concurrent.futures.Executor` (`executor.ExecutorBackend`, the door to Dask).

The data plane: a large value a worker makes stays in a shared segment, and the
driver holds a `Shared` handle to it (its fd), not the value; CPU tasks that
consume it map the segment themselves.  The driver turns a handle into the value
only for its own use (`Shared.load`: io tasks, the cache) and at the end of the
run (`materialise`: ``graph.results``); a handle dropped (``drop_results``) frees
the segment once no worker maps it.  Under ``drop_results``, a value with one
consumer does not even leave the worker that made it: the driver holds a `Remote`
handle and the backend runs the consumer where the value is (zero-copy chains);
`Backend.collect` brings what is left of them to the driver at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

from ..worker import Shared as Shared

__all__ = ["Backend", "Remote", "Shared", "materialise"]


class Remote:
    """A value that lives in a backend's worker, not in the driver (see
    `Backend.submit`'s ``hold``): the driver passes the handle back to the backend,
    and only the backend can turn it into the value (`Backend.collect`)."""

    __slots__ = ()


class Backend(Protocol):
    """Runs CPU tasks for the asyncio driver.  Used from the driver's loop only."""

    def start(self, tasks: int) -> None:
        """Start (from the driver's running loop) before the first `submit`; ``tasks``
        is how many tasks the run may send (a pool need not start more workers)."""
        ...

    def capacity(self) -> int:
        """How many more tasks it takes now (the driver keeps the rest READY)."""
        ...

    def submit(
        self,
        tid: int,
        task: Hashable,
        func: Callable[..., Any],
        args: Sequence[Any],
        *,
        timeout: float | None = None,
        post: Callable[[Any], Any] | None = None,
        hold: bool = False,
        directory: tuple[Any, ...] | None = None,
    ) -> asyncio.Future[Any]:
        """Start a task; the future gets its value or its exception.

        With ``timeout`` (seconds, counted from when the task really starts), the
        future gets a `TaskTimeoutError` if the task runs longer, and the backend
        stops it as best it can (the built-in pool replaces the worker).

        ``post`` (the cache's digest and encoding) may be called on the value where
        it was made; its result is then `posted` (a backend may ignore it).

        ``hold``: the value may stay where it was made, and the future then gets a
        `Remote` handle, which the driver passes to the task's one consumer (a
        backend may ignore it).
        ``directory`` (a cached graph) is the task's `taskdir.Call` as plain values
        (`Call.wire`): the call is made in a context where `taskmap.task_directory`
        answers from it, and its output is captured when it says so.

        Raises:
            SerializationError: the function or arguments cannot be sent; nothing
                was started.
        """
        ...

    def span(self, tid: int) -> tuple[str, float, float] | None:
        """Where and when the task's last attempt ran, once its future is done: its
        lane (``'worker-2'``), start and end as ``time.perf_counter()`` readings of
        this process; None when the backend cannot tell (the driver's times count)."""
        ...

    def posted(self, tid: int) -> Any:
        """What ``post`` returned for the task's value, once its future is done; None
        when the backend did not call it (then the driver computes it)."""
        ...

    async def collect(self, results: dict[Any, Any]) -> list[Any]:
        """Before `aclose` at the end of a run: replace each `Remote` in ``results``
        by its value (or a `Shared`); drop those that were lost (their worker died)
        and return their names."""
        ...

    async def aclose(self, *, cancel: bool) -> None:
        """Release every resource; with ``cancel``, stop running tasks at once.

        Idempotent; no process or thread it started outlives it.
        """
        ...


def materialise(results: dict[Any, Any]) -> list[Any]:
    """Turn each `Shared` value in ``results`` into the value, and close its segment.

    The value lives on a private mapping of the segment: no copy is made here, the
    pages are shared with the workers' until written, and freed with the value.
    A `Remote` left (its backend was stopped before `Backend.collect`) is lost:
    it is dropped, and its name returned.
    """
    lost = []
    for name, value in results.items():
        if type(value) is Shared:
            results[name] = value.load()
            value.close()
        elif isinstance(value, Remote):
            lost.append(name)
    for name in lost:
        del results[name]
    return lost
