"""The loops that feed the frontier: a sync driver (`run`) and an asyncio driver.

Design note
-----------
A driver owns the clock and the waiting; the frontier owns the decisions.  Both
drivers share one bookkeeping class, `Outcomes`, which writes what happened into
the graph (``results``, ``done``), tells the frontier, and emits events: a task's
success, failure, skipped descendants and ``fail_fast`` stops are recorded in one
place for every runner.

Data flow::

    frontier.pop_ready() ──► call the task (inline, loop task, thread) ──► Outcomes
          ▲                                                                  │
          └──────────── frontier.finish / fail / cancel (newly READY) ◄──────┘

The sync driver calls tasks one after another and runs a coroutine to completion
on one `asyncio.Runner` created at the first coroutine.  The asyncio driver never
polls: it starts every READY task, and the done-callback of each coroutine or
thread future records the outcome and starts what became READY.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from types import CoroutineType
from typing import Any

from .errors import RunStoppedError, UpstreamFailedError
from .events import (
    Observer,
    RunFinished,
    RunStarted,
    TaskFailed,
    TaskFinished,
    TaskQueued,
    TaskSkipped,
    TaskStarted,
)
from .frontier import Frontier
from .graph import Graph

__all__ = ["AsyncDriver", "Outcomes", "drive_sync", "new_event_loop"]

try:  # uvloop is a dependency where the platform has it
    import uvloop

    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - platforms without uvloop
    new_event_loop = asyncio.new_event_loop


class Outcomes:
    """Records task outcomes into the graph and the frontier, and emits events.

    Mutates the graph and the frontier; call from the driver's thread only.
    """

    __slots__ = ("emit", "fail_fast", "first_failed", "first_failure", "frontier", "graph", "names")

    def __init__(
        self, graph: Graph, frontier: Frontier, *, fail_fast: bool, emit: Observer | None
    ) -> None:
        self.graph = graph
        self.frontier = frontier
        self.names = graph.plan.names
        self.fail_fast = fail_fast
        self.emit = emit
        self.first_failure: BaseException | None = None
        self.first_failed: Hashable = None

    def start_run(self) -> None:
        """Emit the run's start, carry over earlier failures, and queue the first tasks."""
        for failed, skipped in self.frontier.skipped_at_start:
            self._skip(skipped, self.names[failed])
        if self.emit is not None:
            self.emit(RunStarted(self.graph.name, self.frontier.unfinished))
            self.queued(self.frontier.ready())

    def end_run(self, interrupted: bool = False) -> None:
        if self.emit is not None:
            self.emit(RunFinished(self.graph.name, interrupted))

    def queued(self, tids: list[int]) -> None:
        if self.emit is not None:
            for tid in tids:
                self.emit(TaskQueued(self.names[tid]))

    def started(self, tid: int, lane: str) -> None:
        if self.emit is not None:
            self.emit(TaskStarted(self.names[tid], lane))

    def succeeded(self, tid: int, value: Any) -> None:
        """Store a RUNNING task's value and queue the tasks it made ready."""
        name = self.names[tid]
        self.graph.results[name] = value
        self.graph.done.append(name)
        newly = self.frontier.finish(tid)
        if self.emit is not None:
            self.emit(TaskFinished(name))
            self.queued(newly)

    def failed(self, tid: int, error: BaseException) -> None:
        """Store a RUNNING task's exception, skip its descendants; with fail_fast, stop."""
        name = self.names[tid]
        self.graph.results[name] = error
        self.graph.done.append(name)
        if self.emit is not None:
            self.emit(TaskFailed(name, error))
        self._skip(self.frontier.fail(tid), name)
        if self.first_failure is None:
            self.first_failure, self.first_failed = error, name
            if self.fail_fast:
                for stopped in self.frontier.stop():
                    self._not_run(stopped, RunStoppedError(self.names[stopped], name))

    def cancelled(self, tid: int) -> None:
        """Record a RUNNING task cancelled because the run stopped (fail_fast)."""
        self.frontier.cancel(tid)
        error = RunStoppedError(self.names[tid], self.first_failed, cancelled=True)
        self._not_run(tid, error)

    def _skip(self, tids: list[int], failed: Hashable) -> None:
        names = self.names
        for tid in tids:
            self._not_run(tid, UpstreamFailedError(names[tid], failed))

    def _not_run(self, tid: int, error: BaseException) -> None:
        name = self.names[tid]
        self.graph.results[name] = error
        self.graph.done.append(name)
        if self.emit is not None:
            self.emit(TaskSkipped(name, error))


def call_note(exc: BaseException, name: Hashable, graph: Graph, nargs: int) -> None:
    """Explain a TypeError raised by the call itself (arguments that do not fit)."""
    if isinstance(exc, TypeError) and exc.__traceback__ and exc.__traceback__.tb_next is None:
        deps = graph.dependencies[name]
        exc.add_note(
            f"task {name!r} was called with {nargs} positional argument(s): the results of "
            f"its dependencies {list(deps)!r} that were not None"
        )


def drive_sync(outcomes: Outcomes) -> None:
    """Run every task in this thread, one at a time, in frontier order."""
    graph, frontier = outcomes.graph, outcomes.frontier
    names, deps, funcs, results = graph.plan.names, graph.dependencies, graph.funcs, graph.results
    pop, succeeded, emit = frontier.pop_ready, outcomes.succeeded, outcomes.emit
    runner: asyncio.Runner | None = None
    outcomes.start_run()
    try:
        while (tid := pop()) >= 0:
            name = names[tid]
            args = [r for d in deps[name] if (r := results.get(d)) is not None]
            if emit is not None:
                outcomes.started(tid, "main")
            try:
                value = funcs[name](*args)
                if type(value) is CoroutineType:
                    if runner is None:
                        runner = asyncio.Runner(loop_factory=new_event_loop)
                    value = runner.run(value)
            except Exception as exc:
                call_note(exc, name, graph, len(args))
                outcomes.failed(tid, exc)
                continue
            succeeded(tid, value)
        _check_drained(frontier)
    except BaseException:
        outcomes.end_run(interrupted=True)
        raise
    finally:
        if runner is not None:
            runner.close()
    outcomes.end_run()


def _check_drained(frontier: Frontier) -> None:
    if frontier.unfinished or frontier.running:  # an internal bug, never a hang
        raise RuntimeError(
            f"taskmap bug: the run ended with {frontier.unfinished} tasks unfinished "
            f"and {frontier.running} running"
        )


class AsyncDriver:
    """Runs a graph on the running event loop.

    Coroutines become loop tasks and run concurrently; an io-bound plain function
    runs in a thread; any other plain function is called inline on the loop.  Each
    completion is recorded from its done-callback, which then starts whatever
    became ready: no polling anywhere.
    """

    def __init__(self, outcomes: Outcomes) -> None:
        self.outcomes = outcomes
        self.graph = outcomes.graph
        self.frontier = outcomes.frontier
        self.inflight: dict[int, asyncio.Future[Any]] = {}
        self.threads: ThreadPoolExecutor | None = None
        self.finished: asyncio.Future[None] | None = None

    async def arun(self) -> None:
        """Run until every task is done; on cancellation cancel in-flight tasks and re-raise."""
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        self.outcomes.start_run()
        try:
            self._pump()
            await self.finished
            _check_drained(self.frontier)
        except BaseException:
            await self._aabort()
            self.outcomes.end_run(interrupted=True)
            raise
        finally:
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)
        self.outcomes.end_run()

    def _pump(self) -> None:
        """Start every READY task; complete inline ones at once. Called from the loop only."""
        frontier, outcomes, graph = self.frontier, self.outcomes, self.graph
        names, deps, funcs, results = (
            graph.plan.names,
            graph.dependencies,
            graph.funcs,
            graph.results,
        )
        while (tid := frontier.pop_ready()) >= 0:
            name = names[tid]
            func = funcs[name]
            args = [r for d in deps[name] if (r := results.get(d)) is not None]
            if frontier.is_io(tid) and not inspect.iscoroutinefunction(func):
                outcomes.started(tid, "thread")
                self._watch(tid, asyncio.wrap_future(self._pool().submit(func, *args)))
                continue
            try:
                value = func(*args)
            except Exception as exc:
                call_note(exc, name, graph, len(args))
                outcomes.failed(tid, exc)
                self._cancel_if_stopping()
                continue
            if type(value) is CoroutineType:
                outcomes.started(tid, "loop")
                self._watch(tid, asyncio.ensure_future(value))
            else:
                outcomes.started(tid, "loop")
                outcomes.succeeded(tid, value)
        if not frontier.unfinished and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def _watch(self, tid: int, future: asyncio.Future[Any]) -> None:
        self.inflight[tid] = future
        future.add_done_callback(lambda f: self._on_done(tid, f))

    def _on_done(self, tid: int, future: asyncio.Future[Any]) -> None:
        del self.inflight[tid]
        outcomes = self.outcomes
        if self.finished is None or self.finished.done():  # aborting: leave it unrecorded
            return
        if future.cancelled():
            outcomes.cancelled(tid)
        elif (exc := future.exception()) is not None:
            outcomes.failed(tid, exc)
            self._cancel_if_stopping()
        else:
            value = future.result()
            if type(value) is CoroutineType:  # a plain io-bound function returned a coroutine
                self.inflight[tid] = task = asyncio.ensure_future(value)
                task.add_done_callback(lambda f: self._on_done(tid, f))
                return
            outcomes.succeeded(tid, value)
        self._pump()

    def _cancel_if_stopping(self) -> None:
        if self.outcomes.fail_fast and self.outcomes.first_failure is not None:
            for future in self.inflight.values():
                future.cancel()

    def _pool(self) -> ThreadPoolExecutor:
        if self.threads is None:
            io = sum(1 for t in self.graph.plan.names if t in self.graph.io_bound)
            self.threads = ThreadPoolExecutor(
                max_workers=max(1, min(64, io)), thread_name_prefix=f"{self.graph.name}-io"
            )
        return self.threads

    async def _aabort(self) -> None:
        """Cancel what runs and wait for the cancellations to land (interrupt or error)."""
        if self.finished is not None and not self.finished.done():
            self.finished.cancel()
        futures = list(self.inflight.values())
        for future in futures:
            future.cancel()
        if futures:
            await asyncio.wait(futures, timeout=5)
