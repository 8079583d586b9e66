"""Awaitable runners on the caller's event loop: `arun_async`, `arun_parallel_async`, `events`."""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import taskmap
from tests.procs import wait_until, workers_left

ARUNNERS = [taskmap.arun_async, taskmap.arun_parallel_async]


def arun_options(arun: Callable[..., Any]) -> dict[str, Any]:
    return {"ncores": 2} if arun is taskmap.arun_parallel_async else {}


def double(x: int) -> int:
    return 2 * x


def nap_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def write_then_wait(path: str) -> None:
    Path(path).write_text("started")
    time.sleep(60)


@pytest.mark.parametrize("arun", ARUNNERS, ids=lambda r: r.__name__)
def test_an_io_task_uses_a_connection_opened_on_the_caller_s_loop(arun):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"21\n")
        await writer.drain()
        writer.close()

    async def main() -> taskmap.Graph:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def read_line() -> int:  # the app's connection, from inside the graph
            return int(await reader.readline())

        graph = taskmap.create_graph(
            {"read": read_line, "double": double},
            {"read": [], "double": ["read"]},
            io_bound=["read"],
        )
        try:
            return await arun(graph, **arun_options(arun))
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    graph = asyncio.run(main())
    assert graph.results == {"read": 21, "double": 42}


@pytest.mark.parametrize("arun", ARUNNERS, ids=lambda r: r.__name__)
def test_the_caller_s_loop_stays_responsive_while_a_graph_runs(arun):
    period = 0.05
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.perf_counter())
            await asyncio.sleep(period)

    async def io_wait(*_: object) -> str:
        await asyncio.sleep(0.3)
        return "io"

    funcs: dict[str, Any] = {"io1": io_wait, "io2": io_wait}
    deps: dict[str, list[str]] = {"io1": [], "io2": ["io1"]}
    if arun is taskmap.arun_parallel_async:  # CPU work in the workers, not on the loop
        funcs |= {"cpu1": functools.partial(nap_then, 0.5, 1), "cpu2": double}
        deps |= {"cpu1": [], "cpu2": ["cpu1"]}

    async def main() -> taskmap.Graph:
        # an application imports what it uses at its start: a name's first use loads
        # its modules (here that would be on the loop), later uses cost nothing
        taskmap.create_graph({"warm": double}, {"warm": []})
        beating = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(period)
        graph = await arun(
            taskmap.create_graph(funcs, deps, io_bound=["io1", "io2"]), **arun_options(arun)
        )
        beating.cancel()
        return graph

    graph = asyncio.run(main())
    assert graph.results["io2"] == "io"
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 0.6 / period * 0.8
    assert max(gaps) < 2 * period, gaps


@pytest.mark.parametrize("arun", ARUNNERS, ids=lambda r: r.__name__)
def test_a_timeout_cancels_the_run_keeps_what_finished_and_leaves_no_process(tmp_path, arun):
    started = tmp_path / "started"

    async def forever() -> None:
        started.touch()
        await asyncio.sleep(60)

    funcs: dict[str, Any] = {"quick": functools.partial(nap_then, 0, 7), "io": forever}
    deps: dict[str, list[str]] = {"quick": [], "io": []}
    if arun is taskmap.arun_parallel_async:
        funcs["cpu"] = functools.partial(write_then_wait, str(tmp_path / "cpu"))
        deps["cpu"] = []

    def build() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps, io_bound=["io"], cache=tmp_path / "cache")

    graph = build()

    async def main() -> None:
        async with asyncio.timeout(1.5):
            await arun(graph, **arun_options(arun))

    begun = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert time.monotonic() - begun < 10
    assert started.exists()
    assert graph.results["quick"] == 7  # finished before the timeout: kept
    assert "io" not in graph.done
    assert wait_until(lambda: workers_left() == set(), 5), workers_left()
    rerun = build()
    rerun.results.clear()
    asyncio.run(taskmap.arun_async(rerun, targets=["quick"]))
    assert rerun.stats is not None
    assert rerun.stats.cache is not None
    assert rerun.stats.cache.hits == 1  # the cache kept what was stored


def test_a_failing_sibling_in_a_task_group_cancels_the_graph_and_its_workers(tmp_path):
    running = tmp_path / "running"
    graph = taskmap.create_graph(
        {"wait": functools.partial(write_then_wait, str(running))}, {"wait": []}
    )

    async def fail_soon() -> None:
        await asyncio.to_thread(wait_until, running.exists, 20)
        raise ValueError("sibling failed")

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(taskmap.arun_parallel_async(graph, ncores=1))
            group.create_task(fail_soon())

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(main())
    assert caught.group_contains(ValueError, match="sibling failed")
    assert running.exists()
    assert wait_until(lambda: workers_left() == set(), 5), workers_left()


def test_two_graphs_awaited_at_once_on_one_loop_do_not_interfere():
    def build(offset: int) -> taskmap.Graph:
        funcs = {f"n{i}": functools.partial(nap_then, 0.05, i + offset) for i in range(6)}
        funcs["sum"] = lambda *xs: sum(xs)
        deps = {f"n{i}": [] for i in range(6)} | {"sum": [f"n{i}" for i in range(6)]}
        return taskmap.create_graph(funcs, deps, name=f"g{offset}")

    async def main() -> tuple[taskmap.Graph, taskmap.Graph]:
        return await asyncio.gather(
            taskmap.arun_parallel_async(build(0), ncores=1),
            taskmap.arun_parallel_async(build(100), ncores=1),
        )

    first, second = asyncio.run(main())
    assert first.results["sum"] == sum(range(6))
    assert second.results["sum"] == sum(range(100, 106))
    assert first.stats is not None
    assert second.stats is not None
    assert first.stats.workers == second.stats.workers == 1
    assert workers_left() == set()


async def _raises() -> None:
    raise KeyError("boom")


@pytest.mark.parametrize("runner", ["run_async", "run_parallel_async"])
def test_events_stream_every_event_in_order_and_the_results_are_filled(runner):
    graph = taskmap.create_graph(
        {"a": functools.partial(nap_then, 0, 3), "b": double, "bad": _raises, "c": double},
        {"a": [], "b": ["a"], "bad": [], "c": ["bad"]},
        io_bound=["bad"],
    )
    options = {"ncores": 1} if runner == "run_parallel_async" else {}

    async def collect() -> list[object]:
        return [event async for event in taskmap.events(graph, runner, **options)]

    seen = asyncio.run(collect())
    assert isinstance(seen[0], taskmap.RunStarted)
    assert seen[0].tasks == 4
    assert seen[-1] == taskmap.RunFinished(graph.name, False)
    kinds = {
        task: [type(e).__name__ for e in seen if getattr(e, "task", None) == task]
        for task in ("a", "b", "bad", "c")
    }
    assert kinds["a"] == kinds["b"] == ["TaskQueued", "TaskStarted", "TaskFinished"]
    assert kinds["bad"] == ["TaskQueued", "TaskStarted", "TaskFailed"]
    assert kinds["c"] == ["TaskSkipped"]
    finished_a = seen.index(taskmap.TaskFinished("a"))
    assert seen.index(taskmap.TaskQueued("b")) > finished_a
    assert graph.results["b"] == 6
    assert isinstance(graph.results["c"], taskmap.UpstreamFailedError)


def test_leaving_the_event_stream_early_cancels_the_run_and_its_workers(tmp_path):
    graph = taskmap.create_graph(
        {"wait": functools.partial(write_then_wait, str(tmp_path / "w")), "x": double},
        {"wait": [], "x": ["wait"]},
    )

    async def first_start() -> object:
        stream = taskmap.events(graph, ncores=1)
        async for event in stream:
            if isinstance(event, taskmap.TaskStarted):
                await stream.aclose()
                return event
        return None

    event = asyncio.run(first_start())
    assert event == taskmap.TaskStarted("wait", "worker")
    assert wait_until(lambda: workers_left() == set(), 5), workers_left()
    assert "x" not in graph.results


def test_events_names_the_runners_it_takes():
    graph = taskmap.create_graph({"a": double}, {"a": []})

    async def main() -> None:
        async for _ in taskmap.events(graph, "run_parallel"):
            pass

    message = "events() runs a graph with 'run_async' or 'run_parallel_async' (got 'run_parallel')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("runner", "awaitable"),
    [
        ("run", "arun_async"),
        ("run_async", "arun_async"),
        ("run_parallel", "arun_parallel_async"),
        ("run_parallel_async", "arun_parallel_async"),
    ],
)
def test_a_blocking_runner_called_from_a_running_loop_warns_and_says_what_to_await(
    runner, awaitable
):
    graph = taskmap.create_graph({"a": functools.partial(nap_then, 0, 1)}, {"a": []})

    async def cell() -> taskmap.Graph:
        return getattr(taskmap, runner)(graph)

    message = (
        rf"taskmap\.{runner}\(\) was called from a running event loop: it blocks that loop "
        rf".* await taskmap\.{awaitable}\(\.\.\.\) to run on this loop"
    )
    with pytest.warns(RuntimeWarning, match=message) as caught:
        asyncio.run(cell())
    assert caught[0].filename == __file__  # it points at the call
    assert graph.results == {"a": 1}


def test_under_anyio_s_asyncio_backend_a_graph_runs_and_a_deadline_cancels_it(tmp_path):
    anyio = pytest.importorskip("anyio")
    running = tmp_path / "running"

    async def main() -> tuple[taskmap.Graph, bool]:
        graph = taskmap.create_graph(
            {"a": functools.partial(nap_then, 0, 4), "b": double}, {"a": [], "b": ["a"]}
        )
        graph = await taskmap.arun_parallel_async(graph, ncores=1)
        stuck = taskmap.create_graph(
            {"wait": functools.partial(write_then_wait, str(running))}, {"wait": []}
        )
        with anyio.move_on_after(1.5) as scope:
            await taskmap.arun_parallel_async(stuck, ncores=1)
        return graph, scope.cancelled_caught

    graph, cancelled = anyio.run(main, backend="asyncio")
    assert graph.results == {"a": 4, "b": 8}
    assert cancelled
    assert running.exists()
    assert wait_until(lambda: workers_left() == set(), 5), workers_left()
