"""Shared helpers for the benchmarks: the layered graph generator, timing, memory, verdicts.

Every benchmark measures one way: inputs are built once, outside the timed region;
each repeat runs a per-repeat ``setup`` (untimed), then ``gc.collect()``, then the
timed call, with ``time.perf_counter``; the median over the repeats is reported.
Cases are interleaved (repeat 1 of every case, then repeat 2...) so a machine that
slows down mid-run does not bias one case.  The garbage collector stays enabled
while timing: collections triggered by a run's own allocations are part of its cost.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

__all__ = [
    "SEED",
    "WIDTH",
    "Case",
    "count_edges",
    "fmt_bytes",
    "fmt_seconds",
    "goal_line",
    "layered_dependencies",
    "layered_graph",
    "machine",
    "median",
    "noop",
    "peak_memory",
    "spawn_child",
    "time_cases",
]

WIDTH = 100
SEED = 0


try:  # the loop taskmap's drivers use, so asyncio references run on the same one
    import uvloop

    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    LOOP = "uvloop"
except ImportError:  # pragma: no cover
    new_event_loop = asyncio.new_event_loop
    LOOP = "asyncio"


def noop(*args: object) -> None:
    """A task that does nothing: the benchmarks measure scheduling, not work."""


def layered_dependencies(
    n: int, *, width: int = WIDTH, max_deps: int = 3, exact: bool = False, seed: int = SEED
) -> dict[str, list[str]]:
    """Return a layered random DAG of ``n`` tasks named ``t0``, ``t1``...

    Tasks come in layers of ``width``; a first-layer task has no dependencies, any
    other depends on distinct tasks of the layer just before it: ``max_deps`` of
    them when ``exact``, else a random count in 1..``max_deps``.  The dict is in
    topological order and the same for the same arguments (``random.Random(seed)``).
    """
    rng = random.Random(seed)
    names = [f"t{i}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for start in range(0, n, width):
        layer = names[start : start + width]
        if start == 0:
            deps.update((name, []) for name in layer)
            continue
        previous = names[start - width : start]
        for name in layer:
            k = max_deps if exact else rng.randint(1, max_deps)
            deps[name] = rng.sample(previous, k)
    return deps


def layered_graph(
    n: int, **kwargs: Any
) -> tuple[dict[str, Callable[..., None]], dict[str, list[str]]]:
    """Return ``(funcs, dependencies)``: `layered_dependencies` with `noop` for every task."""
    deps = layered_dependencies(n, **kwargs)
    return dict.fromkeys(deps, noop), deps


def count_edges(deps: dict[str, list[str]]) -> int:
    return sum(map(len, deps.values()))


@dataclass(frozen=True, slots=True)
class Case:
    """One contender: ``call(setup())`` is timed; ``check(result)`` must return True.

    ``setup``, ``check`` and ``teardown(setup's value)`` run outside the timed
    region, on every repeat (``teardown`` releases what ``setup`` started, a pool).
    """

    name: str
    call: Callable[[Any], Any]
    setup: Callable[[], Any] = lambda: None
    check: Callable[[Any], bool] = lambda result: True
    teardown: Callable[[Any], Any] = lambda arg: None


def time_cases(cases: Sequence[Case], repeat: int) -> dict[str, list[float]]:
    """Time every case ``repeat`` times, interleaved; return name -> seconds per repeat."""
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    for _ in range(repeat):
        for case in cases:
            arg = case.setup()
            gc.collect()
            start = perf_counter()
            result = case.call(arg)
            elapsed = perf_counter() - start
            ok = case.check(result)
            case.teardown(arg)
            if not ok:
                raise AssertionError(f"{case.name}: the run did not produce every result")
            times[case.name].append(elapsed)
            del arg, result  # freed here, outside the timed region, before the next case
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_memory(call: Callable[[], Any]) -> tuple[int, int]:
    """Return ``(peak, retained)`` bytes allocated by ``call()``, traced with tracemalloc.

    Run it apart from the timings: tracing slows allocation several times over.
    ``retained`` is what the returned value still holds when the call has returned.
    """
    gc.collect()
    tracemalloc.start()
    try:
        result = call()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak, retained


def goal_line(
    label: str,
    ratio: float,
    what: str,
    limit: float,
    *,
    strict: bool = False,
    at_least: bool = False,
) -> str:
    """``run per task: 1.23x floor (goal <= 1.5x) OK`` (or ``MISS``).

    With ``at_least`` the goal is a floor: ``ratio >= limit`` (``>`` when ``strict``).
    """
    if at_least:
        met = ratio > limit if strict else ratio >= limit
        op = ">" if strict else ">="
    else:
        met = ratio < limit if strict else ratio <= limit
        op = "<" if strict else "<="
    what = f" {what}" if what else ""
    return f"{label}: {ratio:.2f}x{what} (goal {op} {limit:g}x) {'OK' if met else 'MISS'}"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} µs"


def fmt_bytes(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def machine() -> str:
    """The machine's CPU count and Python version, for the report."""
    return (
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def compile_taskmap() -> str:
    """Compile taskmap's modules to bytecode, as pip does when it installs a package,
    so that each fresh process of a benchmark loads them as a user's process does.
    Without it a machine with ``PYTHONDONTWRITEBYTECODE`` set (this one) compiles
    them again in every child: ~80 ms for the cache's modules alone, charged to the
    rows that use them.  Returns a note for the report."""
    import compileall

    import taskmap

    here = Path(__file__).resolve().parent.parent / "taskmap"
    for package in {Path(taskmap.__file__).resolve().parent, here}:
        if package.is_dir():
            compileall.compile_dir(str(package), quiet=2)  # best effort: a read-only install
    return "taskmap's modules compiled to bytecode (as pip installs them)"


def paired(first: Sequence[float], second: Sequence[float]) -> float:
    """The median of ``first[i] / second[i]``: the ratio of two contenders measured
    side by side (interleaved repeats), robust to a machine whose speed drifts
    during a run, which a ratio of two medians is not."""
    return statistics.median(a / b for a, b in zip(first, second, strict=True))


def spawn_child(
    script: str, spec: dict[str, Any], *, stderr_fatal: bool = False, timeout: float = 600
) -> dict[str, Any]:
    """Run one measurement in a fresh ``python``: ``script --child <spec as JSON>``,
    which prints a JSON object on its last line; return it with the wall time of the
    whole child (``wall``).  ``stderr_fatal``: anything on stderr (a CacheWarning)
    fails it too."""
    start = perf_counter()
    done = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = perf_counter() - start
    if done.returncode != 0 or (stderr_fatal and done.stderr.strip()):
        raise RuntimeError(f"child {spec} failed ({done.returncode}):\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    out["wall"] = wall
    return out
