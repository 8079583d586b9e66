"""One conformance suite for every runner (dask's GetFunctionTestMixin idea).

The `runner` fixture (conftest.py) runs each test with every runner in `RUNNERS`.
Runners may run tasks in worker processes: tasks here are module-level functions or
closures cloudpickle can ship, and calls are counted through files (`calls`).
Tests specific to one runner follow the suite.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

import taskmap
from taskmap import (
    RunStoppedError,
    UnknownTaskError,
    UpstreamFailedError,
    create_graph,
    reset_failed_tasks,
    reset_tasks,
)

if TYPE_CHECKING:
    from tests.conftest import Calls

Runner = Callable[..., taskmap.Graph]


def explode(*args: object) -> None:
    raise ValueError("explode was called")


def collect(*args: object) -> tuple[object, ...]:
    return args


def returns_none() -> None:
    return None


async def add_async(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


async def one_async() -> int:
    await asyncio.sleep(0)
    return 1


def formatted(error: BaseException) -> str:
    """The error's traceback as text, with its cause (a worker's traceback travels there)."""
    return "".join(traceback.format_exception(error))


# -- results ------------------------------------------------------------------------


def test_results_are_the_values_returned(runner: Runner, calls: Calls) -> None:
    funcs = {name: calls.task(name) for name in "abcd"}
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": ["a"], "d": ["c", "b"]})
    assert runner(graph) is graph
    assert graph.results == {"a": "a()", "b": "b(a())", "c": "c(a())", "d": "d(c(a()), b(a()))"}
    assert sorted(graph.done) == ["a", "b", "c", "d"]
    assert graph.failed == []


def test_arguments_follow_the_dependency_order(runner: Runner) -> None:
    funcs = {"a": functools.partial(collect, "A"), "b": functools.partial(collect, "B")}
    funcs["c"] = collect
    graph = runner(create_graph(funcs, {"a": [], "b": [], "c": ["b", "a", "b"]}))
    assert graph.results["c"] == (("B",), ("A",), ("B",))


def test_none_results_are_not_passed(runner: Runner) -> None:
    funcs = {"a": returns_none, "b": functools.partial(collect, 2), "c": collect}
    graph = runner(create_graph(funcs, {"a": [], "b": [], "c": ["a", "b", "a"]}))
    assert graph.results == {"a": None, "b": (2,), "c": ((2,),)}


def test_coroutine_functions_and_their_partials_are_awaited(runner: Runner) -> None:
    funcs = {"one": one_async, "eleven": functools.partial(add_async, 10), "sum": add_async}
    deps = {"one": [], "eleven": ["one"], "sum": ["one", "eleven"]}
    graph = runner(create_graph(funcs, deps))
    assert graph.results == {"one": 1, "eleven": 11, "sum": 12}


def test_io_bound_tasks_give_the_same_results(runner: Runner, calls: Calls) -> None:
    funcs = {"a": calls.task("a"), "b": calls.task("b"), "c": one_async, "d": add_async}
    deps = {"a": [], "b": ["a"], "c": [], "d": ["c", "c"]}
    graph = runner(create_graph(funcs, deps, io_bound=["b", "d"]))
    assert graph.results == {"a": "a()", "b": "b(a())", "c": 1, "d": 2}


def test_an_empty_graph_runs(runner: Runner) -> None:
    graph = runner(create_graph({}, {}))
    assert graph.results == {}
    assert graph.done == []


def test_sleep_is_accepted_and_ignored(runner: Runner, calls: Calls) -> None:
    funcs = {name: calls.task(name) for name in "abc"}
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"]})
    start = time.perf_counter()
    runner(graph, sleep=10)
    assert time.perf_counter() - start < 5  # a runner polling every 10 s would take 30
    assert graph.results["c"] == "c(b(a()))"


def test_a_graph_fully_done_runs_nothing(runner: Runner, calls: Calls) -> None:
    funcs = {"a": calls.task("a"), "b": calls.task("b")}
    graph = create_graph(funcs, {"a": [], "b": ["a"]}, done=["a", "b"], results={"a": 1, "b": 2})
    runner(graph)
    assert calls.count("a") == calls.count("b") == 0
    assert graph.results == {"a": 1, "b": 2}


def test_results_of_done_tasks_are_passed_on(runner: Runner, calls: Calls) -> None:
    funcs = {"a": calls.task("a"), "b": calls.task("b")}
    graph = create_graph(funcs, {"a": [], "b": ["a"]}, done=["a"], results={"a": "given"})
    runner(graph)
    assert calls.count("a") == 0
    assert graph.results == {"a": "given", "b": "b(given)"}


# -- failures -----------------------------------------------------------------------


FAILING_DEPS = {
    "root": [],
    "bad": ["root"],
    "sibling": ["root"],
    "child": ["bad"],
    "grandchild": ["child", "sibling"],
    "unrelated": [],
}


def failing_graph(calls: Calls) -> taskmap.Graph:
    """``bad`` raises; ``child`` and ``grandchild`` are below it, the rest is not."""
    funcs = {name: calls.task(name, fail=name == "bad") for name in FAILING_DEPS}
    return create_graph(funcs, FAILING_DEPS)


def test_a_raising_task_stores_its_exception(runner: Runner) -> None:
    graph = runner(create_graph({"boom": explode, "ok": returns_none}, {"boom": [], "ok": []}))
    error = graph.results["boom"]
    assert type(error) is ValueError
    assert str(error) == "explode was called"
    assert re.search(r", in explode\n", formatted(error)), formatted(error)
    assert graph.failed == ["boom"]


def test_a_failure_skips_only_its_descendants(runner: Runner, calls: Calls) -> None:
    graph = runner(failing_graph(calls))
    assert graph.results["root"] == "root()"
    assert graph.results["sibling"] == "sibling(root())"
    assert graph.results["unrelated"] == "unrelated()"
    assert isinstance(graph.results["bad"], ValueError)
    for name in ["root", "bad", "sibling", "unrelated"]:
        assert calls.count(name) == 1, name
    assert calls.count("child") == calls.count("grandchild") == 0
    assert sorted(graph.done) == sorted(FAILING_DEPS)


def test_skipped_tasks_name_the_failed_ancestor(runner: Runner, calls: Calls) -> None:
    graph = runner(failing_graph(calls))
    for name in ["child", "grandchild"]:
        error = graph.results[name]
        assert type(error) is UpstreamFailedError
        assert error.task == name
        assert error.failed == "bad"
        assert str(error) == f"task {name!r} not run: its ancestor 'bad' failed"
    assert sorted(graph.failed) == ["bad", "child", "grandchild"]


def test_rerun_after_reset_failed_tasks_runs_exactly_the_failed_tasks(
    runner: Runner, calls: Calls
) -> None:
    graph = runner(failing_graph(calls))
    graph.funcs["bad"] = calls.task("bad")  # the fix; counts into the same file
    reset_failed_tasks(graph)
    runner(graph)
    assert graph.failed == []
    assert graph.results["grandchild"] == "grandchild(child(bad(root())), sibling(root()))"
    counts = {name: calls.count(name) for name in FAILING_DEPS}
    assert counts == {
        "root": 1,
        "bad": 2,
        "sibling": 1,
        "child": 1,
        "grandchild": 1,
        "unrelated": 1,
    }
    assert sorted(graph.done) == sorted(FAILING_DEPS)
    assert len(graph.done) == len(FAILING_DEPS)


def test_rerun_after_reset_tasks_runs_the_tasks_and_their_descendants(
    runner: Runner, calls: Calls
) -> None:
    funcs = {name: calls.task(name) for name in "abcde"}
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []})
    runner(graph)
    graph.funcs["b"] = functools.partial(collect, "new b")
    reset_tasks(graph, "b")
    runner(graph)
    assert {name: calls.count(name) for name in "abcde"} == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1}
    assert graph.results["b"] == ("new b", "a()")
    assert graph.results["c"] == "c(('new b', 'a()'))"
    assert len(graph.done) == 5


def test_a_failed_task_in_done_skips_its_descendants(runner: Runner, calls: Calls) -> None:
    funcs = {name: calls.task(name) for name in "abc"}
    earlier = ValueError("failed earlier")
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": []}, done=["a"], results={"a": earlier})
    runner(graph)
    assert calls.count("b") == 0
    assert calls.count("c") == 1
    error = graph.results["b"]
    assert isinstance(error, UpstreamFailedError)
    assert error.failed == "a"
    assert graph.results["a"] is earlier


def test_tasks_below_an_earlier_skip_name_the_root_cause(runner: Runner, calls: Calls) -> None:
    """UpstreamFailedError.failed is the root cause, not the parent, also across runs."""
    funcs = {"a": calls.task("a", fail=True), "b": calls.task("b"), "c": calls.task("c")}
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"]})
    runner(graph, targets=["b"])
    assert graph.results["b"].failed == "a"
    runner(graph)
    assert calls.count("c") == 0
    error = graph.results["c"]
    assert isinstance(error, UpstreamFailedError)
    assert error.failed == "a", str(error)


def test_too_many_arguments_is_a_type_error_naming_the_task(runner: Runner) -> None:
    funcs = {"a": functools.partial(collect, 1), "b": returns_none}
    graph = runner(create_graph(funcs, {"a": [], "b": ["a"]}))
    error = graph.results["b"]
    assert isinstance(error, TypeError)
    notes = getattr(error, "__notes__", [])
    assert any("task 'b'" in note for note in notes), notes
    assert any("called with" in note for note in notes), notes


# -- fail_fast and raise_errors --------------------------------------------------------


def fail_fast_graph(calls: Calls) -> taskmap.Graph:
    """``bad`` raises at once; ``after`` can be ready only when ``slow`` ends, 0.5 s later."""

    def slow() -> str:
        time.sleep(0.5)
        return "slow"

    funcs = {
        "bad": calls.task("bad", fail=True),
        "slow": slow,
        "after": calls.task("after"),
        "below": calls.task("below"),
    }
    return create_graph(funcs, {"bad": [], "slow": [], "after": ["slow"], "below": ["bad"]})


def test_fail_fast_starts_nothing_after_the_first_failure(runner: Runner, calls: Calls) -> None:
    graph = runner(fail_fast_graph(calls), on_error="fail_fast")
    assert isinstance(graph.results["bad"], ValueError)
    assert calls.count("after") == calls.count("below") == 0
    stopped = graph.results["after"]
    assert type(stopped) is RunStoppedError
    assert (stopped.task, stopped.failed, stopped.cancelled) == ("after", "bad", False)
    assert str(stopped) == "task 'after' not run: the run stopped when 'bad' failed (fail_fast)"
    assert isinstance(graph.results["below"], UpstreamFailedError)
    slow = graph.results["slow"]
    assert slow == "slow" or (isinstance(slow, RunStoppedError) and slow.failed == "bad")
    assert sorted(graph.done) == ["after", "bad", "below", "slow"]


def test_rerun_after_fail_fast_runs_the_stopped_tasks(runner: Runner, calls: Calls) -> None:
    graph = runner(fail_fast_graph(calls), on_error="fail_fast")
    graph.funcs["bad"] = calls.task("bad")
    reset_failed_tasks(graph)
    runner(graph)
    assert graph.failed == []
    assert graph.results["after"] == "after(slow)"
    assert calls.count("after") == 1


def test_raise_errors_reraises_the_first_failure(runner: Runner, calls: Calls) -> None:
    graph = fail_fast_graph(calls)
    with pytest.raises(ValueError, match=r"^task bad exploded") as excinfo:
        runner(graph, raise_errors=True)
    assert excinfo.value is graph.results["bad"]
    assert calls.count("after") == 0
    assert isinstance(graph.results["after"], RunStoppedError)


def test_an_invalid_on_error_is_a_value_error(runner: Runner, calls: Calls) -> None:
    graph = create_graph({"a": calls.task("a")}, {"a": []})
    with pytest.raises(
        ValueError, match=re.escape("on_error must be 'continue' or 'fail_fast' (got 'stop')")
    ):
        runner(graph, on_error="stop")
    assert calls.count("a") == 0
    assert graph.done == []


def test_running_something_else_than_a_graph_is_a_type_error(runner: Runner) -> None:
    with pytest.raises(TypeError, match=r"^expected a Graph from create_graph \(got dict\)"):
        runner({"a": []})


# -- targets ----------------------------------------------------------------------------


def test_targets_run_only_themselves_and_their_ancestors(runner: Runner, calls: Calls) -> None:
    funcs = {name: calls.task(name) for name in "abcde"}
    graph = create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d"]})
    runner(graph, targets=["b", "d"])
    assert graph.results == {"a": "a()", "b": "b(a())", "d": "d()"}
    assert sorted(graph.done) == ["a", "b", "d"]
    runner(graph)
    assert {name: calls.count(name) for name in "abcde"} == dict.fromkeys("abcde", 1)
    assert graph.results["e"] == "e(d())"


def test_a_single_target_may_be_given_by_name(runner: Runner, calls: Calls) -> None:
    funcs = {name: calls.task(name) for name in "abc"}
    graph = runner(create_graph(funcs, {"a": [], "b": ["a"], "c": ["b"]}), targets="b")
    assert sorted(graph.done) == ["a", "b"]


def test_unknown_targets_are_an_error_before_anything_runs(runner: Runner, calls: Calls) -> None:
    graph = create_graph({"load": calls.task("load")}, {"load": []})
    with pytest.raises(
        UnknownTaskError,
        match=re.escape("targets holds a name that is not a task: 'lod' (did you mean 'load'?)"),
    ):
        runner(graph, targets=["lod"])
    assert calls.count("load") == 0


def test_unknown_targets_given_by_a_generator_are_named(runner: Runner, calls: Calls) -> None:
    graph = create_graph({"load": calls.task("load")}, {"load": []})
    with pytest.raises(UnknownTaskError, match="'lod'"):
        runner(graph, targets=(name for name in ["load", "lod"]))
    assert calls.count("load") == 0


# -- run_async only ---------------------------------------------------------------------


async def nap() -> float:
    await asyncio.sleep(0.2)
    return time.perf_counter()


def test_run_async_runs_io_bound_coroutines_concurrently() -> None:
    names = [f"io {i}" for i in range(10)]
    graph = create_graph(dict.fromkeys(names, nap), dict.fromkeys(names, ()), io_bound=names)
    start = time.perf_counter()
    taskmap.run_async(graph)
    assert time.perf_counter() - start < 1.5  # one after another would take 2 s
    assert graph.failed == []


def test_run_async_runs_cpu_bound_coroutines_concurrently_too() -> None:
    names = [f"co {i}" for i in range(10)]
    graph = create_graph(dict.fromkeys(names, nap), dict.fromkeys(names, ()))
    start = time.perf_counter()
    taskmap.run_async(graph)
    assert time.perf_counter() - start < 1.5


def current_thread() -> threading.Thread:
    return threading.current_thread()


def test_run_async_runs_io_bound_functions_in_a_thread() -> None:
    graph = create_graph(
        {"io": current_thread, "cpu": current_thread}, {"io": [], "cpu": []}, io_bound=["io"]
    )
    taskmap.run_async(graph)
    assert graph.results["cpu"] is threading.current_thread()
    assert graph.results["io"] is not threading.current_thread()


def test_run_async_io_bound_function_called_with_too_many_arguments_names_the_task() -> None:
    graph = create_graph(
        {"a": functools.partial(collect, 1), "b": returns_none},
        {"a": [], "b": ["a"]},
        io_bound=["b"],
    )
    taskmap.run_async(graph)
    error = graph.results["b"]
    assert isinstance(error, TypeError)
    notes = getattr(error, "__notes__", [])
    assert any("task 'b'" in note for note in notes), notes
    assert any("called with" in note for note in notes), notes


def test_run_async_io_bound_coroutines_begin_before_cpu_tasks_run() -> None:
    order: list[str] = []

    async def fetch(name: str) -> None:
        order.append(name)
        await asyncio.sleep(0)

    def crunch(name: str) -> None:
        order.append(name)

    funcs: dict[str, Any] = {
        "crunch 1": functools.partial(crunch, "crunch 1"),
        "crunch 2": functools.partial(crunch, "crunch 2"),
        "fetch 1": functools.partial(fetch, "fetch 1"),
        "fetch 2": functools.partial(fetch, "fetch 2"),
    }
    graph = create_graph(funcs, dict.fromkeys(funcs, ()), io_bound=["fetch 1", "fetch 2"])
    taskmap.run_async(graph)
    assert order[:2] == ["fetch 1", "fetch 2"], order


def test_run_async_fail_fast_cancels_a_running_coroutine() -> None:
    started = threading.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "slow"

    async def bad() -> None:
        await asyncio.sleep(0.05)
        assert started.is_set()  # slow is running when bad fails
        raise ValueError("bad")

    graph = create_graph(
        {"slow": slow, "bad": bad, "after": collect},
        {"slow": [], "bad": [], "after": ["slow"]},
        io_bound=["slow"],
    )
    start = time.perf_counter()
    taskmap.run_async(graph, on_error="fail_fast")
    assert time.perf_counter() - start < 10
    assert isinstance(graph.results["bad"], ValueError)
    cancelled = graph.results["slow"]
    assert type(cancelled) is RunStoppedError
    assert (cancelled.task, cancelled.failed, cancelled.cancelled) == ("slow", "bad", True)
    assert str(cancelled) == "task 'slow' cancelled: the run stopped when 'bad' failed (fail_fast)"
    assert isinstance(graph.results["after"], RunStoppedError)
    assert not graph.results["after"].cancelled


async def _twice_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def test_every_runner_works_inside_a_running_event_loop(runner) -> None:
    """As in Jupyter: the caller's thread already runs a loop; the runner still blocks
    until done and returns the results."""

    async def notebook_cell() -> taskmap.Graph:
        graph = taskmap.create_graph(
            {"a": _one_for_loop_test, "b": _twice_later}, {"a": [], "b": ["a"]}, io_bound=["b"]
        )
        return runner(graph)

    with pytest.warns(RuntimeWarning, match="was called from a running event loop"):
        graph = asyncio.run(notebook_cell())
    assert graph.results == {"a": 1, "b": 2}


def _one_for_loop_test() -> int:
    return 1
