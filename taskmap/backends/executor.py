"""A foreign `concurrent.futures.Executor` as the CPU backend (the door to Dask).

Each task crosses as ``worker.call_pickled(function bytes, argument bytes)``, so
lambdas and closures work whatever the executor pickles with.  The executor is
the caller's: it is never shut down here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Any

from ..errors import SerializationError, TaskTimeoutError, WorkerCrashedError
from ..worker import RemoteTraceback, call_pickled, dumps_for_worker
from .processes import _unpicklable_args

__all__ = ["ExecutorBackend"]


class ExecutorBackend:
    """Sends CPU tasks to ``executor``, at most ``limit`` at a time."""

    def __init__(self, executor: Executor, limit: int | None = None) -> None:
        if not isinstance(executor, Executor):
            raise TypeError(
                "executor must be a concurrent.futures.Executor "
                f"(got {type(executor).__name__}); for Dask pass client.get_executor()"
            )
        self.executor = executor
        workers = getattr(executor, "_max_workers", None)
        self.limit = limit or (workers if isinstance(workers, int) else 1 << 30)
        self.inflight: set[asyncio.Future[Any]] = set()
        self.functions: dict[int, tuple[Callable[..., Any], bytes]] = {}
        self.spans: dict[int, tuple[str, float, float]] = {}
        self.lane = type(executor).__name__
        self.dask = type(executor).__module__.startswith("distributed.")

    def start(self, tasks: int) -> None:
        """Nothing to start: the executor is already running."""

    def capacity(self) -> int:
        return self.limit - len(self.inflight)

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
        entry = self.functions.get(id(func))
        if entry is None or entry[0] is not func:
            try:
                entry = (func, dumps_for_worker(func))
            except Exception as exc:
                raise SerializationError(
                    task, "function", type(func).__qualname__, str(exc)
                ) from None
            self.functions[id(func)] = entry
        try:
            args_blob = dumps_for_worker(tuple(args))
        except Exception as exc:
            raise _unpicklable_args(task, args, exc) from None
        loop = asyncio.get_running_loop()
        remote = self.executor.submit(
            call_pickled, entry[1], args_blob, directory, **self._options(task)
        )
        future: asyncio.Future[Any] = loop.create_future()
        self.inflight.add(future)
        sent = time.perf_counter()

        def on_remote_done(remote: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(self._settle, tid, task, sent, remote, future)

        remote.add_done_callback(on_remote_done)
        timer = (
            None
            if timeout is None
            else loop.call_later(timeout, self._expire, task, timeout, remote, future)
        )

        def on_done(future: asyncio.Future[Any]) -> None:
            self.inflight.discard(future)
            if timer is not None:
                timer.cancel()
            if future.cancelled():
                remote.cancel()

        future.add_done_callback(on_done)
        return future

    def _options(self, task: Hashable) -> dict[str, Any]:
        """Dask's executor submits pure calls, keyed by their arguments: two tasks of the
        same function and inputs would run once.  Give each call a key of its own,
        which also names the task on Dask's dashboard and in its errors."""
        if not self.dask:
            return {}
        return {"key": f"{task}-{uuid.uuid4().hex}", "pure": False}

    def span(self, tid: int) -> tuple[str, float, float] | None:
        return self.spans.pop(tid, None)

    def _settle(
        self,
        tid: int,
        task: Hashable,
        sent: float,
        remote: concurrent.futures.Future[Any],
        future: asyncio.Future[Any],
    ) -> None:
        """Pass the executor's outcome to the driver's future, with its span: it
        ended now and took as long as the remote call says (clocks of other
        machines are not comparable with ours, durations are)."""
        end = time.perf_counter()
        if future.done():  # timed out or cancelled meanwhile
            return
        if remote.cancelled():
            future.cancel()
            return
        exc = remote.exception()
        if exc is None:
            value, where, seconds = remote.result()
            self.spans[tid] = (where, max(sent, end - seconds), end)
            future.set_result(value)
            return
        where, seconds = getattr(exc, "_taskmap_span", (self.lane, end - sent))
        self.spans[tid] = (where, max(sent, end - seconds), end)
        if type(exc).__name__ == "KilledWorker":  # Dask: the worker running it died
            crashed = WorkerCrashedError(
                task,
                None,
                None,
                "its Dask worker died while running it (as many times as the scheduler's "
                "distributed.scheduler.allowed-failures allows)",
            )
            crashed.__cause__ = exc
            future.set_exception(crashed)
            return
        tb = getattr(exc, "_taskmap_remote_tb", None)
        if tb is not None and exc.__cause__ is None:
            exc.__cause__ = RemoteTraceback(tb)
        exc.add_note(f"task {task!r} failed on the executor ({where})")
        future.set_exception(exc)

    def _expire(
        self,
        task: Hashable,
        seconds: float,
        remote: concurrent.futures.Future[Any],
        future: asyncio.Future[Any],
    ) -> None:
        if not future.done():
            remote.cancel()
            future.set_exception(TaskTimeoutError(task, seconds, "executor"))

    async def collect(self, results: dict[Any, Any]) -> list[Any]:
        """Nothing is held: the executor returns every value (``hold`` is ignored)."""
        return []

    def posted(self, tid: int) -> Any:
        """Never: values come back to the driver, which digests and encodes them."""
        return None

    async def aclose(self, *, cancel: bool) -> None:
        if cancel:
            for future in list(self.inflight):
                future.cancel()
