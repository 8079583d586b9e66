"""Task directories and captured output (issue 14): `taskmap.task_directory` and
``create_graph(capture_output=...)``.

Tasks are module-level functions (they may run in worker processes); what they saw
is written to files, and the tests read the disk.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import taskmap
from taskmap import TaskDirectoryError

Runner = Callable[..., taskmap.Graph]


def keep(tag: str) -> str:
    """Writes what its directory held at the start of the call, then a file of its own."""
    where = taskmap.task_directory()
    seen = sorted(p.name for p in where.iterdir())
    (where / "made.txt").write_text(tag)
    (where / "seen.txt").write_text(",".join(seen))
    return str(where)


def fail_once(marker: str) -> str:
    """The first call leaves a file in its directory and raises; later calls do not ask
    for the directory at all."""
    if not os.path.exists(marker):
        Path(marker).write_text("x")
        (taskmap.task_directory() / "junk.txt").write_text("left by a failed call")
        raise ValueError("first call fails")
    return "ok"


def chatty(tag: str) -> str:
    print(f"out of {tag}")
    print(f"err of {tag}", file=sys.stderr)
    return tag


def chatty_below_python(tag: str) -> str:
    """Writes through Python, and below it: a subprocess writing to the inherited fd 1."""
    print(f"python {tag}", flush=True)
    subprocess.run([sys.executable, "-c", f"print('subprocess {tag}')"], check=True)
    return tag


async def interleaved(tag: str) -> str:
    for i in range(5):
        print(f"{tag} line {i}")
        await asyncio.sleep(0.002)
    return str(taskmap.task_directory())


def in_a_thread() -> str:
    return str(taskmap.task_directory())


def graph_of(funcs: dict[str, Callable[..., Any]], cache: object, **options: Any) -> taskmap.Graph:
    return taskmap.create_graph(funcs, dict.fromkeys(funcs, ()), cache=cache, **options)


# -- the directory: where it is, emptied at each call, kept with the entry -----------------


def test_task_directory_is_empty_at_the_call_and_kept_with_the_entry(
    runner: Runner, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    graph = runner(graph_of({"a": functools.partial(keep, "one")}, cache))
    where = Path(graph.results["a"])
    assert where.is_dir()
    assert where.parent.parent == (cache / "task-dirs").absolute()
    assert where.name == taskmap.list_cache(graph)[0].key.partition("/")[2]
    assert (where / "seen.txt").read_text() == ""  # empty when the call asked
    assert (where / "made.txt").read_text() == "one"
    # a cached rerun calls nothing: the directory stays as the call left it
    again = runner(graph_of({"a": functools.partial(keep, "one")}, cache))
    assert again.stats.cache is not None
    assert again.stats.cache.hits == 1
    assert (where / "made.txt").read_text() == "one"
    [entry] = taskmap.list_cache(again)
    assert entry.directory == where
    assert entry.output == ()


def test_a_new_call_of_the_same_key_finds_its_directory_emptied(
    runner: Runner, tmp_path: Path
) -> None:
    cache, marker = tmp_path / "cache", str(tmp_path / "called-once")
    funcs = {"a": functools.partial(fail_once, marker)}
    first = runner(graph_of(funcs, cache))
    assert isinstance(first.results["a"], ValueError)
    [left] = (cache / "task-dirs").glob("*/*")
    assert (left / "junk.txt").exists()  # a failed call's directory stays, to look at
    second = runner(graph_of(funcs, cache))
    assert second.results["a"] == "ok"
    assert not left.exists()  # the same key's next call did not ask: emptied all the same
    assert taskmap.list_cache(second)[0].directory is None


def test_a_retry_finds_the_directory_emptied(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "attempts"

    def flaky() -> str:
        where = taskmap.task_directory()
        seen = sorted(p.name for p in where.iterdir())
        (where / "attempt.txt").write_text("x")
        if not marker.exists():
            marker.write_text("1")
            raise ValueError("first attempt fails")
        return ",".join(seen)

    retry = taskmap.Retry(times=1, delay=0)
    for run in (taskmap.run, taskmap.run_async):
        marker.unlink(missing_ok=True)
        graph = graph_of({"a": flaky}, cache / run.__name__, retries={"a": retry})
        assert run(graph).results["a"] == ""


def test_task_directory_in_a_thread_and_on_the_callers_loop(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    funcs: dict[str, Callable[..., Any]] = {
        "sync_io": in_a_thread,
        "coro": functools.partial(interleaved, "c"),
    }
    graph = graph_of(funcs, cache, io_bound=["sync_io", "coro"], capture_output=["coro"])
    for arun in (taskmap.arun_async, taskmap.arun_parallel_async):
        taskmap.clear_cache(graph)
        taskmap.reset_tasks(graph, list(funcs))
        done = asyncio.run(arun(graph))
        for name in funcs:
            assert Path(done.results[name]).is_dir(), (arun.__name__, name)
        stdout = Path(done.results["coro"]) / "stdout.txt"
        assert stdout.read_text() == "".join(f"c line {i}\n" for i in range(5))


# -- removed with the entry ------------------------------------------------------------


def versioned(version: int, cache: Path, **options: Any) -> taskmap.Graph:
    return graph_of({"a": functools.partial(keep, str(version))}, cache, versions={"a": version})


def test_pruning_and_trimming_remove_the_directories_of_the_dropped_entries(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    dirs = [Path(taskmap.run(versioned(v, cache)).results["a"]) for v in range(3)]
    assert all(d.is_dir() for d in dirs)
    removed = taskmap.prune_cache(versioned(2, cache), keep_last=1)
    assert len(removed) == 2
    assert [d.is_dir() for d in dirs] == [False, False, True]
    # a limit: every entry but the run's own goes, and their directories with them
    taskmap.run(versioned(3, cache))
    graph = taskmap.create_graph(
        {"a": functools.partial(keep, "4")},
        {"a": []},
        cache=cache,
        versions={"a": 4},
        cache_limit=1,
    )
    taskmap.run(graph)
    assert taskmap.list_cache(graph) == []
    assert list((cache / "task-dirs").glob("*/*")) == []


def test_clear_cache_and_reset_tasks_remove_the_directories(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", str(tmp_path / "called-once")
    graph = graph_of(
        {"a": functools.partial(keep, "x"), "b": functools.partial(fail_once, marker)}, cache
    )
    taskmap.run(graph)
    a, [b] = Path(graph.results["a"]), (cache / "task-dirs").glob("b-*/*")
    assert a.is_dir()
    assert b.is_dir()
    taskmap.reset_tasks(graph, "a")
    assert not a.exists()
    assert b.is_dir()
    taskmap.run(graph)
    assert Path(graph.results["a"]).is_dir()
    assert taskmap.clear_cache(graph) == 1  # a's entry; b never stored one
    assert list((cache / "task-dirs").glob("*/*")) == []


def test_a_pruned_store_reused_in_a_new_process_has_no_stale_directory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = Path(taskmap.run(versioned(1, cache)).results["a"])
    new = Path(taskmap.run(versioned(2, cache)).results["a"])
    taskmap.prune_cache(versioned(2, cache), keep_last=1)
    code = (
        "import functools, sys, taskmap\n"
        "from tests.checkpoint.test_taskdir import keep\n"
        "g = taskmap.create_graph({'a': functools.partial(keep, '1')}, {'a': []},"
        f" cache={str(cache)!r}, versions={{'a': 1}})\n"
        "print(taskmap.run(g).results['a'])\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == old  # the same key, a new call: a fresh directory
    assert (old / "seen.txt").read_text() == ""
    assert new.is_dir()


def test_prune_removes_old_directories_of_calls_that_stored_nothing(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", str(tmp_path / "called-once")
    graph = graph_of({"b": functools.partial(fail_once, marker)}, cache)
    taskmap.run(graph)
    [left] = (cache / "task-dirs").glob("b-*/*")
    taskmap.prune_cache(graph)
    assert left.is_dir()  # changed in the last hour: its call may be running
    os.utime(left, (1.0, 1.0))
    taskmap.prune_cache(graph)
    assert not left.exists()


# -- where there is no directory: clear errors -----------------------------------------


def asks() -> str:
    return str(taskmap.task_directory())


def test_task_directory_outside_a_task_raises() -> None:
    with pytest.raises(
        TaskDirectoryError, match=r"outside a task: it returns the directory"
    ) as info:
        taskmap.task_directory()
    assert info.value.task is None
    assert isinstance(info.value, RuntimeError)


def test_task_directory_in_a_graph_without_a_cache_fails_its_task(runner: Runner) -> None:
    graph = runner(taskmap.create_graph({"a": asks}, {"a": []}))
    error = graph.results["a"]
    assert isinstance(error, TaskDirectoryError)
    assert "cache=<directory>" in str(error)


def test_task_directory_with_a_mapping_store_says_it_is_not_a_directory(runner: Runner) -> None:
    graph = runner(graph_of({"a": asks}, {}))
    error = graph.results["a"]
    assert isinstance(error, TaskDirectoryError)
    assert error.task == "a"
    assert "not a directory on this machine" in str(error)


def test_task_directory_of_a_task_without_a_cache_key(runner: Runner, tmp_path: Path) -> None:
    graph = runner(graph_of({"a": asks}, tmp_path / "cache", uncached=["a"]))
    error = graph.results["a"]
    assert isinstance(error, TaskDirectoryError)
    assert "in uncached=" in str(error)

    lock = threading.Lock()
    graph = taskmap.create_graph(
        {"lock": lambda: lock, "a": lambda _: taskmap.task_directory()},
        {"lock": [], "a": ["lock"]},
        cache=tmp_path / "cache",
        uncached=["lock"],
    )
    error = taskmap.run(graph).results["a"]
    assert isinstance(error, TaskDirectoryError)
    assert "has no digest" in str(error)


# -- captured output -------------------------------------------------------------------


def test_captured_output_of_a_worker_process_goes_to_its_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    funcs = {"a": functools.partial(chatty, "a"), "b": functools.partial(chatty_below_python, "b")}
    graph = taskmap.run_parallel(graph_of(funcs, cache, capture_output=["a", "b"]))
    entries = {e.task: e for e in taskmap.list_cache(graph)}
    a, b = entries["a"], entries["b"]
    assert [p.name for p in a.output] == ["stdout.txt", "stderr.txt"]
    assert a.directory is not None
    assert a.directory / "stdout.txt" in a.output
    assert (a.directory / "stdout.txt").read_text() == "out of a\n"
    assert (a.directory / "stderr.txt").read_text() == "err of a\n"
    assert b.directory is not None
    # in a worker, fd 1 is redirected too: a subprocess's output is captured
    assert (b.directory / "stdout.txt").read_text() == "python b\nsubprocess b\n"


def test_captured_output_also_reaches_the_console(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    graph = taskmap.run(
        graph_of({"a": functools.partial(chatty, "a")}, tmp_path, capture_output=["a"])
    )
    out, err = capsys.readouterr()
    assert "out of a\n" in out
    assert "err of a\n" in err
    [entry] = taskmap.list_cache(graph)
    assert entry.directory is not None
    assert (entry.directory / "stdout.txt").read_text() == "out of a\n"
    assert type(sys.stdout).__name__ != "Tee"  # the proxies go with the run


@pytest.mark.parametrize("run", [taskmap.run_async, taskmap.run_parallel_async])
def test_coroutines_interleaved_on_one_loop_each_capture_their_own_lines(
    run: Runner, tmp_path: Path
) -> None:
    tags = ["x", "y", "z"]
    funcs = {t: functools.partial(interleaved, t) for t in tags}
    graph = run(graph_of(funcs, tmp_path, io_bound=tags, capture_output=["x", "y"]))
    for tag in ("x", "y"):
        stdout = Path(graph.results[tag]) / "stdout.txt"
        assert stdout.read_text() == "".join(f"{tag} line {i}\n" for i in range(5))
    assert not (Path(graph.results["z"]) / "stdout.txt").exists()  # not captured


def test_every_runner_captures(runner: Runner, tmp_path: Path) -> None:
    graph = runner(graph_of({"a": functools.partial(chatty, "a")}, tmp_path, capture_output=["a"]))
    [entry] = taskmap.list_cache(graph)
    assert [p.read_text() for p in entry.output] == ["out of a\n", "err of a\n"]


def test_capture_output_names_unknown_tasks() -> None:
    funcs = {"a": asks}
    with pytest.raises(
        ValueError, match=r"capture_output.*'nope'.*'zilch'|capture_output.*'zilch'.*'nope'"
    ):
        taskmap.create_graph(funcs, {"a": []}, cache={}, capture_output=["a", "nope", "zilch"])


def test_capture_output_needs_a_cache_on_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"capture_output needs a cache: pass cache="):
        taskmap.create_graph({"a": asks}, {"a": []}, capture_output=["a"])
    with pytest.raises(
        ValueError, match=r"capture_output needs a cache on a local directory.*a dict"
    ):
        taskmap.create_graph({"a": asks}, {"a": []}, cache={}, capture_output=["a"])
    with pytest.raises(ValueError, match=r"capture_output names tasks in uncached=.*'a'"):
        taskmap.create_graph(
            {"a": asks}, {"a": []}, cache=tmp_path, uncached=["a"], capture_output=["a"]
        )
    # a chain whose first store is a directory has one
    taskmap.create_graph({"a": asks}, {"a": []}, cache=[tmp_path, {}], capture_output=["a"])


def test_a_pickled_graph_keeps_capture_output(tmp_path: Path) -> None:
    import pickle

    graph = graph_of({"a": functools.partial(chatty, "a")}, tmp_path, capture_output=["a"])
    restored = pickle.loads(pickle.dumps(graph))
    assert restored.checkpoint is not None
    assert restored.checkpoint.capture == {"a"}


def test_a_thread_of_an_io_bound_task_captures_into_its_own_files(tmp_path: Path) -> None:
    funcs = {"a": functools.partial(chatty, "a"), "b": functools.partial(chatty, "b")}
    graph = graph_of(funcs, tmp_path, io_bound=["a", "b"], capture_output=["a"])
    entries = {e.task: e for e in taskmap.list_cache(taskmap.run_async(graph))}
    assert [p.read_text() for p in entries["a"].output] == ["out of a\n", "err of a\n"]
    assert entries["b"].output == ()


def test_a_foreign_executor_gets_the_directory_and_captures(tmp_path: Path) -> None:
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    funcs = {"a": functools.partial(keep, "x"), "b": functools.partial(chatty, "b")}
    graph = graph_of(funcs, tmp_path, capture_output=["b"])
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        graph = taskmap.run_parallel_async(graph, executor=executor)
    assert (Path(graph.results["a"]) / "made.txt").read_text() == "x"
    entries = {e.task: e for e in taskmap.list_cache(graph)}
    assert [p.read_text() for p in entries["b"].output] == ["out of b\n", "err of b\n"]
