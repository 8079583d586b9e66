"""Data benchmark: arrays, frames and lists of dicts along chains of CPU tasks (issue 12).

Usage::

    python benchmarks/bench_data.py           # full: 1, 20, 100, 400 MB and 1M dicts, medians of 3
    python benchmarks/bench_data.py --quick   # smoke: 1 and 20 MB, 10,000 dicts, one repeat
    python benchmarks/bench_data.py --one taskmap numpy 100   # one figure, printed as JSON

The workload, built as a user script builds it (one `functools.partial` per task, no
io-bound task): 4 independent chains, each a source task and then 4 CPU steps, and a
final task taking the 4 chain ends.  A source makes a value of the given size; a step
returns a new value with every number times 1.0001 (``x * 1.0001``: one read, one
write); the final task returns, per chain, the end's length and its first and last
number, which the run checks against values computed here (a wrong result raises).
The values: numpy float64 arrays and pandas DataFrames of 4 float64 columns, of 1, 20,
100 and 400 MB (MB = 10**6 bytes), and, for the report only (pickling is inherent to
pure-Python objects), a list of 1M small dicts ``{"i": j, "v": float}``.

Every figure comes from a fresh ``python`` running this file with ``--one RUNNER KIND
SIZE``, which prints JSON.  Its *makespan* is timed with ``time.perf_counter`` around
``create_graph`` + the runner (the workers start and stop inside it, as they do for a
user; numpy and pandas are imported before, as at a script's top, and the tasks
name them as globals, as a script's do); its *total* runs from the parent's spawn to
the end of the run (interpreter start and imports added; clock ``time.monotonic``,
shared by the processes).  The parent samples memory every 5 ms while the child
lives (a thread in the child would make its driver threaded, and such a driver
starts its workers through the fork server rather than forking them as a script's
does) and keeps the peak: the private resident memory (``RssAnon + RssFile``) of
the child and all its descendants (found by parent pid in ``/proc``: the workers,
the fork server if any), plus the growth of the machine's shared memory (``Shmem``
in ``/proc/meminfo``: memfd segments count once, mapped or not; on a
busy machine another process's shared memory counts too).  The plain ``VmRSS`` sum is
printed beside it (it counts a shared page once per process that touched it).  Both
taskmap runners keep every result in ``graph.results`` (20 values: the default), where
the floor holds a chain's last value only and Dask the values still to be consumed.

Runners (RUNNER): ``taskmap`` (`run_parallel_async`, 2 workers), ``run_async`` (one
process, no copy), ``dask`` (``dask.multiprocessing.get``, 2 workers, on the same
graph as a Dask dict of tuples), ``ray`` (only when ``import ray`` works; never a
dependency) and ``floor``: the same calls as a plain loop over the chains in one
process, its time divided by 2 (the cores), which also times one warm ``memcpy`` of
the value's size (``np.copyto`` into a touched array).  ms per hop = (makespan - floor)
/ 17: 16 steps take one value each, the final task takes the 4 chain ends.

Repeats are interleaved per size (repeat 1 of every runner, then repeat 2...); a run
that took over 10 s is not repeated.  A runner whose makespan, extrapolated along the
line through its two sizes before, would exceed ``--max-seconds`` (30 s) is skipped at
the larger sizes.  A
missed goal prints MISS; the exit status is 0 anyway: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

from _common import LOOP, compile_taskmap, fmt_bytes, fmt_seconds, goal_line, machine, median

import taskmap

WORKERS = 2
CHAINS, STEPS = 4, 4
HOPS = CHAINS * STEPS + 1  # 16 steps take one value each; the final task takes the 4 ends
SCALE = 1.0001
MB = 10**6
COLUMNS = 4  # float64 columns of a frame
SIZES_MB, QUICK_SIZES_MB = (1, 20, 100, 400), (20,)  # quick: every runner once
DICTS, QUICK_DICTS = 1_000_000, 2_000
REPEAT = 3
SLOW = 10.0  # seconds: a child run that took longer is not repeated
MAX_SECONDS = 30.0  # --max-seconds: skip a runner expected to take longer at a larger size
SAMPLE = 0.005  # seconds between two memory samples

GOAL_100_BAR, GOAL_100_AIM = 3.5, 1.5  # makespan / floor at 100 MB: Ray's figure; no copy
GOAL_20 = 3.0  # makespan / floor at 20 MB

FLOOR, TM, RUN_ASYNC, DASK, RAY = "floor", "taskmap", "run_async", "dask", "ray"
KEPT, TM_DROP = "floor-kept", "taskmap-drop"
LABELS = {
    KEPT: "floor, every value kept",
    TM_DROP: "taskmap, drop_results=True",
    FLOOR: "floor (one process / 2)",
    TM: "taskmap.run_parallel_async",
    RUN_ASYNC: "taskmap.run_async",
    DASK: "dask.multiprocessing.get",
    RAY: "ray",
}
KINDS = ("numpy", "pandas", "dicts")

Funcs = dict[str, Callable[..., Any]]
Deps = dict[str, list[str]]


# -- the tasks (module level: the children rebuild the same graph) -----------------


#: numpy and pandas, imported as a script imports them, at its top (`import_for`):
#: before the clock starts, and named as globals by the tasks, so that the workers'
#: fork server imports them once, as it does for a user's script
np: Any = None
pd: Any = None


def import_for(kind: str) -> None:
    global np, pd
    if kind != "dicts":
        import numpy

        np = numpy
    if kind == "pandas":
        import pandas

        pd = pandas


def source(kind: str, i: int, size: int) -> Any:
    """Chain ``i``'s first value: ``size`` bytes of float64 (numpy, pandas) or ``size`` dicts."""
    start = 1.0 + i
    if kind == "dicts":
        return [{"i": j, "v": start + j} for j in range(size)]
    if np is None or (kind == "pandas" and pd is None):  # imported as a module
        import_for(kind)
    if kind == "numpy":
        return np.full(size // 8, start)
    block = np.full((size // (8 * COLUMNS), COLUMNS), start)
    return pd.DataFrame(block, columns=[f"c{c}" for c in range(COLUMNS)], copy=False)


def step(k: int, value: Any) -> Any:
    """Step ``k`` of a chain: a new value, every number times `SCALE`."""
    if isinstance(value, list):
        return [{"i": d["i"], "v": d["v"] * SCALE} for d in value]
    return value * SCALE


def summary(value: Any) -> tuple[int, float, float]:
    """``(length, first number, last number)`` of a chain's value."""
    if isinstance(value, list):
        return len(value), value[0]["v"], value[-1]["v"]
    if hasattr(value, "iat"):  # a DataFrame
        return len(value), float(value.iat[0, 0]), float(value.iat[-1, -1])
    return len(value), float(value[0]), float(value[-1])


def final(*ends: Any) -> list[tuple[int, float, float]]:
    """The final task: something small that still looks at both ends of every value."""
    return [summary(end) for end in ends]


def expected(kind: str, size: int) -> list[tuple[int, float, float]]:
    """What `final` returns, computed with Python floats (the same IEEE products)."""
    n = {"numpy": size // 8, "pandas": size // (8 * COLUMNS), "dicts": size}[kind]
    out = []
    for i in range(CHAINS):
        first, last = 1.0 + i, 1.0 + i + (n - 1 if kind == "dicts" else 0)
        for _ in range(STEPS):
            first, last = first * SCALE, last * SCALE
        out.append((n, first, last))
    return out


def workload(kind: str, size: int) -> tuple[Funcs, Deps]:
    """Return ``(funcs, deps)`` in topological order: chain by chain, then ``final``."""
    funcs: Funcs = {}
    deps: Deps = {}
    for i in range(CHAINS):
        before = f"source{i}"
        funcs[before], deps[before] = partial(source, kind, i, size), []
        for k in range(1, STEPS + 1):
            name = f"step{i}.{k}"
            funcs[name], deps[name] = partial(step, k), [before]
            before = name
    funcs["final"], deps["final"] = final, [f"step{i}.{STEPS}" for i in range(CHAINS)]
    return funcs, deps


# -- memory: the peak over this process and its descendants ------------------------


def _status(pid: int) -> tuple[int, int]:
    """``(RssAnon + RssFile, RssShmem)`` of a process in bytes; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return 0, 0
    private = shmem = 0
    for line in text.splitlines():
        if line.startswith((b"RssAnon:", b"RssFile:")):
            private += int(line.split()[1]) * 1024
        elif line.startswith(b"RssShmem:"):
            shmem = int(line.split()[1]) * 1024
    return private, shmem


def _system_shmem() -> int:
    """The machine's shared memory in bytes (tmpfs, /dev/shm, memfd): ``Shmem`` of meminfo."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2 :].split()[1])  # after "(comm) state"


class TreeMemory:
    """Sample the memory of a process (the child running a figure) and its
    descendants; keep the peak.  It runs in the parent: a sampling thread in the
    child would make the driver threaded, and a threaded driver starts its workers
    through the fork server instead of forking them, unlike a user's script.

    A sample is the private resident memory (``RssAnon + RssFile``) summed over the
    processes, plus what the machine's shared memory (``Shmem``) grew since the start:
    a segment counts once, however many processes map it, and even when none has it
    mapped (a memfd only held open).  ``VmRSS`` alone would count a shared page once
    per process that touched it, and a segment no live process touched not at all;
    its peak sum is kept too (``rss``), for reference.  A daemon thread samples every
    `SAMPLE` seconds while the ``with`` block runs.  Descendants are found by parent
    pid, from ``/proc/<pid>/stat`` read once per new process (this kernel may lack
    ``/proc/<pid>/task/<tid>/children``).
    """

    def __init__(self, root: int) -> None:
        self.peak = self.shmem = self.rss = self.start = 0
        self._root = root
        self._shmem_start = _system_shmem()
        self._parents: dict[int, int] = {}  # pid -> parent pid, of every process seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory sampler", daemon=True)

    def __enter__(self) -> TreeMemory:
        self.sample()
        self.start = self.peak
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE):
            self.sample()

    def _tree(self) -> list[int]:
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for gone in self._parents.keys() - pids:
            del self._parents[gone]
        for new in pids - self._parents.keys():
            self._parents[new] = _parent_of(new)
        children: dict[int, list[int]] = {}
        for pid, parent in self._parents.items():
            children.setdefault(parent, []).append(pid)
        tree = [self._root]
        for pid in tree:  # grows while walked: breadth first
            tree.extend(children.get(pid, ()))
        return tree

    def sample(self) -> None:
        private = rss = 0
        for pid in self._tree():
            p, s = _status(pid)
            private, rss = private + p, rss + p + s
        shared = max(0, _system_shmem() - self._shmem_start)
        if private + shared > self.peak:
            self.peak, self.shmem = private + shared, shared
        self.rss = max(self.rss, rss)


# -- the child: one figure in a fresh process ---------------------------------------


def run_floor(funcs: Funcs, deps: Deps) -> tuple[float, Any]:
    """The same calls as a plain loop over the chains; a chain's values go as it goes."""
    start = perf_counter()
    ends = []
    for i in range(CHAINS):
        value = funcs[f"source{i}"]()
        for k in range(1, STEPS + 1):
            value = funcs[f"step{i}.{k}"](value)
        ends.append(value)
    result = funcs["final"](*ends)
    return perf_counter() - start, result


def run_floor_kept(funcs: Funcs, deps: Deps) -> tuple[float, Any]:
    """The floor, keeping every value as ``graph.results`` does: each step's output is
    then memory never touched before, as in a run that keeps its results."""
    start = perf_counter()
    kept, ends = [], []
    for i in range(CHAINS):
        value = funcs[f"source{i}"]()
        kept.append(value)
        for k in range(1, STEPS + 1):
            value = funcs[f"step{i}.{k}"](value)
            kept.append(value)
        ends.append(value)
    result = funcs["final"](*ends)
    return perf_counter() - start, result


def run_taskmap(
    runner: Callable[[taskmap.Graph], Any], funcs: Funcs, deps: Deps
) -> tuple[float, Any]:
    start = perf_counter()
    graph = taskmap.create_graph(funcs, deps)
    runner(graph)
    elapsed = perf_counter() - start
    if graph.failed:
        first = graph.results[graph.failed[0]]
        raise RuntimeError(f"tasks failed: {graph.failed}; the first: {first!r}")
    return elapsed, graph.results["final"]


def run_dask(funcs: Funcs, deps: Deps) -> tuple[float, Any]:
    import dask.multiprocessing

    dsk = {name: (funcs[name], *ds) for name, ds in deps.items()}
    start = perf_counter()
    result = dask.multiprocessing.get(dsk, "final", num_workers=WORKERS)
    return perf_counter() - start, result


def _call(func: Callable[..., Any], *args: Any) -> Any:
    return func(*args)


def run_ray(funcs: Funcs, deps: Deps) -> tuple[float, Any]:
    """Ray with its object store; ``ray.init`` and ``ray.shutdown`` are timed, like pools."""
    import ray  # type: ignore[import-not-found]

    start = perf_counter()
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        call = ray.remote(_call)  # a partial is not a function to ray.remote: wrap the call
        refs: dict[str, Any] = {}
        for name, ds in deps.items():
            refs[name] = call.remote(funcs[name], *(refs[d] for d in ds))
        result = ray.get(refs["final"])
    finally:
        ray.shutdown()
    return perf_counter() - start, result


RUNNERS: dict[str, Callable[[Funcs, Deps], tuple[float, Any]]] = {
    FLOOR: run_floor,
    KEPT: run_floor_kept,
    TM: partial(run_taskmap, partial(taskmap.run_parallel_async, ncores=WORKERS)),
    TM_DROP: partial(
        run_taskmap, partial(taskmap.run_parallel_async, ncores=WORKERS, drop_results=True)
    ),
    RUN_ASYNC: partial(run_taskmap, taskmap.run_async),
    DASK: run_dask,
    RAY: run_ray,
}


def memcpy_seconds(nbytes: int) -> float:
    """Median time of one warm copy of ``nbytes`` into a touched array."""
    import numpy as np

    src = np.full(nbytes // 8, 1.0)
    dst = np.full_like(src, 0.0)
    np.copyto(dst, src)
    times = []
    for _ in range(5):
        start = perf_counter()
        np.copyto(dst, src)
        times.append(perf_counter() - start)
    return median(times)


def size_of(kind: str, size: int) -> int:
    """Bytes for arrays and frames (``size`` in MB), dicts for a list (``size`` as is)."""
    return size if kind == "dicts" else size * MB


def child(runner: str, kind: str, size: int, spawned: float | None) -> dict[str, Any]:
    n = size_of(kind, size)
    import_for(kind)
    funcs, deps = workload(kind, n)
    seconds, result = RUNNERS[runner](funcs, deps)
    end = time.monotonic()
    got = [tuple(row) for row in result]
    want = expected(kind, n)
    if got != want:
        raise AssertionError(f"{runner} {kind} {size}: the result is {got}, expected {want}")
    out: dict[str, Any] = {
        "makespan": seconds,
        "total": end - spawned if spawned is not None else None,
    }
    if runner in (FLOOR, KEPT):
        out["loop"], out["makespan"] = seconds, seconds / WORKERS
    if runner == FLOOR:
        if kind == "dicts":
            out["pickled"] = len(pickle.dumps(funcs["source0"](), protocol=5))
        else:
            out["memcpy"] = memcpy_seconds(n)
    return out


# -- the parent: spawn, repeat, skip ---------------------------------------------------


@dataclass(slots=True)
class Figure:
    """One runner at one size: the outputs of its child runs, or why it was skipped."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""

    def median(self, key: str) -> float:
        return median([run[key] for run in self.runs])

    def peak(self) -> tuple[int, int, int]:
        """``(peak, its shared part, peak VmRSS sum)`` of the run with the highest peak."""
        top = max(self.runs, key=lambda run: int(run["peak"]))
        return top["peak"], top["shmem"], top["rss"]


Row = dict[str, Figure]  # runner -> figure, at one size


def spawn(runner: str, kind: str, size: int) -> dict[str, Any]:
    """Run ``--one runner kind size`` in a fresh ``python``; add its wall time (``wall``)."""
    command = [sys.executable, __file__, "--one", runner, kind, str(size)]
    spawned = time.monotonic()
    proc = subprocess.Popen(
        [*command, "--t0", repr(spawned)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with TreeMemory(proc.pid) as memory:  # sampled from here (see TreeMemory)
            stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.monotonic() - spawned
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{stderr}")
    for line in stderr.splitlines()[:5]:  # a warning is worth seeing, not fatal
        print(f"    ({runner} {kind} {size} stderr: {line})")
    out: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    out.update(wall=wall, peak=memory.peak, shmem=memory.shmem, rss=memory.rss)
    return out


def size_label(kind: str, size: int) -> str:
    return f"{size:,} dicts" if kind == "dicts" else f"{size} MB"


def extrapolate(seen: Sequence[tuple[int, float]], size: int) -> float:
    """The makespan at ``size``, on the line through the last two ``(size, makespan)``.

    Linear, not proportional: a small size's makespan is mostly start-up (workers,
    imports), which does not grow with the value.  Zero before two sizes have run.
    """
    if len(seen) < 2:
        return 0.0
    (a, ta), (b, tb) = seen[-2:]
    return tb + (tb - ta) / (b - a) * (size - b)


def bench_kind(
    kind: str, sizes: Sequence[int], runners: Sequence[str], repeat: int, max_seconds: float
) -> dict[int, Row]:
    """Every runner at every size, in fresh processes; print a line per figure."""
    print(f"\n{kind}: {CHAINS} chains x (source + {STEPS} steps) + final", flush=True)
    rows: dict[int, Row] = {}
    seen: dict[str, list[tuple[int, float]]] = {r: [] for r in runners}  # (size, makespan)
    for size in sizes:
        row = {runner: Figure() for runner in runners}
        for runner in runners:
            guess = extrapolate(seen[runner], size)
            if runner not in (FLOOR, KEPT) and guess > max_seconds:
                row[runner].skipped = f"skipped: ~{guess:.0f} s expected"
        for r in range(repeat):
            for runner, figure in row.items():
                if figure.skipped or (r and figure.runs[0]["wall"] > SLOW):
                    continue
                figure.runs.append(spawn(runner, kind, size))
        floor = row[FLOOR].median("makespan")
        for runner, figure in row.items():
            head = f"  {size_label(kind, size):>16}  {LABELS[runner]:<27}"
            if figure.skipped:
                print(f"{head} {figure.skipped} (--max-seconds {max_seconds:g})", flush=True)
                continue
            seconds = figure.median("makespan")
            seen[runner].append((size, seconds))
            peak, shmem, rss = figure.peak()
            total = figure.median("total")
            print(
                f"{head} makespan {fmt_seconds(seconds):>9} {seconds / floor:6.2f}x floor,"
                f" total {fmt_seconds(total):>9}, peak {fmt_bytes(peak):>8}"
                f" ({fmt_bytes(shmem)} shared; VmRSS sum {fmt_bytes(rss)}),"
                f" {len(figure.runs)} run(s)",
                flush=True,
            )
        rows[size] = row
    return rows


# -- the report -----------------------------------------------------------------------


def cell(figure: Figure, floor: float, repeat: int) -> str:
    if figure.skipped:
        return figure.skipped
    seconds = figure.median("makespan")
    mark = "¹" if len(figure.runs) < repeat else ""
    return f"{fmt_seconds(seconds)} ({seconds / floor:.2f}x){mark}"


def memory_cell(figure: Figure, floor_peak: int) -> str:
    if figure.skipped:
        return "-"
    peak = figure.peak()[0]
    return f"{fmt_bytes(peak)} ({peak / floor_peak:.1f}x)"


def table(kind: str, rows: dict[int, Row], runners: Sequence[str], repeat: int) -> None:
    others = [r for r in runners if r not in (FLOOR, TM)]
    once = f" (¹ one run: the first took over {SLOW:g} s)" if repeat > 1 else ""
    print(f"\n{kind}, makespan (ratio to the floor), median of {repeat}{once}\n")
    heads = ["size", "floor", "memcpy", LABELS[TM], "per hop", "total, fresh process"]
    heads += [LABELS[r] for r in others] + ["peak memory, taskmap / floor"]
    print("| " + " | ".join(heads) + " |")
    print("| --- |" + " ---: |" * (len(heads) - 2) + " --- |")
    for size, row in rows.items():
        base = row[FLOOR]
        floor, floor_peak = base.median("makespan"), base.peak()[0]
        if kind == "dicts":
            size_cell = f"{size:,} dicts ({fmt_bytes(int(base.median('pickled')))} pickled)"
            memcpy = "-"
        else:
            size_cell, memcpy = f"{size} MB", fmt_seconds(base.median("memcpy"))
        tm = row[TM]
        if tm.skipped:
            hop = total = peak = "-"
        else:
            hop = f"{(tm.median('makespan') - floor) / HOPS * 1e3:.0f} ms"
            total = fmt_seconds(tm.median("total"))
            top = tm.peak()[0]
            peak = f"{fmt_bytes(top)} / {fmt_bytes(floor_peak)} ({top / floor_peak:.1f}x)"
        cells = [size_cell, fmt_seconds(floor), memcpy, cell(tm, floor, repeat), hop, total]
        cells += [cell(row[r], floor, repeat) for r in others] + [peak]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{kind}, peak memory summed over the process and its workers (ratio to the floor)\n")
    print("| size | " + " | ".join(LABELS[r] for r in runners) + " |")
    print("| --- |" + " ---: |" * len(runners))
    for size, row in rows.items():
        floor_peak = row[FLOOR].peak()[0]
        cells = [memory_cell(row[r], floor_peak) for r in runners]
        print(f"| {size_label(kind, size)} | " + " | ".join(cells) + " |")


def goals(results: dict[str, dict[int, Row]]) -> None:
    """Each goal twice, like against like: a run that keeps every value (the default)
    against the floor that keeps them too, and ``drop_results=True`` against the floor
    that lets each value go."""
    print("\ngoals (makespan of taskmap.run_parallel_async / its floor)")
    pairs = ((TM, KEPT, "every value kept"), (TM_DROP, FLOOR, "drop_results=True"))
    for kind in ("numpy", "pandas"):
        rows = results.get(kind, {})
        for size, limit, tag in (
            (100, GOAL_100_BAR, "bar"),
            (100, GOAL_100_AIM, "aim"),
            (20, GOAL_20, ""),
        ):
            for runner, floor, how in pairs:
                label = f"{kind} {size} MB{f' ({tag})' if tag else ''}, {how}"
                if size not in rows or runner not in rows[size] or floor not in rows[size]:
                    print(f"  {label}: not measured in this run")
                    continue
                tm = rows[size][runner]
                if tm.skipped:
                    print(f"  {label}: not measured ({tm.skipped}) MISS")
                    continue
                ratio = tm.median("makespan") / rows[size][floor].median("makespan")
                print("  " + goal_line(label, ratio, LABELS[floor], limit))


# -- main -----------------------------------------------------------------------------


def versions() -> tuple[list[str], list[str], list[str]]:
    """Return ``(kinds, runners, notes)`` for what is installed here."""
    kinds, runners, notes = ["dicts"], [FLOOR, TM, KEPT, TM_DROP, RUN_ASYNC], []
    try:
        import numpy as np
    except ImportError:
        notes.append("numpy: not installed (pip install numpy pandas); arrays and frames skipped")
    else:
        kinds.insert(0, "numpy")
        notes.append(f"numpy {np.__version__}")
        try:
            import pandas as pd
        except ImportError:
            notes.append("pandas: not installed; frames skipped")
        else:
            kinds.insert(1, "pandas")
            notes.append(f"pandas {pd.__version__}")
    try:
        import dask
        import dask.multiprocessing
    except ImportError:
        notes.append("dask: not installed (pip install 'taskmap[bench]'); its column is skipped")
    else:
        runners.append(DASK)
        context = dask.config.get("multiprocessing.context", "spawn")
        notes.append(f"dask {dask.__version__} ({context}, {WORKERS} workers)")
    try:
        import ray
    except ImportError:
        notes.append("ray: not installed")
    else:
        runners.append(RAY)
        notes.append(f"ray {ray.__version__}")
    return kinds, runners, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB, one repeat (smoke)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="MB", help="array sizes in MB")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="value kinds to run")
    parser.add_argument("--repeat", type=int, help=f"runs per figure (default {REPEAT})")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=MAX_SECONDS,
        help="skip a runner whose makespan, extrapolated from the sizes before, would exceed this",
    )
    parser.add_argument(
        "--one",
        nargs=3,
        metavar=("RUNNER", "KIND", "SIZE"),
        help=f"one figure in this process, as JSON; RUNNER in {list(RUNNERS)}, KIND in"
        f" {list(KINDS)}, SIZE in MB (dicts: a count)",
    )
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # the parent's spawn time
    args = parser.parse_args(argv)
    if args.one:
        runner, kind, size = args.one
        if runner not in RUNNERS or kind not in KINDS or not size.isdigit():
            parser.error(f"--one {shlex.join(args.one)}: see --help for RUNNER, KIND and SIZE")
        print(json.dumps(child(runner, kind, int(size), args.t0)))
        return 0

    sizes = args.sizes or (QUICK_SIZES_MB if args.quick else SIZES_MB)
    dicts = QUICK_DICTS if args.quick else DICTS
    repeat = args.repeat or (1 if args.quick else REPEAT)
    print(f"taskmap {taskmap.__version__} data benchmark{' (quick)' if args.quick else ''}")
    print(f"command: {Path(sys.executable).name} {shlex.join(sys.argv)}")
    print(f"machine: {machine()}; event loop: {LOOP}; {compile_taskmap()}")
    kinds, runners, notes = versions()
    print("; ".join(notes))
    kinds = [kind for kind in kinds if kind in (args.kinds or KINDS)]
    results = {
        kind: bench_kind(
            kind, [dicts] if kind == "dicts" else sizes, runners, repeat, args.max_seconds
        )
        for kind in kinds
    }
    print(f"\nmarkdown ({machine()}, {WORKERS} workers; per hop = (makespan - floor) / {HOPS})")
    for kind, rows in results.items():
        table(kind, rows, runners, repeat)
    goals(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
