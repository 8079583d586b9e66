"""Checkpointing through the runners: what reruns, what is served from the cache, and why.

Calls are counted through files (`calls` fixture), since tasks may run in workers.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import taskmap
from taskmap import Reason
from taskmap.backends.processes import ProcessPool
from tests.conftest import Calls

Runner = Callable[..., taskmap.Graph]


def chain(calls: Calls, store: object, **options: Any) -> taskmap.Graph:
    """a -> b -> c, plus d alone."""
    funcs = {name: calls.task(name) for name in "abcd"}
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": []}
    return taskmap.create_graph(funcs, deps, cache=store, **options)


def counts(calls: Calls, names: Iterable[str] = "abcd") -> dict[str, int]:
    return {name: calls.count(name) for name in names}


def reasons(graph: taskmap.Graph) -> dict[Any, Reason]:
    return {task: why.reason for task, why in graph.stats.why.items()}


def test_unchanged_rerun_calls_nothing_and_loads_every_result(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    first = runner(chain(calls, store))
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    second = runner(chain(calls, store))
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert (
        second.results == first.results == {"a": "a()", "b": "b(a())", "c": "c(b(a()))", "d": "d()"}
    )
    assert sorted(second.done) == ["a", "b", "c", "d"]
    assert second.stats.cache is not None
    assert (second.stats.cache.hits, second.stats.cache.misses) == (4, 0)
    assert set(reasons(second).values()) == {Reason.CACHED}
    assert reasons(first) == dict.fromkeys("abcd", Reason.NO_ENTRY)


def test_changed_function_reruns_only_what_its_output_reaches(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    runner(chain(calls, store))
    # same output from new code: b reruns, c is cut off (early cutoff)
    graph = chain(calls, store)
    graph.funcs["b"] = same_output_b
    runner(graph)
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert reasons(graph) == {
        "a": Reason.CACHED,
        "b": Reason.CODE_CHANGED,
        "c": Reason.CACHED,
        "d": Reason.CACHED,
    }
    # new output: c reruns because its input changed
    graph = chain(calls, store)
    graph.funcs["b"] = other_output_b
    runner(graph)
    assert counts(calls) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert graph.results["c"] == "c(B!)"
    assert reasons(graph)["c"] is Reason.INPUT_CHANGED
    assert graph.stats.why["c"].detail == "from 'b'"


def same_output_b(a: str) -> str:
    return "b" + "(" + a + ")"  # new code, the same value


def other_output_b(a: str) -> str:
    return "B!"


def test_failed_tasks_are_not_stored_and_rerun_with_their_descendants(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    graph = chain(calls, store)
    graph.funcs["b"] = calls.task("b", fail=True)
    runner(graph)
    assert isinstance(graph.results["b"], ValueError)
    assert isinstance(graph.results["c"], taskmap.UpstreamFailedError)
    names = {entry.task for entry in taskmap.list_cache(graph)}
    assert names == {"a", "d"}
    fixed = runner(chain(calls, store))  # a later run, with b fixed
    assert counts(calls) == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert fixed.results["c"] == "c(b(a()))"
    assert reasons(fixed)["b"] is Reason.FAILED_BEFORE
    assert "ValueError: task b exploded" in fixed.stats.why["b"].detail
    assert reasons(fixed)["c"] is Reason.NO_ENTRY


def test_reset_tasks_drops_the_entries_of_the_tasks_it_resets(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    graph = runner(chain(calls, store))
    taskmap.reset_tasks(graph, "b")
    assert {entry.task for entry in taskmap.list_cache(graph)} == {"a", "d"}
    runner(graph)
    assert counts(calls) == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert reasons(graph) == {"b": Reason.RESET, "c": Reason.RESET}
    runner(chain(calls, store))  # and the new entries are stored again
    assert counts(calls) == {"a": 1, "b": 2, "c": 2, "d": 1}


def test_reset_failed_tasks_reruns_them_in_the_same_session(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    flag = tmp_path / "broken"
    flag.write_text("yes")
    graph = taskmap.create_graph(
        {"a": calls.task("a"), "b": flaky(str(flag), calls.path("b"))},
        {"a": [], "b": ["a"]},
        cache=tmp_path / "cache",
    )
    runner(graph)
    assert isinstance(graph.results["b"], OSError)
    flag.unlink()
    runner(taskmap.reset_failed_tasks(graph))
    assert graph.results["b"] == "fixed a()"
    assert counts(calls, "ab") == {"a": 1, "b": 2}
    assert reasons(graph) == {"b": Reason.FAILED_BEFORE}


def flaky(flag: str, path: str) -> Callable[[str], str]:
    def b(a: str) -> str:
        import os

        with open(path, "a") as file:
            file.write("x")
        if os.path.exists(flag):
            raise OSError("database is down")
        return "fixed " + a

    return b


def test_uncached_task_always_runs_and_its_children_stay_cached(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    runner(chain(calls, store, uncached=["b"]))
    graph = runner(chain(calls, store, uncached=["b"]))
    assert counts(calls) == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert graph.stats.why["b"].reason is Reason.NOT_CACHED
    assert graph.stats.why["b"].detail == "opted out"
    assert {entry.task for entry in taskmap.list_cache(graph)} == {"a", "c", "d"}


def test_version_overrides_the_code_fingerprint(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    runner(chain(calls, store, versions={"b": 1}))
    graph = chain(calls, store, versions={"b": 1})
    graph.funcs["b"] = other_output_b  # new code, same version: still cached
    runner(graph)
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert graph.results["b"] == "b(a())"
    runner(chain(calls, store, versions={"b": 2}))
    assert counts(calls) == {"a": 1, "b": 2, "c": 1, "d": 1}  # c: b's output is unchanged


def test_none_results_are_not_inputs(runner: Runner, calls: Calls, tmp_path: Path) -> None:
    def build() -> taskmap.Graph:
        funcs = {"a": calls.task("a", none=True), "b": calls.task("b"), "c": calls.task("c")}
        deps = {"a": [], "b": [], "c": ["a", "b"]}
        return taskmap.create_graph(funcs, deps, cache=tmp_path / "cache")

    runner(build())
    graph = runner(build())
    assert graph.results == {"a": None, "b": "b()", "c": "c(b())"}
    assert counts(calls, "abc") == {"a": 1, "b": 1, "c": 1}


def test_dict_store_and_stats(calls: Calls) -> None:
    store: dict[str, bytes] = {}
    graph = taskmap.run(chain(calls, store))
    assert graph.stats.cache is not None
    stats = graph.stats.cache
    assert (stats.hits, stats.misses, stats.stored) == (0, 4, 4)
    assert stats.bytes_written == sum(len(v) for k, v in store.items() if not k.endswith("/last"))
    entries = taskmap.list_cache(graph)
    assert [e.task for e in entries] == ["a", "b", "c", "d"]
    assert all(e.encoder == "pickle" and e.size > 0 for e in entries)
    again = taskmap.run(chain(calls, store))
    assert again.stats.cache is not None
    assert again.stats.cache.hits == 4
    assert again.stats.cache.bytes_read == stats.bytes_written


def test_explain_says_why_each_task_would_run(calls: Calls, tmp_path: Path) -> None:
    store = tmp_path / "cache"
    before = taskmap.explain(chain(calls, store))
    assert {t: e.reason for t, e in before.items()} == {
        "a": Reason.NO_ENTRY,
        "b": Reason.UPSTREAM,
        "c": Reason.UPSTREAM,
        "d": Reason.NO_ENTRY,
    }
    assert (
        str(before["b"])
        == "'b' runs: an upstream task runs ('a' runs; unchanged output leaves it cached)"
    )
    taskmap.run(chain(calls, store))
    graph = chain(calls, store)
    graph.funcs["b"] = other_output_b
    after = taskmap.explain(graph)
    assert {t: (e.runs, e.reason) for t, e in after.items()} == {
        "a": (False, Reason.CACHED),
        "b": (True, Reason.CODE_CHANGED),
        "c": (True, Reason.UPSTREAM),
        "d": (False, Reason.CACHED),
    }
    assert str(after["a"]) == "'a' does not run: cached"
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}  # a dry run calls nothing
    assert graph.results == {}
    assert graph.done == []
    done = taskmap.run(graph)
    assert taskmap.explain(done)["c"].reason is Reason.DONE
    assert str(taskmap.explain(taskmap.create_graph({"x": int}, {"x": []}))["x"]) == (
        "'x' runs: not cached (the graph has no cache)"
    )


def test_corrupt_entry_is_a_miss_with_a_warning(calls: Calls, tmp_path: Path) -> None:
    store = tmp_path / "cache"
    graph = taskmap.run(chain(calls, store))
    key = next(e.key for e in taskmap.list_cache(graph, "b"))
    db = sqlite3.connect(store / "taskmap-cache.sqlite3")
    with db:  # a torn write: the entry loses its tail
        db.execute(
            "UPDATE entries SET value = substr(value, 1, length(value) - 3) WHERE key = ?", (key,)
        )
    db.close()
    with pytest.warns(
        taskmap.CacheWarning,
        match=r"task 'b': cached entry unreadable, running it again: entry payload is torn",
    ):
        graph = taskmap.run(chain(calls, store))
    assert counts(calls) == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert graph.results["c"] == "c(b(a()))"
    assert reasons(graph)["b"] is Reason.UNREADABLE


@pytest.mark.parametrize("garbage", [b"", b"TMCK", b"not an entry at all", b"TMCK\x09" + bytes(40)])
def test_garbage_entries_are_misses(calls: Calls, garbage: bytes) -> None:
    store: dict[str, bytes] = {}
    graph = taskmap.run(chain(calls, store))
    for entry in taskmap.list_cache(graph):
        store[entry.key] = garbage
    with pytest.warns(taskmap.CacheWarning, match="cached entry unreadable"):
        graph = taskmap.run(chain(calls, store))
    assert counts(calls) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert graph.results["c"] == "c(b(a()))"


def test_value_that_fails_to_decode_is_recomputed(calls: Calls) -> None:
    store: dict[str, bytes] = {}
    graph = taskmap.create_graph({"a": make_unloadable}, {"a": []}, cache=store)
    taskmap.run(graph)
    graph = taskmap.create_graph({"a": make_unloadable}, {"a": []}, cache=store)
    with pytest.warns(
        taskmap.CacheWarning, match=r"task 'a': cached entry unreadable.*cannot load"
    ):
        taskmap.run(graph)
    assert isinstance(graph.results["a"], Unloadable)


class Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse, ())


def refuse() -> None:
    raise RuntimeError("cannot load")


def make_unloadable() -> Unloadable:
    return Unloadable()


def test_unpicklable_result_is_not_cached_and_the_run_goes_on(tmp_path: Path) -> None:
    graph = taskmap.create_graph(
        {"lock": threading.Lock, "n": lambda: 3}, {"lock": [], "n": []}, cache=tmp_path / "c"
    )
    with pytest.warns(
        taskmap.CacheWarning, match=r"task 'lock': result not cached: pickle cannot encode lock"
    ):
        taskmap.run(graph)
    assert graph.results["n"] == 3
    assert [e.task for e in taskmap.list_cache(graph)] == ["n"]


def test_child_of_a_value_without_digest_is_not_cached(calls: Calls, tmp_path: Path) -> None:
    def build() -> taskmap.Graph:
        funcs = {"conn": threading.Lock, "use": calls.task("use")}
        deps = {"conn": [], "use": ["conn"]}
        return taskmap.create_graph(funcs, deps, cache=tmp_path / "c", uncached=["conn"])

    taskmap.run(build())
    graph = taskmap.run(build())
    assert calls.count("use") == 2
    assert graph.stats.why["use"].reason is Reason.NOT_CACHED
    assert "'conn'" in graph.stats.why["use"].detail


def test_encoders_per_task(calls: Calls) -> None:
    store: dict[str, bytes] = {}

    def build() -> taskmap.Graph:
        funcs = {"j": big_list, "raw": big_list, "z": big_list}
        deps: dict[str, list[str]] = {"j": [], "raw": [], "z": []}
        encoders = {"j": "json", "raw": taskmap.PickleEncoder(level=0)}
        return taskmap.create_graph(funcs, deps, cache=store, encoders=encoders)

    taskmap.run(build())
    sizes = {e.task: (e.encoder, e.size) for e in taskmap.list_cache(build())}
    assert sizes["j"][0] == "json"
    assert sizes["raw"][0] == sizes["z"][0] == "pickle"
    assert sizes["z"][1] * 10 < sizes["raw"][1]  # compressed
    again = taskmap.run(build())
    assert again.results["j"] == again.results["z"] == big_list()


def big_list() -> list[int]:
    return [7] * 10_000


class Upper:
    """A custom encoder: str values, stored upper-cased."""

    name = "upper"

    def encode(self, value: Any) -> bytes:
        return str(value).upper().encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()


def test_custom_encoder(tmp_path: Path) -> None:
    def build() -> taskmap.Graph:
        return taskmap.create_graph(
            {"a": lambda: "quiet"}, {"a": []}, cache=tmp_path / "c", encoders={"a": Upper()}
        )

    assert taskmap.run(build()).results["a"] == "quiet"
    assert taskmap.run(build()).results["a"] == "QUIET"  # decoded by the custom encoder


def test_manual_and_end_write_modes(calls: Calls) -> None:
    store: dict[str, bytes] = {}
    graph = taskmap.run(chain(calls, store, cache_write="manual"))
    assert store == {}
    assert taskmap.save_cache(graph) == 4
    assert [e.task for e in taskmap.list_cache(graph)] == ["a", "b", "c", "d"]
    assert taskmap.save_cache(graph) == 0
    for mode in ("end", 0.01):
        graph = taskmap.run(chain(calls, {}, cache_write=mode))
        assert len(taskmap.list_cache(graph)) == 4


def test_chain_store_reads_from_each_and_writes_to_the_first(calls: Calls) -> None:
    local: dict[str, bytes] = {}
    team: dict[str, bytes] = {}
    taskmap.run(chain(calls, team))
    graph = taskmap.run(chain(calls, [local, team]))
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    graph.funcs["d"] = big_list
    taskmap.run(taskmap.reset_tasks(graph, "d"))
    assert [k for k in local if not k.endswith("/last")] != []
    assert all(k.startswith("d-") for k in local)


def test_clear_cache_per_task_and_for_the_graph(calls: Calls, tmp_path: Path) -> None:
    graph = taskmap.run(chain(calls, tmp_path / "c"))
    other = taskmap.create_graph({"x": lambda: 1}, {"x": []}, cache=tmp_path / "c")
    taskmap.run(other)
    assert taskmap.clear_cache(graph, "d") == 1  # its entry (its 'last' record goes too)
    assert [e.task for e in taskmap.list_cache(graph)] == ["a", "b", "c"]
    assert taskmap.clear_cache(graph) == 3
    assert taskmap.list_cache(graph) == []
    assert [e.task for e in taskmap.list_cache(other)] == ["x"]  # another graph's entries stay
    graph = taskmap.run(chain(calls, tmp_path / "c"))
    assert set(reasons(graph).values()) == {Reason.NO_ENTRY}


def test_graph_with_a_cache_pickles(calls: Calls, tmp_path: Path) -> None:
    graph = taskmap.run(chain(calls, tmp_path / "c", versions={"a": 3}, uncached=["d"]))
    loaded = cloudpickle.loads(cloudpickle.dumps(graph))  # the tasks are closures
    assert loaded.checkpoint is not None
    assert loaded.checkpoint.uncached == {"d"}
    taskmap.run(taskmap.reset_tasks(loaded, "d"))
    fresh = taskmap.run(chain(calls, tmp_path / "c", versions={"a": 3}))
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 3}
    assert fresh.results["a"] == "a()"


def test_bad_cache_arguments_name_the_problem(tmp_path: Path) -> None:
    funcs, deps = {"a": int}, {"a": []}
    with pytest.raises(
        TypeError,
        match=r"cache must be a directory path, a MutableMapping\[str, bytes\] or a list of "
        r"those \(got 3, an int\)",
    ):
        taskmap.create_graph(funcs, deps, cache=3)
    with pytest.raises(taskmap.UnknownTaskError, match="uncached"):
        taskmap.create_graph(funcs, deps, cache={}, uncached=["nope"])
    with pytest.raises(taskmap.UnknownTaskError, match="versions"):
        taskmap.create_graph(funcs, deps, cache={}, versions={"nope": 1})
    with pytest.raises(
        ValueError, match=r"task 'a': unknown encoder 'yaml' \(known: 'pickle', 'json'"
    ):
        taskmap.create_graph(funcs, deps, cache={}, encoders={"a": "yaml"})
    with pytest.raises(
        TypeError, match=r"the version of task 'a' must be a str or an int \(got 1.5, a float\)"
    ):
        taskmap.create_graph(funcs, deps, cache={}, versions={"a": 1.5})
    with pytest.raises(
        ValueError,
        match=r"cache_write must be 'exit', 'end', 'manual' or a number of seconds > 0 "
        r"\(got 'sometimes'\)",
    ):
        taskmap.create_graph(funcs, deps, cache={}, cache_write="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^uncached needs a cache: pass cache=$"):
        taskmap.create_graph(funcs, deps, uncached=["a"])
    with pytest.raises(ValueError, match=r"^versions and cache_limit need a cache: pass cache=$"):
        taskmap.create_graph(funcs, deps, versions={"a": 1}, cache_limit="1GB")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        taskmap.create_graph(funcs, deps, cache=tmp_path / "file")
    with pytest.raises(ValueError, match="save_cache: the graph has no cache"):
        taskmap.save_cache(taskmap.create_graph(funcs, deps))


def test_cached_rerun_reaches_io_tasks_below_cpu_tasks(
    runner: Runner, calls: Calls, tmp_path: Path
) -> None:
    """io -> cpu -> io -> cpu: each cache hit readies a task of the other kind (a hang
    once, when a hit among CPU tasks readied an io task and nothing started it)."""

    def build() -> taskmap.Graph:
        funcs = {name: calls.task(name) for name in ("fetch", "parse", "load", "report")}
        deps = {"fetch": [], "parse": ["fetch"], "load": ["parse"], "report": ["load"]}
        return taskmap.create_graph(funcs, deps, io_bound=["fetch", "load"], cache=tmp_path / "c")

    runner(build())
    graph = runner(build())
    assert graph.results["report"] == "report(load(parse(fetch())))"
    assert counts(calls, ["fetch", "parse", "load", "report"]) == dict.fromkeys(
        ["fetch", "parse", "load", "report"], 1
    )


@pytest.mark.parametrize("runner", [taskmap.run_parallel, taskmap.run_parallel_async])
def test_cached_rerun_starts_no_worker_process(
    runner: Runner, calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner(chain(calls, tmp_path / "c"), ncores=2)

    def refuse(self: object, tasks: int) -> None:
        raise AssertionError("a fully cached run started the worker pool")

    monkeypatch.setattr(ProcessPool, "start", refuse)
    graph = runner(chain(calls, tmp_path / "c"), ncores=2)
    assert graph.results["c"] == "c(b(a()))"
    graph = chain(calls, tmp_path / "c")
    graph.funcs["d"] = big_list  # one miss: the pool starts for it
    monkeypatch.undo()
    assert runner(graph, ncores=2).results["d"] == big_list()


def test_fsspec_mapper_is_a_store(calls: Calls) -> None:
    fsspec = pytest.importorskip("fsspec")
    store = fsspec.get_mapper("memory://taskmap-test-cache")
    store.clear()
    taskmap.run(chain(calls, store))
    graph = taskmap.run(chain(calls, store))
    assert counts(calls) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert graph.results["c"] == "c(b(a()))"
    assert len(taskmap.list_cache(graph)) == 4
    store.clear()


class ReadOnly(dict[str, bytes]):
    def update(self, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("read-only store")


def test_a_store_refusing_writes_warns_and_the_run_completes(calls: Calls) -> None:
    with pytest.warns(
        taskmap.CacheWarning,
        match=r"cache store \(tests.checkpoint.test_cache.ReadOnly\): a batch of 4 entries was "
        r"not written: PermissionError\('read-only store'\)",
    ):
        graph = taskmap.run(chain(calls, ReadOnly()))
    assert graph.results["c"] == "c(b(a()))"
    assert graph.stats.cache is not None
    assert graph.stats.cache.warnings >= 1


def test_explain_decodes_no_value_and_keeps_none_results_out_of_inputs(calls: Calls) -> None:
    store: dict[str, bytes] = {}

    def build() -> taskmap.Graph:
        funcs = {"a": calls.task("a", none=True), "big": make_unloadable, "c": calls.task("c")}
        deps = {"a": [], "big": [], "c": ["a", "big"]}
        return taskmap.create_graph(funcs, deps, cache=store)

    taskmap.run(build())
    # 'big' would raise if decoded; 'a' stored None, which 'c' does not receive
    found = taskmap.explain(build())
    assert {t: e.reason for t, e in found.items()} == dict.fromkeys(
        ["a", "big", "c"], Reason.CACHED
    )


def test_explain_says_a_task_below_a_failure_waits_for_reset_failed_tasks(calls: Calls) -> None:
    graph = chain(calls, {})
    graph.funcs["a"] = calls.task("a", fail=True)
    taskmap.run(graph)
    graph.funcs["d"] = big_list
    found = taskmap.explain(taskmap.reset_tasks(graph, "d"))
    assert {t: (e.runs, e.reason) for t, e in found.items()} == {
        "a": (False, Reason.DONE),
        "b": (False, Reason.DONE),
        "c": (False, Reason.DONE),
        "d": (True, Reason.RESET),
    }
    graph.done.remove("c")  # as if c had been reset alone: still blocked by a
    graph.results.pop("c")
    assert str(taskmap.explain(graph)["c"]) == (
        "'c' does not run: an upstream task failed ('a' failed; reset_failed_tasks(graph) "
        "reruns it)"
    )
    found = taskmap.explain(taskmap.reset_failed_tasks(graph))
    assert {t: e.reason for t, e in found.items()} == {
        "a": Reason.FAILED_BEFORE,
        "b": Reason.UPSTREAM,
        "c": Reason.UPSTREAM,
        "d": Reason.RESET,
    }


def test_the_writer_thread_ends_when_close_races_with_the_batch_it_takes() -> None:
    # close() sets `closing` and `wake` at any instant; here just before the thread
    # clears `wake` to take its batch (the window of a hang seen at a run's end)
    from taskmap.checkpoint import _Writer

    store: dict[str, bytes] = {}
    writer = _Writer(store, "exit")

    class RacingLock:
        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.raced = False

        def __enter__(self) -> None:
            self.inner.acquire()
            if threading.current_thread() is writer.thread and not self.raced:
                self.raced = True
                writer.closing.set()
                writer.wake.set()

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    writer.lock = RacingLock()  # type: ignore[assignment]
    writer.put([("k", b"v")])
    assert writer.thread is not None
    writer.thread.join(timeout=5)
    assert not writer.thread.is_alive(), "the writer thread missed its close"
    assert writer.close() == []
    assert store == {"k": b"v"}


class _CountingStore(taskmap.DirectoryStore):
    """The default store, recording how many keys each `get_many` asks for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[int] = []

    def get_many(self, keys: Any) -> dict[str, bytes]:
        self.asked.append(len(keys))
        return super().get_many(keys)


def test_a_cold_wave_is_probed_not_read_and_a_cached_one_is_read_whole(tmp_path: Path) -> None:
    """The first wave's prefetch reads `PROBE` entries first: none stored (a cold run),
    the rest are never read, the run's listing answers; stored, the rest come in one
    more read, and every task is a hit."""
    probe = taskmap.checkpoint.CacheRun.PROBE
    n = probe * 3
    funcs = {f"t{i}": (lambda i=i: i * 2) for i in range(n)}
    deps: dict[str, list[str]] = {name: [] for name in funcs}
    store = _CountingStore(tmp_path / "c")
    cold = taskmap.run(taskmap.create_graph(funcs, deps, cache=store))
    assert store.asked == [probe]
    assert cold.stats.cache.stored == n
    assert {why.reason for why in cold.stats.why.values()} == {Reason.NO_ENTRY}
    store.asked.clear()
    warm = taskmap.run(taskmap.create_graph(funcs, deps, cache=store))
    assert store.asked == [probe, n - probe]
    assert warm.stats.cache.hits == n
    assert warm.results == {f"t{i}": i * 2 for i in range(n)}
    store.close()
