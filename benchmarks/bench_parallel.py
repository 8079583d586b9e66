"""Parallel benchmark: `run_parallel_async` and `run_parallel` against bare pools and Dask.

Usage::

    python benchmarks/bench_parallel.py           # full: medians of 5 (start-up: of 10)
    python benchmarks/bench_parallel.py --quick   # smoke: one repeat, 500 dispatch tasks

Every contender of a section is timed in the same run, interleaved (`_common.time_cases`),
on 2 workers; graphs are rebuilt untimed before each repeat.

1. *Mixed makespan*: 8 chains of 3 steps; ``io{c}.{s}`` (a coroutine sleeping 0.1 s,
   io-bound) depends on ``cpu{c}.{s-1}``, and ``cpu{c}.{s}`` (a pure-Python loop
   calibrated at start to take ~50 ms here) on ``io{c}.{s}`` and ``io{c+1 mod 8}.{s}``.
   References computed here: the makespan of a zero-overhead list schedule (IO
   unlimited, 2 CPU slots, ready CPU tasks by longest remaining path in seconds) and
   the lower bound max(critical path, CPU seconds / 2).  Contenders:
   `run_parallel_async`; asyncio tasks with a `ProcessPoolExecutor` (created in the
   timed region, and pre-warmed); Dask's multiprocessing and threaded schedulers, on
   which an IO task is a function calling ``time.sleep(0.1)`` (Dask runs no coroutines).
2. *Dispatch*: 2,000 independent tasks returning 1: `run_parallel` against a bare
   `ProcessPoolExecutor` (submit all then collect, and submit().result() one by one;
   the goal takes the faster), on forkserver as taskmap, on fork for information, and
   `dask.multiprocessing.get`.  Each is timed on 2 tasks too, so that
   (time - time on 2 tasks) / 1,998 estimates the per-task cost without start-up.
3. *Start-up*: a 1-task `run_parallel_async` against a bare forkserver pool running one
   task, after one untimed warm-up of each; then both again from ``python -c`` (control).

Start-up is inside every timed region: taskmap and Dask create and stop their workers
in the call, and the bare pools are created and shut down (``with``) in it too.  Only
the fork server is shared: one process per Python process, started once by an untimed
warm-up, with the preload taskmap asks for (``taskmap.worker``).  A bare pool's worker
finds task functions by name, so it re-imports this script as ``__mp_main__`` (the fork
server cannot preload ``__main__`` on CPython before the gh-126631 fix); taskmap's
workers do not (functions cross by value).  Hence Dask is imported only where used, and
the ``python -c`` control, where no worker has a main script to re-import.  A missed
goal prints MISS; the exit status is 0 anyway: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.context import BaseContext
from time import perf_counter
from typing import Any

from _common import (
    LOOP,
    Case,
    compile_taskmap,
    fmt_seconds,
    goal_line,
    machine,
    median,
    new_event_loop,
    time_cases,
)

import taskmap

WORKERS = 2
CHAINS, STEPS = 8, 3
IO_SECONDS = 0.1
CPU_TARGET = 0.05  # seconds per CPU task, calibrated at start

GOAL_MIXED = 1.10  # makespan / simulated schedule
GOAL_DISPATCH = 1.0  # taskmap per-task cost / bare pool's
GOAL_DISPATCH_DASK = 5.0  # Dask multiprocessing per-task cost / taskmap's (at least)
GOAL_STARTUP = 1.5  # 1-task run / bare pool running one task (strictly less)

TM_MIXED = "taskmap.run_parallel_async"
TM_DISPATCH = "taskmap.run_parallel"
TM_STARTUP = "taskmap.run_parallel_async, 1 task"
POOL_COLD = "asyncio + ProcessPoolExecutor"
POOL_WARM = "asyncio + ProcessPoolExecutor, pre-warmed"
POOL_ALL = "ProcessPoolExecutor, submit all (forkserver)"
POOL_SEQ = "ProcessPoolExecutor, one by one (forkserver)"
POOL_FORK = "ProcessPoolExecutor, submit all (fork)"
POOL_ONE = "ProcessPoolExecutor, 1 task (forkserver)"
POOL_TWO = "ProcessPoolExecutor, 2 tasks (forkserver)"
DASK_MP = "dask.multiprocessing.get"
SMALL = 2  # tasks in the dispatch start-up estimate: one per worker, so every pool starts both

Deps = dict[str, list[str]]
Funcs = dict[str, Callable[..., Any]]


# -- the tasks (module level: workers get them by value or by name) --------------


def spin(loops: int) -> int:
    """Pure-Python busy work: holds the GIL for the whole call."""
    total = 0
    for i in range(loops):
        total += i
    return total


def cpu_task(loops: int, *deps: object) -> float:
    """Spin; return the seconds it took here, in the worker, under this run's load."""
    start = perf_counter()
    spin(loops)
    return perf_counter() - start


async def io_task(*deps: object) -> int:
    await asyncio.sleep(IO_SECONDS)
    return 1


def io_task_sync(*deps: object) -> int:
    """The IO task for Dask, which runs no coroutines."""
    time.sleep(IO_SECONDS)
    return 1


def tiny(*deps: object) -> int:
    return 1


def forkserver() -> BaseContext:
    return multiprocessing.get_context("forkserver")


# -- 1. mixed makespan --------------------------------------------------------------


def calibrate(target: float) -> tuple[int, float]:
    """Return ``(loops, seconds)``: a `spin` count taking ~``target`` here, and its median time."""
    probe = 200_000
    spin(probe)
    per_loop = median([_time(spin, probe) for _ in range(5)]) / probe
    loops = max(1, round(target / per_loop))
    return loops, spin_seconds(loops)


def spin_seconds(loops: int) -> float:
    return median([_time(spin, loops) for _ in range(7)])


def _time(func: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    start = perf_counter()
    func(*args, **kwargs)
    return perf_counter() - start


@dataclass(frozen=True, slots=True)
class Mixed:
    """The mixed graph: ``funcs`` for taskmap and asyncio, ``sync_funcs`` for Dask."""

    deps: Deps
    io: list[str]
    funcs: Funcs
    sync_funcs: Funcs


def mixed_graph(loops: int) -> Mixed:
    """Build the 8 x 3 chain graph, in topological order (step by step, IO first)."""
    cpu = partial(cpu_task, loops)  # one function object: taskmap pickles it once
    deps: Deps = {}
    for s in range(STEPS):
        for c in range(CHAINS):
            deps[f"io{c}.{s}"] = [f"cpu{c}.{s - 1}"] if s else []
        for c in range(CHAINS):
            deps[f"cpu{c}.{s}"] = [f"io{c}.{s}", f"io{(c + 1) % CHAINS}.{s}"]
    io = [name for name in deps if name.startswith("io")]
    funcs: Funcs = {name: io_task if name in io else cpu for name in deps}
    sync_funcs: Funcs = {name: io_task_sync if name in io else cpu for name in deps}
    return Mixed(deps, io, funcs, sync_funcs)


def remaining_paths(
    deps: Mapping[str, Sequence[str]], seconds: Mapping[str, int]
) -> dict[str, int]:
    """Per task, the longest path from it to a sink, itself included (``deps`` in topological
    order; any time unit)."""
    children: dict[str, list[str]] = {name: [] for name in deps}
    for name, ds in deps.items():
        for d in ds:
            children[d].append(name)
    rest: dict[str, int] = {}
    for name in reversed(list(deps)):
        rest[name] = seconds[name] + max((rest[c] for c in children[name]), default=0)
    return rest


def simulate(
    deps: Mapping[str, Sequence[str]], seconds: Mapping[str, int], io: set[str], slots: int
) -> int:
    """Makespan of a zero-overhead list schedule: IO tasks start when ready, CPU tasks
    take one of ``slots``, longest remaining path first (ties: graph order).

    Times are integers (microseconds) so that simultaneous events tie exactly.
    """
    rest = remaining_paths(deps, seconds)
    order = {name: i for i, name in enumerate(deps)}
    children: dict[str, list[str]] = {name: [] for name in deps}
    waiting = {name: len(ds) for name, ds in deps.items()}
    for name, ds in deps.items():
        for d in ds:
            children[d].append(name)
    running: list[tuple[int, int, str]] = []  # (end, order, name)
    ready_cpu: list[tuple[int, int, str]] = []  # (-remaining path, order, name)
    free, now = slots, 0

    def make_ready(name: str) -> None:
        if name in io:
            heapq.heappush(running, (now + seconds[name], order[name], name))
        else:
            heapq.heappush(ready_cpu, (-rest[name], order[name], name))

    for name, w in waiting.items():
        if not w:
            make_ready(name)
    while True:
        while free and ready_cpu:
            name = heapq.heappop(ready_cpu)[2]
            free -= 1
            heapq.heappush(running, (now + seconds[name], order[name], name))
        if not running:
            return now
        now = running[0][0]
        while running and running[0][0] == now:  # every task ending now, then dispatch
            name = heapq.heappop(running)[2]
            if name not in io:
                free += 1
            for child in children[name]:
                waiting[child] -= 1
                if not waiting[child]:
                    make_ready(child)


def _micro(mixed: Mixed, cpu_seconds: Callable[[str], float]) -> dict[str, int]:
    return {
        name: round((IO_SECONDS if name in mixed.io else cpu_seconds(name)) * 1e6)
        for name in mixed.deps
    }


def simulate_measured(mixed: Mixed, cpu_times: Mapping[str, float]) -> float:
    """The simulated makespan with each CPU task's duration as measured in a run."""
    return simulate(mixed.deps, _micro(mixed, cpu_times.__getitem__), set(mixed.io), WORKERS) / 1e6


def references(mixed: Mixed, cpu_seconds: float) -> tuple[float, float, float]:
    """Return ``(simulated makespan, critical path, lower bound)`` in seconds."""
    micro = _micro(mixed, lambda name: cpu_seconds)
    simulated = simulate(mixed.deps, micro, set(mixed.io), WORKERS) / 1e6
    critical = max(remaining_paths(mixed.deps, micro).values()) / 1e6
    cpu_total = sum(v for name, v in micro.items() if name not in mixed.io) / 1e6
    return simulated, critical, max(critical, cpu_total / WORKERS)


async def _asyncio_mixed(mixed: Mixed, pool: Executor) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    io = set(mixed.io)

    async def node(name: str, parents: list[asyncio.Task[Any]]) -> Any:
        args = [await parent for parent in parents]
        if name in io:
            return await mixed.funcs[name](*args)
        return await loop.run_in_executor(pool, mixed.funcs[name], *args)

    tasks: dict[str, asyncio.Task[Any]] = {}
    for name, ds in mixed.deps.items():  # topological order, so every parent's task exists
        tasks[name] = asyncio.create_task(node(name, [tasks[d] for d in ds]))
    return dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))


def asyncio_mixed(mixed: Mixed, pool: Executor | None = None) -> dict[str, Any]:
    """Each task an asyncio task awaiting its parents; CPU ones in a process pool,
    created and shut down here unless ``pool`` is given."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if pool is not None:
            return runner.run(_asyncio_mixed(mixed, pool))
        with ProcessPoolExecutor(WORKERS, mp_context=forkserver()) as own:
            return runner.run(_asyncio_mixed(mixed, own))


def warm_pool() -> ProcessPoolExecutor:
    """A forkserver pool with both workers started (one task each in flight at once)."""
    pool = ProcessPoolExecutor(WORKERS, mp_context=forkserver())
    for future in [pool.submit(tiny) for _ in range(WORKERS)]:
        future.result()
    return pool


def bench_mixed(
    repeat: int, with_dask: bool, quick: bool
) -> tuple[dict[str, float], tuple[float, float, float, float]]:
    """Return name -> median makespan, and (simulated, lower bound, CPU task seconds,
    taskmap's makespan / in-run simulation).  ``quick`` leaves out a Dask variant."""
    loops, cpu_seconds = calibrate(CPU_TARGET)
    mixed = mixed_graph(loops)
    exact_sim, _, exact_lb = references(mixed, CPU_TARGET)
    simulated, critical, bound = references(mixed, cpu_seconds)
    n = len(mixed.deps)
    print(
        f"\n1. mixed makespan: {CHAINS} chains x {STEPS} steps, {len(mixed.io)} IO tasks"
        f" ({IO_SECONDS:g} s sleep) + {n - len(mixed.io)} CPU tasks, {WORKERS} workers,"
        f" median of {repeat}",
        flush=True,
    )
    print(
        f"  CPU task calibrated: {loops:,} loop iterations take {fmt_seconds(cpu_seconds)}"
        f" here (median of 7; target {fmt_seconds(CPU_TARGET)})"
    )
    print(
        f"  with exact durations: simulated schedule {exact_sim:.2f} s,"
        f" lower bound {exact_lb:.2f} s"
    )
    print(f"  {'simulated list schedule':<44} {fmt_seconds(simulated):>9}  (zero overhead)")
    print(
        f"  {'lower bound':<44} {fmt_seconds(bound):>9}  (max of critical path"
        f" {fmt_seconds(critical)}, CPU seconds / {WORKERS})",
        flush=True,
    )

    cpu_names = [name for name in mixed.deps if name not in mixed.io]
    # per contender and repeat: the simulated makespan with the CPU times of that run
    in_run: dict[str, list[float]] = {}

    def recorded(name: str, results: Mapping[str, Any]) -> bool:
        """Check a run's results and record its simulation; a check for `Case`."""
        if len(results) != n:
            return False
        cpu_times = {task: results[task] for task in cpu_names}
        in_run.setdefault(name, []).append(simulate_measured(mixed, cpu_times))
        return True

    def fresh() -> taskmap.Graph:
        return taskmap.create_graph(mixed.funcs, mixed.deps, io_bound=mixed.io)

    def complete(graph: taskmap.Graph) -> bool:
        return not graph.failed and recorded(TM_MIXED, graph.results)

    cases = [
        Case(
            TM_MIXED,
            lambda graph: taskmap.run_parallel_async(graph, ncores=WORKERS),
            setup=fresh,
            check=complete,
        ),
        Case(
            POOL_COLD,
            lambda _: asyncio_mixed(mixed),
            check=partial(recorded, POOL_COLD),
        ),
        Case(
            POOL_WARM,
            lambda pool: asyncio_mixed(mixed, pool),
            setup=warm_pool,
            check=partial(recorded, POOL_WARM),
            teardown=lambda pool: pool.shutdown(),
        ),
    ]
    if with_dask:
        import dask.multiprocessing
        import dask.threaded

        dsk = {name: (mixed.sync_funcs[name], *ds) for name, ds in mixed.deps.items()}
        keys = list(dsk)
        mp_get, threaded_get = dask.multiprocessing.get, dask.threaded.get
        dask_mp = f"dask.multiprocessing.get ({dask_context()})"

        def has_all(results: Sequence[Any]) -> bool:
            return len(results) == n

        cases += [
            Case(
                dask_mp,
                lambda _: dict(zip(keys, mp_get(dsk, keys, num_workers=WORKERS), strict=True)),
                check=partial(recorded, dask_mp),
            ),
            # threads share the GIL: their CPU times include waiting, so none is recorded
            Case(
                f"dask.threaded.get ({WORKERS} threads)",
                lambda _: threaded_get(dsk, keys, num_workers=WORKERS),
                check=has_all,
            ),
        ]
        if not quick:
            cases.append(
                Case(
                    "dask.threaded.get (16 threads)",
                    lambda _: threaded_get(dsk, keys, num_workers=16),
                    check=has_all,
                )
            )
    times = time_cases(cases, repeat)
    medians = {name: median(ts) for name, ts in times.items()}
    print(f"  {'':<44} {'median':>9}  {'/ simulated':>11}  {'/ bound':>7}  {'/ in-run':>8}")
    in_run_ratios = {
        name: median([t / sim for t, sim in zip(times[name], sims, strict=True)])
        for name, sims in in_run.items()
    }
    for name, seconds in medians.items():
        ratio = f"{in_run_ratios[name]:7.2f}x" if name in in_run_ratios else f"{'-':>8}"
        print(
            f"  {name:<44} {fmt_seconds(seconds):>9}  {seconds / simulated:10.2f}x"
            f"  {seconds / bound:6.2f}x  {ratio}",
            flush=True,
        )
    print(
        "  (in-run: the same simulation with the CPU times the tasks measured in that run,"
        " median of the per-run ratios: scheduling overhead apart from the machine's load)"
    )
    # The load of a shared machine may change during the runs: say so if it did.
    again = spin_seconds(loops)
    print(
        f"  CPU task re-timed after the runs: {fmt_seconds(again)}"
        f" ({again / cpu_seconds - 1:+.0%} since calibration)",
        flush=True,
    )
    return medians, (simulated, bound, cpu_seconds, in_run_ratios[TM_MIXED])


def dask_context() -> str:
    import dask

    return f"{dask.config.get('multiprocessing.context', 'spawn')}, {WORKERS} workers"


# -- 2. dispatch overhead -----------------------------------------------------------


def pool_submit_all(n: int, context: BaseContext) -> list[int]:
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        futures = [pool.submit(tiny) for _ in range(n)]
        return [future.result() for future in futures]


def pool_one_by_one(n: int, context: BaseContext) -> list[int]:
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        return [pool.submit(tiny).result() for _ in range(n)]


def dispatch_cases(n: int, with_dask: bool) -> list[Case]:
    graph_funcs = {f"t{i}": tiny for i in range(n)}
    graph_deps: Deps = {name: [] for name in graph_funcs}

    def fresh() -> taskmap.Graph:
        return taskmap.create_graph(graph_funcs, graph_deps)

    def complete(graph: taskmap.Graph) -> bool:
        return len(graph.done) == n and not graph.failed

    def has_all(results: Sequence[Any]) -> bool:
        return len(results) == n

    fork = multiprocessing.get_context("fork")
    cases = [
        Case(
            TM_DISPATCH,
            lambda graph: taskmap.run_parallel(graph, ncores=WORKERS),
            setup=fresh,
            check=complete,
        ),
        Case(POOL_ALL, lambda _: pool_submit_all(n, forkserver()), check=has_all),
        Case(POOL_SEQ, lambda _: pool_one_by_one(n, forkserver()), check=has_all),
        Case(POOL_FORK, lambda _: pool_submit_all(n, fork), check=has_all),
    ]
    if with_dask:
        import dask.multiprocessing

        dsk = dict.fromkeys(graph_funcs, (tiny,))
        keys = list(dsk)
        mp_get = dask.multiprocessing.get
        cases.append(Case(DASK_MP, lambda _: mp_get(dsk, keys, num_workers=WORKERS), check=has_all))
    return cases


def bench_dispatch(
    n: int, repeat: int, with_dask: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """Return name -> median seconds for ``n`` tasks, and for `SMALL` tasks (start-up)."""
    print(
        f"\n2. dispatch: {n:,} independent tasks returning 1, {WORKERS} workers, median of"
        f" {repeat}; pools start and stop inside the timed region",
        flush=True,
    )
    if with_dask:
        import dask

        chunksize = dask.config.get("chunksize", 6)
        print(f"  ({DASK_MP} uses {dask_context()}, chunksize {chunksize})")
    big = time_cases(dispatch_cases(n, with_dask), repeat)
    small = time_cases(dispatch_cases(SMALL, with_dask), repeat)
    full = {name: median(ts) for name, ts in big.items()}
    startup = {name: median(ts) for name, ts in small.items()}
    base = full[TM_DISPATCH]
    for name, seconds in full.items():
        marginal = (seconds - startup[name]) / (n - SMALL)
        print(
            f"  {name:<44} {fmt_seconds(seconds):>9}  {seconds / n * 1e6:7.1f} µs/task"
            f"  {seconds / base:6.2f}x taskmap   {SMALL} tasks: {fmt_seconds(startup[name]):>8},"
            f" marginal {marginal * 1e6:6.1f} µs/task",
            flush=True,
        )
    return full, startup


# -- 3. start-up ----------------------------------------------------------------------


# The start-up contenders again, driven from ``python -c``: there, no worker re-imports a
# main script, whereas a bare pool's worker re-imports this one (see the module docstring).
MINIMAL_STARTUP = """
import json, multiprocessing, statistics, sys, time
from concurrent.futures import ProcessPoolExecutor
import taskmap

def run_taskmap():
    graph = taskmap.create_graph({"a": int}, {"a": []})
    start = time.perf_counter()
    taskmap.run_parallel_async(graph, ncores=2)
    return time.perf_counter() - start

def run_pool():
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        pool.submit(int).result()
    return time.perf_counter() - start

run_taskmap(), run_pool()  # warm-up: the first starts the fork server
times = [(run_taskmap(), run_pool()) for _ in range(int(sys.argv[1]))]
print(json.dumps([statistics.median(column) for column in zip(*times)]))
"""


def minimal_startup(repeat: int) -> tuple[float, float]:
    """Return the median ``(taskmap, bare pool)`` 1-task times measured from ``python -c``."""
    out = subprocess.run(
        [sys.executable, "-c", MINIMAL_STARTUP, str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tm, pool = json.loads(out)
    return tm, pool


def bench_startup(repeat: int) -> tuple[dict[str, float], tuple[float, float]]:
    print(
        f"\n3. start-up: one trivial CPU task, {WORKERS} workers, median of {repeat},"
        " after one untimed warm-up of each",
        flush=True,
    )

    def fresh() -> taskmap.Graph:
        return taskmap.create_graph({"a": tiny}, {"a": []})

    cases = [
        Case(
            TM_STARTUP,
            lambda graph: taskmap.run_parallel_async(graph, ncores=WORKERS),
            setup=fresh,
            check=lambda graph: graph.results.get("a") == 1,
        ),
        Case(POOL_ONE, lambda _: pool_submit_all(1, forkserver())),
        Case(POOL_TWO, lambda _: pool_submit_all(2, forkserver())),
    ]
    time_cases(cases, 1)  # warm-up
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    base = medians[POOL_ONE]
    for name, seconds in medians.items():
        print(f"  {name:<44} {fmt_seconds(seconds):>9}  {seconds / base:5.2f}x bare pool, 1 task")
    print(
        "  (ProcessPoolExecutor starts a worker per submit while none is idle, so with 1 task"
        " it starts 1 process; taskmap starts both)"
    )
    control = minimal_startup(repeat)
    print(
        f"  control, both driven from `python -c` (no main script to re-import), median of"
        f" {repeat}: taskmap {fmt_seconds(control[0])}, bare pool 1 task"
        f" {fmt_seconds(control[1])}: {control[0] / control[1]:.2f}x",
        flush=True,
    )
    return medians, control


# -- the report -----------------------------------------------------------------------


def warm_up() -> tuple[float, float]:
    """Start the shared fork server the way taskmap does; return the cold run times.

    The fork server is a singleton per Python process: whoever starts it first sets its
    preload.  taskmap asks for ``taskmap.worker`` (which imports taskmap); that also
    spares a bare pool's worker importing taskmap when it re-imports this script.
    """
    forkserver().set_forkserver_preload(["taskmap.worker"])
    graph = taskmap.create_graph({"a": tiny}, {"a": []})
    first = _time(taskmap.run_parallel_async, graph, ncores=WORKERS)
    second = _time(pool_submit_all, 1, forkserver())
    return first, second


def report(
    mixed: dict[str, float],
    refs: tuple[float, float, float, float],
    dispatch: dict[str, float],
    startup: dict[str, float],
    control: tuple[float, float],
    n: int,
) -> None:
    simulated, bound, cpu_seconds, tm_in_run = refs
    print("\ngoals")
    tm = mixed[TM_MIXED]
    print("  " + goal_line("mixed makespan, taskmap", tm / simulated, "simulated", GOAL_MIXED))
    print(
        f"    (no goal: / lower bound {tm / bound:.2f}x; / in-run simulation {tm_in_run:.2f}x;"
        f" / pre-warmed asyncio + ProcessPoolExecutor {tm / mixed[POOL_WARM]:.2f}x)"
    )
    pool_best = min(POOL_ALL, POOL_SEQ, key=lambda name: dispatch[name])
    how = {POOL_ALL: "submit all, then collect", POOL_SEQ: "submit().result() one by one"}
    print(
        "  "
        + goal_line(
            f"dispatch per task, taskmap / bare forkserver pool ({how[pool_best]}, the faster)",
            dispatch[TM_DISPATCH] / dispatch[pool_best],
            "",
            GOAL_DISPATCH,
        )
    )
    if DASK_MP in dispatch:
        print(
            "  "
            + goal_line(
                f"dispatch per task, {DASK_MP} / taskmap",
                dispatch[DASK_MP] / dispatch[TM_DISPATCH],
                "",
                GOAL_DISPATCH_DASK,
                at_least=True,
            )
        )
    ratio = startup[TM_STARTUP] / startup[POOL_ONE]
    print("  " + goal_line("start-up, taskmap / bare pool", ratio, "", GOAL_STARTUP, strict=True))
    side = "within" if control[0] / control[1] < GOAL_STARTUP else "above"
    print(
        f"    (no goal: the control from `python -c` is {control[0] / control[1]:.2f}x,"
        f" {side} the {GOAL_STARTUP:g}x of the goal)"
    )

    print(f"\nmarkdown ({machine()}, {LOOP}, {WORKERS} workers):\n")
    print("| benchmark | runner | median | ratio |")
    print("| --- | --- | ---: | --- |")
    label = f"mixed makespan (CPU task {fmt_seconds(cpu_seconds)})"
    print(f"| {label} | simulated list schedule | {fmt_seconds(simulated)} | reference |")
    print(f"| {label} | lower bound | {fmt_seconds(bound)} | |")
    for name, seconds in mixed.items():
        print(
            f"| {label} | {name} | {fmt_seconds(seconds)} |"
            f" {seconds / simulated:.2f}x simulated, {seconds / bound:.2f}x bound |"
        )
    for name, seconds in dispatch.items():
        print(
            f"| dispatch, {n:,} tasks | {name} | {seconds / n * 1e6:.1f} µs/task |"
            f" {seconds / dispatch[TM_DISPATCH]:.2f}x taskmap |"
        )
    for name, seconds in startup.items():
        print(
            f"| start-up | {name} | {fmt_seconds(seconds)} |"
            f" {seconds / startup[POOL_ONE]:.2f}x bare pool, 1 task |"
        )
    for name, seconds in zip((TM_STARTUP, POOL_ONE), control, strict=True):
        print(
            f"| start-up, from `python -c` | {name} | {fmt_seconds(seconds)} |"
            f" {seconds / control[1]:.2f}x bare pool, 1 task |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer tasks (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        mixed_repeat, n, dispatch_repeat, startup_repeat = 1, 500, 1, 3
    else:
        mixed_repeat, n, dispatch_repeat, startup_repeat = 5, 2_000, 5, 10

    print(f"taskmap {taskmap.__version__} parallel benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {machine()}; event loop: {LOOP}; {compile_taskmap()}")
    try:
        import dask
    except ImportError:
        with_dask = False
        print("note: Dask is not installed (pip install 'taskmap[bench]'); its rows are skipped")
    else:
        with_dask = True
        print(f"dask {dask.__version__}")
    cold_taskmap, cold_pool = warm_up()
    print(
        f"warm-up (untimed): fork server started with preload ['taskmap.worker'];"
        f" first taskmap 1-task run {fmt_seconds(cold_taskmap)},"
        f" first bare pool 1-task run {fmt_seconds(cold_pool)}",
        flush=True,
    )

    mixed, refs = bench_mixed(mixed_repeat, with_dask, args.quick)
    dispatch, _ = bench_dispatch(n, dispatch_repeat, with_dask)
    startup, control = bench_startup(startup_repeat)
    report(mixed, refs, dispatch, startup, control, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
