"""The runners: each a choice of driver, backends and observers, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import (
    AsyncIterator,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Executor
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Literal

from .backends import Backend
from .backends.executor import ExecutorBackend
from .backends.loop import EventLoop
from .backends.processes import ProcessPool, function_modules
from .driver import AsyncDriver, Outcomes, drive_sync
from .events import Event, Observer
from .frontier import Frontier
from .graph import Graph, configure_logging, instance_task
from .logs import LogObserver
from .policies import IO_CHANNEL, check_limits
from .progress import ProgressBar, wants_progress

__all__ = [
    "arun_async",
    "arun_parallel_async",
    "events",
    "run",
    "run_async",
    "run_parallel",
    "run_parallel_async",
]

OnError = Literal["continue", "fail_fast"]


def run(
    graph: Graph,
    *,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    sleep: float | None = None,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
) -> Graph:
    """Run the graph's tasks one at a time in this thread.

    A coroutine function's coroutine is run to completion before the next task
    starts.  A task receives its dependencies' results as positional arguments, in
    the order listed, leaving out ``None`` results.  A task that raises has the
    exception as its result; its descendants are not run and get an
    `UpstreamFailedError`; every other task still runs.

    Args:
        graph: from `create_graph`; tasks in ``graph.done`` are not run again.
        targets: run only these tasks and their ancestors (default: all tasks).
        on_error: ``'continue'`` (default) runs everything that does not depend on
            a failure; ``'fail_fast'`` starts nothing more after the first failure
            (the tasks not started get a `RunStoppedError`).
        raise_errors: legacy; implies ``'fail_fast'`` and re-raises the first
            task exception once the run has stopped.
        sleep: legacy, accepted and ignored: taskmap does not poll.
        limits: channel -> the most tasks of that channel running at once
            (``create_graph(channels=...)`` puts tasks in channels; ``'io'`` holds
            every io-bound task).  With one task at a time, only checked here.
        progress: show a live progress bar on stderr (None: when stderr is a
            terminal).
        report: write what the run did to this file when it ends: an HTML
            timeline (``.html``) or a Chrome trace (``.json``, opens in Perfetto).

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.

    Example:
        >>> graph = create_graph({'a': lambda: 2, 'b': lambda a: a * 10}, {'a': [], 'b': ['a']})
        >>> run(graph).results['b']
        20
    """
    _warn_if_on_a_loop("run", "arun_async")
    options = _Options(targets, on_error, raise_errors, limits, progress, report)
    outcomes, _ = _prepare(graph, options)
    with _reporting(outcomes, options):
        drive_sync(outcomes)
    return _finish(outcomes, options)


def run_async(
    graph: Graph,
    sleep: float | None = None,
    *,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    stall_warning: float | None = 0.1,
) -> Graph:
    """Run the graph on one event loop in this thread (uvloop when installed).

    Coroutines run concurrently, io-bound ones started first; an io-bound plain
    function runs in a thread; any other plain function is called on the loop.
    Ctrl-C cancels the running coroutines and raises `KeyboardInterrupt`; finished
    results stay in ``graph.results``.

    Args:
        graph: from `create_graph`.
        sleep: legacy, accepted and ignored: taskmap does not poll.
        targets: run only these tasks and their ancestors.
        on_error: ``'continue'`` or ``'fail_fast'`` (running coroutines are
            cancelled and get a `RunStoppedError`), as in `run`.
        raise_errors: legacy; implies ``'fail_fast'`` and re-raises the first
            task exception once the run has stopped.
        limits: channel -> the most tasks of that channel running at once;
            ``{'io': 20}`` caps the io-bound tasks running at once.
        progress, report: as in `run`.
        stall_warning: seconds an io-bound coroutine may hold the event loop
            between two awaits before a `StallWarning` names it (None: not watched).

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.
    """
    _warn_if_on_a_loop("run_async", "arun_async")
    options = _Options(targets, on_error, raise_errors, limits, progress, report, stall_warning)
    outcomes, _ = _prepare(graph, options)
    with _reporting(outcomes, options), EventLoop() as loop:
        loop.run(AsyncDriver(outcomes, stall_warning=options.stall_warning).arun())
    return _finish(outcomes, options)


async def arun_async(
    graph: Graph,
    sleep: float | None = None,
    *,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    stall_warning: float | None = 0.1,
    observers: Sequence[Observer] = (),
) -> Graph:
    """Run the graph on the running event loop: `run_async` for asyncio applications.

    io-bound coroutines are tasks of the caller's loop, so they may use its
    connections (an aiohttp session, an asyncpg pool), and the loop keeps serving
    other work while the graph runs.  Cancelling the awaiting task (a timeout, a
    `TaskGroup` failing, a client gone) cancels the running tasks, keeps finished
    results in ``graph.results`` and what the cache stored, and re-raises
    `asyncio.CancelledError`.

    Args:
        graph, sleep, targets, on_error, raise_errors, limits, progress, report,
        stall_warning: as in `run_async`.
        observers: callables that receive the run's events as they happen (see
            `events` for an async iterator of them).

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.

    Example:
        >>> graph = await arun_async(create_graph(funcs, dependencies, io_bound=["fetch"]))
    """
    options = _Options(targets, on_error, raise_errors, limits, progress, report, stall_warning)
    outcomes, _ = _prepare(graph, options, observers=observers)
    driver = AsyncDriver(outcomes, stall_warning=options.stall_warning, own_signals=False)
    with _reporting(outcomes, options):
        await driver.arun()
    return _finish(outcomes, options)


def run_parallel(
    graph: Graph,
    ncores: int | None = None,
    sleep: float | None = None,
    *,
    nprocs: int | None = None,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    executor: Executor | None = None,
    mp_context: str | BaseContext | None = None,
    drop_results: bool = False,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
) -> Graph:
    """Run every task in a pool of worker processes, io-bound ones handed out first.

    Functions and arguments cross to the workers with cloudpickle (lambdas,
    closures, ``functools.partial`` of coroutine functions work); a worker runs a
    coroutine on its own event loop.  A worker that dies fails only the task it was
    running (`WorkerCrashedError`) and is replaced.  Ctrl-C stops every worker and
    raises `KeyboardInterrupt`; finished results stay in ``graph.results``.

    Args:
        graph: from `create_graph`.
        ncores: number of worker processes (default: cores - 1, at least 1).
        sleep: legacy, accepted and ignored: taskmap does not poll.
        nprocs: legacy alias of ``ncores``.
        targets: run only these tasks and their ancestors.
        on_error: ``'continue'`` or ``'fail_fast'``, as in `run`; ``'fail_fast'``
            kills the workers of running tasks.
        raise_errors: legacy; implies ``'fail_fast'`` and re-raises the first
            task exception once the run has stopped.
        executor: a `concurrent.futures.Executor` to run the tasks on instead of
            the built-in pool (for Dask: ``client.get_executor()``).
        mp_context: multiprocessing start method or context for the workers
            (default: ``'forkserver'`` where available, else ``'spawn'``).
        drop_results: drop a result from ``graph.results`` once every child has
            taken it, unless it is a target or has no children (saves memory on
            long graphs of large values; rerunning a child then needs its parent
            rerun too).  A value that one CPU task takes then stays in the
            worker that made it, and that task runs there (zero-copy chains).
        limits: channel -> the most tasks of that channel running at once
            (``create_graph(channels=...)``); ``{'io': 20}`` caps io-bound tasks.
        progress, report: as in `run`.

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.
    """
    _warn_if_on_a_loop("run_parallel", "arun_parallel_async")
    workers = _workers(ncores, nprocs, default=max(1, (os.cpu_count() or 2) - 1))
    return _run_on_loop(
        graph,
        _Options(targets, on_error, raise_errors, limits, progress, report, None),
        lambda: _backend(executor, workers, mp_context, graph),
        all_on_backend=True,
        drop_results=drop_results,
    )


def run_parallel_async(
    graph: Graph,
    ncores: int | None = None,
    sleep: float | None = None,
    *,
    nprocs: int | None = None,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    executor: Executor | None = None,
    mp_context: str | BaseContext | None = None,
    drop_results: bool = False,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    stall_warning: float | None = 0.1,
) -> Graph:
    """Run io-bound tasks on this process's event loop and the others in worker processes.

    io-bound coroutines run concurrently on the driver's event loop (uvloop when
    installed) and io-bound plain functions in a thread pool, so IO never waits
    behind CPU; every other task runs in a worker process, at most one per worker
    at a time, the one with the longest chain of tasks after it first.  Otherwise as
    `run_parallel`.

    Args:
        graph: from `create_graph`.
        ncores: number of worker processes for CPU tasks (default: half the cores,
            at least 1).
        sleep: legacy, accepted and ignored: taskmap does not poll.
        nprocs, targets, on_error, raise_errors, executor, mp_context,
        drop_results, limits: as in `run_parallel`.
        progress, report: as in `run`.
        stall_warning: as in `run_async`.

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.

    Example:
        >>> graph = create_graph(funcs, dependencies, io_bound=['fetch_a', 'fetch_b'])
        >>> graph = run_parallel_async(graph, ncores=2)
    """
    _warn_if_on_a_loop("run_parallel_async", "arun_parallel_async")
    workers = _workers(ncores, nprocs, default=max(1, (os.cpu_count() or 2) // 2))
    return _run_on_loop(
        graph,
        _Options(targets, on_error, raise_errors, limits, progress, report, stall_warning),
        lambda: _backend(executor, workers, mp_context, graph),
        all_on_backend=False,
        drop_results=drop_results,
    )


async def arun_parallel_async(
    graph: Graph,
    ncores: int | None = None,
    sleep: float | None = None,
    *,
    nprocs: int | None = None,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    executor: Executor | None = None,
    mp_context: str | BaseContext | None = None,
    drop_results: bool = False,
    limits: Mapping[str, int] | None = None,
    progress: bool | None = None,
    report: str | os.PathLike[str] | None = None,
    stall_warning: float | None = 0.1,
    observers: Sequence[Observer] = (),
) -> Graph:
    """Run the graph with io on the running event loop and CPU tasks in worker processes.

    `run_parallel_async` for asyncio applications: io-bound coroutines are tasks of
    the caller's loop (they may use its connections, and the loop keeps serving
    other work), CPU tasks go to worker processes or ``executor``.  Cancelling the
    awaiting task stops the io tasks and the workers (no process is left behind),
    keeps finished results and what the cache stored, and re-raises
    `asyncio.CancelledError`.  Graphs awaited at once do not share anything.

    Args:
        graph, ncores, sleep, nprocs, targets, on_error, raise_errors, executor,
        mp_context, drop_results, limits, progress, report, stall_warning: as in
        `run_parallel_async`.
        observers: as in `arun_async`.

    Returns:
        The same graph, with ``results`` and ``done`` filled, and ``stats``.

    Example:
        >>> graph = await arun_parallel_async(create_graph(funcs, deps, io_bound=["fetch"]))
    """
    workers = _workers(ncores, nprocs, default=max(1, (os.cpu_count() or 2) // 2))
    options = _Options(targets, on_error, raise_errors, limits, progress, report, stall_warning)
    outcomes, driver, backend = _parallel_driver(
        graph,
        options,
        lambda: _backend(executor, workers, mp_context, graph),
        all_on_backend=False,
        drop_results=drop_results,
        observers=observers,
    )
    try:
        with _reporting(outcomes, options):
            await driver.arun()
    finally:
        _close_now(backend)  # a second cancellation can cut aclose short: no orphans
    return _finish(outcomes, options)


_ARUNNERS: dict[str, Callable[..., Any]] = {
    "run_async": arun_async,
    "run_parallel_async": arun_parallel_async,
}


async def events(
    graph: Graph, runner: str = "run_parallel_async", **options: Any
) -> AsyncIterator[Event]:
    """Run the graph on the running loop and yield its events as they happen.

    Events are `RunStarted`, then `TaskQueued`, `TaskStarted`, `TaskFinished`
    (``cached`` for a cache hit), `TaskFailed`, `TaskRetrying` and `TaskSkipped` for
    each task, `TaskExpanded` when an expanded task grows its instances, and
    `RunFinished` last; ``graph.results`` is filled when the
    iteration ends.  Leaving the loop early (``break``) cancels the run as
    cancelling `arun_parallel_async` does.

    Args:
        graph: from `create_graph`.
        runner: ``'run_async'`` or ``'run_parallel_async'``: where tasks run.
        **options: the runner's keyword arguments (``ncores=``, ``limits=``...).

    Raises:
        ValueError: an unknown ``runner``.
        Exception: what the run raises (``raise_errors=True``), after its events.

    Example:
        >>> async for event in events(graph, ncores=2):
        ...     print(event)
    """
    arun = _ARUNNERS.get(runner)
    if arun is None:
        raise ValueError(
            f"events() runs a graph with 'run_async' or 'run_parallel_async' (got {runner!r})"
        )
    queue: asyncio.Queue[Event | None] = asyncio.Queue()
    run = asyncio.ensure_future(
        arun(graph, observers=[*options.pop("observers", ()), queue.put_nowait], **options)
    )
    run.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            yield event
        await run  # its exception, if any
    finally:
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run


def _warn_if_on_a_loop(runner: str, awaitable: str) -> None:
    """A blocking runner called from a coroutine blocks its loop: say so, and what to use."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    warnings.warn(
        f"taskmap.{runner}() was called from a running event loop: it blocks that loop "
        f"until the graph is done (the graph runs on a loop of its own in a helper "
        f"thread); in a coroutine, await taskmap.{awaitable}(...) to run on this loop",
        RuntimeWarning,
        stacklevel=3,
    )


def _workers(ncores: int | None, nprocs: int | None, *, default: int) -> int:
    if ncores is not None and nprocs is not None and ncores != nprocs:
        raise ValueError(f"ncores and nprocs are the same setting (got {ncores} and {nprocs})")
    n = ncores if ncores is not None else nprocs
    if n is None:
        return default
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"ncores must be a positive integer (got {n!r})")
    return n


def _backend(
    executor: Executor | None, workers: int, mp_context: str | BaseContext | None, graph: Graph
) -> Backend:
    if executor is not None:
        return ExecutorBackend(executor)
    preload = function_modules(graph.funcs.values())
    return ProcessPool(
        workers,
        context=mp_context,
        name=graph.name,
        preload=preload,
        functions=graph.funcs.values(),
    )


def _run_on_loop(
    graph: Graph,
    options: _Options,
    make_backend: Callable[[], Backend],
    *,
    all_on_backend: bool,
    drop_results: bool,
) -> Graph:
    outcomes, driver, backend = _parallel_driver(
        graph,
        options,
        make_backend,
        all_on_backend=all_on_backend,
        drop_results=drop_results,
        own_signals=True,
    )
    try:
        with _reporting(outcomes, options), EventLoop() as loop:
            loop.run(driver.arun())
    finally:
        _close_now(backend)  # a second Ctrl-C can cut aclose short: no orphans
    return _finish(outcomes, options)


def _parallel_driver(
    graph: Graph,
    options: _Options,
    make_backend: Callable[[], Backend],
    *,
    all_on_backend: bool,
    drop_results: bool,
    observers: Sequence[Observer] = (),
    own_signals: bool = False,
) -> tuple[Outcomes, AsyncDriver, Backend]:
    """The bookkeeping and the asyncio driver of a run with a CPU backend (made once
    the run's arguments are checked)."""
    outcomes, target_ids = _prepare(graph, options, parallel=True, observers=observers)
    backend = make_backend()
    outcomes.workers = backend.n if isinstance(backend, ProcessPool) else 0
    driver = AsyncDriver(
        outcomes,
        backend,
        all_on_backend=all_on_backend,
        drop_results=drop_results,
        targets=target_ids or (),
        stall_warning=options.stall_warning,
        own_signals=own_signals,
    )
    return outcomes, driver, backend


def _close_now(backend: Backend) -> None:
    if isinstance(backend, ProcessPool):
        backend.close_now()


def _listed(targets: Iterable[Hashable]) -> list[Hashable]:
    if isinstance(targets, str | bytes) or not isinstance(targets, Iterable):
        return [targets]
    return list(targets)


@dataclass(frozen=True, slots=True)
class _Options:
    """The options every runner takes, as given."""

    targets: Iterable[Hashable] | None
    on_error: str
    raise_errors: bool
    limits: Mapping[str, int] | None
    progress: bool | None
    report: str | os.PathLike[str] | None
    stall_warning: float | None = None


def _prepare(
    graph: Graph, options: _Options, *, parallel: bool = False, observers: Sequence[Observer] = ()
) -> tuple[Outcomes, list[int] | None]:
    """Check the run's arguments and set up its frontier and bookkeeping.

    Everything is checked before any task runs.  ``parallel``: order ready tasks
    by the longest chain after them (after the user's priorities), which keeps
    workers busy.  Returns the bookkeeping and the targets' ids (None: every task
    is a target).
    """
    if not isinstance(graph, Graph):
        raise TypeError(
            f"expected a Graph from create_graph (got {type(graph).__name__}); "
            "build one with taskmap.create_graph(funcs, dependencies)"
        )
    targets, on_error = options.targets, options.on_error
    if on_error not in ("continue", "fail_fast"):
        raise ValueError(f"on_error must be 'continue' or 'fail_fast' (got {on_error!r})")
    stall = options.stall_warning
    if stall is not None and (isinstance(stall, bool) or not isinstance(stall, int | float)):
        raise TypeError(f"stall_warning must be a number of seconds or None (got {stall!r})")
    if options.report is not None:
        from .report import check_report_path

        check_report_path(options.report)
    plan, results = graph.plan, graph.results
    limits = check_limits(options.limits, graph.policies)
    done_names, prior = _instances_done(graph)
    done = plan.ids("graph.done", done_names)
    failed = [tid for tid in done if isinstance(results.get(plan.names[tid]), Exception)]
    target_ids = None if targets is None else plan.ids("targets", _listed(targets))
    io = plan.ids("io_bound", graph.io_bound)
    channels, slots = _channels(graph, io, limits)
    frontier = Frontier(
        plan,
        io=io,
        done=done,
        failed=failed,
        targets=target_ids,
        priority=_priority(graph, parallel),
        channels=channels,
        limits=slots,
    )
    configure_logging(graph.name, graph.logging_config)  # a graph built by hand, or renamed
    fail_fast = on_error == "fail_fast" or options.raise_errors
    observers = [LogObserver(graph.name), *observers]
    if wants_progress(options.progress):
        observers.append(ProgressBar(graph.name))
    cache = None
    if graph.checkpoint is not None:
        cache = graph.checkpoint.open_run(plan.names, plan.parents, graph.funcs, results)
    outcomes = Outcomes(
        graph, frontier, fail_fast=fail_fast, observers=observers, cache=cache, prior=prior
    )
    return outcomes, target_ids


def _instances_done(graph: Graph) -> tuple[list[Hashable], dict[int, dict[int, bool]]]:
    """The done tasks, and per expanded task id its instances done before: item ->
    whether it failed."""
    if not graph.expand:
        return graph.done, {}
    expand, index, results = graph.expand, graph.plan.index, graph.results
    tasks: list[Hashable] = []
    prior: dict[int, dict[int, bool]] = {}
    for name in graph.done:
        task = instance_task(name, expand)
        if task is None:
            tasks.append(name)
        else:
            failed = isinstance(results.get(name), Exception)
            prior.setdefault(index[task], {})[name[1]] = failed  # type: ignore[index]
    return tasks, prior


def _channels(
    graph: Graph, io: list[int], limits: dict[str, int]
) -> tuple[list[tuple[int, ...]] | None, list[int]]:
    """Each task's limited channels as ids, and each channel's limit (None: no limits)."""
    if not limits:
        return None, []
    ids = {name: c for c, name in enumerate(limits)}
    plan = graph.plan
    channels: list[tuple[int, ...]] = [()] * len(plan.names)
    for task, names in graph.policies.channels.items():
        channels[plan.index[task]] = tuple(ids[c] for c in names if c in ids)
    if IO_CHANNEL in ids:
        for tid in io:
            channels[tid] = (*channels[tid], ids[IO_CHANNEL])
    return channels, list(limits.values())


def _priority(graph: Graph, parallel: bool) -> list[int] | None:
    """The frontier's order of ready tasks: the user's priorities first, then (in
    parallel runs) the longest chain of tasks after each one; None: first in, first out.
    """
    user, plan = graph.policies.priorities, graph.plan
    heights = plan.heights() if parallel else None
    if not user:
        return heights
    ranks = {p: r for r, p in enumerate(sorted({0, *user.values()}))}
    scale = len(plan.names) + 1  # a rank outweighs any height
    return [
        ranks[user.get(name, 0)] * scale + (heights[tid] if heights is not None else 0)
        for tid, name in enumerate(plan.names)
    ]


@contextlib.contextmanager
def _reporting(outcomes: Outcomes, options: _Options) -> Iterator[None]:
    """Write the report of a run that ends normally, and of one interrupted (Ctrl-C):
    what did run is worth a picture too."""
    try:
        yield
    except BaseException:
        if options.report is not None and outcomes.ended:
            with contextlib.suppress(Exception):  # the interruption is what matters
                _write_report(outcomes, options)
        raise
    if options.report is not None:
        _write_report(outcomes, options)


def _write_report(outcomes: Outcomes, options: _Options) -> None:
    from .report import write_report

    assert options.report is not None
    write_report(outcomes.graph, options.report)


def _finish(outcomes: Outcomes, options: _Options) -> Graph:
    if options.raise_errors and outcomes.first_failure is not None:
        raise outcomes.first_failure
    return outcomes.graph
