"""A foreign `concurrent.futures.Executor` as the CPU backend (the door to Dask).

Each task crosses as ``worker.call_pickled(function bytes, argument bytes)``, so
lambdas and closures work whatever the executor pickles with.  The executor is
the caller's: it is never shut down here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Any

from ..errors import SerializationError
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

    def start(self, tasks: int) -> None:
        """Nothing to start: the executor is already running."""

    def capacity(self) -> int:
        return self.limit - len(self.inflight)

    def submit(
        self, tid: int, task: Hashable, func: Callable[..., Any], args: Sequence[Any]
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
        future = asyncio.wrap_future(self.executor.submit(call_pickled, entry[1], args_blob))
        self.inflight.add(future)
        future.add_done_callback(self._on_done)
        return future

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        self.inflight.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            tb = getattr(exc, "_taskmap_remote_tb", None)
            if tb is not None and exc.__cause__ is None:
                exc.__cause__ = RemoteTraceback(tb)

    async def aclose(self, *, cancel: bool) -> None:
        if cancel:
            for future in list(self.inflight):
                future.cancel()
