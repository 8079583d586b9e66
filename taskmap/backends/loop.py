"""Coroutines on an event loop: the loop (uvloop where installed), running a
coroutine to completion from synchronous code, and timing a coroutine.

The asyncio driver runs io-bound coroutines on its own loop; these are the pieces
every placement on a loop shares: `EventLoop` for the sync driver (and for runners
called inside a running loop), `timed` for timeouts, `StallWatch` for the
blocked-loop warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterator
from time import perf_counter
from types import FrameType
from typing import Any, TypeVar

from ..errors import TaskTimeoutError

__all__ = ["EventLoop", "StallWatch", "new_event_loop", "timed"]

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


class StallWatch:
    """Warns about io-bound coroutines that hold the loop, at no cost per step.

    The loop beats: a timer stamps the time every ``period`` (a tenth of the
    threshold).  A daemon thread sleeps until the threshold and a period have passed
    since the last beat it knows of; if the loop has beaten meanwhile it sleeps on
    (so it wakes about once a threshold: each wake takes the GIL from the loop).
    Else something holds the loop, and the thread looks at the loop thread's stack:
    the watched coroutine whose frame is on it is the culprit.  ``report(task,
    seconds, coroutine)`` runs on the loop as soon as the loop is free again;
    ``seconds`` counts from the last beat, so it exceeds the stall by at most a
    period.  A step longer than the threshold and a period is always reported, one
    shorter than the threshold never.  Coroutines
    run as bare Tasks (eagerly on 3.12+): the watch costs a dict entry per
    coroutine, where stepping each one by hand cost a generator frame per step.

    Use from the loop's thread: `watch` before the coroutine's first step (an eager
    start runs it at once), `forget` when it is done, `close` at the end of the run.
    """

    def __init__(self, threshold: float, report: Callable[[Hashable, float, Any], None]) -> None:
        self.threshold = threshold
        self.period = threshold / 10
        self.report = report
        self.watched: dict[int, tuple[Hashable, Coroutine[Any, Any, Any]]] = {}  # tid ->
        self.beat = perf_counter()
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.stop = threading.Event()
        self.timer: asyncio.TimerHandle | None = None
        self._beat()
        self.thread = threading.Thread(target=self._run, name="taskmap-stall-watch", daemon=True)
        self.thread.start()

    def watch(self, tid: int, task: Hashable, coro: Coroutine[Any, Any, Any]) -> None:
        self.watched[tid] = (task, coro)

    def forget(self, tid: int) -> None:
        self.watched.pop(tid, None)

    def close(self) -> None:
        self.stop.set()
        if self.timer is not None:
            self.timer.cancel()
        self.watched.clear()
        self.thread.join(1.0)  # it wakes at once: the event is set

    def _beat(self) -> None:
        self.beat = perf_counter()
        self.timer = self.loop.call_later(self.period, self._beat)

    def _run(self) -> None:
        """The watchdog thread: timed waits on the stop event (the watch the issue asks
        for: no loop beat means a stall, and nothing else can see one)."""
        flagged = -1.0  # the beat before the last stall looked at
        while True:
            beat = self.beat
            late = perf_counter() - beat - self.threshold - self.period
            if late < 0 or beat == flagged:
                if self.stop.wait(-late if late < 0 else self.period):
                    return
                continue
            flagged = beat  # one look per stall
            found = self._holder(sys._current_frames().get(self.loop_thread))
            if found is not None:  # else not a watched coroutine (a plain function...)
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self.loop.call_soon_threadsafe(self._report, *found, beat)

    def _holder(self, frame: FrameType | None) -> tuple[Hashable, Any] | None:
        """The watched coroutine running in ``frame`` or a frame it called, if any.
        (From the watchdog thread, while the loop thread is stuck: the GIL makes
        the copy of ``watched`` atomic.)"""
        frames = set()
        while frame is not None:
            frames.add(frame)
            frame = frame.f_back
        for task, coro in list(self.watched.values()):
            if getattr(coro, "cr_frame", None) in frames:
                return task, coro
        return None

    def _report(self, task: Hashable, coro: Any, beat: float) -> None:
        now = perf_counter()
        self.beat = now  # the loop is free: a stall after this one is a new stall
        self.report(task, now - beat, coro)
