"""The runners: each a choice of driver, backends and observers, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Literal

from .driver import AsyncDriver, Outcomes, drive_sync, new_event_loop
from .events import Observer, fan_out
from .frontier import Frontier
from .graph import Graph
from .logs import LogObserver

__all__ = ["run", "run_async"]

OnError = Literal["continue", "fail_fast"]


def run(
    graph: Graph,
    *,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
    sleep: float | None = None,
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

    Returns:
        The same graph, with ``results`` and ``done`` filled.

    Example:
        >>> graph = create_graph({'a': lambda: 2, 'b': lambda a: a * 10}, {'a': [], 'b': ['a']})
        >>> run(graph).results['b']
        20
    """
    outcomes = _prepare(graph, targets, on_error, raise_errors)
    drive_sync(outcomes)
    return _finish(outcomes, raise_errors)


def run_async(
    graph: Graph,
    sleep: float | None = None,
    *,
    targets: Iterable[Hashable] | None = None,
    on_error: OnError = "continue",
    raise_errors: bool = False,
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

    Returns:
        The same graph, with ``results`` and ``done`` filled.
    """
    outcomes = _prepare(graph, targets, on_error, raise_errors)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(AsyncDriver(outcomes).arun())
    return _finish(outcomes, raise_errors)


def _prepare(
    graph: Graph,
    targets: Iterable[Hashable] | None,
    on_error: str,
    raise_errors: bool,
    observers: Iterable[Observer] = (),
) -> Outcomes:
    """Check the run's arguments and set up its frontier and bookkeeping."""
    if not isinstance(graph, Graph):
        raise TypeError(
            f"expected a Graph from create_graph (got {type(graph).__name__}); "
            "build one with taskmap.create_graph(funcs, dependencies)"
        )
    if on_error not in ("continue", "fail_fast"):
        raise ValueError(f"on_error must be 'continue' or 'fail_fast' (got {on_error!r})")
    plan, results = graph.plan, graph.results
    done = plan.ids("graph.done", graph.done)
    failed = [tid for tid in done if isinstance(results.get(plan.names[tid]), Exception)]
    if targets is not None:
        if isinstance(targets, str | bytes) or not isinstance(targets, Iterable):
            targets = [targets]
        targets = plan.ids("targets", targets)
    frontier = Frontier(
        plan,
        io=plan.ids("io_bound", graph.io_bound),
        done=done,
        failed=failed,
        targets=targets,
    )
    chain = list(observers)
    log = LogObserver(graph.name)
    if log.wanted():
        chain.insert(0, log)
    fail_fast = on_error == "fail_fast" or raise_errors
    return Outcomes(graph, frontier, fail_fast=fail_fast, emit=fan_out(chain))


def _finish(outcomes: Outcomes, raise_errors: bool) -> Graph:
    if raise_errors and outcomes.first_failure is not None:
        raise outcomes.first_failure
    return outcomes.graph
