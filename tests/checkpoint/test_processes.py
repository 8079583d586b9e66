"""The cache across real processes: each run is a fresh ``python script.py``.

The scripts are written into ``tmp_path`` by the tests, so their task functions live in
``__main__``, as in a user's own script.  Every task appends one byte to
``$TM_CALLS/<task>.calls`` (`Calls`), so calls are counted across processes and workers.
A script prints one JSON line: the results, and the reason and detail of each task.

The kill loop runs ``TASKMAP_KILL_LOOPS`` iterations (default 5) with a random seed,
``TASKMAP_KILL_SEED`` to replay one.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import taskmap
from tests.conftest import Calls
from tests.procs import live_descendants, still_alive, tagged, wait_until

REPO = Path(taskmap.__file__).resolve().parents[1]
DB_NAME = "taskmap-cache.sqlite3"
ALL_RUNNERS = ["run", "run_async", "run_parallel", "run_parallel_async"]
KILL_LOOPS = int(os.environ.get("TASKMAP_KILL_LOOPS", "5"))

# -- the ETL script -------------------------------------------------------------------
#
#   extract ─► parse ─► clean ─┬─► enrich ─┬─► report        (clean/enrich/stats/report:
#   lookup ──► load ───────────┘           │                  a diamond)
#                              └─► stats ──┘
#
# extract, lookup and load are io-bound coroutines; the others are CPU functions.
# TM_FAIL=load makes load raise.  The line '# <parse>' is replaced by parse's source.

ETL = textwrap.dedent(
    """
    import asyncio
    import json
    import os
    import sys

    import taskmap


    def record(name):
        with open(os.path.join(os.environ["TM_CALLS"], name + ".calls"), "a") as file:
            file.write("x")


    async def extract():
        record("extract")
        await asyncio.sleep(0.005)
        return ["1,apple,3", "2,pear,5", "3,plum,7", "4,fig,2"]


    async def lookup():
        record("lookup")
        await asyncio.sleep(0.005)
        return {"apple": "red", "pear": "green", "plum": "purple"}


    async def load(table):
        record("load")
        await asyncio.sleep(0.005)
        if os.environ.get("TM_FAIL") == "load":
            raise ConnectionError("reference database is down")
        return {fruit: colour.upper() for fruit, colour in table.items()}


    # <parse>


    def clean(rows):
        record("clean")
        return [row for row in rows if row[2] > 2]


    def enrich(rows, colours):
        record("enrich")
        return [[*row, colours.get(row[1], "?")] for row in rows]


    def stats(rows):
        record("stats")
        return {"count": len(rows), "total": sum(row[2] for row in rows)}


    def report(rows, summary):
        record("report")
        return {"rows": rows, "summary": summary}


    FUNCS = {
        "extract": extract,
        "lookup": lookup,
        "load": load,
        "parse": parse,
        "clean": clean,
        "enrich": enrich,
        "stats": stats,
        "report": report,
    }
    DEPS = {
        "extract": [],
        "lookup": [],
        "load": ["lookup"],
        "parse": ["extract"],
        "clean": ["parse"],
        "enrich": ["clean", "load"],
        "stats": ["clean"],
        "report": ["enrich", "stats"],
    }


    def main(cache, runner):
        graph = taskmap.create_graph(
            FUNCS, DEPS, io_bound=["extract", "lookup", "load"], cache=cache
        )
        options = {"ncores": 2} if runner.startswith("run_parallel") else {}
        getattr(taskmap, runner)(graph, **options)
        results = {
            str(task): repr(value) if isinstance(value, BaseException) else value
            for task, value in graph.results.items()
        }
        why = graph.stats.why
        print(
            json.dumps(
                {
                    "results": results,
                    "reasons": {str(t): e.reason.value for t, e in why.items()},
                    "details": {str(t): e.detail for t, e in why.items()},
                }
            )
        )


    if __name__ == "__main__":
        main(*sys.argv[1:])
    """
)

PARSE = """
def parse(lines):
    record("parse")
    rows = []
    for line in lines:
        ident, fruit, qty = line.split(",")
        rows.append([int(ident), fruit, int(qty)])
    return rows
"""

# A new body, the same output: parse reruns, nothing below it does (early cutoff).
PARSE_SAME_OUTPUT = """
def parse(lines):
    record("parse")
    fields = [line.split(",") for line in lines]
    return [[int(ident), fruit, int(qty)] for ident, fruit, qty in fields]
"""

# A new output: every quantity times ten, so fig (2 -> 20) passes clean's filter.
PARSE_NEW_OUTPUT = PARSE.replace("int(qty)]", "int(qty) * 10]")

# Only a docstring, comments and 40 blank lines above: parse and everything below it move.
PARSE_COSMETIC = (
    "\n" * 40
    + '''
# Parsing: one row per CSV line.
def parse(lines):
    """Split each 'id,fruit,qty' line into [id, fruit, qty]."""
    record("parse")  # counted by the tests
    rows = []
    for line in lines:
        # three fields, always
        ident, fruit, qty = line.split(",")
        rows.append([int(ident), fruit, int(qty)])
    return rows
'''
)

TASKS = ["extract", "lookup", "load", "parse", "clean", "enrich", "stats", "report"]
BELOW_LOAD = {"load", "enrich", "report"}
BELOW_PARSE = {"parse", "clean", "enrich", "stats", "report"}

ROWS = [[1, "apple", 3, "RED"], [2, "pear", 5, "GREEN"], [3, "plum", 7, "PURPLE"]]
EXPECTED = {
    "extract": ["1,apple,3", "2,pear,5", "3,plum,7", "4,fig,2"],
    "lookup": {"apple": "red", "pear": "green", "plum": "purple"},
    "load": {"apple": "RED", "pear": "GREEN", "plum": "PURPLE"},
    "parse": [[1, "apple", 3], [2, "pear", 5], [3, "plum", 7], [4, "fig", 2]],
    "clean": [[1, "apple", 3], [2, "pear", 5], [3, "plum", 7]],
    "enrich": ROWS,
    "stats": {"count": 3, "total": 15},
    "report": {"rows": ROWS, "summary": {"count": 3, "total": 15}},
}


def etl_script(directory: Path, parse: str = PARSE, name: str = "etl.py") -> Path:
    script = directory / name
    script.write_text(ETL.replace("# <parse>", parse.strip("\n")), encoding="utf-8")
    return script


def environment(calls: Calls, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TM_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TM_CALLS"] = str(calls.directory)
    return {**env, **extra}


def run_script(script: Path, cache: Path, runner: str, calls: Calls, **env: str) -> dict[str, Any]:
    """Run ``script`` in a new process to completion; its printed JSON."""
    done = subprocess.run(
        [sys.executable, str(script), str(cache), runner],
        env=environment(calls, **env),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning, no stray output
    output: dict[str, Any] = json.loads(done.stdout)
    return output


def counts(calls: Calls, tasks: Iterable[str] = TASKS) -> dict[str, int]:
    return {task: calls.count(task) for task in tasks}


def ran(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """The tasks called between two `counts` (each at most once)."""
    assert all(after[t] - before[t] in (0, 1) for t in after), (before, after)
    return {task for task in after if after[task] > before[task]}


def integrity(cache: Path) -> str:
    db = sqlite3.connect(cache / DB_NAME)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


# -- 1. an unchanged graph, in a second process ------------------------------------


@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_second_process_calls_no_task_and_loads_identical_results(
    runner: str, calls: Calls, tmp_path: Path
) -> None:
    script, cache = etl_script(tmp_path), tmp_path / "cache"
    first = run_script(script, cache, runner, calls)
    assert counts(calls) == dict.fromkeys(TASKS, 1)
    assert first["results"] == EXPECTED
    assert first["reasons"] == dict.fromkeys(TASKS, "no entry")
    second = run_script(script, cache, runner, calls)
    assert counts(calls) == dict.fromkeys(TASKS, 1)
    assert second["results"] == first["results"]
    assert second["reasons"] == dict.fromkeys(TASKS, "cached")
    assert integrity(cache) == "ok"


# -- 2. a failure, then the fix, in another process ------------------------------------


@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_process_after_a_failure_runs_exactly_the_failed_task_and_its_descendants(
    runner: str, calls: Calls, tmp_path: Path
) -> None:
    script, cache = etl_script(tmp_path), tmp_path / "cache"
    failed = run_script(script, cache, runner, calls, TM_FAIL="load")
    assert ran(dict.fromkeys(TASKS, 0), counts(calls)) == set(TASKS) - {"enrich", "report"}
    assert failed["results"]["load"] == "ConnectionError('reference database is down')"
    for task in ("enrich", "report"):
        assert failed["results"][task] == (
            f"UpstreamFailedError(\"task '{task}' not run: its ancestor 'load' failed\")"
        )
    before = counts(calls)
    fixed = run_script(script, cache, runner, calls)
    assert ran(before, counts(calls)) == BELOW_LOAD
    assert fixed["results"] == EXPECTED
    assert fixed["reasons"] == {
        **dict.fromkeys(set(TASKS) - BELOW_LOAD, "cached"),
        "load": "failed before",
        "enrich": "no entry",
        "report": "no entry",
    }
    assert fixed["details"]["load"] == "ConnectionError: reference database is down"
    third = run_script(script, cache, runner, calls)  # and now everything is stored
    assert third["reasons"] == dict.fromkeys(TASKS, "cached")
    assert counts(calls) == {**dict.fromkeys(TASKS, 1), "load": 2}


# -- 3. edited code, in another process -----------------------------------------------


@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_edited_function_with_a_new_output_reruns_with_its_descendants(
    runner: str, calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run_script(etl_script(tmp_path), cache, runner, calls)
    before = counts(calls)
    edited = etl_script(tmp_path, PARSE_NEW_OUTPUT, "etl_edited.py")
    out = run_script(edited, cache, runner, calls)
    assert ran(before, counts(calls)) == BELOW_PARSE
    assert out["reasons"] == {
        "extract": "cached",
        "lookup": "cached",
        "load": "cached",
        "parse": "code changed",
        "clean": "input changed",
        "enrich": "input changed",
        "stats": "input changed",
        "report": "input changed",
    }
    assert out["details"]["clean"] == "from 'parse'"
    assert out["details"]["enrich"] == "from 'clean'"
    assert out["details"]["report"] == "from 'enrich', 'stats'"
    assert out["results"]["stats"] == {"count": 4, "total": 170}
    assert out["results"]["report"]["rows"][-1] == [4, "fig", 20, "?"]


@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_edited_function_with_the_same_output_reruns_alone(
    runner: str, calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run_script(etl_script(tmp_path), cache, runner, calls)
    before = counts(calls)
    edited = etl_script(tmp_path, PARSE_SAME_OUTPUT, "etl_edited.py")
    out = run_script(edited, cache, runner, calls)
    assert ran(before, counts(calls)) == {"parse"}
    assert out["reasons"] == {**dict.fromkeys(TASKS, "cached"), "parse": "code changed"}
    assert out["results"] == EXPECTED


@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_docstring_comments_and_moving_a_function_rerun_nothing(
    runner: str, calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    run_script(etl_script(tmp_path), cache, runner, calls)
    edited = etl_script(tmp_path, PARSE_COSMETIC, "etl_edited.py")
    out = run_script(edited, cache, runner, calls)
    assert counts(calls) == dict.fromkeys(TASKS, 1)
    assert out["reasons"] == dict.fromkeys(TASKS, "cached")
    assert out["results"] == EXPECTED


# -- the grid script: 60 CPU tasks, for kills and concurrent runs ------------------------
#
# Ten layers of six: each task depends on the one above it (six chains); on even layers
# also on the one above and to the right; t50 and t90 fan in the whole layer above.
# Each sleeps 5-20 ms and returns an int derived from its inputs.

GRID = textwrap.dedent(
    """
    import functools
    import json
    import os
    import sys
    import time

    import taskmap

    LAYERS, WIDTH = 10, 6


    def step(name, index, pause, *inputs):
        with open(os.path.join(os.environ["TM_CALLS"], name + ".calls"), "a") as file:
            file.write("x")
        time.sleep(pause)
        return (index * 7919 + 31 * sum(inputs)) % 1_000_003


    def grid():
        deps = {}
        for layer in range(LAYERS):
            for col in range(WIDTH):
                above = [f"t{layer - 1}{c}" for c in range(WIDTH)] if layer else []
                if col == 0 and layer in (5, 9):
                    parents = above
                elif layer and layer % 2 == 0:
                    parents = [above[col], above[(col + 1) % WIDTH]]
                else:
                    parents = above[col : col + 1]
                deps[f"t{layer}{col}"] = parents
        funcs = {
            name: functools.partial(step, name, i, 0.005 + (i * 37 % 16) / 1000)
            for i, name in enumerate(deps)
        }
        return funcs, deps


    if __name__ == "__main__":
        cache, runner = sys.argv[1:]
        funcs, deps = grid()
        graph = taskmap.create_graph(funcs, deps, cache=cache)
        options = {"ncores": 2} if runner.startswith("run_parallel") else {}
        getattr(taskmap, runner)(graph, **options)
        why = graph.stats.why
        out = {
            "results": graph.results,
            "reasons": {t: e.reason.value for t, e in why.items()},
        }
        print(json.dumps(out))
    """
)

GRID_TASKS = [f"t{layer}{col}" for layer in range(10) for col in range(6)]


def grid_script(directory: Path) -> Path:
    script = directory / "grid.py"
    script.write_text(GRID, encoding="utf-8")
    return script


def stored_tasks(cache: Path) -> set[str]:
    """The tasks with an entry in the store, read by a graph of the same names."""
    graph = taskmap.create_graph(
        dict.fromkeys(GRID_TASKS, int), dict.fromkeys(GRID_TASKS, ()), cache=cache
    )
    try:
        return {entry.task for entry in taskmap.list_cache(graph)}
    finally:
        assert graph.checkpoint is not None
        graph.checkpoint.store.close()  # type: ignore[attr-defined]


def entry_rows(cache: Path) -> int:
    """Rows of the entries table, less the tasks' '/last' records."""
    db = sqlite3.connect(cache / DB_NAME)
    try:
        sql = "SELECT count(*) FROM entries WHERE key NOT LIKE '%/last'"
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


@pytest.fixture(scope="module")
def grid_expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The grid's results from a reference run in a clean store of its own."""
    directory = tmp_path_factory.mktemp("reference")
    calls = Calls(directory / "calls")
    calls.directory.mkdir()
    out = run_script(grid_script(directory), directory / "cache", "run", calls)
    assert counts(calls, GRID_TASKS) == dict.fromkeys(GRID_TASKS, 1)
    assert sorted(out["results"]) == sorted(GRID_TASKS)
    return out["results"]  # type: ignore[no-any-return]


# -- /proc: what a killed driver leaves behind ----------------------------------------


# -- 4. SIGKILL at a random point, then resume ------------------------------------------


def kill_and_resume(
    runner: str, directory: Path, rng: random.Random, expected: dict[str, int], context: str
) -> int:
    """One iteration: start the grid, SIGKILL it once ``k`` tasks have started, check
    the store and the processes, resume to completion and check what ran.  Returns
    how many entries the killed run had stored."""
    directory.mkdir()
    script, cache = grid_script(directory), directory / "cache"
    calls = Calls(directory / "calls")
    calls.directory.mkdir()
    k = rng.randint(0, len(GRID_TASKS))
    context += f", kill after {k} tasks started"
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache), runner],
        env=environment(calls, TM_TAG=tag),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            proc.poll() is None
            and len(os.listdir(calls.directory)) < k
            and time.monotonic() < deadline
        ):
            time.sleep(0.001)  # polling for the trigger: the call files
        assert time.monotonic() < deadline, context
        children = live_descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)  # a no-op when it already finished
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), (context, err)
    context += f", exit code {proc.returncode}"

    # nothing of the killed driver survives it
    assert wait_until(lambda: not still_alive(children) and not tagged(tag), 5), (
        context,
        still_alive(children) | tagged(tag),
    )

    # the store is whole; what it holds ran once, in the killed process
    before = counts(calls, GRID_TASKS)
    assert max(before.values()) <= 1, context
    if (cache / DB_NAME).exists():
        assert integrity(cache) == "ok", context
    stored = stored_tasks(cache)
    assert entry_rows(cache) == len(stored), context
    assert all(before[task] == 1 for task in stored), context

    # the resume runs exactly what was not stored, and gets the reference results
    out = run_script(script, cache, runner, calls)
    assert out["results"] == expected, context
    after = counts(calls, GRID_TASKS)
    resumed = ran(before, after)
    assert not resumed & stored, context
    assert len(resumed) == len(GRID_TASKS) - len(stored), context
    assert max(after.values()) <= 2, context
    assert {t for t, r in out["reasons"].items() if r == "cached"} == stored, context
    assert set(out["reasons"].values()) <= {"cached", "no entry"}, context
    assert integrity(cache) == "ok", context
    assert stored_tasks(cache) == set(GRID_TASKS), context
    return len(stored)


@pytest.mark.timeout(max(60, 4 * KILL_LOOPS))  # 1-1.5 s an iteration
@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_resume_after_sigkill_at_a_random_point_runs_only_what_was_not_stored(
    runner: str, tmp_path: Path, grid_expected: dict[str, int]
) -> None:
    seed = int(os.environ.get("TASKMAP_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    kept = []
    for i in range(KILL_LOOPS):
        context = f"TASKMAP_KILL_SEED={seed}, iteration {i}"
        kept.append(kill_and_resume(runner, tmp_path / f"loop{i}", rng, grid_expected, context))
    # entries are written while the run goes on ('exit' mode), not only at its end
    assert max(kept) > 0, f"TASKMAP_KILL_SEED={seed}: no killed run had stored anything"


# -- 5. two processes on one store at once ----------------------------------------


@pytest.mark.parametrize("runner", ["run", "run_async", "run_parallel_async"])
def test_two_processes_running_one_graph_at_once_on_one_store_both_succeed(
    runner: str, tmp_path: Path, grid_expected: dict[str, int]
) -> None:
    script, cache = grid_script(tmp_path), tmp_path / "cache"
    calls = Calls(tmp_path / "calls")
    calls.directory.mkdir()
    stored_tasks(cache)  # the store exists, empty: a cold start races (test below)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache), runner],
            env=environment(calls),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=50) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert err == ""
        assert json.loads(out)["results"] == grid_expected
    assert integrity(cache) == "ok"
    calls_both = counts(calls, GRID_TASKS)
    assert set(calls_both.values()) <= {1, 2}
    assert stored_tasks(cache) == set(GRID_TASKS)
    third = run_script(script, cache, runner, calls)  # every entry is whole and readable
    assert counts(calls, GRID_TASKS) == calls_both
    assert third["results"] == grid_expected
    assert set(third["reasons"].values()) == {"cached"}


# Another process's first `PRAGMA journal_mode=WAL` on a new database file is a
# rollback-journal write transaction (it writes the header, with a '-journal' file).
# SQLite's busy timeout does not cover that window: a second opener failed at once
# with "database is locked" (up to one run in four of the test above on a loaded
# 2-core machine, before it created the store first).  Stores take turns opening on
# a lock file; LOCKER holds it, as a store does, while it sits in that state, and a
# store opened meanwhile must wait for it, not fail.
LOCKER = textwrap.dedent(
    """
    import fcntl, sqlite3, sys, time

    lock = open(sys.argv[1] + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    print("locked", flush=True)
    time.sleep(1)
    db.execute("COMMIT")
    fcntl.flock(lock, fcntl.LOCK_UN)
    """
)


def test_store_opened_while_another_process_creates_the_database_waits(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(cache / DB_NAME)], stdout=subprocess.PIPE, text=True
    ) as locker:
        assert locker.stdout is not None
        assert locker.stdout.readline() == "locked\n"
        try:
            graph = taskmap.create_graph({"a": int}, {"a": []}, cache=cache)
        finally:
            locker.communicate(timeout=10)
    assert locker.returncode == 0
    assert taskmap.list_cache(graph) == []
    assert graph.checkpoint is not None
    graph.checkpoint.store.close()  # type: ignore[attr-defined]


# -- 6. a corrupt database file: moved aside, a fresh store, the run goes on ---------------


def damage(cache: Path, how: str) -> bytes:
    """Damage every file of the cache directory as a torn disk would; return the
    database file's bytes after the damage."""
    rng = random.Random(6)
    for path in sorted(cache.iterdir()):
        data = path.read_bytes()
        if how == "overwritten":
            path.write_bytes(rng.randbytes(max(len(data), 64)))
        elif how == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif how == "pages" and path.name == DB_NAME:
            # the first page (header, schema) stays: the file opens, its tables do not read
            path.write_bytes(data[:4096] + rng.randbytes(len(data) - 4096))
    return (cache / DB_NAME).read_bytes()


@pytest.mark.parametrize("how", ["overwritten", "truncated", "pages"])
@pytest.mark.parametrize("runner", ALL_RUNNERS)
def test_corrupt_database_file_is_moved_aside_and_the_run_goes_on(
    runner: str, how: str, calls: Calls, tmp_path: Path
) -> None:
    script, cache = etl_script(tmp_path), tmp_path / "cache"
    run_script(script, cache, runner, calls)
    db = sqlite3.connect(cache / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    db.close()
    damaged = damage(cache, how)
    done = subprocess.run(
        [sys.executable, str(script), str(cache), runner],
        env=environment(calls),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"] == EXPECTED
    assert counts(calls) == dict.fromkeys(TASKS, 2)  # a fresh store: every task ran again
    [aside] = cache.glob(f"{DB_NAME}.corrupt-*")
    assert re.fullmatch(rf"{re.escape(DB_NAME)}\.corrupt-\d{{8}}-\d{{6}}", aside.name)
    # nothing is deleted; the connection that found the damage may have bumped the
    # header's change counter (bytes 24-27) as it closed
    assert aside.read_bytes()[100:] == damaged[100:]
    warning = (
        f"CacheWarning: cache database {str(cache / DB_NAME)!r} cannot be used "
        rf"\((file is not a database|database disk image is malformed)\): moved it aside to "
        f"{str(aside)!r} and started a fresh one \\(its tasks run again\\)"
    )
    assert len(re.findall(warning.replace("'", "'"), done.stderr)) == 1, done.stderr
    # the fresh store keeps what the run stored
    assert run_script(script, cache, runner, calls)["results"] == EXPECTED
    assert counts(calls) == dict.fromkeys(TASKS, 2)
    assert integrity(cache) == "ok"


def test_a_database_that_cannot_be_created_still_names_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / DB_NAME).mkdir()  # not a file SQLite can open, nor one to move aside
    with pytest.raises(
        sqlite3.DatabaseError,
        match=re.escape(f"cache database {str(cache / DB_NAME)!r} cannot be used ("),
    ):
        taskmap.create_graph({"a": int}, {"a": []}, cache=cache)
