"""The first run (issue 13): every figure from a fresh process, as a script runs.

Usage::

    python benchmarks/bench_first_run.py           # full: medians of 5
    python benchmarks/bench_first_run.py --quick   # smoke: one repeat, fewer tasks
    python benchmarks/bench_first_run.py --rows 45 # rows 4 and 5 only

Each measurement is one new ``python`` running this file with ``--child SPEC`` (it
prints one JSON line); the contenders of a row are interleaved (repeat 1 of every
contender, then repeat 2...) and their medians compared in the same run (rows 6
and 7: the median of the ratios of the runs side by side).  taskmap's modules are
compiled to bytecode first, as pip installs them, so that no child compiles them.
What a child times is the run as a script does it: the pool starts and stops inside the
timed region, the graph is built inside it (``create_graph`` + runner), and tasks
are functions of the script (this file's ``__main__``), one distinct
``functools.partial`` (or lambda) per task.  Imports are outside the timed region,
except in the first row, which times them alone.  Rows (2 workers throughout):

1. ``import taskmap``: wall time of ``python -c "import taskmap"`` against
   ``python -c pass`` (spawn to exit), and the import alone, timed inside.
2. 2 trivial CPU tasks, ``run_parallel_async``, against a bare
   ``ProcessPoolExecutor(2)`` created, used once and shut down: forkserver and fork.
3. Mixed: 24 IO tasks (0.1 s sleep) + 24 CPU tasks (~50 ms), `bench_parallel`'s
   8 chains of 3 steps, ``run_parallel_async``, against the zero-overhead simulated
   schedule (CPU time calibrated here) and a hand-written asyncio + forkserver
   ``ProcessPoolExecutor``.
4. 2,000 tasks, one distinct ``partial`` each (and one lambda each), ``run_parallel``,
   against a bare fork ``ProcessPoolExecutor`` (submit all, collect) and Dask's
   multiprocessing scheduler.
5. 10,000 no-op coroutine tasks (io-bound, a layered DAG), ``run_async`` with the
   stall watch on (the default) and off, against bare uvloop: one ``asyncio.Task``
   per node awaiting its dependencies' tasks, loop creation included for both.
6. Cached rerun of 10,000 distinct partials (``cache=DIR``, ``create_graph`` +
   ``run``, the store filled by an untimed child) against ``joblib.Memory`` (the same
   10,000 calls of a ``Memory.cache``-decorated function, filled likewise).
7. Cold run of 10,000 distinct partials with the default store (a new directory per
   repeat), ``run_parallel_async``, against the same run without a store.

A missed goal prints MISS; the exit status is 0 anyway: this is a report, not a test.
"""

from __future__ import annotations

# Light on purpose: a bare forkserver pool's workers re-import this script as
# ``__mp_main__``; what the rows need is imported where it is used.
import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
CALLS = 0  # joblib child: how many times `work` ran (0 when every call was cached)

# the goals: (bar, aim or None)
GOAL_IMPORT = 0.040  # seconds, `import taskmap` timed inside a fresh `python -c`
GOAL_TWO_FORKSERVER, GOAL_TWO_FORK = 1.0, 2.0
GOAL_PARTIALS, GOAL_LAMBDAS = 0.5, 1.2
GOAL_MIXED, AIM_MIXED = 1.10, 1.03
GOAL_CORO, AIM_CORO = 1.2, 1.0
GOAL_CACHED_US, GOAL_JOBLIB = 12.0, 10.0
GOAL_COLD = 2.0


# -- the tasks: functions of the script, as a user's are -------------------------


def trivial(*deps: object) -> int:
    return 1


def work(i: int, *deps: object) -> int:
    global CALLS
    CALLS += 1
    return i


async def anoop(*deps: object) -> None:
    """A coroutine task that does nothing (and never suspends)."""


# -- the children: one measurement each ---------------------------------------------


def load_taskmap(*names: str) -> Any:
    """``import taskmap`` and load the modules of ``names`` (lazy: PEP 562), untimed:
    imports are measured by the first row alone."""
    import taskmap

    for name in names:
        getattr(taskmap, name)
    return taskmap


def child_two(spec: dict[str, Any]) -> dict[str, Any]:
    how = spec["how"]
    if how == "taskmap":
        taskmap = load_taskmap("create_graph", "run_parallel_async")
        t0 = time.perf_counter()
        graph = taskmap.create_graph({"a": trivial, "b": trivial}, {"a": [], "b": []})
        taskmap.run_parallel_async(graph, ncores=WORKERS)
        t1 = time.perf_counter()
        assert graph.results == {"a": 1, "b": 1}, graph.results
        return {"seconds": t1 - t0}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(how)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        results = [f.result() for f in [pool.submit(trivial) for _ in range(2)]]
    t1 = time.perf_counter()
    assert results == [1, 1]
    return {"seconds": t1 - t0}


def child_mixed(spec: dict[str, Any]) -> dict[str, Any]:
    import bench_parallel as bp

    mixed = bp.mixed_graph(spec["loops"])
    cpu_names = [name for name in mixed.deps if name not in mixed.io]
    taskmap = load_taskmap("create_graph", "run_parallel_async")
    t0 = time.perf_counter()
    if spec["how"] == "taskmap":
        graph = taskmap.create_graph(mixed.funcs, mixed.deps, io_bound=mixed.io)
        taskmap.run_parallel_async(graph, ncores=WORKERS)
        results = graph.results
    else:
        results = bp.asyncio_mixed(mixed)
    t1 = time.perf_counter()
    assert len(results) == len(mixed.deps)
    in_run = bp.simulate_measured(mixed, {name: results[name] for name in cpu_names})
    return {"seconds": t1 - t0, "in_run": in_run}


def dispatch_funcs(n: int, lambdas: bool) -> dict[str, Callable[..., Any]]:
    if lambdas:
        return {f"t{i}": lambda i=i: work(i) for i in range(n)}
    return {f"t{i}": partial(work, i) for i in range(n)}


def child_dispatch(spec: dict[str, Any]) -> dict[str, Any]:
    n, how = spec["n"], spec["how"]
    names = [f"t{i}" for i in range(n)]
    if how in ("partials", "lambdas"):
        taskmap = load_taskmap("create_graph", "run_parallel")

        funcs = dispatch_funcs(n, how == "lambdas")
        deps: dict[str, list[str]] = {name: [] for name in names}
        t0 = time.perf_counter()
        graph = taskmap.create_graph(funcs, deps)
        taskmap.run_parallel(graph, ncores=WORKERS)
        t1 = time.perf_counter()
        results = [graph.results[name] for name in names]
    elif how == "fork":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        t0 = time.perf_counter()
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
            results = [f.result() for f in [pool.submit(work, i) for i in range(n)]]
        t1 = time.perf_counter()
    else:
        import dask.multiprocessing

        dsk = {name: (work, i) for i, name in enumerate(names)}
        t0 = time.perf_counter()
        results = list(dask.multiprocessing.get(dsk, names, num_workers=WORKERS))
        t1 = time.perf_counter()
    assert results == list(range(n))
    return {"seconds": t1 - t0}


def child_coroutines(spec: dict[str, Any]) -> dict[str, Any]:
    from _common import layered_dependencies

    n, how = spec["n"], spec["how"]
    deps = layered_dependencies(n)
    if how == "bare":
        import asyncio

        import uvloop

        async def node(parents: list[asyncio.Task[Any]]) -> None:
            await anoop(*[await parent for parent in parents])

        async def main() -> int:
            tasks: dict[str, asyncio.Task[Any]] = {}
            for name, ds in deps.items():  # topological order
                tasks[name] = asyncio.create_task(node([tasks[d] for d in ds]))
            await asyncio.gather(*tasks.values())
            return len(tasks)

        t0 = time.perf_counter()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            done = runner.run(main())
        t1 = time.perf_counter()
        return {"seconds": t1 - t0, "create": 0.0, "done": done}
    taskmap = load_taskmap("create_graph", "run_async")
    funcs = dict.fromkeys(deps, anoop)
    t0 = time.perf_counter()
    graph = taskmap.create_graph(funcs, deps, io_bound=deps)
    t1 = time.perf_counter()
    stall = 0.1 if how == "stall on" else None
    taskmap.run_async(graph, stall_warning=stall)
    t2 = time.perf_counter()
    return {"seconds": t2 - t1, "create": t1 - t0, "done": len(graph.done)}


def child_cached(spec: dict[str, Any]) -> dict[str, Any]:
    n, where = spec["n"], spec["dir"]
    if spec["how"] == "joblib":
        import joblib  # type: ignore[import-untyped]

        t0 = time.perf_counter()
        cached = joblib.Memory(where, verbose=0).cache(work)
        results = [cached(i) for i in range(n)]
        t1 = time.perf_counter()
        return {"seconds": t1 - t0, "calls": CALLS, "ok": results == list(range(n))}
    taskmap = load_taskmap("create_graph", "run", "run_parallel_async")
    for module in ("taskmap.checkpoint.store", "taskmap.checkpoint.encoders"):
        importlib.import_module(module)  # untimed, as joblib's import is

    database = Path(where) / "taskmap-cache.sqlite3"
    if spec["how"] == "taskmap" and database.exists():  # untimed: a day later, as a daily
        import sqlite3  # job finds its entries (the store records their use again)

        db = sqlite3.connect(database, isolation_level=None)
        db.execute("UPDATE meta SET used = used - 86400")
        db.close()
    funcs = dispatch_funcs(n, lambdas=False)
    deps: dict[str, list[str]] = {name: [] for name in funcs}
    t0 = time.perf_counter()
    graph = taskmap.create_graph(funcs, deps, cache=where)
    if spec["how"] == "cold":
        taskmap.run_parallel_async(graph, ncores=WORKERS)
    else:
        taskmap.run(graph)
    t1 = time.perf_counter()
    stats = graph.stats.cache if graph.stats is not None else None
    ok = [graph.results[name] for name in funcs] == list(range(n)) and not graph.failed
    return {
        "seconds": t1 - t0,
        "hits": stats.hits if stats else 0,
        "stored": stats.stored if stats else 0,
        "ok": ok,
    }


def child_cold_without(spec: dict[str, Any]) -> dict[str, Any]:
    taskmap = load_taskmap("create_graph", "run_parallel_async")
    funcs = dispatch_funcs(spec["n"], lambdas=False)
    deps: dict[str, list[str]] = {name: [] for name in funcs}
    t0 = time.perf_counter()
    graph = taskmap.create_graph(funcs, deps)
    taskmap.run_parallel_async(graph, ncores=WORKERS)
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "ok": len(graph.results) == spec["n"] and not graph.failed}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "two": child_two,
    "mixed": child_mixed,
    "dispatch": child_dispatch,
    "coroutines": child_coroutines,
    "cached": child_cached,
    "cold without": child_cold_without,
}


# -- the parent: spawn, interleave, compare --------------------------------------------


def child_env() -> dict[str, str]:
    """This checkout's taskmap first, whatever else is installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh ``python``; add its wall time (``wall``)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"child {spec} failed ({done.returncode}):\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    out["wall"] = wall
    return out


def interleave(
    specs: dict[str, Callable[[int], dict[str, Any]]], repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """Run every contender ``repeat`` times, interleaved; return name -> outputs."""
    outputs: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    for r in range(repeat):
        for name, spec in specs.items():
            outputs[name].append(spawn(spec(r)))
    return outputs


def fixed(**spec: Any) -> Callable[[int], dict[str, Any]]:
    """The same spec at every repeat."""
    return lambda r: spec


def med(outputs: Sequence[dict[str, Any]], key: str = "seconds") -> float:
    return float(statistics.median(out[key] for out in outputs))


def ratio_of(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]) -> float:
    """The ratio of two contenders' times: the median of the ratios of their runs
    side by side (`_common.paired`), which a machine whose speed drifts during the
    row moves less than the ratio of their medians."""
    from _common import paired

    return paired([o["seconds"] for o in first], [o["seconds"] for o in second])


def verdict(met: bool) -> str:
    return "OK" if met else "MISS"


def ratio_line(label: str, ratio: float, limit: float, kind: str = "bar") -> str:
    return f"  {label}: {ratio:.2f}x ({kind} <= {limit:g}x) {verdict(ratio <= limit)}"


def show(rows: dict[str, float], n: int = 0, base: str = "") -> None:
    """Print each contender's median (per task with ``n``), and its ratio to ``base``."""
    if base:
        print(f"  (ratios against: {base})")
    for name, seconds in rows.items():
        per = f"  {seconds / n * 1e6:8.1f} µs/task" if n else ""
        ratio = f"  {seconds / rows[base]:6.2f}x" if base else ""
        print(f"  {name:<46} {fmt(seconds):>9}{per}{ratio}", flush=True)


def fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


Row = tuple[str, str, str, str]  # what, taskmap, reference, goal verdict (markdown table)


def row_import(repeat: int) -> list[Row]:
    print(f"\n1. import taskmap, spawn to exit, median of {repeat}", flush=True)
    probe = "import time; t = time.perf_counter(); import taskmap; print(time.perf_counter() - t)"
    walls: dict[str, list[float]] = {"python -c pass": [], 'python -c "import taskmap"': []}
    alone: list[float] = []
    for _ in range(repeat):
        for name, code in zip(walls, ("pass", probe), strict=True):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env=child_env(),
            )
            walls[name].append(time.perf_counter() - start)
            if code == probe:
                alone.append(float(done.stdout))
    bare, tm = (statistics.median(ts) for ts in walls.values())
    show({"python -c pass": bare, 'python -c "import taskmap"': tm})
    print(f"  (the import alone, timed inside: {fmt(statistics.median(alone))})")
    # The goal takes the import alone: on a shared machine the bare interpreter's own
    # start (20 ms idle) varies more than the import costs.
    inside = statistics.median(alone)
    met = inside <= GOAL_IMPORT
    print(f"  import taskmap, alone: {fmt(inside)} (bar <= {fmt(GOAL_IMPORT)}) {verdict(met)}")
    return [
        (
            "`import taskmap`",
            f"{fmt(inside)} alone; {fmt(tm)} spawn to exit",
            f"bare interpreter, spawn to exit: {fmt(bare)}",
            f"bar ≤ 40 ms (alone): {verdict(met)}",
        )
    ]


def row_two(repeat: int) -> list[Row]:
    print(f"\n2. 2 trivial CPU tasks, pool start and stop timed, median of {repeat}", flush=True)
    specs = {
        "taskmap.run_parallel_async": "taskmap",
        "ProcessPoolExecutor(2), forkserver": "forkserver",
        "ProcessPoolExecutor(2), fork": "fork",
    }
    outs = interleave({k: fixed(kind="two", how=v) for k, v in specs.items()}, repeat)
    rows = {name: med(o) for name, o in outs.items()}
    show(rows, base="ProcessPoolExecutor(2), forkserver")
    tm, fs, fk = rows.values()
    print(ratio_line("taskmap / bare forkserver pool", tm / fs, GOAL_TWO_FORKSERVER))
    print(ratio_line("taskmap / bare fork pool", tm / fk, GOAL_TWO_FORK, "aim"))
    return [
        (
            "2 trivial CPU tasks, `run_parallel_async`",
            fmt(tm),
            f"bare `ProcessPoolExecutor(2)`: forkserver {fmt(fs)}, fork {fmt(fk)}",
            f"{tm / fs:.2f}x forkserver (bar ≤ 1.0x): {verdict(tm / fs <= GOAL_TWO_FORKSERVER)};"
            f" {tm / fk:.2f}x fork (aim ≤ 2x): {verdict(tm / fk <= GOAL_TWO_FORK)}",
        )
    ]


def row_mixed(repeat: int) -> list[Row]:
    import bench_parallel as bp

    loops, cpu_seconds = bp.calibrate(bp.CPU_TARGET)
    mixed = bp.mixed_graph(loops)
    simulated, _, _ = bp.references(mixed, cpu_seconds)
    n_io = len(mixed.io)
    print(
        f"\n3. mixed: {n_io} IO tasks ({bp.IO_SECONDS:g} s) + {len(mixed.deps) - n_io} CPU tasks"
        f" ({fmt(cpu_seconds)} here), {WORKERS} workers, median of {repeat}",
        flush=True,
    )
    tm_name, pool_name = "taskmap.run_parallel_async", "asyncio + ProcessPoolExecutor, by hand"
    outs = interleave(
        {
            tm_name: fixed(kind="mixed", how="taskmap", loops=loops),
            pool_name: fixed(kind="mixed", how="pool", loops=loops),
        },
        repeat,
    )
    rows = {"simulated schedule (zero overhead)": simulated}
    rows.update((name, med(o)) for name, o in outs.items())
    show(rows, base="simulated schedule (zero overhead)")
    in_run = {
        name: statistics.median(o["seconds"] / o["in_run"] for o in outputs)
        for name, outputs in outs.items()
    }
    print(
        f"  (in-run: each run against the simulation with the CPU times it measured:"
        f" taskmap {in_run[tm_name]:.2f}x, by hand {in_run[pool_name]:.2f}x)"
    )
    again = bp.spin_seconds(loops)
    print(f"  (CPU task re-timed after the runs: {again / cpu_seconds - 1:+.0%} since calibration)")
    tm, pool = rows[tm_name] / simulated, rows[pool_name] / simulated
    print(ratio_line("mixed, taskmap / simulated", tm, GOAL_MIXED))
    print(ratio_line("mixed, taskmap / simulated", tm, AIM_MIXED, "aim"))
    return [
        (
            "mixed: 24 IO (0.1 s) + 24 CPU (50 ms), 2 workers",
            f"{fmt(rows[tm_name])}, {tm:.2f}x simulated ({in_run[tm_name]:.2f}x in-run)",
            f"simulated {fmt(simulated)}; asyncio + `ProcessPoolExecutor` by hand {pool:.2f}x",
            f"bar ≤ 1.10x: {verdict(tm <= GOAL_MIXED)}; aim ≤ 1.03x: {verdict(tm <= AIM_MIXED)}",
        )
    ]


def row_dispatch(n: int, repeat: int, with_dask: bool) -> list[Row]:
    print(
        f"\n4. {n:,} tiny independent tasks, one distinct function object each,"
        f" pool start included, median of {repeat}",
        flush=True,
    )
    specs = {
        "taskmap.run_parallel, partials": fixed(kind="dispatch", how="partials", n=n),
        "taskmap.run_parallel, lambdas": fixed(kind="dispatch", how="lambdas", n=n),
        "ProcessPoolExecutor(2), fork, submit all": fixed(kind="dispatch", how="fork", n=n),
    }
    if with_dask:
        specs["dask.multiprocessing.get"] = fixed(kind="dispatch", how="dask", n=n)
    rows = {name: med(o) for name, o in interleave(specs, repeat).items()}
    show(rows, n, base="ProcessPoolExecutor(2), fork, submit all")
    partials, lambdas, fork = list(rows.values())[:3]
    print(ratio_line("partials, taskmap / bare fork pool", partials / fork, GOAL_PARTIALS))
    print(ratio_line("lambdas / partials", lambdas / partials, GOAL_LAMBDAS))
    dask = rows.get("dask.multiprocessing.get")
    dask_text = f"; Dask multiprocessing {dask / n * 1e6:.0f} µs/task" if dask else ""
    return [
        (
            f"{n:,} distinct partials (lambdas), `run_parallel`",
            f"{partials / n * 1e6:.0f} µs/task (lambdas {lambdas / n * 1e6:.0f})",
            f"bare fork `ProcessPoolExecutor` {fork / n * 1e6:.0f} µs/task{dask_text}",
            f"{partials / fork:.2f}x (bar ≤ 0.5x): {verdict(partials / fork <= GOAL_PARTIALS)};"
            f" lambdas {lambdas / partials:.2f}x partials (bar ≤ 1.2x):"
            f" {verdict(lambdas / partials <= GOAL_LAMBDAS)}",
        )
    ]


def row_coroutines(n: int, repeat: int) -> list[Row]:
    print(
        f"\n5. {n:,} no-op coroutine tasks (io-bound, layered DAG), loop creation included,"
        f" median of {repeat}",
        flush=True,
    )
    specs = {
        "taskmap.run_async, stall watch on": fixed(kind="coroutines", how="stall on", n=n),
        "taskmap.run_async, stall_warning=None": fixed(kind="coroutines", how="stall off", n=n),
        "uvloop, one Task per node": fixed(kind="coroutines", how="bare", n=n),
    }
    outs = interleave(specs, repeat)
    rows = {name: med(o) for name, o in outs.items()}
    show(rows, n, base="uvloop, one Task per node")
    create = med(outs["taskmap.run_async, stall watch on"], "create")
    print(f"  (create_graph, untimed above: {create / n * 1e6:.1f} µs/task)")
    on, _, bare = rows.values()
    print(ratio_line("stall watch on / bare uvloop", on / bare, GOAL_CORO))
    print(ratio_line("stall watch on / bare uvloop", on / bare, AIM_CORO, "aim"))
    return [
        (
            f"{n:,} no-op coroutine tasks, `run_async`, stall watch on",
            f"{on / n * 1e6:.1f} µs/task (+{create / n * 1e6:.1f} `create_graph`)",
            f"uvloop, one Task per node: {bare / n * 1e6:.1f} µs/task",
            f"{on / bare:.2f}x (bar ≤ 1.2x): {verdict(on / bare <= GOAL_CORO)};"
            f" aim ≤ 1.0x: {verdict(on / bare <= AIM_CORO)}",
        )
    ]


def row_cached(n: int, repeat: int, base: Path) -> list[Row]:
    print(
        f"\n6. cached rerun of {n:,} distinct partials, create_graph + run, median of {repeat}",
        flush=True,
    )
    store, memory = str(base / "store"), str(base / "joblib")
    filled = spawn({"kind": "cached", "how": "taskmap", "n": n, "dir": store})
    joblib_filled = spawn({"kind": "cached", "how": "joblib", "n": n, "dir": memory})
    if filled["stored"] != n or joblib_filled["calls"] != n:
        raise AssertionError(f"the stores were not filled: {filled}, {joblib_filled}")
    outs = interleave(
        {
            "taskmap, cache=DIR": fixed(kind="cached", how="taskmap", n=n, dir=store),
            "joblib.Memory": fixed(kind="cached", how="joblib", n=n, dir=memory),
        },
        repeat,
    )
    for o in outs["taskmap, cache=DIR"]:
        if o["hits"] != n or not o["ok"]:
            raise AssertionError(f"taskmap's rerun missed the cache: {o}")
    for o in outs["joblib.Memory"]:
        if o["calls"] or not o["ok"]:
            raise AssertionError(f"joblib's rerun missed its cache: {o}")
    rows = {name: med(o) for name, o in outs.items()}
    show(rows, n, base="taskmap, cache=DIR")
    tm, jl = rows.values()
    us = tm / n * 1e6
    met_us = us <= GOAL_CACHED_US
    print(f"  cached rerun: {us:.1f} µs/task (bar <= {GOAL_CACHED_US:g}) {verdict(met_us)}")
    ratio = ratio_of(outs["joblib.Memory"], outs["taskmap, cache=DIR"])
    met = ratio >= GOAL_JOBLIB
    label = "joblib.Memory / taskmap, median of the paired ratios"
    print(f"  {label}: {ratio:.1f}x (bar >= {GOAL_JOBLIB:g}x) {verdict(met)}")
    return [
        (
            f"cached rerun, {n:,} distinct partials, `create_graph` + `run`",
            f"{us:.1f} µs/task",
            f"`joblib.Memory` {jl / n * 1e6:.0f} µs/task ({ratio:.1f}x taskmap)",
            f"bar ≤ 12 µs: {verdict(met_us)}; bar ≥ 10x joblib: {verdict(met)}",
        )
    ]


def row_cold(n: int, repeat: int, base: Path) -> list[Row]:
    print(
        f"\n7. cold run of {n:,} distinct partials, run_parallel_async, a new store per repeat,"
        f" median of {repeat}",
        flush=True,
    )

    def with_store(r: int) -> dict[str, Any]:
        where = base / f"cold-{r}"
        shutil.rmtree(where, ignore_errors=True)
        return {"kind": "cached", "how": "cold", "n": n, "dir": str(where)}

    outs = interleave(
        {
            "with the default store": with_store,
            "without a store": fixed(kind="cold without", n=n),
        },
        repeat,
    )
    for o in outs["with the default store"]:
        if o["stored"] != n or not o["ok"]:
            raise AssertionError(f"the cold run did not store every task: {o}")
    rows = {name: med(o) for name, o in outs.items()}
    show(rows, n, base="without a store")
    store, plain = rows.values()
    ratio = ratio_of(outs["with the default store"], outs["without a store"])
    print(
        ratio_line("cold run, with store / without, median of the paired ratios", ratio, GOAL_COLD)
    )
    return [
        (
            f"cold run, {n:,} distinct partials, default store, `run_parallel_async`",
            f"{store / n * 1e6:.0f} µs/task",
            f"without a store {plain / n * 1e6:.0f} µs/task",
            f"{ratio:.2f}x (bar ≤ 2x): {verdict(ratio <= GOAL_COLD)}",
        )
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer tasks (smoke)")
    parser.add_argument(
        "--rows", default="1234567", help="the rows to run, as digits (default: all)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return 0
    if args.quick:
        repeat, n_dispatch, n_coro, n_cached, n_cold = 1, 200, 1_000, 1_000, 500
    else:
        repeat, n_dispatch, n_coro, n_cached, n_cold = 5, 2_000, 10_000, 10_000, 10_000
    sys.path.insert(0, str(ROOT))
    from _common import compile_taskmap, machine

    import taskmap

    print(f"taskmap {taskmap.__version__} first-run benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {machine()}; every figure from a fresh process; {compile_taskmap()}")
    try:
        import dask  # noqa: F401
    except ImportError:
        with_dask = False
        print("note: Dask is not installed (pip install 'taskmap[bench]'); its row is skipped")
    else:
        with_dask = True
    base = Path(tempfile.mkdtemp(prefix="taskmap-first-run-"))
    sections: dict[str, Callable[[], list[Row]]] = {
        "1": partial(row_import, max(repeat, 3)),
        "2": partial(row_two, repeat),
        "3": partial(row_mixed, repeat),
        "4": partial(row_dispatch, n_dispatch, repeat, with_dask),
        "5": partial(row_coroutines, n_coro, repeat),
        "6": partial(row_cached, n_cached, repeat, base),
        "7": partial(row_cold, n_cold, repeat, base),
    }
    rows: list[Row] = []
    try:
        for number, section in sections.items():
            if number in args.rows:
                rows += section()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nmarkdown ({machine()}, {WORKERS} workers, medians of {repeat}):\n")
    print("| what | taskmap | reference, same run | goal |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
