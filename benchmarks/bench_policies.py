"""Policies benchmark: what limits, retries and run statistics cost; taskmap on a Dask cluster.

Usage::

    python benchmarks/bench_policies.py           # full: medians of 7 (Dask: of 5)
    python benchmarks/bench_policies.py --quick   # smoke: medians of 3, 60 Dask tasks

Every contender of a section is timed in the same run, interleaved (`_common.time_cases`);
graphs are built untimed before each repeat.  Ratios compare medians of the same run.

1. *Limits on the hot path*: the 10,000-task layered graph of bench_core (no-op tasks)
   under `run` and `run_async`, without policies, then with every task in channel
   ``'c'``, without limits and with ``limits={'c': 1_000_000}`` (never binding).  The
   same graph of coroutines that ``await asyncio.sleep(0)`` under `run_async`: no
   limit, a non-binding one, and ``limits={'c': 1}`` (one at a time); references on
   the same event loop: one asyncio Task per node awaiting its parents' Tasks (as in
   bench_core), the same holding an ``asyncio.Semaphore(1)`` while it runs, and a loop
   awaiting the coroutines one after the other (no Task at all: the least a limit of
   1 can cost).  Then building ``graph.stats.tasks`` (and ``.busy``) after a
   10,000-task `run`.
2. *IO limit*: 2,000 io-bound coroutines, each ``await asyncio.sleep(0.001)``, at most
   20 at once: `run_async` with ``limits={'io': 20}`` against ``asyncio.Semaphore(20)``
   and ``asyncio.gather`` on the same event loop (the floor), and both without a limit.
   Every coroutine counts how many run at once; the peak must be the limit.
3. *Retries*: 1,000 tasks of the layered graph, every one with ``Retry(times=1,
   delay=0, jitter=0)``; every tenth raises on its first call and succeeds on the
   second.  Against the same graph without retries or failures, and with retries but
   no failures, under `run` and `run_async`.
4. *Dask peer* (when ``distributed`` imports): 200 independent CPU tasks of ~5 ms of
   pure Python, and one task summing them, on a ``LocalCluster`` of 2 worker processes
   of 1 thread, started once, untimed, and shared by every repeat: `run_parallel_async`
   with ``executor=client.get_executor()``, Dask's ``client.get`` on the same graph as a
   Dask dict (every key asked for, as taskmap keeps every result), and
   `run_parallel_async` on its own 2-worker pool (pool start-up inside the timed
   region, as users call it).  Floor: the CPU work measured serially here / 2 cores.
   Each task is its own ``partial`` with its index as an argument: through
   ``client.get_executor()``, tasks of the same function and arguments would share one
   Dask key (``Client.submit`` is ``pure=True`` by default) and run once for all.
   One untimed warm-up run of each contender comes first.

No section has a goal: this is a report.  The exit status is 0 unless a check fails
(a run that did not finish, or a limit that did not hold).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from time import perf_counter
from typing import Any

from _common import (
    LOOP,
    WIDTH,
    Case,
    fmt_seconds,
    layered_dependencies,
    layered_graph,
    machine,
    median,
    new_event_loop,
    time_cases,
)

import taskmap

HOT_TASKS = 10_000
BIG = 1_000_000  # a limit that never binds
IO_TASKS, IO_LIMIT, IO_SLEEP = 2_000, 20, 0.001
RETRY_TASKS, FAIL_EVERY = 1_000, 10
CPU_TASKS, CPU_TARGET, WORKERS = 200, 0.005, 2

Deps = dict[str, list[str]]
Funcs = dict[str, Callable[..., Any]]
Row = tuple[str, str, str, str]  # section, contender, median, ratio: for the markdown


class CheckFailed(AssertionError):
    """A run did not finish, or a limit did not hold."""


# -- tasks (module level: workers get them by value, Dask's too) ------------------


class Gauge:
    """How many instrumented coroutines run at once, and the most that did."""

    __slots__ = ("now", "peak")

    def __init__(self) -> None:
        self.now = self.peak = 0

    def reset(self) -> None:
        self.now = self.peak = 0


GAUGE = Gauge()


async def yield_once(*deps: object) -> None:
    """A coroutine task that gives the loop one turn, counted by `GAUGE`."""
    gauge = GAUGE
    gauge.now += 1
    if gauge.now > gauge.peak:
        gauge.peak = gauge.now
    await asyncio.sleep(0)
    gauge.now -= 1


async def io_call(*deps: object) -> int:
    """An IO task: sleeps `IO_SLEEP`, counted by `GAUGE`."""
    gauge = GAUGE
    gauge.now += 1
    if gauge.now > gauge.peak:
        gauge.peak = gauge.now
    try:
        await asyncio.sleep(IO_SLEEP)
    finally:
        gauge.now -= 1
    return 1


class Flaky(Exception):
    """What a flaky task raises on its first call."""


#: names of the flaky tasks called once already (reset before every run)
FIRST_CALLS: set[str] = set()


def flaky(name: str, fails: bool, *deps: object) -> None:
    """A no-op task; when ``fails``, its first call (per `FIRST_CALLS`) raises."""
    if fails and name not in FIRST_CALLS:
        FIRST_CALLS.add(name)
        raise Flaky(name)


def spin(loops: int, *deps: object) -> int:
    """Pure-Python busy work: holds the GIL for the whole call."""
    total = 0
    for i in range(loops):
        total += i
    return total


def add_up(*values: int) -> int:
    return sum(values)


# -- helpers ------------------------------------------------------------------------


def _timed(func: Callable[..., Any], *args: Any) -> float:
    start = perf_counter()
    func(*args)
    return perf_counter() - start


def run_on_loop(coro_factory: Callable[[], Any]) -> Any:
    """Run a coroutine on a fresh loop of the kind `run_async` uses (created in the timed
    region, as `run_async` creates its own)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro_factory())


def finished(n: int) -> Callable[[taskmap.Graph], bool]:
    def check(graph: taskmap.Graph) -> bool:
        return len(graph.done) == n and not graph.failed

    return check


def print_rows(
    medians: Mapping[str, float], refs: Mapping[str, str], n: int, per_task: bool = True
) -> None:
    """One line per contender: median, µs/task, and the ratio to its reference."""
    for name, seconds in medians.items():
        ref = refs.get(name)
        ratio = f"{seconds / medians[ref]:6.2f}x {ref}" if ref else f"{'':>7} (reference)"
        cost = f"{seconds / n * 1e6:7.2f} µs/task" if per_task else ""
        print(f"  {name:<52} {fmt_seconds(seconds):>9} {cost}  {ratio}", flush=True)


# -- 1. limits on the hot path -----------------------------------------------------

RUN = "run"
RUN_NC = "run, channel 'c', no limits"
RUN_C = "run, channel 'c', limit 1,000,000"
ARUN = "run_async"
ARUN_C = "run_async, channel 'c', limit 1,000,000"
CORO = "run_async, coroutines"
CORO_C = "run_async, coroutines, limit 1,000,000"
CORO_1 = "run_async, coroutines, limit 1 (binding)"
SERIAL = "asyncio, coroutines awaited one by one"
TASKS = "asyncio, a Task per node awaiting its parents"
TASKS_1 = "asyncio, a Task per node + Semaphore(1)"
STATS = "graph.stats.tasks after a run"
BUSY = "graph.stats.busy (tasks built)"


async def _serial(funcs: Funcs, deps: Deps) -> int:
    for name in deps:  # topological order
        await funcs[name]()
    return len(deps)


async def _asyncio_tasks(funcs: Funcs, deps: Deps, limit: int | None) -> int:
    """One asyncio.Task per node awaiting its parents' tasks (bench_core's reference),
    each holding ``asyncio.Semaphore(limit)`` while it runs when ``limit`` is given."""
    semaphore = None if limit is None else asyncio.Semaphore(limit)

    async def node(name: str, parents: list[asyncio.Task[Any]]) -> None:
        for parent in parents:
            await parent
        if semaphore is None:
            return await funcs[name]()
        async with semaphore:
            return await funcs[name]()

    tasks: dict[str, asyncio.Task[Any]] = {}
    for name, ds in deps.items():  # topological order, so every parent's task exists
        tasks[name] = asyncio.create_task(node(name, [tasks[d] for d in ds]))
    await asyncio.gather(*tasks.values())
    return len(tasks)


def bench_hot(n: int, repeat: int) -> tuple[dict[str, float], dict[str, int]]:
    """Return name -> median seconds, and the peak concurrency of the coroutine runs."""
    funcs, deps = layered_graph(n)
    coros: Funcs = dict.fromkeys(deps, yield_once)
    channels = dict.fromkeys(deps, "c")
    print(
        f"\n1. limits on the hot path: {n:,} tasks (layered, width {WIDTH}), median of {repeat}",
        flush=True,
    )
    peaks: dict[str, list[int]] = {}

    def graph(fs: Funcs, with_channels: bool) -> Callable[[], taskmap.Graph]:
        def fresh() -> taskmap.Graph:
            GAUGE.reset()
            return taskmap.create_graph(fs, deps, channels=channels if with_channels else None)

        return fresh

    def coro_check(name: str) -> Callable[[taskmap.Graph], bool]:
        def check(g: taskmap.Graph) -> bool:
            peaks.setdefault(name, []).append(GAUGE.peak)
            return finished(n)(g)

        return check

    def ran(_: object) -> taskmap.Graph:
        return taskmap.run(taskmap.create_graph(funcs, deps))

    def stats_built(_: object) -> taskmap.Graph:
        g = ran(None)
        g.stats.tasks  # noqa: B018  (built here, untimed)
        return g

    done = finished(n)
    big, one = {"c": BIG}, {"c": 1}
    cases = [
        Case(RUN, taskmap.run, setup=graph(funcs, False), check=done),
        Case(RUN_NC, taskmap.run, setup=graph(funcs, True), check=done),
        Case(RUN_C, partial(taskmap.run, limits=big), setup=graph(funcs, True), check=done),
        Case(ARUN, taskmap.run_async, setup=graph(funcs, False), check=done),
        Case(ARUN_C, partial(taskmap.run_async, limits=big), setup=graph(funcs, True), check=done),
        Case(CORO, taskmap.run_async, setup=graph(coros, False), check=coro_check(CORO)),
        Case(
            CORO_C,
            partial(taskmap.run_async, limits=big),
            setup=graph(coros, True),
            check=coro_check(CORO_C),
        ),
        Case(
            CORO_1,
            partial(taskmap.run_async, limits=one),
            setup=graph(coros, True),
            check=coro_check(CORO_1),
        ),
        Case(
            SERIAL,
            lambda _: run_on_loop(lambda: _serial(coros, deps)),
            setup=GAUGE.reset,
            check=lambda count: count == n and GAUGE.peak == 1,
        ),
        Case(
            TASKS,
            lambda _: run_on_loop(lambda: _asyncio_tasks(coros, deps, None)),
            setup=GAUGE.reset,
            check=lambda count: count == n,
        ),
        Case(
            TASKS_1,
            lambda _: run_on_loop(lambda: _asyncio_tasks(coros, deps, 1)),
            setup=GAUGE.reset,
            check=lambda count: count == n and GAUGE.peak == 1,
        ),
        Case(
            STATS,
            lambda g: g.stats.tasks,
            setup=partial(ran, None),
            check=lambda rows: len(rows) == n,
        ),
        Case(BUSY, lambda g: g.stats.busy, setup=partial(stats_built, None), check=bool),
    ]
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    refs = {RUN_NC: RUN, RUN_C: RUN, ARUN_C: ARUN, CORO_C: CORO, CORO_1: CORO, SERIAL: CORO}
    refs.update({TASKS: CORO, TASKS_1: CORO, STATS: RUN, BUSY: RUN})
    print_rows(medians, refs, n)
    peak = {name: max(values) for name, values in peaks.items()}
    print(
        f"  most coroutines running at once: {peak[CORO]} without a limit,"
        f" {peak[CORO_C]} with limit 1,000,000, {peak[CORO_1]} with limit 1"
    )
    print(
        f"  limit 1: {medians[CORO_1] / medians[TASKS_1]:.2f}x {TASKS_1},"
        f" {medians[CORO_1] / medians[SERIAL]:.2f}x {SERIAL};"
        f" no limit: {medians[CORO] / medians[TASKS]:.2f}x {TASKS}",
        flush=True,
    )
    if peak[CORO_1] != 1:
        raise CheckFailed(f"limit 1 did not hold: {peak[CORO_1]} coroutines ran at once")
    return medians, peak


# -- 2. IO limit against asyncio ---------------------------------------------------

IO_TM = f"taskmap run_async, limits={{'io': {IO_LIMIT}}}"
IO_FLOOR = f"asyncio.Semaphore({IO_LIMIT}) + gather"
IO_TM_FREE = "taskmap run_async, no limit"
IO_FREE = "asyncio.gather, no limit"


async def _gather_limited(n: int, limit: int) -> list[int]:
    semaphore = asyncio.Semaphore(limit)

    async def one() -> int:
        async with semaphore:
            return await io_call()

    return await asyncio.gather(*(one() for _ in range(n)))


async def _gather(n: int) -> list[int]:
    return await asyncio.gather(*(io_call() for _ in range(n)))


async def _one_sleep() -> float:
    start = perf_counter()
    await asyncio.sleep(IO_SLEEP)
    return perf_counter() - start


def bench_io(n: int, repeat: int) -> tuple[dict[str, float], dict[str, int], float]:
    """Return name -> median makespan, name -> peak concurrency, one sleep's median time."""
    print(
        f"\n2. IO limit: {n:,} io-bound coroutines awaiting asyncio.sleep({IO_SLEEP:g}),"
        f" at most {IO_LIMIT} at once, median of {repeat}",
        flush=True,
    )
    names = [f"io{i}" for i in range(n)]
    funcs: Funcs = dict.fromkeys(names, io_call)
    deps: Deps = {name: [] for name in names}
    peaks: dict[str, list[int]] = {}

    def fresh() -> taskmap.Graph:
        GAUGE.reset()
        return taskmap.create_graph(funcs, deps, io_bound=names)

    def check(name: str, results: object) -> bool:
        peaks.setdefault(name, []).append(GAUGE.peak)
        if isinstance(results, taskmap.Graph):
            return finished(n)(results)
        return isinstance(results, list) and len(results) == n

    def reset() -> None:
        GAUGE.reset()

    cases = [
        Case(
            IO_TM,
            partial(taskmap.run_async, limits={"io": IO_LIMIT}),
            setup=fresh,
            check=partial(check, IO_TM),
        ),
        Case(
            IO_FLOOR,
            lambda _: run_on_loop(lambda: _gather_limited(n, IO_LIMIT)),
            setup=reset,
            check=partial(check, IO_FLOOR),
        ),
        Case(IO_TM_FREE, taskmap.run_async, setup=fresh, check=partial(check, IO_TM_FREE)),
        Case(
            IO_FREE,
            lambda _: run_on_loop(lambda: _gather(n)),
            setup=reset,
            check=partial(check, IO_FREE),
        ),
    ]
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    sleep = median([run_on_loop(_one_sleep) for _ in range(repeat)])
    refs = {IO_TM: IO_FLOOR, IO_TM_FREE: IO_FREE}
    print_rows(medians, refs, n, per_task=False)
    # the least a limit allows: n / limit rounds of one sleep each
    bound = n / IO_LIMIT * sleep
    print(
        f"  one asyncio.sleep({IO_SLEEP:g}) takes {fmt_seconds(sleep)} here: {n:,} / {IO_LIMIT}"
        f" rounds of it = {fmt_seconds(bound)}; taskmap {medians[IO_TM] / bound:.2f}x,"
        f" floor {medians[IO_FLOOR] / bound:.2f}x that"
    )
    peak = {name: max(values) for name, values in peaks.items()}
    print(
        "  most coroutines running at once (over the repeats): "
        + ", ".join(f"{name}: {p}" for name, p in peak.items()),
        flush=True,
    )
    lowest = min(peaks[IO_TM])
    if peak[IO_TM] != IO_LIMIT or lowest != IO_LIMIT:
        raise CheckFailed(f"limit {IO_LIMIT} did not hold: peaks {peaks[IO_TM]} under taskmap")
    return medians, peak, sleep


# -- 3. retries ----------------------------------------------------------------------

RETRY_POLICY = taskmap.Retry(times=1, delay=0, jitter=0)


def retry_name(runner: str, case: str) -> str:
    return f"{runner}, {case}"


PLAIN = "no retries, no failures"
ARMED = "retries, no failures"
FLAKY = f"retries, 1 in {FAIL_EVERY} fails once"


def bench_retries(n: int, repeat: int) -> dict[str, float]:
    deps = layered_dependencies(n)
    names = list(deps)
    flaky_names = set(names[::FAIL_EVERY])
    steady: Funcs = {name: partial(flaky, name, False) for name in names}
    failing: Funcs = {name: partial(flaky, name, name in flaky_names) for name in names}
    retries = dict.fromkeys(names, RETRY_POLICY)
    print(
        f"\n3. retries: {n:,} tasks (layered), every one with {RETRY_POLICY!r};"
        f" {len(flaky_names)} fail once then succeed; median of {repeat}",
        flush=True,
    )

    def graph(funcs: Funcs, with_retries: bool) -> Callable[[], taskmap.Graph]:
        def fresh() -> taskmap.Graph:
            FIRST_CALLS.clear()
            return taskmap.create_graph(funcs, deps, retries=retries if with_retries else None)

        return fresh

    def retried(g: taskmap.Graph) -> bool:
        if not finished(n)(g):
            return False
        twice = {t for t, row in g.stats.tasks.items() if row.attempts == 2}
        return twice == flaky_names

    cases = []
    for runner_name, runner in (("run", taskmap.run), ("run_async", taskmap.run_async)):
        cases += [
            Case(
                retry_name(runner_name, PLAIN),
                runner,
                setup=graph(steady, False),
                check=finished(n),
            ),
            Case(
                retry_name(runner_name, ARMED),
                runner,
                setup=graph(steady, True),
                check=finished(n),
            ),
            Case(retry_name(runner_name, FLAKY), runner, setup=graph(failing, True), check=retried),
        ]
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    refs = {}
    for runner_name in ("run", "run_async"):
        for case in (ARMED, FLAKY):
            refs[retry_name(runner_name, case)] = retry_name(runner_name, PLAIN)
    print_rows(medians, refs, n)
    for runner_name in ("run", "run_async"):
        extra = medians[retry_name(runner_name, FLAKY)] - medians[retry_name(runner_name, ARMED)]
        print(
            f"  {runner_name}: each retry adds {extra / len(flaky_names) * 1e6:.1f} µs"
            " (failure, retry and second call)"
        )
    return medians


# -- 4. Dask peer ---------------------------------------------------------------------

DASK_EXEC = "taskmap run_parallel_async, Dask executor"
DASK_GET = "Dask client.get"
TM_POOL = "taskmap run_parallel_async, ncores=2"


def calibrate(target: float) -> tuple[int, float]:
    """Return ``(loops, seconds)``: a `spin` count taking ~``target`` here, and its median
    time over 15 serial calls."""
    probe = 200_000
    spin(probe)
    per_loop = median([_timed(spin, probe) for _ in range(5)]) / probe
    loops = max(1, round(target / per_loop))
    return loops, median([_timed(spin, loops) for _ in range(15)])


def bench_dask(n: int, repeat: int) -> tuple[dict[str, float], float, float] | None:
    """Return name -> median makespan, the floor, and one task's serial time; None
    without distributed."""
    try:
        import distributed
    except ImportError:
        print("\n4. Dask peer: skipped, distributed is not installed (pip install distributed)")
        return None
    loops, one = calibrate(CPU_TARGET)
    floor = n * one / WORKERS
    print(
        f"\n4. Dask peer: {n} independent CPU tasks of {fmt_seconds(one)} each (measured"
        f" serially) + 1 sum, {WORKERS} workers, median of {repeat};"
        f" floor {n} x {fmt_seconds(one)} / {WORKERS} = {fmt_seconds(floor)}",
        flush=True,
    )
    # Each task gets its own index as an (ignored) argument.  Were every task the same
    # function with the same arguments, client.get_executor() (Client.submit, pure=True
    # by default) would give them one key, and Dask would run one of them for all.
    names = [f"w{i}" for i in range(n)]
    funcs: Funcs = {name: partial(spin, loops, i) for i, name in enumerate(names)}
    funcs["total"] = add_up
    deps: Deps = {name: [] for name in names}
    deps["total"] = names
    dsk: dict[Hashable, Any] = {name: (spin, loops, i) for i, name in enumerate(names)}
    dsk["total"] = (add_up, *names)
    keys = list(dsk)
    expected = n * spin(loops)

    def fresh() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps)

    def tm_ok(g: taskmap.Graph) -> bool:
        return finished(n + 1)(g) and g.results["total"] == expected

    start = perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # without a dashboard the scheduler still serves HTTP, on port 8787 unless told
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    with cluster, distributed.Client(cluster) as client:
        print(f"  (cluster started in {fmt_seconds(perf_counter() - start)}, untimed)", flush=True)
        executor = client.get_executor()
        cases = [
            Case(
                DASK_EXEC,
                partial(taskmap.run_parallel_async, executor=executor),
                setup=fresh,
                check=tm_ok,
            ),
            Case(
                DASK_GET,
                lambda _: client.get(dsk, keys),
                check=lambda values: len(values) == n + 1 and values[-1] == expected,
            ),
            Case(
                TM_POOL,
                partial(taskmap.run_parallel_async, ncores=WORKERS),
                setup=fresh,
                check=tm_ok,
            ),
        ]
        time_cases(cases, 1)  # warm-up: workers import and deserialise, the fork server starts
        times = time_cases(cases, repeat)
    medians = {name: median(ts) for name, ts in times.items()}
    for name, seconds in medians.items():
        print(
            f"  {name:<52} {fmt_seconds(seconds):>9}  {seconds / floor:5.2f}x floor"
            f"  {seconds / medians[DASK_GET]:5.2f}x {DASK_GET}"
            f"  (range {fmt_seconds(min(times[name]))} to {fmt_seconds(max(times[name]))})",
            flush=True,
        )
    print(
        "  (the idle cluster stays up during every case: its scheduler shares this process's"
        " GIL, its workers and nannies the 2 cores)"
    )
    again = median([_timed(spin, loops) for _ in range(15)])
    print(
        f"  CPU task re-timed after the runs: {fmt_seconds(again)}"
        f" ({again / one - 1:+.0%} since calibration)",
        flush=True,
    )
    return medians, floor, one


# -- the report -----------------------------------------------------------------------


def report(
    hot: dict[str, float],
    hot_peak: dict[str, int],
    io: dict[str, float],
    io_peak: dict[str, int],
    retries: dict[str, float],
    dask: tuple[dict[str, float], float, float] | None,
    sizes: tuple[int, int, int, int],
) -> None:
    n_hot, n_io, n_retry, n_cpu = sizes
    rows: list[Row] = []

    def us(seconds: float, n: int) -> str:
        return f"{seconds / n * 1e6:.2f} µs/task"

    label = f"hot path, {n_hot:,} no-op tasks"
    for name, ref in ((RUN, None), (RUN_NC, RUN), (RUN_C, RUN), (ARUN, None), (ARUN_C, ARUN)):
        ratio = f"{hot[name] / hot[ref]:.2f}x {ref}" if ref else "reference"
        rows.append((label, name, us(hot[name], n_hot), ratio))
    label = f"hot path, {n_hot:,} coroutines, sleep(0)"
    coro_rows = ((CORO, None), (CORO_C, CORO), (CORO_1, CORO), (TASKS, CORO), (TASKS_1, CORO))
    for name, ref in (*coro_rows, (SERIAL, CORO)):
        ratio = f"{hot[name] / hot[ref]:.2f}x {ref}" if ref else "reference"
        if name == CORO_1:
            ratio += f", {hot[name] / hot[TASKS_1]:.2f}x {TASKS_1}"
        if name == CORO:
            ratio = f"{hot[name] / hot[TASKS]:.2f}x {TASKS}"
        rows.append((label, name, us(hot[name], n_hot), ratio))
    label = f"stats, {n_hot:,} tasks"
    for name in (STATS, BUSY):
        rows.append((label, name, us(hot[name], n_hot), f"{hot[name] / hot[RUN]:.2f}x run"))
    label = f"IO, {n_io:,} x sleep({IO_SLEEP:g})"
    for name, ref in ((IO_TM, IO_FLOOR), (IO_FLOOR, None), (IO_TM_FREE, IO_FREE), (IO_FREE, None)):
        ratio = f"{io[name] / io[ref]:.2f}x {ref}" if ref else "reference"
        rows.append((label, f"{name} (peak {io_peak[name]})", fmt_seconds(io[name]), ratio))
    label = f"retries, {n_retry:,} tasks"
    for name, seconds in retries.items():
        plain = retry_name(name.split(",")[0], PLAIN)
        ratio = "reference" if name == plain else f"{seconds / retries[plain]:.2f}x {PLAIN}"
        rows.append((label, name, us(seconds, n_retry), ratio))
    if dask is not None:
        medians, floor, one = dask
        label = f"Dask peer, {n_cpu} x {fmt_seconds(one)} CPU + sum"
        rows.append((label, f"floor: CPU s / {WORKERS}", fmt_seconds(floor), "1.00x"))
        for name, seconds in medians.items():
            ratio = f"{seconds / floor:.2f}x floor"
            if name != DASK_GET:
                ratio += f", {seconds / medians[DASK_GET]:.2f}x {DASK_GET}"
            rows.append((label, name, fmt_seconds(seconds), ratio))

    print("\nsummary")
    print(
        f"  limits, never binding: run {hot[RUN_C] / hot[RUN]:.2f}x,"
        f" run_async {hot[ARUN_C] / hot[ARUN]:.2f}x, coroutines {hot[CORO_C] / hot[CORO]:.2f}x"
        f"; binding (limit 1): {hot[CORO_1] / hot[CORO]:.2f}x no limit,"
        f" {hot[CORO_1] / hot[TASKS_1]:.2f}x asyncio Tasks + Semaphore(1),"
        f" {hot[CORO_1] / hot[SERIAL]:.2f}x the one-by-one asyncio loop"
    )
    print(
        f"  IO limit: taskmap / asyncio.Semaphore floor {io[IO_TM] / io[IO_FLOOR]:.2f}x;"
        f" the limit held: peak {io_peak[IO_TM]} (limit {IO_LIMIT});"
        f" limit 1 held: peak {hot_peak[CORO_1]}"
    )
    if dask is not None:
        medians, floor, _ = dask
        print(
            "  Dask peer: "
            + ", ".join(f"{name} {seconds / floor:.2f}x floor" for name, seconds in medians.items())
        )

    print(f"\nmarkdown ({machine()}, {LOOP}):\n")
    print("| benchmark | runner | median | ratio |")
    print("| --- | --- | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="medians of 3, fewer Dask tasks")
    args = parser.parse_args(argv)
    if args.quick:
        repeat, dask_repeat, cpu_tasks = 3, 3, 60
    else:
        repeat, dask_repeat, cpu_tasks = 7, 5, CPU_TASKS

    print(f"taskmap {taskmap.__version__} policies benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {machine()}; event loop: {LOOP}")
    hot, hot_peak = bench_hot(HOT_TASKS, repeat)
    io, io_peak, _ = bench_io(IO_TASKS, repeat)
    retries = bench_retries(RETRY_TASKS, repeat)
    dask = bench_dask(cpu_tasks, dask_repeat)
    report(hot, hot_peak, io, io_peak, retries, dask, (HOT_TASKS, IO_TASKS, RETRY_TASKS, cpu_tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
