"""Checkpoint benchmark: cached reruns and cold runs of `create_graph(..., cache=DIR)`.

Usage::

    python benchmarks/bench_checkpoint.py           # full: 10,000 tasks, medians of 7
    python benchmarks/bench_checkpoint.py --quick   # smoke: 1,000 tasks, one repeat

The graph is `_common.layered_dependencies`: tasks in layers of 100, each depending on
1..3 tasks of the layer before.  The first layer's tasks are ``partial(start, i)``
(returning ``i``); the others cycle through three functions of this file returning a
small int, a short str and a 2-tuple computed from their inputs: tiny results, so what
is measured is the cache's own cost.  Every store lives in a fresh temporary directory.

1. *Cached rerun, fresh process*: a store is filled once by a child process; then each
   repeat spawns a new ``python`` that builds the graph, calls ``create_graph(funcs,
   deps, cache=DIR)`` and the runner, and reports the time of the run call and of
   create_graph + run (the goal's "end to end"; interpreter start-up and ``import
   taskmap`` are measured apart, by ``python -c``).  The child checks that every
   task was a hit and that ``graph.results`` holds every value (the parent compares
   a checksum of them with the fill's).  Runners: `taskmap.run` and
   `taskmap.run_parallel_async` (2 workers).  Whether the latter starts its workers
   when everything is cached is checked by timing: 1-task graphs in fresh processes,
   cached under `run` and under `run_parallel_async`, against an uncached 1-task
   `run_parallel_async` (which must start a worker).
2. *joblib.Memory*: the same 10,000 computations as one ``Memory.cache``-decorated
   function called with each task's index and inputs, in topological order, filled
   once by a child process; each repeat times, in a fresh process, the 10,000 cached
   calls (and Memory + ``cache()`` + the calls).
3. *Cold run*, in this process: the graph run with a fresh empty store per repeat
   (created untimed with the graph) against the same graph without a store, under
   `run` and `run_parallel_async` (2 workers; the fork server is warmed up untimed;
   the workers start inside the timed region in both cases).  The store is written
   by its writer thread; the run waits for it at its end, inside the timed region.
   For information (no goal), the same runs with an in-memory dict as the store:
   the cache's own work (keys, digests, encoding, the writer thread) without SQLite.
4. *1% of the code changed*: a rerun, in a fresh process, of a copy of the filled
   store with ``versions={...}`` given for every 100th task, a new version each
   repeat: those tasks run again; their outputs are unchanged, so nothing below them
   should (early cutoff).

Cases are interleaved (repeat 1 of every case, then repeat 2...).  A missed goal prints
MISS; the exit status is 0 anyway: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

from _common import (
    WIDTH,
    Case,
    compile_taskmap,
    count_edges,
    fmt_seconds,
    goal_line,
    layered_dependencies,
    machine,
    median,
    spawn_child,
    time_cases,
)

import taskmap

WORKERS = 2
BUMP_EVERY = 100  # 1% of the tasks get a new version in section 4

GOAL_CACHED_US = 20.0  # µs per task, create_graph + run of a fully cached graph (strictly)
GOAL_JOBLIB = 10.0  # joblib.Memory per cached call / taskmap per cached task (at least)
GOAL_COLD = 2.0  # cold run with a store / the same run without one

RUN = "taskmap.run"
PAR = "taskmap.run_parallel_async"
JOBLIB = "joblib.Memory"
NO_STORE = "no store"
SQLITE = "default store"  # DirectoryStore: SQLite in a directory
DICT = "dict store"  # no goal; in memory: the cache's own work without SQLite

Deps = dict[str, list[str]]
Funcs = dict[str, Callable[..., Any]]


# -- the tasks (module level: a child process rebuilds the same graph) -------------


def _num(x: object) -> int:
    if type(x) is int:
        return x
    if type(x) is str:
        return len(x)
    return x[0]  # type: ignore[index,no-any-return]


def start(i: int) -> int:
    return i


def total(*xs: object) -> int:
    return sum(map(_num, xs)) % 1000


def tag(*xs: object) -> str:
    return f"v{total(*xs)}"


def pair(*xs: object) -> tuple[int, int]:
    return total(*xs), len(xs)


KINDS: dict[str, Callable[..., Any]] = {"total": total, "tag": tag, "pair": pair}
CALLS = 0  # joblib child: how many times `work` ran (0 when every call was cached)


def kind_of(i: int, deps: Sequence[str]) -> str:
    return "start" if not deps else tuple(KINDS)[i % len(KINDS)]


def checkpoint_graph(n: int) -> tuple[Funcs, Deps]:
    """Return ``(funcs, deps)``: `layered_dependencies` with tiny-result tasks."""
    deps = layered_dependencies(n)
    funcs: Funcs = {}
    for i, (name, ds) in enumerate(deps.items()):
        kind = kind_of(i, ds)
        funcs[name] = partial(start, i) if kind == "start" else KINDS[kind]
    return funcs, deps


def bumped(deps: Deps) -> list[str]:
    """The tasks whose code "changed" in section 4: every `BUMP_EVERY`-th."""
    return list(deps)[::BUMP_EVERY]


def work(kind: str, i: int, *xs: object) -> object:
    """Task ``i`` as one function, for joblib.Memory (which caches by function + args)."""
    global CALLS
    CALLS += 1
    return i if kind == "start" else KINDS[kind](*xs)


def checksum(values: Iterable[object]) -> str:
    return hashlib.blake2b(repr(list(values)).encode(), digest_size=8).hexdigest()


# -- the child process: one fresh-process measurement ------------------------------


def child_taskmap(spec: dict[str, Any]) -> dict[str, Any]:
    funcs, deps = checkpoint_graph(spec["n"])
    versions = dict.fromkeys(bumped(deps), spec["bump"]) if spec.get("bump") else None
    runners: dict[str, Callable[[taskmap.Graph], taskmap.Graph]] = {
        RUN: taskmap.run,
        PAR: partial(taskmap.run_parallel_async, ncores=WORKERS),
    }
    call = runners[spec["runner"]]
    cache = spec.get("dir")
    gc.collect()
    t0 = perf_counter()
    if cache is None:
        graph = taskmap.create_graph(funcs, deps)
    else:
        graph = taskmap.create_graph(funcs, deps, cache=cache, versions=versions)
    t1 = perf_counter()
    call(graph)
    t2 = perf_counter()
    stats = graph.stats.cache if graph.stats is not None else None
    return {
        "create": t1 - t0,
        "run": t2 - t1,
        "results": len(graph.results),
        "failed": len(graph.failed),
        "hits": stats.hits if stats else 0,
        "misses": stats.misses if stats else 0,
        "stored": stats.stored if stats else 0,
        "warnings": stats.warnings if stats else 0,
        "checksum": checksum(graph.results.get(name) for name in deps),
    }


def child_joblib(spec: dict[str, Any]) -> dict[str, Any]:
    import joblib  # type: ignore[import-untyped]

    deps = layered_dependencies(spec["n"])
    calls = [(kind_of(i, ds), i, ds) for i, (name, ds) in enumerate(deps.items())]
    gc.collect()
    t0 = perf_counter()
    cached = joblib.Memory(spec["dir"], verbose=0).cache(work)
    t1 = perf_counter()
    results: dict[str, Any] = {}
    for name, (kind, i, ds) in zip(deps, calls, strict=True):
        results[name] = cached(kind, i, *[results[d] for d in ds])
    t2 = perf_counter()
    return {
        "create": t1 - t0,
        "run": t2 - t1,
        "results": len(results),
        "calls": CALLS,
        "checksum": checksum(results[name] for name in deps),
    }


def child_main(spec: dict[str, Any]) -> int:
    out = child_joblib(spec) if spec["mode"] == "joblib" else child_taskmap(spec)
    print(json.dumps(out))
    return 0


IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import taskmap; print(time.perf_counter() - t)"
)


#: one measurement in a fresh ``python`` (a CacheWarning on stderr fails it)
spawn = partial(spawn_child, __file__, stderr_fatal=True)


def import_time() -> float:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


# -- 1, 2 and 4: fresh processes --------------------------------------------------

# child case name -> (spec for repeat r, check of its output)
ChildCase = tuple[Callable[[int], dict[str, Any]], Callable[[dict[str, Any]], bool]]


def time_children(cases: dict[str, ChildCase], repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Run every child case ``repeat`` times, interleaved; return name -> outputs."""
    outputs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for r in range(repeat):
        for name, (spec, check) in cases.items():
            out = spawn(spec(r))
            if not check(out):
                raise AssertionError(f"{name}: unexpected child output {out}")
            outputs[name].append(out)
    return outputs


def fill(spec: dict[str, Any], n: int) -> dict[str, Any]:
    """Fill a store with one child run; it must have run and stored every task."""
    out = spawn(spec)
    ran = out["calls"] == n if spec["mode"] == "joblib" else out["stored"] == n
    if not ran or out["results"] != n:
        raise AssertionError(f"filling {spec} did not run every task: {out}")
    return out


def bench_fresh(n: int, repeat: int, base: Path) -> dict[str, Any]:
    """Sections 1, 2 and 4: fill the stores, then time the children."""
    print(
        f"\n1, 2 and 4. cached reruns, {n:,} tasks, one fresh process per repeat,"
        f" median of {repeat}",
        flush=True,
    )
    store, one, jl, bump_store = (base / s for s in ("store", "one", "joblib", "bump"))
    t0 = perf_counter()
    filled = fill({"mode": "taskmap", "runner": RUN, "n": n, "dir": str(store)}, n)
    fill({"mode": "taskmap", "runner": RUN, "n": 1, "dir": str(one)}, 1)
    fill({"mode": "joblib", "n": n, "dir": str(jl)}, n)
    shutil.copytree(store, bump_store)
    expected: str = filled["checksum"]
    print(
        f"  (stores filled by child processes in {fmt_seconds(perf_counter() - t0)}, untimed:"
        f" taskmap {size_of(store)} for {n:,} entries, joblib {size_of(jl)})",
        flush=True,
    )
    bump = len(bumped(layered_dependencies(n)))

    def all_hits(m: int) -> Callable[[dict[str, Any]], bool]:
        return lambda out: (
            out["hits"] == m
            and out["misses"] == 0
            and out["results"] == m
            and not out["failed"]
            and (m != n or out["checksum"] == expected)
        )

    def all_cached_joblib(out: dict[str, Any]) -> bool:
        return bool(out["calls"] == 0 and out["checksum"] == expected)

    def uncached_one(out: dict[str, Any]) -> bool:
        return out["results"] == 1 and not out["failed"]

    def bumped_ok(out: dict[str, Any]) -> bool:
        return (
            out["misses"] >= bump
            and out["hits"] + out["misses"] == n
            and out["checksum"] == expected
            and not out["failed"]
        )

    def taskmap_spec(runner: str, m: int, where: Path | None, bump: bool = False) -> Any:
        def spec(r: int) -> dict[str, Any]:
            return {
                "mode": "taskmap",
                "runner": runner,
                "n": m,
                "dir": None if where is None else str(where),
                "bump": f"bump-{r}" if bump else None,
            }

        return spec

    joblib_spec = {"mode": "joblib", "n": n, "dir": str(jl)}
    cases: dict[str, ChildCase] = {
        f"{RUN}, cached": (taskmap_spec(RUN, n, store), all_hits(n)),
        f"{PAR}, cached": (taskmap_spec(PAR, n, store), all_hits(n)),
        f"{JOBLIB}, cached": (lambda r: joblib_spec, all_cached_joblib),
        f"{RUN}, 1 task cached": (taskmap_spec(RUN, 1, one), all_hits(1)),
        f"{PAR}, 1 task cached": (taskmap_spec(PAR, 1, one), all_hits(1)),
        f"{PAR}, 1 task no store": (taskmap_spec(PAR, 1, None), uncached_one),
        f"{RUN}, 1% code changed": (taskmap_spec(RUN, n, bump_store, bump=True), bumped_ok),
    }
    outputs = time_children(cases, repeat)
    imports = [import_time() for _ in range(repeat)]
    medians = {
        name: {key: median([o[key] for o in outs]) for key in ("create", "run", "wall")}
        for name, outs in outputs.items()
    }
    for m in medians.values():
        m["total"] = m["create"] + m["run"]
    print(
        f"  {'':<44} {'run call':>10} {'µs/task':>8}   {'create+run':>10} {'µs/task':>8}"
        f"   {'process wall':>12}"
    )
    for name, m in medians.items():
        single = "1 task" in name  # no per-task figure: start-up only
        run_us = f"{'-':>8}" if single else f"{m['run'] / n * 1e6:8.2f}"
        total_us = f"{'-':>8}" if single else f"{m['total'] / n * 1e6:8.2f}"
        print(
            f"  {name:<44} {fmt_seconds(m['run']):>10} {run_us}"
            f"   {fmt_seconds(m['total']):>10} {total_us}   {fmt_seconds(m['wall']):>12}",
            flush=True,
        )
    last = outputs[f"{RUN}, 1% code changed"][-1]
    print(
        f"  (1% code changed: {bump} tasks given a new version; the last repeat had"
        f" {last['misses']} misses, {last['hits']:,} hits, {last['stored']} stored)"
    )
    print(
        f"  (process wall: spawn to exit, including interpreter start-up, imports and building"
        f" the graph's dicts; `import taskmap` alone, from `python -c`: median"
        f" {fmt_seconds(median(imports))})",
        flush=True,
    )
    return {"medians": medians, "import": median(imports), "bumped": bump}


def size_of(path: Path) -> str:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


# -- 3. cold runs, in this process ------------------------------------------------


def bench_cold(n: int, repeat: int, base: Path) -> tuple[dict[str, float], float]:
    """Time the cold runs; return name -> median seconds, and bytes written per entry."""
    print(
        f"\n3. cold run, {n:,} tasks, in this process, median of {repeat}; a fresh empty"
        " store per repeat (created untimed with the graph)",
        flush=True,
    )
    funcs, deps = checkpoint_graph(n)
    cold = base / "cold"
    cold.mkdir()
    written: list[float] = []

    def plain() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps)

    def with_store() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps, cache=tempfile.mkdtemp(dir=cold))

    def with_dict() -> taskmap.Graph:
        return taskmap.create_graph(funcs, deps, cache={})

    def complete(graph: taskmap.Graph) -> bool:
        return len(graph.done) == n and not graph.failed and len(graph.results) == n

    def stored_all(graph: taskmap.Graph) -> bool:
        stats = graph.stats.cache if graph.stats is not None else None
        if stats is None or stats.stored != n or stats.misses != n or stats.warnings:
            return False
        written.append(stats.bytes_written / stats.stored)
        return complete(graph) and len(graph.checkpoint.store) == 2 * n  # type: ignore[union-attr]

    def drop(graph: taskmap.Graph) -> None:
        store = graph.checkpoint.store if graph.checkpoint is not None else None
        if isinstance(store, taskmap.DirectoryStore):
            store.close()
            shutil.rmtree(store.path)

    def par(graph: taskmap.Graph) -> taskmap.Graph:
        return taskmap.run_parallel_async(graph, ncores=WORKERS)

    cases = [
        Case(f"{RUN}, {NO_STORE}", taskmap.run, setup=plain, check=complete),
        Case(f"{RUN}, {SQLITE}", taskmap.run, setup=with_store, check=stored_all, teardown=drop),
        Case(f"{RUN}, {DICT}", taskmap.run, setup=with_dict, check=stored_all),
        Case(f"{PAR}, {NO_STORE}", par, setup=plain, check=complete),
        Case(f"{PAR}, {SQLITE}", par, setup=with_store, check=stored_all, teardown=drop),
        Case(f"{PAR}, {DICT}", par, setup=with_dict, check=stored_all),
    ]
    medians = {name: median(ts) for name, ts in time_cases(cases, repeat).items()}
    for name, seconds in medians.items():
        floor = medians[no_store(name)]
        print(
            f"  {name:<44} {fmt_seconds(seconds):>10}  {seconds / n * 1e6:7.2f} µs/task"
            f"  {seconds / floor:6.2f}x no store{'  (no goal)' if name.endswith(DICT) else ''}",
            flush=True,
        )
    return medians, median(written)


def no_store(name: str) -> str:
    """The name of the same runner's case without a store (the floor)."""
    return f"{name.partition(', ')[0]}, {NO_STORE}"


def warm_up() -> float:
    """Start the fork server (one per process) with a 1-task run; return its time."""
    graph = taskmap.create_graph({"a": partial(start, 0)}, {"a": []})
    t0 = perf_counter()
    taskmap.run_parallel_async(graph, ncores=WORKERS)
    return perf_counter() - t0


# -- the report -------------------------------------------------------------------


def below(label: str, value: float, limit: float, unit: str) -> str:
    """``label: 12.34 µs/task (goal < 20 µs/task) OK`` (or ``MISS``)."""
    verdict = "OK" if value < limit else "MISS"
    return f"{label}: {value:.2f} {unit} (goal < {limit:g} {unit}) {verdict}"


def report(fresh: dict[str, Any], cold: dict[str, float], per_entry: float, n: int) -> None:
    m = fresh["medians"]
    run_c, par_c, jl = m[f"{RUN}, cached"], m[f"{PAR}, cached"], m[f"{JOBLIB}, cached"]
    one_run, one_par = m[f"{RUN}, 1 task cached"], m[f"{PAR}, 1 task cached"]
    one_plain, bump = m[f"{PAR}, 1 task no store"], m[f"{RUN}, 1% code changed"]

    def us(seconds: float) -> float:
        return seconds / n * 1e6

    print("\ngoals")
    for name, c in ((RUN, run_c), (PAR, par_c)):
        label = f"cached rerun, fresh process, {name}, create_graph + run"
        print("  " + below(label, us(c["total"]), GOAL_CACHED_US, "µs/task"))
        print(f"    (run call alone: {us(c['run']):.2f} µs/task)")
    # Workers started when everything is cached?  A cached 1-task rerun under
    # run_parallel_async costs about what an uncached one (which needs a worker) costs.
    extra = one_par["run"] - one_run["run"]
    started = extra > 0.5 * one_plain["run"]
    print(
        f"  {PAR} starts no worker when every task is cached:"
        f" {'no, it does' if started else 'yes'} {'MISS' if started else 'OK'}"
    )
    print(
        f"    (1-task graph, fresh process: cached under {PAR} {fmt_seconds(one_par['run'])},"
        f" under {RUN} {fmt_seconds(one_run['run'])}: {fmt_seconds(extra)} more;"
        f" an uncached 1-task {PAR}, which starts a worker: {fmt_seconds(one_plain['run'])}."
        f" At {n:,} tasks, {PAR} - {RUN}: {fmt_seconds(par_c['run'] - run_c['run'])})"
    )
    ratio = jl["total"] / run_c["total"]
    label = f"{JOBLIB} per cached call / {RUN} per cached task, both create + calls"
    print("  " + goal_line(label, ratio, "", GOAL_JOBLIB, at_least=True))
    print(
        f"    ({JOBLIB}: {us(jl['run']):.1f} µs per cached call, {us(jl['total']):.1f} µs with"
        f" Memory + cache(); the calls alone / {RUN}'s run call alone:"
        f" {jl['run'] / run_c['run']:.2f}x)"
    )
    for name in (RUN, PAR):
        store, plain = cold[f"{name}, {SQLITE}"], cold[f"{name}, {NO_STORE}"]
        label = f"cold run per task, {name}, with the default store / without"
        print("  " + goal_line(label, store / plain, "", GOAL_COLD))
        in_memory = cold[f"{name}, {DICT}"]
        print(
            f"    ({us(store):.2f} vs {us(plain):.2f} µs/task: the store adds"
            f" {us(store - plain):.2f} µs/task; a dict store, no SQLite,"
            f" {us(in_memory - plain):.2f} µs/task: keys, digests, encoding, writer thread)"
        )

    print("\nother figures (no goal)")
    print(
        f"  1% code changed, {RUN}, create_graph + run: {us(bump['total']):.2f} µs/task,"
        f" {bump['total'] / run_c['total']:.2f}x the fully cached rerun"
        f" ({fresh['bumped']} tasks rerun)"
    )
    print(
        f"  `import taskmap` in a fresh process: {fmt_seconds(fresh['import'])}"
        f" ({us(fresh['import']):.2f} µs/task at {n:,} tasks; not in the figures above)"
    )
    print(f"  bytes written per entry (tiny results): {per_entry:.0f}")

    print(f"\nmarkdown ({machine()}, {WORKERS} workers):\n")
    print("| benchmark | runner | median | per task | ratio |")
    print("| --- | --- | ---: | ---: | --- |")
    for name, c in ((RUN, run_c), (PAR, par_c)):
        print(
            f"| cached rerun, fresh process, {n:,} tasks | {name}, create_graph + run"
            f" | {fmt_seconds(c['total'])} | {us(c['total']):.2f} µs |"
            f" {JOBLIB} takes {jl['total'] / c['total']:.2f}x |"
        )
    print(
        f"| cached rerun, fresh process, {n:,} tasks | {JOBLIB}, Memory + calls"
        f" | {fmt_seconds(jl['total'])} | {us(jl['total']):.2f} µs | |"
    )
    for name, seconds in cold.items():
        floor = cold[no_store(name)]
        print(
            f"| cold run, {n:,} tasks | {name} | {fmt_seconds(seconds)} | {us(seconds):.2f} µs"
            f" | {seconds / floor:.2f}x no store |"
        )
    print(
        f"| 1% code changed, fresh process, {n:,} tasks | {RUN}, create_graph + run"
        f" | {fmt_seconds(bump['total'])} | {us(bump['total']):.2f} µs"
        f" | {bump['total'] / run_c['total']:.2f}x fully cached |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, one repeat (smoke)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a fresh-process measurement
    args = parser.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    n, repeat = (1_000, 1) if args.quick else (10_000, 7)

    import joblib

    print(f"taskmap {taskmap.__version__} checkpoint benchmark{' (quick)' if args.quick else ''}")
    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}")
    print(f"machine: {machine()}; joblib {joblib.__version__}; {compile_taskmap()}")
    deps = layered_dependencies(n)
    print(
        f"graph: {n:,} tasks, {count_edges(deps):,} edges: layered random DAG, width {WIDTH},"
        f" 1..3 dependencies per task, seed 0; results: small ints, strs, 2-tuples"
    )
    with tempfile.TemporaryDirectory(prefix="taskmap-bench-checkpoint-") as tmp:
        base = Path(tmp)
        print(f"stores under {base}")
        fresh = bench_fresh(n, repeat, base)
        first = warm_up()
        print(f"\n(warm-up, untimed: fork server started by a 1-task run, {fmt_seconds(first)})")
        cold, per_entry = bench_cold(n, repeat, base)
    report(fresh, cold, per_entry, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
