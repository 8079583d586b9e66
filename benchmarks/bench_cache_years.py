"""Cache benchmark for years of daily runs (issue 14): signing, pruning, listing, a year.

Usage::

    python benchmarks/bench_cache_years.py           # full: medians of 7 (signing), of 5
    python benchmarks/bench_cache_years.py --quick   # smoke: fewer tasks and repeats

1. *Signing on the cached rerun*: `bench_checkpoint`'s 10,000-task layered graph with
   tiny results (the case where the cache's own cost shows most), filled once per
   store by a child process; each repeat spawns a fresh ``python`` that runs
   ``create_graph(funcs, deps, cache=DIR[, cache_secret=...])`` + `taskmap.run` and
   checks every task was a hit.  Unsigned and signed stores, interleaved.  Goal: the
   signed rerun takes at most 1.10x the unsigned one.
2. *prune_cache and list_cache of 100,000 entries*, in this process, on the default
   store: (a) 1,000 tasks with 100 entries each (a hundred days of a daily job),
   ``prune_cache(graph, keep_last=1)`` dropping 99,000 of them; (b) 100,000 tasks of
   one entry each, ``prune_cache(graph, keep_last=0)`` dropping all.  The stores are
   filled untimed with real entries (the store's commit, as a run's writer thread
   does); `list_cache` is timed on each before pruning.  Goal: each at most 1 s.
   For information: opening a store of 100,000 entries written before issue 14
   (migrated in place, once).
3. *A year of daily runs*: 365 runs of a small ETL graph (extract(day) -> transform
   with a fixed config -> report), its input changing every day, ``cache_limit``
   set to about four days of entries; after every run the store's bytes must be
   under the limit and the report right.  Reported: the largest usage seen, the
   database file's size at day 30 and day 365, the time per run.
4. *The cold run's cost of the store*, for information (what keeping size and last
   use beside the entries costs): the 10,000-task graph of 1. run once under
   `taskmap.run` into a new directory, a fresh process per repeat, median of 7.

A missed goal prints MISS; the exit status is 0 anyway: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from time import perf_counter
from typing import Any

from _common import compile_taskmap, fmt_seconds, goal_line, machine, median, spawn_child
from bench_checkpoint import checkpoint_graph, checksum

import taskmap
import taskmap.checkpoint.store as store_module
from taskmap.checkpoint import Checkpoint
from taskmap.checkpoint.encoders import PickleEncoder, pack_entry
from taskmap.checkpoint.store import DB_NAME, DirectoryStore

GOAL_SIGNING = 1.10  # signed cached rerun / unsigned
GOAL_SECONDS = 1.0  # prune_cache and list_cache of 100,000 entries
SECRET = "benchmark secret"


# -- 1. signing on the cached rerun, fresh processes ---------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    funcs, deps = checkpoint_graph(spec["n"])
    secret = spec.get("secret")
    gc.collect()
    t0 = perf_counter()
    graph = taskmap.create_graph(funcs, deps, cache=spec["dir"], cache_secret=secret)
    taskmap.run(graph)
    elapsed = perf_counter() - t0
    stats = graph.stats.cache
    assert stats is not None
    return {
        "seconds": elapsed,
        "hits": stats.hits,
        "stored": stats.stored,
        "checksum": checksum(graph.results.get(name) for name in deps),
    }


#: one measurement in a fresh ``python`` (a CacheWarning on stderr fails it)
spawn = functools.partial(spawn_child, __file__, stderr_fatal=True)


def bench_signing(n: int, repeat: int, base: Path) -> float:
    print(f"\n1. cached rerun, {n:,} tasks, a fresh process per repeat, median of {repeat}")
    specs = {
        "unsigned": {"n": n, "dir": str(base / "unsigned")},
        "signed": {"n": n, "dir": str(base / "signed"), "secret": SECRET},
    }
    sums = {name: spawn(spec)["checksum"] for name, spec in specs.items()}  # fill, untimed
    assert sums["unsigned"] == sums["signed"]
    times: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(repeat):
        for name, spec in specs.items():
            out = spawn(spec)
            if out["hits"] != n or out["stored"] or out["checksum"] != sums[name]:
                raise AssertionError(f"{name}: not a fully cached rerun: {out}")
            times[name].append(out["seconds"])
    for name, values in times.items():
        per_task = median(values) / n * 1e6
        print(
            f"  {name:<10} create_graph + run {fmt_seconds(median(values)):>10}"
            f"  {per_task:6.2f} µs/task   (all {', '.join(fmt_seconds(v) for v in values)})"
        )
    return median(times["signed"]) / median(times["unsigned"])


# -- 2. prune_cache and list_cache of 100,000 entries ----------------------------------------


def fill_store(cache: Path, tasks: list[str], per_task: int, *, old: bool = False) -> None:
    """Real entries (a small list each, as a run stores it) for ``tasks``, ``per_task``
    each, used one day apart; ``old``: in a store made before issue 14."""
    checkpoint = Checkpoint({})
    payload = PickleEncoder().encode(list(range(20)))
    now = time.time()
    rows: list[tuple[str, bytes]] = []
    uses: list[tuple[str, float]] = []
    for task in tasks:
        token = checkpoint.token(task)
        for day in range(per_task):
            when = now - (per_task - day) * 86400
            meta = f'"code":"{"0" * 32}","in":[],"task":{json.dumps(task)},"t":{when!r}'
            key = f"{token}/{hashlib.blake2b(f'{task}:{day}'.encode(), digest_size=16).hexdigest()}"
            rows.append((key, pack_entry(payload, "pickle", bytes(16), meta)))
            uses.append((key, when))
    if old:
        cache.mkdir()
        db = sqlite3.connect(cache / DB_NAME, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (?, ?)", rows)
        db.execute("COMMIT")
        db.close()
        return
    store = DirectoryStore(cache)
    store.commit(rows)
    db = sqlite3.connect(cache / DB_NAME, isolation_level=None)  # the days of use
    db.execute("BEGIN")
    db.executemany("UPDATE meta SET used = ? WHERE key = ?", [(w, k) for k, w in uses])
    db.execute("COMMIT")
    db.close()
    store.close()


def graph_of(tasks: list[str], cache: Path) -> taskmap.Graph:
    return taskmap.create_graph(dict.fromkeys(tasks, int), dict.fromkeys(tasks, ()), cache=cache)


def bench_prune(n_entries: int, base: Path) -> dict[str, float]:
    print(f"\n2. list_cache and prune_cache of {n_entries:,} entries (default store)")
    found: dict[str, float] = {}
    shapes = [("1,000 tasks x 100 entries", 1000, 1), ("100,000 tasks x 1 entry", 100_000, 0)]
    for label, n_tasks, keep in shapes:
        n_tasks = max(1, n_tasks * n_entries // 100_000)
        per_task = n_entries // n_tasks
        tasks = [f"task{i:06d}" for i in range(n_tasks)]
        cache = base / f"prune-{n_tasks}"
        t0 = perf_counter()
        fill_store(cache, tasks, per_task)
        filled = perf_counter() - t0
        graph = graph_of(tasks, cache)
        gc.collect()
        t0 = perf_counter()
        listed = taskmap.list_cache(graph)
        t_list = perf_counter() - t0
        assert len(listed) == n_tasks * per_task, len(listed)
        gc.collect()
        t0 = perf_counter()
        removed = taskmap.prune_cache(graph, keep_last=keep)
        t_prune = perf_counter() - t0
        assert len(removed) == n_tasks * (per_task - keep), len(removed)
        assert len(taskmap.list_cache(graph)) == n_tasks * keep
        found[f"list, {label}"] = t_list
        found[f"prune, {label}"] = t_prune
        size = (cache / DB_NAME).stat().st_size
        print(
            f"  {label}: list_cache {fmt_seconds(t_list)} ({len(listed):,} entries), "
            f"prune_cache(keep_last={keep}) {fmt_seconds(t_prune)} ({len(removed):,} removed;"
            f" file {size / 1e6:.1f} MB after; filled untimed in {fmt_seconds(filled)})"
        )
    # information: migrating a store written before issue 14
    tasks = [f"task{i:06d}" for i in range(max(1, n_entries // 100))]
    cache = base / "old"
    fill_store(cache, tasks, n_entries // len(tasks), old=True)
    t0 = perf_counter()
    store = DirectoryStore(cache)
    t_migrate = perf_counter() - t0
    assert store.usage()[0] == len(tasks) * (n_entries // len(tasks))
    store.close()
    print(
        f"  (for information: opening a store of {n_entries:,} entries written before issue"
        f" 14, migrated in place once: {fmt_seconds(t_migrate)})"
    )
    return found


# -- 3. a year of daily runs ----------------------------------------------------------------


def extract(day: int) -> list[int]:
    return [day * 1000 + i for i in range(500)]


def settings() -> dict[str, int]:
    return {"scale": 3}


def transform(rows: list[int], config: dict[str, int]) -> list[int]:
    return [r * config["scale"] for r in rows]


def report(rows: list[int]) -> int:
    return sum(rows)


def daily(day: int, cache: Path, limit: int | None) -> taskmap.Graph:
    funcs = {
        "extract": functools.partial(extract, day),
        "config": settings,
        "transform": transform,
        "report": report,
    }
    deps = {
        "extract": [],
        "config": [],
        "transform": ["extract", "config"],
        "report": ["transform"],
    }
    return taskmap.create_graph(funcs, deps, cache=cache, cache_limit=limit)


def bench_cold(n: int, repeat: int, base: Path) -> float:
    print(f"\n4. cold run, {n:,} tasks under run, a new store each, median of {repeat}")
    times = []
    for i in range(repeat):
        out = spawn({"n": n, "dir": str(base / f"cold-{i}")})
        if out["stored"] != n:
            raise AssertionError(f"not a cold run: {out}")
        times.append(out["seconds"])
    print(
        f"  create_graph + run {fmt_seconds(median(times)):>10}"
        f"  {median(times) / n * 1e6:6.2f} µs/task   (all {', '.join(map(fmt_seconds, times))})"
    )
    return median(times)


def bench_year(days: int, base: Path) -> tuple[bool, str]:
    print(f"\n3. a year of daily runs: {days} runs, the input changing every day, cache_limit set")
    cache = base / "year"
    store_module.USE_RESOLUTION = 0.0  # the days are milliseconds apart here
    first = taskmap.run(daily(0, cache, None))
    store = first.checkpoint.store  # type: ignore[union-attr]
    day_bytes = store.usage()[1]
    limit = 4 * day_bytes  # about four days of entries
    worst, sizes, times, wrong = 0, {}, [], 0
    for day in range(1, days):
        t0 = perf_counter()
        graph = taskmap.run(daily(day, cache, limit))
        times.append(perf_counter() - t0)
        expected = sum(r * 3 for r in extract(day))
        wrong += graph.results["report"] != expected
        used = graph.checkpoint.store.usage()[1]  # type: ignore[union-attr]
        worst = max(worst, used)
        if day + 1 in (30, days):
            sizes[day + 1] = (cache / DB_NAME).stat().st_size
    calls_config = taskmap.explain(daily(days - 1, cache, limit))["config"].reason.value
    ok = wrong == 0 and worst <= limit
    summary = (
        f"{days} runs, {wrong} wrong; store bytes at most {worst:,} of a {limit:,}-byte limit"
        f" ({worst / limit:.0%}); file {sizes.get(30, 0):,} bytes at day 30,"
        f" {sizes.get(days, 0):,} at day {days}; {median(times) * 1e3:.1f} ms per run"
        f" (median); config, unchanged all year, is '{calls_config}'"
    )
    print(f"  {summary}")
    return ok, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    n, repeat, entries = (1_000, 3, 10_000) if args.quick else (10_000, 7, 100_000)
    print(f"{machine()}; {compile_taskmap()}")
    base = Path(tempfile.mkdtemp(prefix="taskmap-bench-years-"))
    try:
        signing = bench_signing(n, repeat, base)
        prune = bench_prune(entries, base)
        year_ok, year = bench_year(365, base)
        cold = bench_cold(n, repeat, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\ngoals")
    print(goal_line("cached rerun, signed / unsigned", signing, "", GOAL_SIGNING))
    for label, seconds in prune.items():
        met = "OK" if seconds <= GOAL_SECONDS else "MISS"
        print(
            f"{label}: {fmt_seconds(seconds)} (goal <= {GOAL_SECONDS:g} s"
            f"{', at 100,000 entries' if args.quick else ''}) {met}"
        )
    print(f"a year of daily runs under cache_limit, every run right: {'OK' if year_ok else 'MISS'}")
    print(f"  ({year})")
    print(f"cold run of {n:,} tasks under run, default store: {fmt_seconds(cold)} (information)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
