"""create_graph: validation and its messages, the Graph it returns, queries and resets."""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import pytest

import taskmap
from taskmap import (
    CycleError,
    GraphError,
    MissingDependencyError,
    MissingFunctionError,
    NotCallableError,
    UnknownTaskError,
    UpstreamFailedError,
    create_graph,
    get_all_children,
    get_ready_tasks,
    mark_as_done,
    mark_as_done_except,
    reset_failed_tasks,
    reset_tasks,
)


def whole(message: str) -> str:
    """A `match=` pattern for exactly ``message``."""
    return f"^{re.escape(message)}$"


def collect(*args: object) -> tuple[object, ...]:
    return args


def graph_of(dependencies: Mapping[Any, Iterable[Any]], **options: Any) -> taskmap.Graph:
    """A graph whose every task returns the tuple of its arguments."""
    return create_graph(dict.fromkeys(dependencies, collect), dependencies, **options)


# -- validation errors ----------------------------------------------------------


def test_cycle_error_names_the_path() -> None:
    deps = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    with pytest.raises(
        CycleError,
        match=whole("dependency cycle: 'a' -> 'b' -> 'c' -> 'a' (each task depends on the next)"),
    ) as excinfo:
        graph_of(deps)
    assert excinfo.value.cycle == ["a", "b", "c", "a"]


def test_cycle_error_shows_only_the_cycle_not_tasks_downstream_of_it() -> None:
    deps = {"after": ["x"], "x": ["y"], "y": ["x"], "root": []}
    with pytest.raises(CycleError) as excinfo:
        graph_of(deps)
    cycle = excinfo.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"x", "y"}


def test_self_cycle_is_a_cycle_error() -> None:
    with pytest.raises(
        CycleError, match=whole("dependency cycle: 'a' -> 'a' (each task depends on the next)")
    ) as excinfo:
        graph_of({"a": ["a"]})
    assert excinfo.value.cycle == ["a", "a"]


def test_missing_dependency_error_suggests_the_close_name() -> None:
    deps = {"extract": [], "load": ["extrct"]}
    with pytest.raises(
        MissingDependencyError,
        match=whole(
            "task 'load' depends on 'extrct', which is not a task (did you mean 'extract'?)"
        ),
    ) as excinfo:
        graph_of(deps)
    assert excinfo.value.missing == {"load": ["extrct"]}


def test_missing_dependency_error_reports_every_offender_at_once() -> None:
    deps = {"extract": [], "load": ["extrct"], "save": ["lod", "zzz"]}
    message = (
        "task 'load' depends on 'extrct', which is not a task (did you mean 'extract'?); "
        "task 'save' depends on 'lod', which is not a task (did you mean 'load'?); "
        "task 'save' depends on 'zzz', which is not a task"
    )
    with pytest.raises(MissingDependencyError, match=whole(message)) as excinfo:
        graph_of(deps)
    assert excinfo.value.missing == {"load": ["extrct"], "save": ["lod", "zzz"]}


def test_missing_dependency_error_shows_ten_tasks_then_counts_the_rest() -> None:
    deps: dict[Hashable, list[Hashable]] = {f"t{i:02}": ["nowhere"] for i in range(12)}
    with pytest.raises(MissingDependencyError, match=r"; and 2 more tasks$") as excinfo:
        graph_of(deps)
    assert str(excinfo.value).count("depends on 'nowhere'") == 10
    assert len(excinfo.value.missing) == 12


def test_unhashable_dependency_is_a_missing_dependency() -> None:
    with pytest.raises(MissingDependencyError, match=re.escape("depends on ['a'], which is not")):
        graph_of({"a": [], "b": [["a"]]})


def test_missing_function_error_names_the_task() -> None:
    with pytest.raises(
        MissingFunctionError, match=whole("task has no function in funcs: 'b'")
    ) as excinfo:
        create_graph({"a": collect}, {"a": [], "b": ["a"]})
    assert excinfo.value.tasks == ["b"]


def test_missing_function_error_lists_ten_then_and_n_more() -> None:
    deps: dict[Hashable, list[Hashable]] = {f"t{i}": [] for i in range(12)}
    names = ", ".join(f"'t{i}'" for i in range(10))
    with pytest.raises(
        MissingFunctionError, match=whole(f"tasks have no function in funcs: {names} and 2 more")
    ):
        create_graph({}, deps)


def test_not_callable_error_shows_what_was_found() -> None:
    with pytest.raises(
        NotCallableError,
        match=whole(
            "funcs must map each task to a callable; not callable: "
            "'a' (got 3, an int), 'b' (got 'x', a str)"
        ),
    ) as excinfo:
        create_graph({"a": 3, "b": "x", "c": collect}, {"a": [], "b": [], "c": []})
    assert excinfo.value.found == {"a": 3, "b": "x"}


def test_funcs_entries_that_are_not_tasks_are_ignored() -> None:
    graph = create_graph({"a": collect, "extra": 3}, {"a": []})
    assert list(graph.dependencies) == ["a"]


@pytest.mark.parametrize("where", ["io_bound", "done"])
def test_unknown_task_in_a_name_list_is_reported_with_a_hint(where: str) -> None:
    with pytest.raises(
        UnknownTaskError,
        match=whole(f"{where} holds a name that is not a task: 'lod' (did you mean 'load'?)"),
    ) as excinfo:
        graph_of({"load": [], "save": ["load"]}, **{where: ["lod"]})
    assert excinfo.value.where == where
    assert excinfo.value.names == ["lod"]


def test_unknown_task_error_lists_every_unknown_name() -> None:
    with pytest.raises(
        UnknownTaskError, match=whole("io_bound holds names that are not tasks: 'x', 'y'")
    ):
        graph_of({"a": []}, io_bound=["y", "a", "x"])


def test_unknown_task_in_results_is_reported() -> None:
    with pytest.raises(
        UnknownTaskError, match=whole("results holds a name that is not a task: 'x'")
    ) as excinfo:
        graph_of({"a": []}, results={"x": 1})
    assert excinfo.value.where == "results"


def test_unknown_task_error_is_a_key_error_with_a_readable_message() -> None:
    with pytest.raises(KeyError) as excinfo:
        graph_of({"a": []}, done=["b"])
    assert str(excinfo.value) == "done holds a name that is not a task: 'b'"


def test_dependencies_given_as_a_string_suggest_a_list() -> None:
    message = (
        "dependencies of task 'b' must be an iterable of task names, "
        "not a string (got 'a'; did you mean ['a']?)"
    )
    with pytest.raises(TypeError, match=whole(message)):
        create_graph({"a": collect, "b": collect}, {"a": [], "b": "a"})


def test_dependencies_that_are_not_iterable_are_a_type_error() -> None:
    message = "dependencies of task 'b' must be an iterable of task names (got 3, an int)"
    with pytest.raises(TypeError, match=whole(message)):
        create_graph({"a": collect, "b": collect}, {"a": [], "b": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("which", ["funcs", "dependencies"])
def test_arguments_that_are_not_mappings_are_a_type_error(which: str) -> None:
    args: dict[str, Any] = {"funcs": {"a": collect}, "dependencies": {"a": []}}
    args[which] = [("a", collect)]
    with pytest.raises(
        TypeError, match=f"^{which} must be a mapping of task names \\(got .*, a list\\)$"
    ):
        create_graph(**args)


def test_io_bound_that_is_not_iterable_is_a_type_error() -> None:
    with pytest.raises(
        TypeError, match=whole("io_bound must be an iterable of task names (got 3, an int)")
    ):
        graph_of({"a": []}, io_bound=3)


def test_io_bound_given_as_a_string_is_a_type_error() -> None:
    with pytest.raises(
        TypeError, match=whole("io_bound must be an iterable of task names (got 'a', a str)")
    ):
        graph_of({"a": []}, io_bound="a")


@pytest.mark.parametrize(
    "error",
    [CycleError, MissingDependencyError, MissingFunctionError, NotCallableError, UnknownTaskError],
)
def test_graph_errors_are_value_errors(error: type[GraphError]) -> None:
    assert issubclass(error, GraphError)
    assert issubclass(error, ValueError)
    assert issubclass(error, taskmap.TaskmapError)


# -- the graph created ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [list, tuple, lambda names: iter(names), lambda names: (n for n in names)],
    ids=["list", "tuple", "iterator", "generator"],
)
def test_dependencies_keep_the_order_given(make: Any) -> None:
    graph = graph_of({"a": [], "b": [], "c": make(["b", "a"])})
    assert graph.dependencies["c"] == ("b", "a")


def test_dependencies_may_be_a_set() -> None:
    graph = graph_of({"a": [], "b": [], "c": {"a", "b"}})
    assert sorted(graph.dependencies["c"]) == ["a", "b"]  # type: ignore[type-var]


def test_arguments_are_passed_in_the_order_given() -> None:
    funcs = {"a": lambda: "A", "b": lambda: "B", "c": collect}
    graph = create_graph(funcs, {"a": [], "b": [], "c": ["b", "a", "b"]})
    assert taskmap.run(graph).results["c"] == ("B", "A", "B")


def test_dependencies_are_read_only() -> None:
    graph = graph_of({"a": []})
    with pytest.raises(TypeError):
        graph.dependencies["b"] = ()  # type: ignore[index]


def test_graph_copies_what_it_is_given() -> None:
    funcs = {"a": collect}
    deps: dict[Hashable, list[Hashable]] = {"a": []}
    done = ["a"]
    graph = create_graph(funcs, deps, done=done, results={"a": 1})
    funcs["b"] = collect
    deps["a"].append("zzz")
    done.clear()
    assert graph.funcs == {"a": collect}
    assert graph.dependencies["a"] == ()
    assert graph.done == ["a"]


@pytest.mark.parametrize(
    "names",
    [
        ("données", "任务", "🙂"),
        ("load data", "clean the data", " spaced "),
        (1, 2, 3),
        (("x", 1), ("x", 2), ("y",)),
        ("1", 1, (1,)),
    ],
    ids=["unicode", "spaces", "ints", "tuples", "mixed"],
)
def test_task_names_may_be_any_hashable(names: tuple[Hashable, Hashable, Hashable]) -> None:
    first, second, third = names
    graph = create_graph(
        {first: lambda: "one", second: lambda one: "two", third: collect},
        {first: [], second: [first], third: [second, first]},
        io_bound=[second],
    )
    taskmap.run(graph)
    assert graph.results == {first: "one", second: "two", third: ("two", "one")}
    assert get_all_children(graph, first) == {second, third}


def test_graph_repr_counts_tasks_done_and_failed() -> None:
    graph = graph_of(
        {"a": [], "b": ["a"], "c": []},
        done=["a", "b"],
        results={"a": ValueError(), "b": UpstreamFailedError("b", "a")},
        name="etl",
    )
    assert repr(graph) == "<Graph 'etl': 3 tasks, 2 done, 2 failed>"
    assert graph.failed == ["a", "b"]


def test_done_names_are_deduplicated_in_order() -> None:
    graph = graph_of({"a": [], "b": [], "c": []}, done=["b", "a", "b"])
    assert graph.done == ["b", "a"]


# -- queries ----------------------------------------------------------------------


def test_get_ready_tasks_lists_io_bound_tasks_first() -> None:
    graph = graph_of({"a": [], "b": [], "c": ["a"], "d": []}, io_bound=["d"])
    assert get_ready_tasks(graph) == ["d", "a", "b"]


def test_get_ready_tasks_follows_done() -> None:
    graph = graph_of({"a": [], "b": ["a"], "c": ["a", "b"]}, io_bound=["c"])
    assert get_ready_tasks(mark_as_done(graph, "a")) == ["b"]
    assert get_ready_tasks(mark_as_done(graph, "b")) == ["c"]
    assert get_ready_tasks(mark_as_done(graph, "c")) == []


def test_get_all_children_returns_every_descendant_but_not_the_task() -> None:
    graph = graph_of({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "f": []})
    assert get_all_children(graph, "a") == {"b", "c", "d", "e"}
    assert get_all_children(graph, "d") == {"e"}
    assert get_all_children(graph, "f") == set()


def test_get_all_children_of_an_unknown_task_is_an_error() -> None:
    graph = graph_of({"load": []})
    with pytest.raises(
        UnknownTaskError,
        match=whole("task holds a name that is not a task: 'lod' (did you mean 'load'?)"),
    ):
        get_all_children(graph, "lod")


def test_mark_as_done_takes_one_name_or_several() -> None:
    graph = graph_of({"a": [], "b": [], "c": []})
    assert mark_as_done(graph, "b") is graph
    mark_as_done(graph, ["c", "b", "a"])
    assert graph.done == ["b", "c", "a"]
    assert graph.results == {}


def test_mark_as_done_takes_a_task_named_by_a_tuple() -> None:
    graph = graph_of({("x", 1): [], ("x", 2): [], "x": []})
    mark_as_done(graph, ("x", 1))
    assert graph.done == [("x", 1)]
    mark_as_done(graph, [("x", 2)])
    assert graph.done == [("x", 1), ("x", 2)]


def test_mark_as_done_of_an_unknown_task_changes_nothing() -> None:
    graph = graph_of({"a": [], "b": []})
    with pytest.raises(
        UnknownTaskError, match=whole("tasks holds a name that is not a task: 'zz'")
    ):
        mark_as_done(graph, ["a", "zz"])
    with pytest.raises(UnknownTaskError, match="'zz'"):
        mark_as_done(graph, "zz")
    assert graph.done == []


def test_mark_as_done_except_marks_every_other_task() -> None:
    graph = graph_of({"a": [], "b": ["a"], "c": ["b"], "d": []})
    mark_as_done_except(graph, "c")
    assert graph.done == ["a", "b", "d"]
    assert get_ready_tasks(graph) == ["c"]
    other = graph_of({"a": [], "b": ["a"], "c": ["b"], "d": []})
    assert mark_as_done_except(other, ["c", "a"]).done == ["b", "d"]


def test_reset_tasks_resets_the_tasks_and_their_descendants_only() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}
    graph = taskmap.run(graph_of(deps))
    before = dict(graph.results)
    assert reset_tasks(graph, "b") is graph
    assert sorted(graph.done) == ["a", "d", "e"]
    assert graph.results == {"a": before["a"], "d": before["d"], "e": before["e"]}
    assert get_ready_tasks(graph) == ["b"]


def test_reset_tasks_takes_several_names() -> None:
    deps = {"a": [], "b": ["a"], "c": [], "d": ["c"], "e": []}
    graph = taskmap.run(graph_of(deps))
    reset_tasks(graph, ["b", "c"])
    assert sorted(graph.done) == ["a", "e"]
    assert sorted(graph.results) == ["a", "e"]


def test_reset_tasks_of_an_unknown_task_changes_nothing() -> None:
    graph = taskmap.run(graph_of({"a": []}))
    with pytest.raises(UnknownTaskError, match="'b'"):
        reset_tasks(graph, ["a", "b"])
    assert graph.done == ["a"]


def test_reset_failed_tasks_resets_failures_and_their_descendants() -> None:
    results = {
        "ok": 1,
        "bad": ValueError("bad"),
        "child": UpstreamFailedError("child", "bad"),
        "other": 2,
    }
    deps = {"ok": [], "bad": ["ok"], "child": ["bad"], "other": ["ok"], "todo": []}
    graph = graph_of(deps, done=list(results), results=results)
    assert graph.failed == ["bad", "child"]
    assert reset_failed_tasks(graph) is graph
    assert graph.done == ["ok", "other"]
    assert graph.results == {"ok": 1, "other": 2}
    assert graph.failed == []


def test_reset_failed_tasks_without_failures_changes_nothing() -> None:
    graph = taskmap.run(graph_of({"a": [], "b": ["a"]}))
    reset_failed_tasks(graph)
    assert graph.done == ["a", "b"]


# -- size ---------------------------------------------------------------------------


N = 100_000


def test_a_long_chain_is_created_queried_and_reset_without_recursion() -> None:
    deps: dict[Hashable, list[Hashable]] = {0: []} | {i: [i - 1] for i in range(1, N)}
    graph = graph_of(deps)
    assert len(get_all_children(graph, 0)) == N - 1
    mark_as_done(graph, range(N))
    reset_tasks(graph, 1)
    assert graph.done == [0]
    assert get_ready_tasks(graph) == [1]


def test_a_wide_graph_is_created_and_reset() -> None:
    deps: dict[Hashable, list[Hashable]] = {"root": []} | {i: ["root"] for i in range(N)}
    deps["sink"] = list(range(N))
    graph = graph_of(deps)
    mark_as_done_except(graph, [])
    assert len(graph.done) == N + 2
    reset_failed_tasks(graph)
    reset_tasks(graph, "root")
    assert graph.done == []
    assert get_ready_tasks(graph) == ["root"]


def test_a_long_cycle_is_found_without_recursion() -> None:
    deps: dict[Hashable, list[Hashable]] = {i: [(i + 1) % N] for i in range(N)}
    with pytest.raises(CycleError) as excinfo:
        graph_of(deps)
    assert len(excinfo.value.cycle) == N + 1


def _double(x: int) -> int:
    return 2 * x


def _one() -> int:
    return 1


def test_a_graph_survives_pickling_with_its_results_and_reruns() -> None:
    import pickle

    import taskmap

    graph = taskmap.run(
        taskmap.create_graph(
            {"a": _one, "b": _double, "c": _double},
            {"a": [], "b": ["a"], "c": ["b"]},
            io_bound=["a"],
            name="saved",
        )
    )
    loaded = pickle.loads(pickle.dumps(graph))
    assert loaded.results == {"a": 1, "b": 2, "c": 4}
    assert loaded.done == ["a", "b", "c"]
    assert loaded.io_bound == frozenset({"a"})
    assert loaded.name == "saved"
    assert dict(loaded.dependencies) == {"a": (), "b": ("a",), "c": ("b",)}
    taskmap.reset_tasks(loaded, ["b"])
    assert taskmap.run(loaded).results == {"a": 1, "b": 2, "c": 4}


def _raise_value_error() -> None:
    raise ValueError("row 3 <is> not a number")


def test_a_graph_shows_in_jupyter_its_tasks_by_state_its_failures_and_makespan() -> None:
    graph = taskmap.create_graph(
        {"ok": lambda: 1, "bad": _raise_value_error, "below": lambda: 2, "other": lambda: 3},
        {"ok": [], "bad": [], "below": ["bad"], "other": []},
    )
    before = graph._repr_html_()
    assert "<td>4 tasks</td>" in before
    assert "<td>4 not run</td>" in before
    assert "last run" not in before
    taskmap.run(graph, targets=["ok", "bad", "below"])
    page = graph._repr_html_()
    for cell in ["1 done", "1 failed", "1 skipped", "1 not run"]:
        assert f"<td>{cell}</td>" in page
    assert "<td>&#x27;bad&#x27;</td><td><code>ValueError: row 3 &lt;is&gt; not a number" in page
    assert "last run: " in page
