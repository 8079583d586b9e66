"""Core benchmark: `taskmap.run` and `taskmap.run_async` against bare loops and Dask.

Usage::

    python benchmarks/bench_core.py           # full: 10k and 100k tasks, create_graph on 1M
    python benchmarks/bench_core.py --quick   # smoke: 1k and 10k tasks, 50k, one repeat

The graph is `_common.layered_graph`: no-op tasks in layers of 100, each depending
on 1..3 tasks of the layer before.  What is timed, per run:

- *floor*: a bare `graphlib.TopologicalSorter` loop (build, prepare, then
  get_ready / call with the dependencies' results / done), end to end;
- `taskmap.run` and `taskmap.run_async` on a fresh `create_graph` (built untimed);
- *asyncio tasks*: one `asyncio.Task` per task awaiting its dependencies' tasks,
  on the same event loop as `run_async` (uvloop when installed);
- `dask.get` (Dask's synchronous scheduler, `dask.local.get_sync`) on the same graph
  as a Dask dict, asking for every key (the dict is built untimed).

Then `create_graph` on 1M tasks with exactly 3 dependencies each (~3M edges) against
`graphlib.TopologicalSorter(deps).prepare()`, timed, and apart from the timing, their
peak memory with tracemalloc.  A missed goal prints MISS; the exit status is 0 anyway:
this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import graphlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from _common import (
    LOOP,
    WIDTH,
    Case,
    count_edges,
    fmt_bytes,
    fmt_seconds,
    goal_line,
    layered_graph,
    machine,
    median,
    new_event_loop,
    peak_memory,
    time_cases,
)

import taskmap

FLOOR = "graphlib floor"
RUN = "taskmap.run"
RUN_ASYNC = "taskmap.run_async"
ARUN_ASYNC = "await taskmap.arun_async"
ASYNCIO = f"asyncio tasks ({LOOP})"
DASK = "dask.get (sync)"

GOAL_RUN = 1.5  # run time per task / floor
GOAL_SCALING = 11.0  # run time at 10x the tasks / run time
GOAL_RUN_ASYNC = 3.0  # run_async time per task / floor
GOAL_CREATE = 2.0  # create_graph / graphlib prepare (strictly less)

NOTE_OLD = (
    "note: taskmap 0.0.6 (the last release) is not measured: it cannot be imported on "
    "modern Python, as it depends on paco"
)

Deps = dict[str, list[str]]
Funcs = dict[str, Callable[..., Any]]


# -- the references -------------------------------------------------------------


def graphlib_floor(funcs: Funcs, deps: Deps) -> dict[str, Any]:
    """Run the graph with a bare graphlib loop: the least a scheduler can do."""
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    get_ready, done = sorter.get_ready, sorter.done
    results: dict[str, Any] = {}
    while sorter.is_active():
        for name in get_ready():
            results[name] = funcs[name](*[results[d] for d in deps[name]])
            done(name)
    return results


async def _asyncio_tasks(funcs: Funcs, deps: Deps) -> dict[str, Any]:
    async def node(name: str, parents: list[asyncio.Task[Any]]) -> Any:
        args = [await parent for parent in parents]
        return funcs[name](*args)

    tasks: dict[str, asyncio.Task[Any]] = {}
    for name, ds in deps.items():  # topological order, so every parent's task exists
        tasks[name] = asyncio.create_task(node(name, [tasks[d] for d in ds]))
    return dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))


def asyncio_reference(funcs: Funcs, deps: Deps) -> dict[str, Any]:
    """Run the graph as one asyncio.Task per task, each awaiting its parents' tasks."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_asyncio_tasks(funcs, deps))


def awaited(graph: taskmap.Graph) -> taskmap.Graph:
    """`arun_async` awaited on a new loop of the same kind, as an application awaits it."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(taskmap.arun_async(graph))


def graphlib_prepare(deps: Deps) -> graphlib.TopologicalSorter[str]:
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    return sorter


# -- the sections ---------------------------------------------------------------


def bench_runs(
    n: int, repeat: int, dask_get: Callable[..., Any] | None, dask_repeat: int
) -> dict[str, float]:
    """Time every runner on an n-task graph; return name -> median seconds.

    Dask is timed after the others, ``dask_repeat`` times: its ordering pass
    (``dask.order``) is superlinear on this graph, over a minute a run at 100k tasks.
    """
    funcs, deps = layered_graph(n)
    print(f"\nN = {n:,} tasks, {count_edges(deps):,} edges, median of {repeat}", flush=True)

    def fresh() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps)

    def complete(graph: taskmap.Graph) -> bool:
        return len(graph.done) == n and not graph.failed

    def has_all(results: Sequence[Any] | dict[str, Any]) -> bool:
        return len(results) == n

    cases = [
        Case(FLOOR, lambda _: graphlib_floor(funcs, deps), check=has_all),
        Case(RUN, taskmap.run, setup=fresh, check=complete),
        Case(RUN_ASYNC, taskmap.run_async, setup=fresh, check=complete),
        Case(ARUN_ASYNC, awaited, setup=fresh, check=complete),
        Case(ASYNCIO, lambda _: asyncio_reference(funcs, deps), check=has_all),
    ]
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    if dask_get is not None:
        dsk = {name: (funcs[name], *ds) for name, ds in deps.items()}
        keys = list(dsk)
        case = Case(DASK, lambda _: dask_get(dsk, keys), check=has_all)
        if dask_repeat < repeat:
            print(f"  ({DASK}: {dask_repeat} run only, it is slow at this size)", flush=True)
        medians[DASK] = median(time_cases([case], dask_repeat)[DASK])
    floor = medians[FLOOR]
    for name, seconds in medians.items():
        print(
            f"  {name:<24} {fmt_seconds(seconds):>10}  {seconds / n * 1e6:6.2f} µs/task"
            f"  {seconds / floor:6.2f}x floor",
            flush=True,
        )
    return medians


def bench_create(n: int, repeat: int) -> tuple[int, dict[str, tuple[float, int, int]]]:
    """Time and trace create_graph and graphlib prepare.

    Returns the edge count and name -> (median seconds, peak bytes, retained bytes).
    """
    funcs, deps = layered_graph(n, exact=True)
    edges = count_edges(deps)
    print(f"\ncreate_graph: {n:,} tasks, {edges:,} edges, median of {repeat}", flush=True)
    cases = [
        Case("taskmap.create_graph", lambda _: taskmap.create_graph(funcs, deps)),
        Case("graphlib prepare", lambda _: graphlib_prepare(deps)),
    ]
    times = time_cases(cases, repeat)
    # Memory apart from the timing: tracemalloc slows every allocation.
    memory = {
        "taskmap.create_graph": peak_memory(lambda: taskmap.create_graph(funcs, deps)),
        "graphlib prepare": peak_memory(lambda: graphlib_prepare(deps)),
    }
    out = {}
    for name, ts in times.items():
        peak, retained = memory[name]
        out[name] = (median(ts), peak, retained)
        print(
            f"  {name:<24} {fmt_seconds(median(ts)):>10}  peak {fmt_bytes(peak)},"
            f" retained {fmt_bytes(retained)}",
            flush=True,
        )
    return edges, out


# -- the report -----------------------------------------------------------------


def report(
    runs: dict[int, dict[str, float]],
    create: dict[str, tuple[float, int, int]],
    big: int,
    edges: int,
) -> None:
    small, large = sorted(runs)
    print("\ngoals")
    for n, m in runs.items():
        print("  " + goal_line(f"run per task, N={n:,}", m[RUN] / m[FLOOR], "floor", GOAL_RUN))
    scaling = runs[large][RUN] / runs[small][RUN]
    label = f"run time at {large:,} / at {small:,} tasks ({large / small:g}x the tasks)"
    print("  " + goal_line(label, scaling, "", GOAL_SCALING))
    for n, m in runs.items():
        ratio = m[RUN_ASYNC] / m[FLOOR]
        print("  " + goal_line(f"run_async per task, N={n:,}", ratio, "floor", GOAL_RUN_ASYNC))
    create_ratio = create["taskmap.create_graph"][0] / create["graphlib prepare"][0]
    label = f"create_graph, {big:,} tasks"
    print("  " + goal_line(label, create_ratio, "graphlib prepare", GOAL_CREATE, strict=True))

    print("\nother ratios (no goal)")
    floor_scaling = runs[large][FLOOR] / runs[small][FLOOR]
    print(f"  graphlib floor time at {large:,} / at {small:,} tasks: {floor_scaling:.2f}x")
    for n, m in runs.items():
        print(f"  N={n:,}: {ARUN_ASYNC} / run_async: {m[ARUN_ASYNC] / m[RUN_ASYNC]:.2f}x")
        print(f"  N={n:,}: run_async / {ASYNCIO}: {m[RUN_ASYNC] / m[ASYNCIO]:.2f}x", end="")
        if DASK in m:
            print(
                f"; {DASK} / floor: {m[DASK] / m[FLOOR]:.2f}x,"
                f" {DASK} / taskmap.run: {m[DASK] / m[RUN]:.2f}x",
                end="",
            )
        print()
    mem_ratio = create["taskmap.create_graph"][1] / create["graphlib prepare"][1]
    print(f"  create_graph peak memory / graphlib prepare: {mem_ratio:.2f}x")

    print(f"\nmarkdown ({machine()}, {LOOP}):\n")
    print("| benchmark | tasks | median | per task | ratio |")
    print("| --- | --- | ---: | ---: | --- |")
    for n, m in runs.items():
        for name, seconds in m.items():
            ratio = f"{seconds / m[FLOOR]:.2f}x floor"
            if name == DASK:
                ratio += f", {seconds / m[RUN]:.2f}x taskmap.run"
            per_task = f"{seconds / n * 1e6:.2f} µs"
            print(f"| {name} | {n:,} | {fmt_seconds(seconds)} | {per_task} | {ratio} |")
    for name, (seconds, peak, _) in create.items():
        ratio = f"{seconds / create['graphlib prepare'][0]:.2f}x graphlib prepare"
        print(
            f"| {name} | {big:,} ({edges:,} edges) | {fmt_seconds(seconds)}"
            f" | peak {fmt_bytes(peak)} | {ratio} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small graphs, one repeat (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, big, repeats, dask_repeats, big_repeat = (1_000, 10_000), 50_000, (1, 1), (1, 1), 1
    else:
        sizes, big, repeats, big_repeat = (10_000, 100_000), 1_000_000, (5, 3), 3
        dask_repeats = (5, 1)

    print(f"taskmap {taskmap.__version__} core benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {machine()}; event loop: {LOOP}")
    print(f"graph: layered random DAG, width {WIDTH}, 1..3 dependencies per task, seed 0")
    print(NOTE_OLD)
    try:
        import dask
    except ImportError:
        dask_get = None
        print("note: Dask is not installed (pip install 'taskmap[bench]'); its row is skipped")
    else:
        dask_get = dask.get
        print(f"dask {dask.__version__}: dask.get is {dask.get.__module__}.{dask.get.__name__}")

    runs = {
        n: bench_runs(n, r, dask_get, dr)
        for n, r, dr in zip(sizes, repeats, dask_repeats, strict=True)
    }
    edges, create = bench_create(big, big_repeat)
    report(runs, create, big, edges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
