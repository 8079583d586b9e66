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

With a cache (``create_graph(cache=...)``), a popped task is looked up first
(`Outcomes.lookup`, which reads the entries of every ready task in one query): a
hit finishes it with the stored value and nothing runs; worker processes start at
the first miss, so a fully cached rerun starts none.

Expanded tasks (``create_graph(expand=)``): when a task that an expanded task
is expanded over succeeds, `Outcomes` asks the frontier to grow its instances
(frontier Rule 6) and extends every per-id list of the run (names, the
timeline, the cache's, the driver's values) by the same count; an instance is
then a task like any other.  Its task's gather node, once READY, is finished by
`Outcomes.gather` with the list of the instances' results, never called.

Policies (``create_graph(retries=, timeouts=)``) are applied here, the same way
by both drivers: a task that raises and may be retried stays RUNNING in the
frontier (it keeps its channel slots) and is called again after its backoff; a
timeout cancels a coroutine, abandons a thread, and is passed to the CPU backend,
which stops the worker.  `Outcomes` keeps each task's attempts and times in a
`Timeline`, which becomes ``graph.stats``.

The sync driver calls tasks one after another and runs a coroutine to completion
on one `asyncio.Runner` created at the first coroutine.  The asyncio driver never
polls: it starts every READY task, and the done-callback of each coroutine or
thread future records the outcome and starts what became READY.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Hashable,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from types import CoroutineType, FrameType
from typing import Any, TypeVar

from .backends import Backend, Shared, materialise
from .backends.loop import EventLoop, StallWatch, timed
from .backends.threads import call_in_thread, in_thread
from .checkpoint import CacheRun
from .errors import (
    RunStoppedError,
    SerializationError,
    StallWarning,
    TaskError,
    UpstreamFailedError,
    WorkerCrashedError,
)
from .events import (
    Observer,
    RunFinished,
    RunStarted,
    TaskExpanded,
    TaskFailed,
    TaskFinished,
    TaskQueued,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
    fan_out,
)
from .frontier import Frontier, TaskState
from .graph import Graph
from .policies import Retry
from .record import (
    CACHED,
    DONE,
    FAILED,
    LOOP,
    MAIN,
    SKIPPED,
    STOPPED,
    THREAD,
    RunStats,
    Timeline,
)

__all__ = ["AsyncDriver", "Outcomes", "drive_sync"]

T = TypeVar("T")


class Outcomes:
    """Records task outcomes into the graph and the frontier, and emits events.

    Mutates the graph and the frontier; call from the driver's thread only.
    """

    __slots__ = (
        "cache",
        "ended",
        "expand_errors",
        "fail_fast",
        "first_failed",
        "first_failure",
        "frontier",
        "gathers",
        "graph",
        "history",
        "home",
        "items",
        "names",
        "on_expanded",
        "on_failed",
        "on_finished",
        "on_grow",
        "on_queued",
        "on_retrying",
        "on_run",
        "on_run_end",
        "on_skipped",
        "on_started",
        "prior",
        "random",
        "retries",
        "sources",
        "special",
        "tasks",
        "timeline",
        "timeouts",
        "workers",
    )

    def __init__(
        self,
        graph: Graph,
        frontier: Frontier,
        *,
        fail_fast: bool,
        observers: Sequence[Observer] = (),
        cache: CacheRun | None = None,
        prior: dict[int, dict[int, bool]] | None = None,
    ) -> None:
        self.graph = graph
        self.frontier = frontier
        self.cache = cache
        #: per task id, its name, and the task whose function it calls (they differ
        #: for an instance: ``(task, i)`` calls ``task``); lists that grow when expanding
        self.names: Sequence[Hashable] = graph.plan.names
        self.tasks: Sequence[Hashable] = self.names
        #: gather nodes (expanded tasks); the roots their instances grow from
        self.gathers: set[int] = set(graph.plan.expand)
        self.sources: set[int] = {s for s in range(frontier.nstatic) if frontier.expanded_over(s)}
        #: root instance id -> (the dependency it is expanded over, its item)
        self.items: dict[int, tuple[int, Any]] = {}
        #: gather node -> why it could not expand (a result that is not iterable)
        self.expand_errors: dict[int, BaseException] = {}
        #: per expanded task id, the instances done before this run: item -> failed
        self.prior = prior or {}
        #: what else grows with the run's ids (the drivers' own lists): called with the
        #: count, and whether the listing ran (False: it came from the cache)
        self.on_grow: list[Callable[[int, bool], None]] = []
        if self.gathers:
            self.names, self.tasks = list(self.names), list(self.tasks)
            if cache is not None:
                cache.names, cache.parents, cache.tasks = self.names, frontier.parents, self.tasks
                cache.items = self.items
                for tid in self.gathers:
                    cache.keys[tid] = ""  # a gather node is never looked up nor stored
        self.fail_fast = fail_fast
        # one emitter per event class, None when no observer wants it
        self.on_run = fan_out(observers, RunStarted)
        self.on_run_end = fan_out(observers, RunFinished)
        self.on_expanded = fan_out(observers, TaskExpanded)
        self.on_queued = fan_out(observers, TaskQueued)
        self.on_started = fan_out(observers, TaskStarted)
        self.on_finished = fan_out(observers, TaskFinished)
        self.on_failed = fan_out(observers, TaskFailed)
        self.on_skipped = fan_out(observers, TaskSkipped)
        self.on_retrying = fan_out(observers, TaskRetrying)
        self.first_failure: BaseException | None = None
        self.first_failed: Hashable = None
        index, policies = graph.plan.index, graph.policies
        #: policies by task id
        self.retries: dict[int, Retry] = {index[t]: r for t, r in policies.retries.items()}
        self.timeouts: dict[int, float] = {index[t]: s for t, s in policies.timeouts.items()}
        #: the failed attempts of tasks being retried: (error, seconds waited after it)
        self.history: dict[int, list[tuple[BaseException, float]]] = {}
        #: the tasks with a retry or a timeout: they take the slower paths
        self.special: set[int] = self.retries.keys() | self.timeouts.keys()
        self.random = random.Random()
        self.timeline = Timeline(len(self.names))
        self.home = MAIN  # the lane of tasks run (or loaded) by the driver itself
        self.ended = False  # end_run has recorded the run in graph.stats
        #: CPU tasks that can run at once (0: count the executor's lanes at the end)
        self.workers = 1

    def start_run(self) -> None:
        """Emit the run's start, carry over earlier failures, grow the instances of
        roots done before, and queue the first tasks."""
        results = self.graph.results
        for failed, skipped in self.frontier.skipped_at_start:
            self._skip_carried(failed, skipped)
        for source in self.frontier.pending:
            self.grow(source, results.get(self.names[source]))
        if self.on_run is not None:
            self.on_run(RunStarted(self.graph.name, self.frontier.unfinished))
        self.queued(self.frontier.ready())

    def end_run(self, interrupted: bool = False) -> None:
        """Write what the cache holds (also when interrupted: finished work is kept)."""
        timeline = self.timeline
        timeline.t_end = time.perf_counter()
        workers = self.workers
        if workers == 0:  # a foreign executor: the lanes its tasks ran on
            workers = max(
                1, len(set(timeline.lane)) - len({0, MAIN, LOOP, THREAD} & set(timeline.lane))
            )
        stats = RunStats(
            started=timeline.wall,
            makespan=timeline.t_end - timeline.t0,
            workers=workers,
            _names=self.names,
            _timeline=timeline,
        )
        cache = self.cache
        if cache is not None:
            cache.close()
            stats.cache, stats.why = cache.stats, cache.why
        self.graph.stats = stats
        self.ended = True
        if self.on_run_end is not None:
            self.on_run_end(RunFinished(self.graph.name, interrupted))

    def _skip_carried(self, failed: int, skipped: list[int]) -> None:
        error = self.graph.results.get(self.names[failed])
        if isinstance(error, UpstreamFailedError):  # a carried-over skip names its root cause
            self._skip(skipped, error.failed, error)
        else:
            self._skip(skipped, self.names[failed])

    def grow(self, source: int, value: Any, *, ran: bool = False) -> list[int]:
        """Grow the instances of the tasks expanded over ``source`` (its result is
        ``value``; ``ran``: it ran in this run), and every per-id list with them;
        return the ids made READY.

        A result that is not iterable grows none: the tasks expanded over it fail
        when their gather node is READY.  Mutates the frontier; driver only.
        """
        frontier, names, tasks = self.frontier, self.names, self.tasks
        assert isinstance(names, list)
        assert isinstance(tasks, list)
        if type(value) is Shared:  # a worker's value: the driver needs its items
            value = value.load()
        members = frontier.expanded_over(source)
        try:
            items = list(value)
        except TypeError:
            for task in members:
                if self.graph.plan.expand[task] == source:
                    self.expand_errors[task] = TypeError(
                        f"task {names[task]!r} is expanded over {names[source]!r}, whose "
                        f"result is not iterable (got {type(value).__name__}: {value!r:.60})"
                    )
            items = []
        before = len(names)
        newly = frontier.grow(source, len(items), self.prior)
        count = len(frontier.state) - before
        if not count:
            return newly
        for task in members:
            ids = frontier.instances[task]
            name = names[task]
            names.extend([(name, i) for i in range(len(ids))])
            tasks.extend([name] * len(ids))
            if self.graph.plan.expand[task] == source:
                self.items.update(zip(ids, ((source, item) for item in items), strict=True))
            if task in self.retries:
                self.retries.update(dict.fromkeys(ids, self.retries[task]))
            if task in self.timeouts:
                self.timeouts.update(dict.fromkeys(ids, self.timeouts[task]))
            if task in self.special:
                self.special.update(ids)  # in place: the drivers hold it
        self.timeline.grow(count)
        if self.cache is not None:
            self.cache.grow(count)
        for extend in self.on_grow:
            extend(count, ran)
        if self.on_expanded is not None:
            for task in members:
                self.on_expanded(TaskExpanded(names[task], len(frontier.instances[task])))
        carried, frontier.carried = frontier.carried, []
        for failed, skipped in carried:
            self._skip_carried(failed, skipped)
        return newly

    def gather(self, tid: int) -> Any:
        """Finish a READY (popped) gather node: its task's results, in item order.

        With failed instances, fails it with an `UpstreamFailedError` naming them,
        unless the graph gathers with ``gather_failures='skip'``.  Returns its value
        (an exception when it failed).
        """
        error = self.expand_errors.pop(tid, None)
        if error is not None:
            self.failed(tid, error)
            return error
        names, results = self.names, self.graph.results
        values = []
        failures: dict[Hashable, None] = {}
        instances = self.frontier.instances.get(tid, range(0))
        for t in instances:
            name = names[t]
            value = results.get(name)
            if type(value) is Shared:  # mapped, not copied; the handle stays for the
                value = value.load()  # instances still to take it (and `materialise`)
            if isinstance(value, BaseException):
                failures[value.failed if isinstance(value, UpstreamFailedError) else name] = None
            else:
                values.append(value)
        if failures and self.graph.gather_failures == "raise":
            error = UpstreamFailedError(names[tid], next(iter(failures)), list(failures))
            self.failed(tid, error)
            return error
        # every instance loaded from the cache (or done before): so is the list
        outcome = self.timeline.outcome
        cached = bool(instances) and all(outcome[t] in (CACHED, 0) for t in instances)
        self.succeeded(tid, values, cached=cached)
        return values

    def instance_args(self, tid: int, value: Callable[[int], Any]) -> list[Any]:
        """A root instance's arguments: its item in its dependency's place (even None),
        the other dependencies' values (``value(id)``) that are not None."""
        source, item = self.items[tid]
        args = []
        for p in self.frontier.parents[tid]:
            if p == source:
                args.append(item)
            elif (v := value(p)) is not None:
                args.append(v)
        return args

    def queued(self, tids: list[int]) -> None:
        if self.on_queued is not None:
            for tid in tids:
                self.on_queued(TaskQueued(self.names[tid]))

    def started(self, tid: int, lane: int) -> None:
        """Record that an attempt of the task starts on ``lane`` (a `Timeline` lane id)."""
        timeline = self.timeline
        if not self.history or tid not in self.history:  # a retry keeps its first start
            timeline.start[tid] = perf_counter()
        timeline.lane[tid] = lane
        if self.on_started is not None:
            self.on_started(TaskStarted(self.names[tid], timeline.lanes[lane]))

    def span(self, tid: int, lane: str, start: float, end: float, *, first: bool) -> None:
        """Record where and when an attempt really ran, as its backend saw it (call
        after recording its outcome); ``first``: it was the task's first attempt."""
        timeline = self.timeline
        timeline.lane[tid] = timeline.lane_id(lane)
        if first:
            timeline.start[tid] = start
        timeline.end[tid] = end

    def retry_delay(self, tid: int, error: BaseException) -> float | None:
        """Seconds to wait before calling a failed task again, or None: it failed.

        Records the attempt and emits `TaskRetrying` (logged as a warning).
        """
        policy = self.retries.get(tid)
        if policy is None or not policy.retries(error) or isinstance(error, SerializationError):
            return None  # what cannot be pickled will not pickle next time either
        history = self.history.setdefault(tid, [])
        if len(history) >= policy.times:
            return None
        delay = policy.wait(len(history) + 1, self.random.random())
        history.append((error, delay))
        self.timeline.attempts[tid] = len(history) + 1
        if self.on_retrying is not None:
            attempt = len(history)
            self.on_retrying(TaskRetrying(self.names[tid], attempt, policy.times + 1, error, delay))
        return delay

    def lookup(self, tid: int) -> tuple[bool, Any]:
        """Look a popped task up in the cache: ``(True, value)`` when it is stored."""
        cache = self.cache
        if cache is None:
            return False, None
        if cache.batching and tid not in cache.asked:  # read every ready task's entry at once
            cache.prefetch([tid, *self.frontier.ready()])
        return cache.lookup(tid)

    def succeeded(self, tid: int, value: Any, *, cached: bool = False, encoded: Any = None) -> None:
        """Store a RUNNING task's value and queue the tasks it made ready.

        ``cached``: the value came from the cache instead (the task was popped, not run).
        ``encoded``: its cache digest and entry, made by its worker (or None).
        """
        name = self.names[tid]
        self.graph.results[name] = value
        self.graph.done.append(name)
        timeline = self.timeline
        timeline.end[tid] = now = perf_counter()
        if cached:
            timeline.start[tid], timeline.lane[tid], timeline.outcome[tid] = now, self.home, CACHED
        else:
            timeline.outcome[tid] = DONE
            if self.cache is not None:
                if encoded is None and type(value) is Shared:
                    value = value.load()  # to encode it here: a mapping, no copy
                self.cache.stored(tid, value, encoded)
        if self.sources and tid in self.sources:  # instances grow before it finishes
            grown = self.grow(tid, value, ran=not cached)
            newly = self.frontier.finish(tid)
            newly.extend(grown)
        else:
            newly = self.frontier.finish(tid)
        if self.on_finished is not None:
            self.on_finished(TaskFinished(name, cached))
        if newly and self.on_queued is not None:
            self.queued(newly)

    def failed(self, tid: int, error: BaseException) -> None:
        """Store a RUNNING task's exception, skip its descendants; with fail_fast, stop.

        Call once the task will not be retried (`retry_delay` returned None).
        """
        name = self.names[tid]
        self.graph.results[name] = error
        self.graph.done.append(name)
        self.timeline.end[tid] = time.perf_counter()
        self.timeline.outcome[tid] = FAILED
        if tid in self.history:
            self._add_history(tid, error)
        if self.on_failed is not None:
            self.on_failed(TaskFailed(name, error))
        if self.cache is not None:
            self.cache.failed(tid, error)
        skipped = self.frontier.fail(tid)
        if skipped:
            count = len(skipped)
            error.add_note(f"{count} descendant{'s' if count > 1 else ''} not run")
            if isinstance(error, UpstreamFailedError):  # a gather: its instances failed
                self._skip(skipped, error.failed, error)
            else:
                self._skip(skipped, name)
        if self.frontier.woken:  # gather nodes the failure completed
            woken, self.frontier.woken = self.frontier.woken, []
            self.queued(woken)
        if self.first_failure is None:
            self.first_failure, self.first_failed = error, name
            if self.fail_fast:
                for stopped in self.frontier.stop():
                    self._not_run(stopped, RunStoppedError(self.names[stopped], name))

    def cancelled(self, tid: int) -> None:
        """Record a RUNNING task cancelled because the run stopped (fail_fast)."""
        self.frontier.cancel(tid)
        self.timeline.end[tid] = time.perf_counter()
        error = RunStoppedError(self.names[tid], self.first_failed, cancelled=True)
        self._not_run(tid, error)

    def _add_history(self, tid: int, error: BaseException) -> None:
        history = self.history[tid]
        attempts = len(history) + 1
        lines = [f"task {self.names[tid]!r} failed {attempts} attempts; the earlier ones:"]
        for attempt, (earlier, delay) in enumerate(history, 1):
            what = f"{type(earlier).__qualname__}: {earlier}".rstrip(": ")
            lines.append(f"  attempt {attempt}: {what} (retried after {delay:.3g} s)")
        error.add_note("\n".join(lines))

    def _skip(
        self, tids: list[int], failed: Hashable, cause: UpstreamFailedError | None = None
    ) -> None:
        names = self.names
        failures = None if cause is None else cause.failures
        for tid in tids:
            self._not_run(tid, UpstreamFailedError(names[tid], failed, failures))
        if self.frontier.woken:  # gather nodes the skips completed
            woken, self.frontier.woken = self.frontier.woken, []
            self.queued(woken)

    def _not_run(self, tid: int, error: BaseException) -> None:
        name = self.names[tid]
        self.graph.results[name] = error
        self.graph.done.append(name)
        self.timeline.outcome[tid] = STOPPED if isinstance(error, RunStoppedError) else SKIPPED
        if self.on_skipped is not None:
            self.on_skipped(TaskSkipped(name, error))


if sys.version_info >= (3, 12):

    def _start_task(coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """A Task that runs the coroutine's first step now (`eager_start`): one that
        returns before its first real wait never waits for a loop turn.  (A `timed`
        wrapper is a coroutine too: it starts eagerly as well.)"""
        if type(coro) is not CoroutineType:
            return asyncio.ensure_future(coro)
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)

else:  # 3.11 has no eager start; stepping the coroutine by hand would run it outside
    # its task (asyncio.timeout() inside it would find the driver's task instead)

    def _start_task(coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """A Task for the coroutine (straight from the loop: `ensure_future`'s checks
        cost as much as the driver's own work for a no-op task)."""
        if type(coro) is not CoroutineType:
            return asyncio.ensure_future(coro)
        return asyncio.get_running_loop().create_task(coro)


_COROUTINE_FUNCTIONS: dict[int, tuple[object, bool]] = {}


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    """`inspect.iscoroutinefunction`, remembered per function (a partial's function:
    10,000 partials of one coroutine function ask once)."""
    inner = func  # inspect unwraps partials too, and reads a marker on what it finds
    while type(inner) is functools.partial:
        inner = inner.func
    known = _COROUTINE_FUNCTIONS.get(id(inner))
    if known is not None and known[0] is inner:
        return known[1]
    answer = inspect.iscoroutinefunction(inner)
    if len(_COROUTINE_FUNCTIONS) >= 10_000:
        _COROUTINE_FUNCTIONS.clear()
    _COROUTINE_FUNCTIONS[id(inner)] = (inner, answer)
    return answer


def call_note(exc: BaseException, name: Hashable, graph: Graph, nargs: int) -> None:
    """Explain a TypeError raised by the call itself (arguments that do not fit);
    ``name`` is the task's (an instance's task)."""
    if isinstance(exc, TypeError) and exc.__traceback__ and exc.__traceback__.tb_next is None:
        deps = list(graph.dependencies[name])
        count = f"{nargs} positional argument(s)" if nargs >= 0 else "the positional arguments"
        exc.add_note(
            f"task {name!r} was called with {count}: the results of its dependencies "
            f"{deps!r} that were not None"
        )


def drive_sync(outcomes: Outcomes) -> None:
    """Run every task in this thread, one at a time, in frontier order."""
    graph, frontier = outcomes.graph, outcomes.frontier
    # the run's lists (they grow when expanding): an instance calls its task's function
    names, tasks, parents, funcs = outcomes.names, outcomes.tasks, frontier.parents, graph.funcs
    gathers, items = outcomes.gathers, outcomes.items
    pop, succeeded, on_started = frontier.pop_ready, outcomes.succeeded, outcomes.on_started
    cache = outcomes.cache
    timeline = outcomes.timeline
    start, lane = timeline.start, timeline.lane
    clock = time.perf_counter
    special = outcomes.special
    # values by id: cheaper to reach than graph.results by name on large graphs
    get = graph.results.get
    values = [get(name) for name in names] if graph.done else [None] * len(names)
    outcomes.on_grow.append(lambda *_: values.extend([get(n) for n in names[len(values) :]]))
    loop = _LazyLoop()
    outcomes.start_run()
    try:
        while (tid := pop()) >= 0:
            name = tasks[tid]
            if gathers and tid in gathers:
                values[tid] = outcomes.gather(tid)
                continue
            if cache is not None:
                hit, value = outcomes.lookup(tid)
                if hit:
                    values[tid] = value
                    succeeded(tid, value, cached=True)
                    continue
            if items and tid in items:
                args = outcomes.instance_args(tid, values.__getitem__)
            else:
                args = [v for p in parents[tid] if (v := values[p]) is not None]
            if tid in special:
                ok, value = _call_with_policies(outcomes, loop, tid, funcs[name], args)
                if ok:
                    values[tid] = value
                    succeeded(tid, value)
                continue
            if on_started is not None:
                outcomes.started(tid, MAIN)
            else:
                start[tid] = clock()
                lane[tid] = MAIN
            try:
                if cache is None:
                    value = funcs[name](*args)
                    if type(value) is CoroutineType:
                        value = loop.get().run(value)
                else:  # in the context task_directory() answers from
                    ctx = cache.context(tid)
                    value = ctx.run(funcs[name], *args)
                    if type(value) is CoroutineType:
                        value = loop.get().run(value, ctx)
            except Exception as exc:
                call_note(exc, name, graph, len(args))
                outcomes.failed(tid, exc)
                continue
            values[tid] = value
            succeeded(tid, value)
        _check_drained(frontier)
    except BaseException:
        outcomes.end_run(interrupted=True)
        raise
    finally:
        loop.close()
    outcomes.end_run()


class _LazyLoop:
    """The sync driver's `EventLoop`, created at the first coroutine."""

    def __init__(self) -> None:
        self.loop: EventLoop | None = None

    def get(self) -> EventLoop:
        if self.loop is None:
            self.loop = EventLoop()
        return self.loop

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


def _call_with_policies(
    outcomes: Outcomes, loop: _LazyLoop, tid: int, func: Callable[..., Any], args: list[Any]
) -> tuple[bool, Any]:
    """Call a task of the sync driver under its retry and timeout policies.

    Returns ``(True, value)``, or ``(False, None)`` once its failure is recorded.
    """
    name, graph = outcomes.names[tid], outcomes.graph
    seconds = outcomes.timeouts.get(tid)
    while True:
        outcomes.started(tid, MAIN)
        ctx = contextvars.copy_context() if outcomes.cache is None else outcomes.cache.context(tid)
        try:
            if seconds is None:
                value = ctx.run(func, *args)
            elif inspect.iscoroutinefunction(func):
                value = timed(ctx.run(func, *args), seconds, name, "cancelled")
            else:  # a plain function cannot be stopped: wait for it in a thread
                value = ctx.run(call_in_thread, func, args, seconds, name)
            if type(value) is CoroutineType:
                value = loop.get().run(value, ctx)
            return True, value
        except Exception as exc:
            call_note(exc, outcomes.tasks[tid], graph, len(args))
            delay = outcomes.retry_delay(tid, exc)
            if delay is None:
                outcomes.failed(tid, exc)
                return False, None
            if delay > 0:
                time.sleep(delay)  # not a poll: run's retry backoff; one task at a time


def _check_drained(frontier: Frontier) -> None:
    if frontier.unfinished or frontier.running:  # an internal bug, never a hang
        raise RuntimeError(
            f"taskmap bug: the run ended with {frontier.unfinished} tasks unfinished "
            f"and {frontier.running} running"
        )


class AsyncDriver:
    """Runs a graph on the running event loop.

    Placement: an io-bound coroutine runs on the loop and an io-bound plain function
    in a thread.  Other tasks go to the CPU backend when there is one (worker
    processes, a foreign executor), at most ``backend.capacity()`` at a time; without
    one, a plain function is called inline on the loop and a coroutine runs on the
    loop.  With ``all_on_backend`` every task goes to the backend (`run_parallel`).

    Each completion is recorded from its done-callback, which then starts whatever
    became ready: no polling anywhere.
    """

    def __init__(
        self,
        outcomes: Outcomes,
        backend: Backend | None = None,
        *,
        all_on_backend: bool = False,
        drop_results: bool = False,
        targets: Collection[int] = (),
        stall_warning: float | None = None,
        own_signals: bool = True,
    ) -> None:
        self.outcomes = outcomes
        #: the loop is ours (a blocking runner): Ctrl-C may interrupt an inline call;
        #: on the caller's loop (``arun_*``) its signals are left to it
        self.own_signals = own_signals
        self.stall_warning = stall_warning  # seconds; None: io coroutines are not watched
        self.stalled: set[Hashable] = set()  # tasks warned about
        self.stall_watch: StallWatch | None = None  # started at the first io coroutine
        self.graph = outcomes.graph
        self.frontier = outcomes.frontier
        self.backend = backend
        self.all_on_backend = all_on_backend and backend is not None
        self.inflight: dict[int, asyncio.Future[Any]] = {}
        self.threads: ThreadPoolExecutor | None = None
        self.finished: asyncio.Future[None] | None = None
        self.inline_call = False  # a plain function is running on the loop right now
        self.interrupted = False  # Ctrl-C was pressed (blocking runners only)
        self.backend_started = False
        # tasks waiting to be retried: their timer, and their arguments meanwhile
        self.retrying: dict[int, asyncio.TimerHandle] = {}
        self.retry_args: dict[int, list[Any]] = {}
        # drop_results: how many children of each task have yet to take its result
        self.consumers: list[int] | None = None
        if drop_results:
            consumers = self.consumers = [len(c) for c in self.graph.plan.children]
            for tid in targets:
                consumers[tid] = -1  # a target's result is always kept
            plan = self.graph.plan
            for tid in plan.expand:  # each instance takes these: keep them, and instances'
                for p in plan.parents[tid]:
                    consumers[p] = -1
            if plan.expand:
                outcomes.on_grow.append(lambda count, _: consumers.extend([-1] * count))
        #: per task: its value may stay in the worker that makes it (`_holdable`)
        self.hold = self._holdable() if drop_results and backend is not None else None
        #: the lane of a task sent to the backend, until the backend says which worker
        self.worker_lane = outcomes.timeline.lane_id("worker")
        if backend is not None and self.graph.expand:
            outcomes.on_grow.append(self._grown)

    def _holdable(self) -> list[bool] | None:
        """Zero-copy chains: which values may stay in the worker that makes them, for
        their consumer to run there.  Under ``drop_results``, a value that only one
        task takes, on the backend too, never comes to the driver; that task gets no
        retries (its input is handed over, not copied), and no task of the graph has
        a timeout (a timeout kills its worker, and the values it holds).  Without a
        cache: a stored value is one the driver writes."""
        outcomes, frontier, consumers = self.outcomes, self.frontier, self.consumers
        if outcomes.cache is not None or outcomes.timeouts or consumers is None:
            return None
        if self.graph.expand:  # instances are gathered by the driver: values come to it
            return None
        anywhere = self.all_on_backend
        hold = [False] * len(consumers)
        for tid, children in enumerate(self.graph.plan.children):
            if consumers[tid] == 1 and (anywhere or not frontier.is_io(tid)):
                child = children[0]
                hold[tid] = (anywhere or not frontier.is_io(child)) and (
                    child not in outcomes.retries
                )
        return hold

    def _forget(self, lost: list[Hashable]) -> None:
        """Values lost with a worker that held them: their tasks count as not run."""
        if lost:
            gone = set(lost)
            self.graph.done[:] = [t for t in self.graph.done if t not in gone]
            for name in lost:
                self.graph.results.pop(name, None)

    async def arun(self) -> None:
        """Run until every task is done; on cancellation cancel in-flight tasks and re-raise."""
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        self.outcomes.home = LOOP
        restore_sigint = self._interrupt_inline_calls()
        self.outcomes.start_run()
        try:
            # With a cache, workers start at the first miss: a cached rerun starts none.
            if self.backend is not None and self.outcomes.cache is None:
                self._start_backend(self.backend, 0)
            self._pump()
            await self.finished
            _check_drained(self.frontier)
        except BaseException:
            await self._aabort()
            # what finished is kept, however the run ends (but what workers held)
            self._forget(materialise(self.graph.results))
            self.outcomes.end_run(interrupted=True)
            raise
        finally:
            restore_sigint()
            if self.stall_watch is not None:
                self.stall_watch.close()
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)
        if self.backend is not None:
            if self.hold is not None:
                self._forget(await self.backend.collect(self.graph.results))
            await self.backend.aclose(cancel=False)
        materialise(self.graph.results)
        self.outcomes.end_run()

    def _interrupt_inline_calls(self) -> Callable[[], None]:
        """Make Ctrl-C interrupt a plain function running inline on the loop.

        asyncio.Runner's SIGINT handler only cancels the main task, which cannot
        happen while a plain function blocks the loop: the first Ctrl-C would wait
        for the function to return.  While one runs, raise KeyboardInterrupt in it
        at once, as `run` does; otherwise defer to the Runner.  Returns the undo.
        """
        previous = signal.getsignal(signal.SIGINT)
        if (
            not self.own_signals
            or threading.current_thread() is not threading.main_thread()
            or not callable(previous)
        ):
            return lambda: None

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self.inline_call:
                raise KeyboardInterrupt
            self.interrupted = True  # no inline call starts after this (see _run_here)
            previous(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)

        def restore() -> None:
            if signal.getsignal(signal.SIGINT) is on_sigint:
                signal.signal(signal.SIGINT, previous)

        return restore

    def _start_backend(self, backend: Backend, running: int) -> None:
        backend.start(self._backend_tasks() + running)
        self.backend_started = True

    def _grown(self, count: int, ran: bool) -> None:
        """A listing that ran (it was not cached) likely brings new items: with a
        cache, start the workers now, while its instances are looked up, rather than
        at their first miss (a fully cached rerun, whose listing is cached too,
        still starts none)."""
        backend = self.backend
        started = self.backend_started
        if ran and count and backend is not None and not started and self._backend_tasks():
            self._start_backend(backend, 0)

    def _capacity(self, backend: Backend) -> int:
        # before the backend starts (a cache lookup comes first), take one task
        return backend.capacity() if self.backend_started else 1

    def _backend_tasks(self) -> int:
        """How many tasks of this run go to the backend (they are all in the frontier,
        but for the instances of expanded tasks: then as many as may come)."""
        state, frontier, graph = self.frontier.state, self.frontier, self.graph
        if any(self.all_on_backend or t not in graph.io_bound for t in graph.expand):
            return sys.maxsize
        waiting = (TaskState.WAITING, TaskState.READY)
        return sum(
            1
            for tid, s in enumerate(state)
            if s in waiting and (self.all_on_backend or not frontier.is_io(tid))
        )

    def _guarded_pump(self) -> None:
        try:
            self._pump()
        except Exception as exc:  # as in _on_done: never a hang
            if self.finished is not None and not self.finished.done():
                self.finished.set_exception(exc)

    def _pump(self) -> None:
        """Start what may start now.  Called from the loop only."""
        frontier, backend = self.frontier, self.backend
        if backend is None:
            # io first: start every ready io task; before calling a plain function
            # inline (which blocks the loop), let new coroutines reach their first await.
            yielded = False
            while True:
                inflight = len(self.inflight)
                while (tid := frontier.pop_ready_io()) >= 0:
                    self._start_here(tid)
                if len(self.inflight) > inflight and frontier.has_ready():
                    asyncio.get_running_loop().call_soon(self._guarded_pump)
                    yielded = True
                    break
                if (tid := frontier.pop_ready_cpu()) < 0:
                    break
                self._start_here(tid)
            if yielded:
                return
        elif self.all_on_backend:
            while self._capacity(backend) > 0 and (tid := frontier.pop_ready()) >= 0:
                self._start_on_backend(tid, backend)
        else:
            while True:
                while (tid := frontier.pop_ready_io()) >= 0:
                    self._start_here(tid)
                while self._capacity(backend) > 0 and (tid := frontier.pop_ready_cpu()) >= 0:
                    self._start_on_backend(tid, backend)
                if not frontier.has_ready_io():  # a cache hit among the CPU tasks can ready io
                    break
        if not frontier.unfinished and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def _args(self, tid: int) -> list[Any]:
        """The task's arguments: its dependencies' results that are not None (a root
        instance: its item in its dependency's place)."""
        graph = self.graph
        results = graph.results
        names = self.outcomes.names
        if tid >= self.frontier.nstatic:  # an instance: its item, or its paired inputs
            if tid in self.outcomes.items:
                args = self.outcomes.instance_args(tid, lambda p: results.get(names[p]))
            else:
                parents = self.frontier.parents[tid]
                args = [r for p in parents if (r := results.get(names[p])) is not None]
        else:
            args = [r for d in graph.dependencies[names[tid]] if (r := results.get(d)) is not None]
        consumers = self.consumers
        if consumers is not None:
            for p in self.frontier.parents[tid]:
                consumers[p] -= 1
                if consumers[p] == 0:
                    results.pop(names[p], None)
        return args

    def _cached(self, tid: int) -> bool:
        """Finish a READY task from the cache when it is stored there."""
        hit, value = self.outcomes.lookup(tid)
        if hit:
            if self.consumers is not None:
                self._args(tid)  # it took its inputs: drop_results may release them
            self.outcomes.succeeded(tid, value, cached=True)
        return hit

    def _start_here(self, tid: int) -> None:
        """Run a task in this process: on the loop, inline, or in a thread."""
        if self.outcomes.gathers and tid in self.outcomes.gathers:
            self.outcomes.gather(tid)
            return
        if self.outcomes.cache is not None and self._cached(tid):
            return
        args = self._args(tid)
        for i, arg in enumerate(args):
            if type(arg) is Shared:  # a worker's value, for the driver's own use
                args[i] = arg.load()
        self._run_here(tid, args)

    def _run_here(self, tid: int, args: list[Any]) -> None:
        outcomes, graph = self.outcomes, self.graph
        name, task = outcomes.names[tid], outcomes.tasks[tid]
        func = graph.funcs[task]
        seconds = None
        if outcomes.special and tid in outcomes.special:
            seconds = outcomes.timeouts.get(tid)
            if tid in outcomes.retries:
                self.retry_args[tid] = args
        # with a cache, the task runs in the context task_directory() answers from
        ctx = None if outcomes.cache is None else outcomes.cache.context(tid)
        # (inspect.iscoroutinefunction costs more than a no-op task: asked only here)
        if (seconds is not None or self.frontier.is_io(tid)) and not _is_coroutine_function(func):
            outcomes.started(tid, THREAD)
            if seconds is not None:  # the loop can only time what does not block it
                if ctx is None:
                    self._watch(tid, in_thread(func, args, seconds, name))
                else:
                    self._watch(tid, ctx.run(in_thread, func, args, seconds, name))
            elif ctx is None:
                self._watch(tid, asyncio.wrap_future(self._pool().submit(func, *args)))
            else:
                self._watch(tid, asyncio.wrap_future(self._pool().submit(ctx.run, func, *args)))
            return
        if self.interrupted:
            # Ctrl-C came while the loop was between two calls: the run is being
            # cancelled, and a plain function started now would block that until
            # it returns (seen: a 60 s sleep started just after the signal)
            raise KeyboardInterrupt
        outcomes.started(tid, LOOP)
        self.inline_call = True
        try:
            value = func(*args) if ctx is None else ctx.run(func, *args)
        except Exception as exc:
            call_note(exc, task, graph, len(args))
            self._failed(tid, exc)
            return
        finally:
            self.inline_call = False
        if type(value) is CoroutineType:
            if self.stall_warning is not None and self.frontier.is_io(tid):
                watch = self.stall_watch
                if watch is None:
                    watch = self.stall_watch = StallWatch(self.stall_warning, self._stalled)
                watch.watch(tid, name, value)  # before an eager start runs its first step
            if seconds is not None:
                value = timed(value, seconds, name, "cancelled")
            self._watch(tid, _start_task(value) if ctx is None else ctx.run(_start_task, value))
        else:
            if self.retry_args:
                self.retry_args.pop(tid, None)
            outcomes.succeeded(tid, value)

    def _stalled(self, task: Hashable, seconds: float, coro: Coroutine[Any, Any, Any]) -> None:
        if task in self.stalled:  # once per task and run (a retry is a new coroutine)
            return
        self.stalled.add(task)
        code = getattr(coro, "cr_code", None)
        try:
            warnings.warn_explicit(
                StallWarning(
                    f"io-bound task {task!r} blocked the event loop for {seconds:.2f} s "
                    f"(more than {self.stall_warning:g} s): no other io-bound task could "
                    "run meanwhile.  If it computes, leave it out of io_bound (it then runs "
                    "in a worker process); if it calls something blocking, await it in a "
                    "thread: await asyncio.to_thread(func, ...)"
                ),
                StallWarning,
                code.co_filename if code is not None else "<taskmap>",
                code.co_firstlineno if code is not None else 0,
            )
        except Exception as exc:  # warnings made errors: this is a loop callback, whose
            # exception the loop would only log; the run ends with it instead
            if self.finished is not None and not self.finished.done():
                self.finished.set_exception(exc)

    def _start_on_backend(self, tid: int, backend: Backend) -> None:
        if self.outcomes.gathers and tid in self.outcomes.gathers:
            self.outcomes.gather(tid)
            return
        if self.outcomes.cache is not None and self._cached(tid):
            return
        if not self.backend_started:
            self._start_backend(backend, 1)
        self._submit(tid, self._args(tid), backend)

    def _submit(self, tid: int, args: list[Any], backend: Backend) -> None:
        outcomes = self.outcomes
        name = outcomes.names[tid]
        if tid in outcomes.retries:
            self.retry_args[tid] = args
        try:
            cache = outcomes.cache
            future = backend.submit(
                tid,
                name,
                self.graph.funcs[outcomes.tasks[tid]],
                args,
                timeout=outcomes.timeouts.get(tid),
                post=None if cache is None else cache.encoder_for(tid),
                hold=self.hold is not None and self.hold[tid],
                directory=None if cache is None else cache.wire(tid),
            )
        except TaskError as exc:  # the function or arguments cannot be sent
            outcomes.started(tid, LOOP)
            self._failed(tid, exc)
            return
        outcomes.started(tid, self.worker_lane)
        self._watch(tid, future)

    def _watch(self, tid: int, future: asyncio.Future[Any]) -> None:
        self.inflight[tid] = future
        future.add_done_callback(functools.partial(self._on_done, tid))

    def _on_done(self, tid: int, future: asyncio.Future[Any]) -> None:
        # A loop callback's exception would only be logged by the loop, and the run
        # would wait forever: end the run with it instead (never a hang).
        try:
            self._record(tid, future)
        except Exception as exc:
            if self.finished is not None and not self.finished.done():
                self.finished.set_exception(exc)

    def _record(self, tid: int, future: asyncio.Future[Any]) -> None:
        del self.inflight[tid]
        if self.stall_watch is not None:
            self.stall_watch.forget(tid)
        if self.finished is None or self.finished.done():  # aborting: leave it unrecorded
            return
        span = self.backend.span(tid) if self.backend is not None else None
        first = tid not in self.outcomes.history  # recording a failure may retry it
        if future.cancelled():
            self.outcomes.cancelled(tid)
        elif (exc := future.exception()) is not None:
            if isinstance(exc, TypeError):
                call_note(exc, self.outcomes.tasks[tid], self.graph, -1)
            self._failed(tid, exc)
        else:
            value = future.result()
            if type(value) is CoroutineType:  # a plain io-bound function returned a coroutine
                self._watch(tid, asyncio.ensure_future(value))
                return
            self.retry_args.pop(tid, None)
            encoded = None
            if self.outcomes.cache is not None and self.backend is not None:
                encoded = self.backend.posted(tid)
            self.outcomes.succeeded(tid, value, encoded=encoded)
        if span is not None:
            self.outcomes.span(tid, *span, first=first)
        self._pump()

    def _failed(self, tid: int, exc: BaseException) -> None:
        """A task raised: retry it after its backoff, or record its failure."""
        outcomes = self.outcomes
        if outcomes.retries and (delay := outcomes.retry_delay(tid, exc)) is not None:
            loop = asyncio.get_running_loop()
            self.retrying[tid] = loop.call_later(delay, self._guarded, self._retry, tid)
            return
        self.retry_args.pop(tid, None)
        if isinstance(exc, WorkerCrashedError) and exc.lost is not None:
            self._forget([exc.lost])  # its value is gone: it counts as not run
        outcomes.failed(tid, exc)
        if outcomes.fail_fast:  # stop what runs, and what waits to be retried
            for future in self.inflight.values():
                future.cancel()
            for waiting in list(self.retrying):
                self.retrying.pop(waiting).cancel()
                self.retry_args.pop(waiting, None)
                outcomes.cancelled(waiting)

    def _retry(self, tid: int) -> None:
        """Call a task again after its backoff, where it ran before."""
        del self.retrying[tid]
        args = self.retry_args[tid]
        backend = self.backend
        if backend is not None and (self.all_on_backend or not self.frontier.is_io(tid)):
            self._submit(tid, args, backend)
        else:
            self._run_here(tid, args)
        self._pump()

    def _guarded(self, callback: Callable[[int], None], tid: int) -> None:
        try:
            callback(tid)
        except Exception as exc:  # as in _on_done: never a hang
            if self.finished is not None and not self.finished.done():
                self.finished.set_exception(exc)

    def _pool(self) -> ThreadPoolExecutor:
        if self.threads is None:
            graph = self.graph
            io = sum(1 for t in graph.plan.names if t in graph.io_bound)
            io += 64 * sum(1 for t in graph.expand if t in graph.io_bound)  # instances
            self.threads = ThreadPoolExecutor(
                max_workers=max(1, min(64, io)), thread_name_prefix=f"{self.graph.name}-io"
            )
        return self.threads

    async def _aabort(self) -> None:
        """Cancel what runs and stop the backend at once (interrupt, or a bug)."""
        if self.finished is not None and not self.finished.done():
            self.finished.cancel()
        for timer in self.retrying.values():
            timer.cancel()
        futures = list(self.inflight.values())
        for future in futures:
            future.cancel()
        if self.backend is not None:
            await self.backend.aclose(cancel=True)
        if futures:
            await asyncio.wait(futures, timeout=5)
