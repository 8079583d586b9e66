"""The cache for years of daily runs (issue 14): limits and pruning, a damaged database
file, signed and encrypted entries, reading a stored result without running.

Calls are counted through files (`calls` fixture), since tasks may run in workers.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import taskmap
import taskmap.checkpoint.store as store_module
from taskmap import Reason
from taskmap.checkpoint.encoders import PickleEncoder, pack_entry, sign_entry
from taskmap.checkpoint.store import DB_NAME, DirectoryStore
from tests.checkpoint.test_cache import chain, counts, other_output_b, reasons
from tests.conftest import Calls

Runner = Callable[..., taskmap.Graph]
REPO = Path(taskmap.__file__).resolve().parents[1]


def store_of(graph: taskmap.Graph) -> Any:
    assert graph.checkpoint is not None
    return graph.checkpoint.store


# -- the day's data: a graph whose input changes every day -----------------------------


def extract(day: int) -> list[int]:
    return [day * 1000 + i for i in range(200)]  # about 1 KB once pickled


def config() -> dict[str, int]:
    return {"scale": 3}


def transform(rows: list[int], settings: dict[str, int]) -> list[int]:
    return [r * settings["scale"] for r in rows]


def report(rows: list[int]) -> int:
    return sum(rows)


def daily(day: int, cache: object, calls: Calls | None = None, **options: Any) -> taskmap.Graph:
    """extract(day) -> transform(rows, config) -> report; config never changes."""
    funcs: dict[str, Callable[..., Any]] = {
        "extract": functools.partial(extract, day),
        "config": config,
        "transform": transform,
        "report": report,
    }
    if calls is not None:
        funcs = {name: counted(calls.path(name), func) for name, func in funcs.items()}
    deps = {
        "extract": [],
        "config": [],
        "transform": ["extract", "config"],
        "report": ["transform"],
    }
    return taskmap.create_graph(funcs, deps, cache=cache, **options)


def counted(path: str, func: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(_counted, path, func)


def _counted(path: str, func: Callable[..., Any], *args: Any) -> Any:
    with open(path, "a", encoding="utf-8") as file:
        file.write("x")
    return func(*args)


def expected_report(day: int) -> int:
    return sum(r * 3 for r in extract(day))


# -- a run touches only its own tasks' keys -----------------------------------------------


class Watched(dict[str, bytes]):
    """A plain mapping store that records the keys read, and refuses to be listed."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.append(key)
        return super().get(key, default)

    def __iter__(self) -> Any:
        raise AssertionError("the run listed the whole store")

    def keys(self) -> Any:
        raise AssertionError("the run listed the whole store")


def test_a_run_reads_only_the_keys_of_its_own_tasks(calls: Calls) -> None:
    store = Watched()
    for i in range(100):  # another graph's entries
        dict.__setitem__(store, f"other-{i:05d}/{i:032x}", b"x")
    graph = taskmap.run(chain(calls, store))
    taskmap.run(chain(calls, store))
    assert graph.checkpoint is not None
    tokens = {graph.checkpoint.token(t) for t in "abcd"}
    assert store.asked
    assert {key.partition("/")[0] for key in store.asked} <= tokens


def test_a_run_on_the_directory_store_asks_for_its_tasks_prefixes_only(
    runner: Runner, calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c"
    other = DirectoryStore(cache)
    other.update({f"other-{i:05d}/{i:032x}": b"x" * 10 for i in range(1000)})
    other.close()
    asked: list[list[str]] = []
    listing = DirectoryStore.keys_under_many

    def spy(self: DirectoryStore, prefixes: list[str]) -> list[str]:
        asked.append(list(prefixes))
        return listing(self, prefixes)

    def refuse(self: DirectoryStore) -> Any:
        raise AssertionError("the run listed the whole store")

    monkeypatch.setattr(DirectoryStore, "keys_under_many", spy)
    monkeypatch.setattr(DirectoryStore, "__iter__", refuse)
    monkeypatch.setattr(DirectoryStore, "__len__", refuse)
    graph = runner(chain(calls, cache))
    assert graph.checkpoint is not None
    prefixes = sorted(f"{graph.checkpoint.token(t)}/" for t in "abcd")
    assert [sorted(p) for p in asked] == [prefixes]  # once, at the first miss
    graph = chain(calls, cache)
    graph.funcs["b"] = other_output_b
    runner(graph)
    assert [sorted(p) for p in asked] == [prefixes, prefixes]
    assert graph.results["c"] == "c(B!)"


def test_list_cache_reads_no_value(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = time.time()
    graph = taskmap.run(chain(calls, tmp_path / "c"))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("list_cache read a value")

    for method in ("get", "get_many", "__getitem__", "items", "values"):
        monkeypatch.setattr(DirectoryStore, method, refuse)
    entries = taskmap.list_cache(graph)
    assert [(e.task, e.encoder) for e in entries] == [(t, "pickle") for t in "abcd"]
    assert all(before <= e.written <= e.used <= time.time() for e in entries)
    assert all(e.size > 100 for e in entries)


# -- cache_limit: trimmed after each run, least recently used first -----------------------


@pytest.mark.parametrize("runner", [taskmap.run, taskmap.run_parallel_async])
def test_cache_limit_trims_least_recently_used_entries_after_each_run(
    runner: Runner, calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "USE_RESOLUTION", 0.0)  # runs a few ms apart
    cache = tmp_path / "c"
    options = {"ncores": 1} if runner is taskmap.run_parallel_async else {}
    graph = runner(daily(1, cache, calls), **options)
    day_bytes = sum(e.size for e in taskmap.list_cache(graph) if e.task != "config")
    limit = int(day_bytes * 2.5)  # config and two days fit; three days do not
    for day in (2, 3):
        graph = runner(daily(day, cache, calls, cache_limit=limit), **options)
        assert graph.results["report"] == expected_report(day)
        assert store_of(graph).usage()[1] <= limit
    # day 1 went (least recently used), days 2 and 3 stay, config (used daily) stays
    runner(daily(2, cache, calls, cache_limit=limit), **options)  # reading counts as a use
    assert counts(calls, ["extract", "config"]) == {"extract": 3, "config": 1}
    graph = runner(daily(4, cache, calls, cache_limit=limit), **options)  # day 3 goes now
    assert store_of(graph).usage()[1] <= limit
    runner(daily(2, cache, calls, cache_limit=limit), **options)
    assert counts(calls, ["extract", "config"]) == {"extract": 4, "config": 1}
    runner(daily(3, cache, calls, cache_limit=limit), **options)
    assert counts(calls, ["extract", "config"]) == {"extract": 5, "config": 1}


def test_cache_limit_on_a_plain_mapping_trims_the_graphs_own_entries(calls: Calls) -> None:
    store: dict[str, bytes] = {"another-graph/" + "0" * 32: b"x" * 100_000}
    graph = taskmap.run(daily(1, store, calls))
    day_bytes = sum(e.size for e in taskmap.list_cache(graph))
    for day in (2, 3, 4):
        graph = taskmap.run(daily(day, store, calls, cache_limit=int(day_bytes * 1.5)))
        assert graph.results["report"] == expected_report(day)
        assert sum(e.size for e in taskmap.list_cache(graph)) <= day_bytes * 1.5
    assert "another-graph/" + "0" * 32 in store  # not this graph's: never listed, kept


def test_a_use_is_recorded_once_per_resolution(calls: Calls, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    graph = taskmap.run(chain(calls, cache))
    store = DirectoryStore(cache)
    store.commit(uses=[e.key for e in taskmap.list_cache(graph)], when=time.time() - 30)
    before = {e.key: e.used for e in taskmap.list_cache(graph)}
    taskmap.run(chain(calls, cache))  # 30 s later: within the resolution, nothing written
    assert {e.key: e.used for e in taskmap.list_cache(graph)} == before
    store.commit(uses=list(before), when=time.time() - 61)
    assert all(e.used < time.time() - 60 for e in taskmap.list_cache(graph))
    taskmap.run(chain(calls, cache))  # 61 s later: recorded
    after = {e.key: e.used for e in taskmap.list_cache(graph)}
    assert all(after[key] > time.time() - 5 for key in before)
    store.close()


@pytest.mark.parametrize("limit", ["20 parsecs", "-1MB", -5, 1.5, "", "GB"])
def test_a_bad_cache_limit_is_a_value_error_naming_it(limit: object) -> None:
    with pytest.raises(
        ValueError,
        match=r"^cache_limit must be a number of bytes or a size such as '500MB' or '20GB' "
        + re.escape(f"(got {limit!r})")
        + "$",
    ):
        taskmap.create_graph({"a": int}, {"a": []}, cache={}, cache_limit=limit)  # type: ignore[arg-type]


def test_a_year_of_daily_runs_stays_under_the_limit_and_every_run_is_right(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "USE_RESOLUTION", 0.0)  # days a few ms apart
    cache = tmp_path / "c"
    limit = 40_000  # about 3 days of entries
    sizes = []
    for day in range(365):
        graph = taskmap.run(daily(day, cache, calls, cache_limit=limit))
        assert graph.results["report"] == expected_report(day)
        assert store_of(graph).usage()[1] <= limit
        sizes.append((cache / DB_NAME).stat().st_size)
    assert counts(calls, ["extract", "config", "transform", "report"]) == {
        "extract": 365,
        "config": 1,  # used every day: never trimmed
        "transform": 365,
        "report": 365,
    }
    assert max(sizes[30:]) <= 1.25 * max(sizes[:30])  # the file does not grow either
    taskmap.run(daily(364, cache, calls, cache_limit=limit))  # the last day is still whole
    assert calls.count("report") == 365


# -- prune_cache ----------------------------------------------------------------------------


def three_days(calls: Calls, cache: Path) -> taskmap.Graph:
    for day in (1, 2, 3):
        graph = taskmap.run(daily(day, cache, calls))
    return graph


def test_prune_keeps_each_tasks_most_recently_used_entries(calls: Calls, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    graph = three_days(calls, cache)
    other = taskmap.run(taskmap.create_graph({"x": lambda: 1}, {"x": []}, cache=cache))
    before = {e.key: e for e in taskmap.list_cache(graph)}
    removed = taskmap.prune_cache(graph, keep_last=2)
    assert sorted(e.task for e in removed) == ["extract", "report", "transform"]  # day 1
    assert all(e == before[e.key] for e in removed)  # what it removed, as listed before
    assert [e.task for e in taskmap.prune_cache(graph)] == ["extract", "report", "transform"]
    assert sorted(e.task for e in taskmap.list_cache(graph)) == [
        "config",
        "extract",
        "report",
        "transform",
    ]
    assert [e.task for e in taskmap.list_cache(other)] == ["x"]  # another graph's stay
    assert taskmap.prune_cache(graph) == []
    taskmap.run(daily(3, cache, calls))  # the last day is whole
    assert calls.count("extract") == 3
    found = taskmap.explain(daily(2, cache, calls))
    assert found["extract"].reason is Reason.CODE_CHANGED  # its 'last' record stayed
    assert taskmap.prune_cache(graph, keep_last=0) != []
    assert taskmap.list_cache(graph) == []


def test_prune_drops_entries_last_used_long_ago(calls: Calls, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    graph = three_days(calls, cache)
    store = DirectoryStore(cache)
    entries = taskmap.list_cache(graph, ["extract", "transform", "report"])
    first_used = {e.task: e.used for e in sorted(entries, key=lambda e: -e.used)}
    day1 = [e.key for e in entries if e.used == first_used[e.task]]
    store.commit(uses=day1, when=time.time() - 40 * 86400)
    [setting] = taskmap.list_cache(graph, "config")
    store.commit(uses=[setting.key], when=time.time() - 20 * 86400)
    removed = taskmap.prune_cache(graph, keep_last=None, older_than="30d")
    assert sorted(e.key for e in removed) == sorted(day1)
    assert all(e.used < time.time() - 39 * 86400 for e in removed)
    assert [e.task for e in taskmap.prune_cache(graph, keep_last=None, older_than=15 * 86400)] == [
        "config"
    ]
    store.close()


def test_prune_to_a_size_drops_least_recently_used_entries_of_the_store(
    calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    other = taskmap.run(taskmap.create_graph({"x": big}, {"x": []}, cache=cache))  # oldest
    graph = three_days(calls, cache)
    total = DirectoryStore(cache).usage()[1]
    removed = taskmap.prune_cache(graph, keep_last=None, max_bytes=total - 1)
    assert [e.task for e in removed] == ["x"]  # the least recently used: another graph's
    assert taskmap.list_cache(other) == []
    removed = taskmap.prune_cache(graph, keep_last=None, max_bytes="1kB")
    assert {e.task for e in removed} >= {"extract", "transform", "report"}
    assert DirectoryStore(cache).usage()[1] <= 1000  # with the 'last' records, which stay


def big() -> bytes:
    return os.urandom(50_000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_last": -1}, r"keep_last must be None or an int >= 0 \(got -1\)"),
        ({"keep_last": "2"}, r"keep_last must be None or an int >= 0 \(got '2'\)"),
        (
            {"older_than": "soon"},
            r"older_than must be a number of seconds, a timedelta or a duration such as '30d' "
            r"or '12h' \(got 'soon'\)",
        ),
        (
            {"max_bytes": "lots"},
            r"max_bytes must be a number of bytes or a size such as '500MB' or '20GB' "
            r"\(got 'lots'\)",
        ),
    ],
)
def test_bad_prune_options_name_the_option_and_value(options: dict[str, Any], message: str) -> None:
    for cache in ({}, None):
        graph = taskmap.create_graph({"a": int}, {"a": []}, cache=cache)
        with pytest.raises(ValueError, match=f"^{message}$"):
            taskmap.prune_cache(graph, **options)


PIPELINE = textwrap.dedent(
    """
    import os, sys
    import taskmap

    def record(name):
        with open(os.path.join(os.environ["TM_CALLS"], name + ".calls"), "a") as file:
            file.write("x")

    def extract(day):
        record("extract")
        return list(range(day, day + 100))

    def total(rows):
        record("total")
        return sum(rows)

    def build(day):
        return taskmap.create_graph(
            {"extract": lambda: extract(day), "total": total},
            {"extract": [], "total": ["extract"]},
            cache=sys.argv[1],
        )

    if sys.argv[2] == "prune":
        removed = taskmap.prune_cache(build(0), keep_last=1)
        print(sorted(entry.task for entry in removed))
    else:
        print(taskmap.run(build(int(sys.argv[2]))).results["total"])
    """
)


def test_a_pruned_store_is_reused_by_a_new_process(calls: Calls, tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    cache = tmp_path / "cache"

    def python(arg: str) -> str:
        env = {**os.environ, "TM_CALLS": str(calls.directory)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        done = subprocess.run(
            [sys.executable, str(script), str(cache), arg],
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout.strip()

    assert python("1") == str(sum(range(1, 101)))
    assert python("2") == str(sum(range(2, 102)))
    assert python("prune") == "['extract', 'total']"  # day 1's entries
    assert python("2") == str(sum(range(2, 102)))
    assert counts(calls, ["extract", "total"]) == {"extract": 2, "total": 2}  # day 2: cached
    assert python("1") == str(sum(range(1, 101)))
    assert counts(calls, ["extract", "total"]) == {"extract": 3, "total": 3}  # day 1: pruned


# -- a damaged database file, met in the middle of a run ------------------------------------


def damage_root_of(cache: Path, table: str) -> None:
    """Overwrite the root page of ``table``: the file opens, reading the table fails."""
    db = sqlite3.connect(cache / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(cache / DB_NAME, "r+b") as file:
        file.seek((root - 1) * page)
        file.write(random.Random(6).randbytes(page))


def healed(cache: Path, malformed: str = "database disk image is malformed") -> str:
    database = str(cache / DB_NAME)
    return (
        re.escape(f"cache database {database!r} cannot be used ({malformed}): moved it aside to ")
        + re.escape(f"'{database}.corrupt-")
        + r"\d{8}-\d{6}' and started a fresh one \(its tasks run again\)"
    )


def test_a_database_damaged_between_runs_is_healed_by_the_next_run(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    runner(chain(calls, cache))
    graph = chain(calls, cache)  # opens the file while it is whole
    store_of(graph).close()
    damage_root_of(cache, "entries")  # the first lookup of the run meets the damage
    with pytest.warns(taskmap.CacheWarning, match=healed(cache)):
        runner(graph)
    assert graph.results == {"a": "a()", "b": "b(a())", "c": "c(b(a()))", "d": "d()"}
    assert counts(calls) == dict.fromkeys("abcd", 2)
    assert len(list(cache.glob(f"{DB_NAME}.corrupt-*[0-9]"))) == 1
    runner(chain(calls, cache))  # the fresh store kept what the run stored
    assert counts(calls) == dict.fromkeys("abcd", 2)


def test_a_database_whose_writes_fail_is_healed_by_the_writer_thread(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    runner(chain(calls, cache))
    graph = chain(calls, cache)
    graph.funcs["d"] = config  # one miss: one write
    store_of(graph).close()
    damage_root_of(cache, "meta")  # reads work; the first write (a trigger) fails
    with pytest.warns(taskmap.CacheWarning, match=healed(cache)):
        runner(graph)
    assert graph.results["d"] == {"scale": 3}
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    [entry] = taskmap.list_cache(graph)  # the fresh store holds what the run wrote
    assert entry.task == "d"


# -- signed entries -------------------------------------------------------------------------


class Tripwire:
    """A value whose unpickling creates a file: what a planted pickle could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (tripped, (self.path,))


def tripped(path: str) -> Tripwire:
    Path(path).write_text("code ran while loading a cache entry")
    return Tripwire(path)


def tripwire_graph(store: object, path: str, calls: Calls, **options: Any) -> taskmap.Graph:
    make = counted(calls.path("make"), functools.partial(Tripwire, path))
    return taskmap.create_graph({"make": make}, {"make": []}, cache=store, **options)


UNSIGNED = r"task 'make': entry not signed with this cache's secret, running it again"


@pytest.mark.parametrize("runner", [taskmap.run, taskmap.run_async])  # the value stays here
def test_an_entry_is_decoded_only_under_the_secret_that_signed_it(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store: dict[str, bytes] = {}
    trap = str(tmp_path / "tripped")
    runner(tripwire_graph(store, trap, calls, cache_secret="secret A"))
    assert not os.path.exists(trap)  # making and storing the value runs nothing
    with pytest.warns(taskmap.CacheWarning, match=UNSIGNED):
        graph = runner(tripwire_graph(store, trap, calls, cache_secret=b"secret B"))
    assert not os.path.exists(trap)  # never decoded under another secret
    assert calls.count("make") == 2
    assert reasons(graph) == {"make": Reason.UNSIGNED}
    graph = runner(tripwire_graph(store, trap, calls, cache_secret=b"secret B"))  # the control
    assert os.path.exists(trap)  # decoded under its own secret: a hit
    assert calls.count("make") == 2
    assert reasons(graph) == {"make": Reason.CACHED}


def test_a_planted_entry_is_never_decoded_with_a_secret(calls: Calls, tmp_path: Path) -> None:
    store: dict[str, bytes] = {}
    trap, planted = str(tmp_path / "tripped"), str(tmp_path / "planted")
    graph = taskmap.run(tripwire_graph(store, trap, calls, cache_secret="s3cret"))
    [entry] = taskmap.list_cache(graph)
    signed = store[entry.key]
    evil = pack_entry(PickleEncoder().encode(Tripwire(planted)), "pickle", b"", {"task": "make"})
    for forged in (
        evil,  # unsigned
        sign_entry(b"guessed secret", entry.key, evil),  # signed with another secret
        signed[:37] + evil,  # a valid tag, on other bytes
        sign_entry(b"s3cret", "make-00000/" + "0" * 32, evil)[:37] + evil,  # another key's tag
    ):
        store[entry.key] = forged
        with pytest.warns(taskmap.CacheWarning, match=UNSIGNED):
            taskmap.run(tripwire_graph(store, trap, calls, cache_secret="s3cret"))
        assert not os.path.exists(planted)
    store[entry.key] = evil  # the control: without a secret, any entry is trusted
    taskmap.run(tripwire_graph(store, trap, calls))
    assert os.path.exists(planted)


def test_the_secret_comes_from_the_environment_unless_given(
    calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: dict[str, bytes] = {}
    monkeypatch.setenv("TASKMAP_CACHE_SECRET", "from the environment")
    graph = taskmap.run(chain(calls, store))
    assert all(store[e.key].startswith(b"TMSG") for e in taskmap.list_cache(graph))
    taskmap.run(chain(calls, store, cache_secret="from the environment"))
    assert counts(calls) == dict.fromkeys("abcd", 1)
    with pytest.warns(taskmap.CacheWarning, match="entry not signed with this cache's secret"):
        taskmap.run(chain(calls, store, cache_secret="given"))  # the argument wins
    assert counts(calls) == dict.fromkeys("abcd", 2)
    monkeypatch.setenv("TASKMAP_CACHE_SECRET", "")  # empty: no secret
    taskmap.run(chain(calls, store))  # a reader without a secret reads signed entries
    assert counts(calls) == dict.fromkeys("abcd", 2)


def test_entries_stored_before_a_secret_are_misses_after_it(calls: Calls) -> None:
    store: dict[str, bytes] = {}
    taskmap.run(chain(calls, store))
    with pytest.warns(taskmap.CacheWarning) as caught:
        graph = taskmap.run(chain(calls, store, cache_secret="new"))
    assert sorted(str(w.message) for w in caught) == [
        f"task '{t}': entry not signed with this cache's secret, running it again" for t in "abcd"
    ]
    assert graph.results["c"] == "c(b(a()))"
    found = taskmap.explain(chain(calls, store, cache_secret="new"))
    assert {t: e.reason for t, e in found.items()} == dict.fromkeys("abcd", Reason.CACHED)


def test_a_signed_graph_pickles_with_its_secret_and_hides_it(calls: Calls) -> None:
    graph = chain(calls, {}, cache_secret="hunter2", cache_limit="1MB")
    assert "hunter2" not in repr(graph.checkpoint)
    assert repr(graph.checkpoint).endswith("write='exit' limit=1000000 signed>")
    import cloudpickle

    copy = cloudpickle.loads(cloudpickle.dumps(graph))
    assert copy.checkpoint.secret == b"hunter2"
    assert copy.checkpoint.limit == 1_000_000


@pytest.mark.parametrize(
    ("secret", "error", "message"),
    [
        (3, TypeError, r"cache_secret must be a str or bytes \(got an int\)"),
        ("", ValueError, r"cache_secret must not be empty \(an empty secret signs nothing\)"),
    ],
)
def test_a_bad_secret_names_the_problem(
    secret: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        taskmap.create_graph({"a": int}, {"a": []}, cache={}, cache_secret=secret)  # type: ignore[arg-type]


# -- encrypted entries ----------------------------------------------------------------------

KEY = bytes(range(32))


def test_encrypted_entries_round_trip_and_hide_their_values(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    secret_rows = {"patient": "Ada Lovelace", "rows": list(range(1000))}

    def build() -> taskmap.Graph:
        funcs = {"load": counted(calls.path("load"), functools.partial(dict, secret_rows))}
        return taskmap.create_graph(
            funcs,
            {"load": []},
            cache=tmp_path / "c",
            encoders={"load": taskmap.Encrypted("pickle", KEY)},
        )

    assert runner(build()).results["load"] == secret_rows
    graph = runner(build())
    assert graph.results["load"] == secret_rows
    assert calls.count("load") == 1
    [entry] = taskmap.list_cache(graph)  # listings need no key
    assert re.fullmatch(r"aes-gcm/pickle/[0-9a-f]{8}", entry.encoder)
    data = DirectoryStore(tmp_path / "c")[entry.key]
    assert b"Lovelace" not in data
    assert b"Lovelace" in PickleEncoder(level=0).encode(secret_rows)  # the control


def test_an_encrypted_entry_under_another_key_or_altered_is_a_miss(calls: Calls) -> None:
    pytest.importorskip("cryptography")
    store: dict[str, bytes] = {}

    def build(key: bytes) -> taskmap.Graph:
        funcs = {"load": counted(calls.path("load"), functools.partial(str, "ciphertext"))}
        encoders = {"load": taskmap.Encrypted("json", key)}
        return taskmap.create_graph(funcs, {"load": []}, cache=store, encoders=encoders)

    other = bytes(32)
    taskmap.run(build(KEY))
    with pytest.warns(
        taskmap.CacheWarning,
        match=r"task 'load': cached entry unreadable, running it again: written with unknown "
        r"encoder 'aes-gcm/json/[0-9a-f]{8}'",
    ):
        taskmap.run(build(other))  # another key: the entry is not even tried
    assert calls.count("load") == 2
    [entry] = taskmap.list_cache(build(other))  # now written with the other key
    data = store[entry.key]
    store[entry.key] = data[:-1] + bytes([data[-1] ^ 1])  # one bit of the GCM tag
    with pytest.warns(taskmap.CacheWarning, match="task 'load': cached entry unreadable"):
        graph = taskmap.run(build(other))
    assert graph.results["load"] == "ciphertext"
    assert calls.count("load") == 3


def test_encrypted_needs_a_key_of_16_24_or_32_bytes() -> None:
    pytest.importorskip("cryptography")
    with pytest.raises(
        ValueError,
        match=r"^Encrypted: key must be 16, 24 or 32 bytes, such as os.urandom\(32\) "
        r"\(got 5 bytes\)$",
    ):
        taskmap.Encrypted("pickle", b"short")
    with pytest.raises(ValueError, match=r"^Encrypted: unknown encoder 'yaml' \(known: "):
        taskmap.Encrypted("yaml", KEY)
    encrypted = taskmap.Encrypted(taskmap.PickleEncoder(level=0), KEY)
    assert repr(encrypted) == "Encrypted(PickleEncoder(level=0), key=<32 bytes>)"
    copy = pickle.loads(pickle.dumps(encrypted))
    assert copy.decode(encrypted.encode({"x": 1})) == {"x": 1}


def test_encrypted_without_cryptography_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(
        ImportError,
        match=re.escape("Encrypted needs the cryptography package: pip install 'taskmap[crypto]'"),
    ):
        taskmap.Encrypted("pickle", KEY)


# -- load_result ----------------------------------------------------------------------------


def test_load_result_returns_the_stored_value_and_runs_nothing(
    calls: Calls, tmp_path: Path
) -> None:
    taskmap.run(chain(calls, tmp_path / "c"))
    graph = chain(calls, tmp_path / "c")  # a new graph, as in a new process
    assert taskmap.load_result(graph, "c") == "c(b(a()))"
    assert taskmap.load_result(graph, "d") == "d()"
    assert counts(calls) == dict.fromkeys("abcd", 1)
    assert graph.results == {}
    assert graph.done == []


def test_load_result_gives_the_reason_explain_gives(calls: Calls, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with pytest.raises(taskmap.NoStoredResultError) as caught:
        taskmap.load_result(chain(calls, cache), "a")
    assert (caught.value.task, caught.value.reason) == ("a", Reason.NO_ENTRY)
    taskmap.run(chain(calls, cache))
    graph = chain(calls, cache)
    graph.funcs["b"] = other_output_b
    with pytest.raises(
        taskmap.NoStoredResultError,
        match=r"^task 'b' has no stored result for its current code and inputs: code changed$",
    ):
        taskmap.load_result(graph, "b")
    with pytest.raises(
        taskmap.NoStoredResultError,
        match=r"^task 'c' has no stored result for its current code and inputs: an upstream "
        r"task runs \('b' runs; unchanged output leaves it cached\)$",
    ) as caught:
        taskmap.load_result(graph, "c")
    explained = taskmap.explain(graph)["c"]
    assert (caught.value.reason, caught.value.detail) == (explained.reason, explained.detail)
    taskmap.run(graph)  # now c is stored for b's new output too; drop its first entry
    first = min(taskmap.list_cache(graph, "c"), key=lambda entry: entry.written)
    assert store_of(graph).delete([first.key]) == 1
    with pytest.raises(
        taskmap.NoStoredResultError,
        match=r"^task 'c' has no stored result for its current code and inputs: input changed "
        r"\(from 'b'\)$",
    ):
        taskmap.load_result(chain(calls, cache), "c")  # b's old code: b is cached, c is not
    assert taskmap.load_result(graph, "c") == "c(B!)"


def test_load_result_without_a_value_to_give(calls: Calls, tmp_path: Path) -> None:
    no_cache = taskmap.create_graph({"a": int}, {"a": []})
    with pytest.raises(
        taskmap.NoStoredResultError,
        match=r"^task 'a' has no stored result for its current code and inputs: not cached "
        r"\(the graph has no cache\)$",
    ):
        taskmap.load_result(no_cache, "a")
    graph = taskmap.run(chain(calls, tmp_path / "c", uncached=["d"]))
    with pytest.raises(taskmap.NoStoredResultError, match=r"not cached \(opted out\)$"):
        taskmap.load_result(graph, "d")
    with pytest.raises(taskmap.UnknownTaskError, match="'e'"):
        taskmap.load_result(graph, "e")
    failing = chain(calls, tmp_path / "c2")
    failing.funcs["b"] = calls.task("b", fail=True)
    taskmap.run(failing)
    with pytest.raises(
        taskmap.NoStoredResultError,
        match=r"^task 'b' has no stored result for its current code and inputs: failed before "
        r"\(ValueError: task b exploded\)$",
    ):
        taskmap.load_result(chain(calls, tmp_path / "c2"), "b")


def test_load_result_with_a_secret_never_decodes_an_unsigned_entry(
    calls: Calls, tmp_path: Path
) -> None:
    store: dict[str, bytes] = {}
    trap = str(tmp_path / "tripped")
    taskmap.run(tripwire_graph(store, trap, calls))
    with (
        pytest.warns(taskmap.CacheWarning, match=UNSIGNED),
        pytest.raises(
            taskmap.NoStoredResultError,
            match=r"^task 'make' has no stored result for its current code and inputs: entry not "
            r"signed with this cache's secret$",
        ),
    ):
        taskmap.load_result(tripwire_graph(store, trap, calls, cache_secret="s"), "make")
    assert not os.path.exists(trap)
    assert isinstance(taskmap.load_result(tripwire_graph(store, trap, calls), "make"), Tripwire)
    assert os.path.exists(trap)


def test_no_stored_result_error_pickles_with_its_fields() -> None:
    error = taskmap.NoStoredResultError("c", Reason.CODE_CHANGED, "")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.task, copy.reason, copy.detail, str(copy)) == (
        "c",
        Reason.CODE_CHANGED,
        "",
        str(error),
    )
    assert isinstance(error, LookupError)


def test_the_readme_snippet_for_years_of_daily_runs_runs(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"```python\n(# the cache for years of daily runs\n.*?)```", readme, re.S)
    assert found is not None
    script = tmp_path / "years.py"
    script.write_text(found.group(1))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    env.pop("TASKMAP_CACHE_SECRET", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("task 'total' has no stored result for its current code")


def test_a_store_that_cannot_be_trimmed_warns_and_the_run_completes(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: DirectoryStore, max_bytes: int) -> Any:
        raise OSError("disk gone")

    monkeypatch.setattr(DirectoryStore, "trim", refuse)
    with pytest.warns(
        taskmap.CacheWarning,
        match=re.escape(
            f"cache store DirectoryStore({str(tmp_path / 'c')!r}) could not be trimmed to "
            "1,000 bytes: OSError('disk gone')"
        ),
    ):
        graph = taskmap.run(chain(calls, tmp_path / "c", cache_limit=1000))
    assert graph.results["c"] == "c(b(a()))"


def test_encrypted_refuses_an_inner_encoder_that_is_not_one() -> None:
    pytest.importorskip("cryptography")
    with pytest.raises(
        TypeError,
        match=r"^Encrypted: the inner encoder must be 'pickle', 'json' or an object with name, "
        r"encode and decode \(got 3\)$",
    ):
        taskmap.Encrypted(3, KEY)  # type: ignore[arg-type]


def test_save_cache_trims_what_it_writes_to_the_limit(calls: Calls, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    graph = taskmap.run(daily(1, cache, calls, cache_write="manual", cache_limit="2kB"))
    assert taskmap.list_cache(graph) == []
    assert taskmap.save_cache(graph) == 4
    assert store_of(graph).usage()[1] <= 2000
