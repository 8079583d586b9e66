"""Coroutines on an event loop: the loop (uvloop where installed), running a
coroutine to completion from synchronous code, and timing a coroutine.

The asyncio driver runs io-bound coroutines on its own loop; these are the pieces
every placement on a loop shares: `EventLoop` for the sync driver (and for runners
called inside a running loop), `timed` for timeouts, `watch_steps` for the
blocked-loop warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable, Iterator
from time import perf_counter
from typing import Any, TypeVar

from ..errors import TaskTimeoutError

__all__ = ["EventLoop", "new_event_loop", "timed", "watch_steps"]

T = TypeVar("T")

try:  # uvloop is a dependency where the platform has it
    import uvloop

    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - platforms without uvloop
    new_event_loop = asyncio.new_event_loop


class EventLoop:
    """An asyncio event loop to run coroutines to completion from synchronous code.

    It runs in this thread (an `asyncio.Runner`, uvloop when installed) unless this
    thread already runs an event loop, as in Jupyter: then in a daemon helper
    thread, and the caller blocks until the coroutine is done.  Ctrl-C while waiting
    cancels the coroutine, gives it two seconds to wind down (a plain function
    blocking the helper's loop cannot be interrupted from here) and raises
    KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.runner: asyncio.Runner | None = None
        self.helper: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.loop = loop = new_event_loop()
        self.helper = threading.Thread(target=loop.run_forever, name="taskmap-loop", daemon=True)
        self.helper.start()

    def __enter__(self) -> EventLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, coro: Coroutine[Any, Any, T], context: contextvars.Context | None = None) -> T:
        """Run ``coro`` to completion, in ``context`` when given (a task's: see
        `taskmap.task_directory`), else in a copy of the current one."""
        if self.loop is None:
            if self.runner is None:
                self.runner = asyncio.Runner(loop_factory=new_event_loop)
            # (the Runner's own default is the context it was made in, not the current)
            return self.runner.run(coro, context=context or contextvars.copy_context())
        if context is None:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        else:  # the helper's task is made in a copy of the context it is scheduled from
            future = context.run(asyncio.run_coroutine_threadsafe, coro, self.loop)
        try:
            with _ctrl_c_raises():
                return future.result()
        except KeyboardInterrupt:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=2)
            raise

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        loop, helper, self.loop, self.helper = self.loop, self.helper, None, None
        if loop is not None and helper is not None:
            loop.call_soon_threadsafe(loop.stop)
            helper.join(2)
            if not helper.is_alive():
                loop.close()


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """While blocked waiting for the helper thread, let Ctrl-C raise KeyboardInterrupt
    at once: the running loop's own handler would only cancel its task, which cannot
    run while this thread waits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def timed(awaitable: Awaitable[T], seconds: float, task: Hashable, how: str) -> T:
    """Await with a timeout; on expiry raise `TaskTimeoutError` (``how`` says what
    became of the work: a coroutine is ``'cancelled'``, a thread ``'abandoned'``)."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await awaitable
    except TimeoutError:
        if deadline.expired():  # ours, not a TimeoutError raised by the task
            raise TaskTimeoutError(task, seconds, how) from None
        raise


@types.coroutine
def watch_steps(
    coro: Coroutine[Any, Any, T], task: Hashable, threshold: float, stalled: Callable[..., None]
) -> Generator[Any, Any, T]:
    """Run ``coro`` step by step, timing each step (each stretch it holds the loop
    between two awaits); call ``stalled(task, seconds, coro)`` after the first step
    longer than ``threshold``, then just delegate."""
    send, throw, clock = coro.send, coro.throw, perf_counter
    value: Any = None
    error: BaseException | None = None
    while True:
        started = clock()
        try:
            yielded = send(value) if error is None else throw(error)
        except StopIteration as stop:
            if clock() - started > threshold:
                stalled(task, clock() - started, coro)
            return stop.value  # type: ignore[no-any-return]
        if clock() - started > threshold:
            stalled(task, clock() - started, coro)
            return (yield from _resume(coro, yielded))
        try:
            value, error = (yield yielded), None
        except BaseException as exc:  # cancellation, GeneratorExit: the coroutine decides
            value, error = None, exc


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Finish a coroutine already started and suspended on ``yielded``."""
    while True:
        try:
            value = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            yielded = coro.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
