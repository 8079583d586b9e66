"""Graphs that grow at run time: ``create_graph(expand=...)`` (issue 15).

Every runner is checked (the `runner` fixture, and the awaitable runners here).
Tasks are module-level functions, so worker processes can run them; calls are
counted through files, named after the task and its argument.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import taskmap
from taskmap import (
    CycleError,
    ExpandError,
    Retry,
    TaskExpanded,
    TaskOutcome,
    TaskTimeoutError,
    UpstreamFailedError,
    create_graph,
    reset_failed_tasks,
)

Runner = Callable[..., taskmap.Graph]

ROOT = Path(__file__).resolve().parent.parent
CHAIN = {"pages": [], "fetch": ["pages"], "parse": ["fetch"], "total": ["parse"]}
CHAIN_EXPAND = {"fetch": "pages", "parse": "fetch"}


def mark(directory: str, what: str) -> None:
    """Record one call in ``directory`` (a file per call: works across processes)."""
    path = Path(directory, f"{what}.{os.getpid()}.{os.urandom(6).hex()}")
    path.write_text("", encoding="utf-8")


def counted(directory: Path) -> dict[str, int]:
    """Calls recorded by `mark`, by what was marked."""
    found: dict[str, int] = {}
    for path in directory.iterdir():
        what = path.name.rsplit(".", 2)[0]
        found[what] = found.get(what, 0) + 1
    return found


def listing(n: int) -> list[str]:
    return [f"page-{i}" for i in range(n)]


async def fetch_page(page: str) -> str:
    await asyncio.sleep(0.001)
    return page.upper()


def parse_page(text: str) -> int:
    return int(text.rsplit("-", 1)[1])


def gather(values: list[int]) -> list[int]:
    return values


def add(x: int, y: int) -> int:
    return x + y


def tagged(tag: str, item: int) -> tuple[str, int]:
    return (tag, item)


def chain_graph(runner: Runner, n: int = 5, **options: Any) -> taskmap.Graph:
    funcs = {"pages": lambda: listing(n), "fetch": fetch_page, "parse": parse_page}
    funcs["total"] = gather
    return create_graph(funcs, CHAIN, io_bound=["fetch"], expand=CHAIN_EXPAND, **options)


def run_with(runner: Runner, graph: taskmap.Graph, **options: Any) -> taskmap.Graph:
    if runner in (taskmap.run_parallel, taskmap.run_parallel_async):
        options.setdefault("ncores", 2)
    return runner(graph, **options)


# -- results ------------------------------------------------------------------------


def test_an_expanded_task_runs_once_per_item_and_is_gathered_in_order(runner: Runner) -> None:
    graph = run_with(runner, chain_graph(runner, 5))
    assert graph.results["fetch"] == ["PAGE-0", "PAGE-1", "PAGE-2", "PAGE-3", "PAGE-4"]
    assert graph.results["parse"] == [0, 1, 2, 3, 4]
    assert graph.results["total"] == [0, 1, 2, 3, 4]
    assert graph.results[("fetch", 3)] == "PAGE-3"
    assert graph.results[("parse", 3)] == 3
    assert graph.failed == []
    instances = {("fetch", i) for i in range(5)} | {("parse", i) for i in range(5)}
    assert instances <= set(graph.done)
    assert instances <= set(graph.stats.tasks)
    assert graph.stats.tasks[("parse", 2)].outcome is TaskOutcome.DONE


def test_the_item_takes_its_dependencys_place_and_the_others_are_passed_whole(
    runner: Runner,
) -> None:
    funcs = {"tag": lambda: "t", "items": lambda: [10, 20], "pair": tagged, "all": gather}
    deps = {"tag": [], "items": [], "pair": ["tag", "items"], "all": ["pair"]}
    graph = run_with(runner, create_graph(funcs, deps, expand={"pair": "items"}))
    assert graph.results["all"] == [("t", 10), ("t", 20)]


def test_an_empty_listing_gathers_an_empty_list(runner: Runner) -> None:
    graph = run_with(runner, chain_graph(runner, 0))
    assert graph.results["fetch"] == graph.results["parse"] == graph.results["total"] == []


def test_a_listing_may_be_any_iterable(runner: Runner) -> None:
    funcs = {"items": lambda: range(3), "double": lambda x: 2 * x, "all": gather}
    deps = {"items": [], "double": ["items"], "all": ["double"]}
    graph = run_with(runner, create_graph(funcs, deps, expand={"double": "items"}))
    assert graph.results["all"] == [0, 2, 4]


def test_instances_wait_for_their_tasks_other_dependencies(runner: Runner) -> None:
    async def slow_offset() -> int:
        await asyncio.sleep(0.05)
        return 100

    funcs = {"items": lambda: [1, 2, 3], "offset": slow_offset, "plus": add, "all": gather}
    deps = {"items": [], "offset": [], "plus": ["items", "offset"], "all": ["plus"]}
    graph = create_graph(funcs, deps, io_bound=["offset"], expand={"plus": "items"})
    assert run_with(runner, graph).results["all"] == [101, 102, 103]


@pytest.mark.parametrize("awaitable", [taskmap.arun_async, taskmap.arun_parallel_async])
def test_the_awaitable_runners_expand_too(awaitable: Callable[..., Any]) -> None:
    options = {"ncores": 2} if awaitable is taskmap.arun_parallel_async else {}
    graph = asyncio.run(awaitable(chain_graph(taskmap.run, 4), **options))
    assert graph.results["total"] == [0, 1, 2, 3]


def test_the_events_say_how_many_instances_grew() -> None:
    seen: list[object] = []
    graph = chain_graph(taskmap.run, 3)
    asyncio.run(taskmap.arun_async(graph, observers=[seen.append]))
    grown = [e for e in seen if isinstance(e, TaskExpanded)]
    assert grown == [TaskExpanded("fetch", 3), TaskExpanded("parse", 3)]


def test_a_hundred_thousand_instances_are_routine() -> None:
    n = 100_000
    funcs = {"items": lambda: range(n), "inc": lambda x: x + 1, "double": lambda x: 2 * x}
    funcs["total"] = sum
    deps = {"items": [], "inc": ["items"], "double": ["inc"], "total": ["double"]}
    graph = create_graph(funcs, deps, expand={"inc": "items", "double": "inc"})
    taskmap.run(graph)
    assert graph.results["total"] == n * (n + 1)
    assert len(graph.done) == 2 * n + 4


def test_a_graph_with_instances_pickles() -> None:
    funcs = {"items": listing, "parse": parse_page, "all": gather, "n": lambda: 3}
    deps = {"n": [], "items": ["n"], "parse": ["items"], "all": ["parse"]}
    graph = taskmap.run(create_graph(funcs, deps, expand={"parse": "items"}))
    graph.funcs["n"] = int  # the lambda does not pickle
    restored = pickle.loads(pickle.dumps(graph))
    assert restored.expand == {"parse": "items"}
    assert restored.results[("parse", 2)] == 2
    assert taskmap.run(restored).results["all"] == [0, 1, 2]


def test_targets_of_an_expanded_graph_run_only_what_they_need(runner: Runner) -> None:
    graph = run_with(runner, chain_graph(runner, 3), targets=["fetch"])
    assert graph.results["fetch"] == ["PAGE-0", "PAGE-1", "PAGE-2"]
    assert "parse" not in graph.results
    assert ("parse", 0) not in graph.results


# -- streaming ----------------------------------------------------------------------


async def staggered_fetch(page: str) -> str:
    i = int(page.rsplit("-", 1)[1])
    await asyncio.sleep(0.03 * i)  # fetch 49 ends about 1.5 s after fetch 0
    return page.upper()


@pytest.mark.parametrize(
    "runner", [taskmap.run_async, taskmap.run_parallel_async], ids=lambda r: r.__name__
)
def test_instance_i_starts_when_its_own_item_is_ready_without_a_barrier(runner: Runner) -> None:
    funcs = {"pages": lambda: listing(50), "fetch": staggered_fetch, "parse": parse_page}
    funcs["total"] = gather
    graph = create_graph(funcs, CHAIN, io_bound=["fetch"], expand=CHAIN_EXPAND)
    run_with(runner, graph)
    rows = graph.stats.tasks
    parse0, fetch49 = rows[("parse", 0)], rows[("fetch", 49)]
    assert parse0.start is not None
    assert fetch49.end is not None
    assert parse0.start < fetch49.end - 0.5, (parse0, fetch49)
    assert graph.results["total"] == list(range(50))


# -- failures -----------------------------------------------------------------------


def parse_or_fail(text: str) -> int:
    i = int(text.rsplit("-", 1)[1])
    if i in (2, 4):
        raise ValueError(f"cannot parse {text}")
    return i


def failing_chain(**options: Any) -> taskmap.Graph:
    funcs = {"pages": lambda: listing(6), "fetch": fetch_page, "parse": parse_or_fail}
    funcs["total"] = gather
    funcs["report"] = len
    deps = {**CHAIN, "report": ["total"]}
    return create_graph(funcs, deps, io_bound=["fetch"], expand=CHAIN_EXPAND, **options)


def test_a_failed_instance_fails_alone_and_its_gather_names_every_failed_instance(
    runner: Runner,
) -> None:
    graph = run_with(runner, failing_chain())
    assert graph.results[("parse", 3)] == 3
    assert isinstance(graph.results[("parse", 2)], ValueError)
    assert graph.results["fetch"] == [f"PAGE-{i}" for i in range(6)]
    error = graph.results["parse"]
    assert type(error) is UpstreamFailedError
    assert error.failures == [("parse", 2), ("parse", 4)]
    assert str(error) == "task 'parse' not run: its instances ('parse', 2), ('parse', 4) failed"
    total, report = graph.results["total"], graph.results["report"]
    assert isinstance(total, UpstreamFailedError)
    assert isinstance(report, UpstreamFailedError)
    assert str(total) == "task 'total' not run: its instances ('parse', 2), ('parse', 4) failed"
    assert report.failures == [("parse", 2), ("parse", 4)]
    failed = [("parse", 2), ("parse", 4), "parse", "total", "report"]
    assert sorted(map(repr, graph.failed)) == sorted(map(repr, failed))


def fetch_or_fail(page: str) -> str:
    if page == "page-1":
        raise ConnectionError("page-1 is gone")
    return page.upper()


def test_a_failed_instance_skips_only_its_own_downstream_instances(runner: Runner) -> None:
    funcs = {"pages": lambda: listing(3), "fetch": fetch_or_fail, "parse": parse_page}
    funcs["total"] = gather
    graph = run_with(runner, create_graph(funcs, CHAIN, expand=CHAIN_EXPAND))
    skipped = graph.results[("parse", 1)]
    assert type(skipped) is UpstreamFailedError
    assert str(skipped) == "task ('parse', 1) not run: its ancestor ('fetch', 1) failed"
    assert graph.results[("parse", 0)] == 0
    assert graph.results[("parse", 2)] == 2
    assert graph.results["total"].failures == [("fetch", 1)]


def test_gather_failures_skip_gathers_the_successful_results(runner: Runner) -> None:
    graph = run_with(runner, failing_chain(gather_failures="skip"))
    assert graph.results["parse"] == [0, 1, 3, 5]
    assert graph.results["total"] == [0, 1, 3, 5]
    assert graph.results["report"] == 4
    assert sorted(graph.failed) == [("parse", 2), ("parse", 4)]


def fetch_once_broken(directory: str, page: str) -> str:
    mark(directory, f"fetch-{page}")
    if page == "page-3" and not Path(directory, "..", "fixed").exists():
        raise ConnectionError("page-3 timed out")
    return page.upper()


def parse_counted(directory: str, text: str) -> int:
    mark(directory, f"parse-{text}")
    return parse_page(text)


def total_counted(directory: str, values: list[int]) -> int:
    mark(directory, "total")
    return sum(values)


def test_reset_failed_tasks_reruns_exactly_the_failed_instances(
    runner: Runner, tmp_path: Path
) -> None:
    import functools

    calls = tmp_path / "calls"
    calls.mkdir()
    funcs = {
        "pages": lambda: listing(5),
        "fetch": functools.partial(fetch_once_broken, str(calls)),
        "parse": functools.partial(parse_counted, str(calls)),
        "total": functools.partial(total_counted, str(calls)),
    }
    graph = run_with(runner, create_graph(funcs, CHAIN, expand=CHAIN_EXPAND))
    assert [t for t in graph.failed if isinstance(t, tuple)] == [("fetch", 3), ("parse", 3)]
    (tmp_path / "fixed").touch()
    reset_failed_tasks(graph)
    assert ("fetch", 2) in graph.done
    assert ("fetch", 3) not in graph.done
    run_with(runner, graph)
    assert graph.failed == []
    assert graph.results["total"] == 10
    assert counted(calls) == {
        **{f"fetch-page-{i}": 1 for i in range(5)},
        "fetch-page-3": 2,
        **{f"parse-PAGE-{i}": 1 for i in range(5)},
        "total": 1,
    }
    assert set(graph.stats.tasks) == {("fetch", 3), ("parse", 3), "fetch", "parse", "total"}


def test_a_result_that_is_not_iterable_fails_the_expanded_task(runner: Runner) -> None:
    funcs = {"count": lambda: 42, "each": lambda x: x, "all": gather}
    deps = {"count": [], "each": ["count"], "all": ["each"]}
    graph = run_with(runner, create_graph(funcs, deps, expand={"each": "count"}))
    error = graph.results["each"]
    assert type(error) is TypeError
    assert str(error) == (
        "task 'each' is expanded over 'count', whose result is not iterable (got int: 42)"
    )
    assert isinstance(graph.results["all"], UpstreamFailedError)
    assert graph.results["all"].failed == "each"


# -- policies per instance ------------------------------------------------------------


def flaky_fetch(directory: str, page: str) -> str:
    """Fails the first attempt of every page."""
    first = Path(directory, f"tried-{page}")
    if not first.exists():
        first.touch()
        raise ConnectionError(f"{page}: try again")
    return page.upper()


def test_retries_apply_to_each_instance(runner: Runner, tmp_path: Path) -> None:
    import functools

    funcs = {
        "pages": lambda: listing(3),
        "fetch": functools.partial(flaky_fetch, str(tmp_path)),
        "total": gather,
    }
    deps = {"pages": [], "fetch": ["pages"], "total": ["fetch"]}
    graph = create_graph(
        funcs, deps, expand={"fetch": "pages"}, retries={"fetch": Retry(2, delay=0.01)}
    )
    run_with(runner, graph)
    assert graph.results["total"] == ["PAGE-0", "PAGE-1", "PAGE-2"]
    assert [graph.stats.tasks[("fetch", i)].attempts for i in range(3)] == [2, 2, 2]


async def sleepy_fetch(page: str) -> str:
    await asyncio.sleep(5 if page == "page-1" else 0)
    return page.upper()


def test_a_timeout_applies_to_each_instance(runner: Runner) -> None:
    funcs = {"pages": lambda: listing(3), "fetch": sleepy_fetch, "total": gather}
    deps = {"pages": [], "fetch": ["pages"], "total": ["fetch"]}
    graph = create_graph(
        funcs,
        deps,
        io_bound=["fetch"],
        expand={"fetch": "pages"},
        timeouts={"fetch": 0.2},
        gather_failures="skip",
    )
    run_with(runner, graph)
    assert isinstance(graph.results[("fetch", 1)], TaskTimeoutError)
    assert graph.results["total"] == ["PAGE-0", "PAGE-2"]


def test_limits_apply_to_each_instance() -> None:
    async def fetch(page: str) -> str:
        await asyncio.sleep(0.02)
        return page

    funcs = {"pages": lambda: listing(8), "fetch": fetch, "total": gather}
    deps = {"pages": [], "fetch": ["pages"], "total": ["fetch"]}
    graph = create_graph(
        funcs, deps, io_bound=["fetch"], expand={"fetch": "pages"}, channels={"fetch": "api"}
    )
    taskmap.run_async(graph, limits={"api": 2})
    spans = sorted(
        (row.start, row.end)
        for name, row in graph.stats.tasks.items()
        if isinstance(name, tuple) and row.start is not None and row.end is not None
    )
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2
    assert graph.results["total"] == listing(8)


# -- the cache, per item -----------------------------------------------------------------

CACHED_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import taskmap

    directory, n = sys.argv[1], int(sys.argv[2])

    def mark(what):
        Path(directory, "calls", f"{what}.{os.getpid()}.{os.urandom(6).hex()}").touch()

    def pages():
        return [f"page-{i}" for i in range(n)]

    async def fetch(page):
        mark("fetch")
        await asyncio.sleep(0.001)
        return page.upper()

    def parse(text):
        mark("parse")
        return len(text)

    def total(values):
        mark("total")
        return sum(values)

    if __name__ == "__main__":
        funcs = {"pages": pages, "fetch": fetch, "parse": parse, "total": total}
        deps = {"pages": [], "fetch": ["pages"], "parse": ["fetch"], "total": ["parse"]}
        graph = taskmap.create_graph(
            funcs, deps, io_bound=["pages", "fetch"],
            expand={"fetch": "pages", "parse": "fetch"},
            cache=os.path.join(directory, "cache"),
        )
        taskmap.run_parallel_async(graph, ncores=2)
        print(graph.results["total"], graph.stats.cache.hits, graph.stats.cache.misses)
    """
)


def test_each_instance_is_cached_by_its_own_item_across_processes(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(CACHED_SCRIPT, encoding="utf-8")
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(n: int) -> tuple[dict[str, int], str]:
        for path in calls.iterdir():
            path.unlink()
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path), str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return counted(calls), done.stdout.strip()

    assert run(50) == ({"fetch": 50, "parse": 50, "total": 1}, "340 0 102")
    # 5 new pages: only they are fetched and parsed; the gather's input changed
    assert run(55) == ({"fetch": 5, "parse": 5, "total": 1}, "375 100 12")
    # nothing new: nothing runs, the gather's input is unchanged (early cutoff)
    assert run(55) == ({}, "375 112 0")


# -- validation ---------------------------------------------------------------------


def funcs_of(deps: dict[str, list[str]]) -> dict[str, Callable[..., Any]]:
    return dict.fromkeys(deps, gather)


def test_an_expanded_task_must_depend_on_what_it_expands_over() -> None:
    deps = {"a": [], "b": [], "c": ["a"]}
    with pytest.raises(ExpandError) as info:
        create_graph(funcs_of(deps), deps, expand={"c": "b"})
    assert str(info.value) == (
        "task 'c' is expanded over 'b', which is not one of its dependencies ['a'] "
        "(add it to its dependencies)"
    )
    assert info.value.task == "c"


def test_a_task_is_expanded_over_one_dependency() -> None:
    deps = {"a": [], "b": [], "c": ["a", "b"]}
    with pytest.raises(ExpandError, match=r"^task 'c' is expanded over 2 dependencies") as info:
        create_graph(funcs_of(deps), deps, expand={"c": ["a", "b"]})
    assert str(info.value) == (
        "task 'c' is expanded over 2 dependencies (['a', 'b']); "
        "a task is expanded over one dependency"
    )
    graph = create_graph(funcs_of(deps), deps, expand={"c": ["b"]})  # a list of one is fine
    assert graph.expand == {"c": "b"}


def test_an_expand_chain_with_a_cycle_is_an_error() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"]}
    with pytest.raises(ExpandError) as info:
        create_graph(funcs_of(deps), deps, expand={"b": "c", "c": "b"})
    assert str(info.value) == (
        "expand cycle: 'b' -> 'c' -> 'b' (each task is expanded over the next)"
    )
    assert info.value.task == "b"


def test_a_dependency_cycle_is_reported_before_the_expansion() -> None:
    deps = {"a": ["b"], "b": ["a"]}
    with pytest.raises(CycleError):
        create_graph(funcs_of(deps), deps, expand={"a": "b"})


def test_expanding_over_a_name_that_is_not_a_task_is_an_error() -> None:
    deps = {"pages": [], "fetch": ["pages"]}
    with pytest.raises(ExpandError) as info:
        create_graph(funcs_of(deps), deps, expand={"fetch": "page"})
    assert str(info.value) == (
        "task 'fetch' is expanded over 'page', which is not a task (did you mean 'pages'?)"
    )
    with pytest.raises(taskmap.UnknownTaskError, match=r"^expand holds a name that is not a"):
        create_graph(funcs_of(deps), deps, expand={"fetchh": "pages"})


def test_expand_must_be_a_mapping_and_gather_failures_a_known_mode() -> None:
    deps = {"a": [], "b": ["a"]}
    with pytest.raises(TypeError, match=r"^expand must be a mapping of task names"):
        create_graph(funcs_of(deps), deps, expand=["b"])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^gather_failures must be 'raise' or 'skip' \(got 'ignore'\)$"
    ):
        create_graph(funcs_of(deps), deps, expand={"b": "a"}, gather_failures="ignore")  # type: ignore[arg-type]


def test_a_task_named_like_an_instance_is_an_error() -> None:
    deps: dict[Any, list[Any]] = {"a": [], "b": ["a"], ("b", 0): []}
    with pytest.raises(ExpandError) as info:
        create_graph(dict.fromkeys(deps, gather), deps, expand={"b": "a"})
    assert str(info.value) == (
        "task ('b', 0) has the name of an instance of the expanded task 'b'; rename it"
    )


# -- resets -------------------------------------------------------------------------


def test_resetting_a_task_of_the_chain_reruns_it_and_below_only(tmp_path: Path) -> None:
    import functools

    calls = tmp_path / "calls"
    calls.mkdir()
    funcs = {
        "pages": lambda: listing(3),
        "fetch": functools.partial(fetch_once_broken, str(calls)),
        "parse": functools.partial(parse_counted, str(calls)),
        "total": functools.partial(total_counted, str(calls)),
    }
    (tmp_path / "fixed").touch()
    graph = taskmap.run(create_graph(funcs, CHAIN, expand=CHAIN_EXPAND))
    for path in calls.iterdir():
        path.unlink()
    taskmap.reset_tasks(graph, "parse")
    assert ("fetch", 1) in graph.done
    assert ("parse", 1) not in graph.done
    taskmap.run(graph)
    assert counted(calls) == {"parse-PAGE-0": 1, "parse-PAGE-1": 1, "parse-PAGE-2": 1, "total": 1}
    for path in calls.iterdir():
        path.unlink()
    taskmap.reset_tasks(graph, ("fetch", 1))  # one instance: its pair and the gathers
    assert {"fetch", "parse", "total", ("fetch", 1), ("parse", 1)}.isdisjoint(graph.done)
    taskmap.run(graph)
    assert counted(calls) == {"fetch-page-1": 1, "parse-PAGE-1": 1, "total": 1}
    assert graph.results["total"] == 3


# -- explain, pictures, report, events ------------------------------------------------


def test_explain_reports_each_instance_of_a_cached_run(tmp_path: Path) -> None:
    def build(n: int) -> taskmap.Graph:
        funcs = {"pages": functools_partial(listing, n), "parse": parse_page, "total": gather}
        deps = {"pages": [], "parse": ["pages"], "total": ["parse"]}
        return create_graph(funcs, deps, expand={"parse": "pages"}, cache=tmp_path)

    taskmap.run(build(2))
    found = taskmap.explain(build(2))
    assert [str(why) for why in found.values()] == [
        "'pages' does not run: cached",
        "('parse', 0) does not run: cached",
        "('parse', 1) does not run: cached",
        "'parse' does not run: cached (each of its 2 instances is)",
        "'total' runs: an upstream task runs ('parse' gathers cached instances; an "
        "unchanged list leaves it cached)",
    ]
    graph = build(2)
    taskmap.run(graph)
    assert graph.stats.cache is not None
    assert graph.stats.cache.misses == 0
    assert str(graph.stats.why[("parse", 1)]) == "('parse', 1) does not run: cached"
    assert graph.stats.tasks["parse"].outcome is TaskOutcome.CACHED  # so was its list


def functools_partial(func: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    import functools

    return functools.partial(func, *args)


def test_pictures_draw_an_expanded_task_as_a_stack_with_its_item_count() -> None:
    graph = failing_chain()
    before = taskmap.to_mermaid(graph)
    assert '  t1[["fetch"]]:::pending' in before
    taskmap.run(graph)
    mermaid, dot = taskmap.to_mermaid(graph), taskmap.to_dot(graph)
    assert '  t1[["fetch<br>6 items"]]:::done' in mermaid
    assert '  t2[["parse<br>6 items, 2 failed"]]:::skipped' in mermaid
    assert 't1 [label="fetch\\n6 items", shape=parallelogram, style=filled, peripheries=2,' in dot


def test_the_report_groups_instances_before_their_tasks_row() -> None:
    import html

    from taskmap.report import capture, to_html

    graph = taskmap.run(failing_chain())
    rows = capture(graph).tasks
    names = [row.task for row in rows]
    fetch = names.index("fetch")
    assert names[fetch - 6 : fetch] == [str(("fetch", i)) for i in range(6)]
    assert rows[fetch].instances == 6
    assert set(rows[fetch].parents) == {names.index("pages"), *range(fetch - 6, fetch)}
    parse2 = rows[names.index(str(("parse", 2)))]
    assert parse2.group == "parse"
    assert parse2.outcome is TaskOutcome.FAILED
    assert parse2.parents == (names.index(str(("fetch", 2))),)
    page = to_html(graph)
    assert f'data-task="{html.escape(str(("parse", 2)))}"' in page


def test_the_progress_bar_total_grows_with_the_instances() -> None:
    import io

    from taskmap.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar("etl", stream)
    asyncio.run(taskmap.arun_async(chain_graph(taskmap.run, 7), observers=[bar]))
    assert bar.bar is None  # closed
    assert "18/18" in stream.getvalue()  # 4 tasks and 2 x 7 instances


def test_the_log_says_how_many_instances_grew(caplog: pytest.LogCaptureFixture) -> None:
    graph = chain_graph(taskmap.run, 2, logging_config={"level": "INFO"}, name="grow")
    with caplog.at_level("INFO"):
        taskmap.run(graph)
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.endswith(": expanded task fetch: 2 instances") for m in messages), messages
    assert any(m.endswith(": finished task ('parse', 1)") for m in messages), messages


@pytest.mark.parametrize(
    "runner", [taskmap.run_parallel, taskmap.run_parallel_async], ids=lambda r: r.__name__
)
def test_drop_results_keeps_what_the_instances_need(runner: Runner) -> None:
    funcs = {"tag": lambda: "t", "items": lambda: [10, 20, 30], "pair": tagged}
    funcs["all"] = gather
    deps = {"tag": [], "items": [], "pair": ["tag", "items"], "all": ["pair"]}
    graph = create_graph(funcs, deps, expand={"pair": "items"})
    run_with(runner, graph, drop_results=True)
    assert graph.results["all"] == [("t", 10), ("t", 20), ("t", 30)]
    assert "pair" not in graph.results  # taken by its only child


def numbered(n: int) -> list[int]:
    return list(range(n))


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize(
    "runner", [taskmap.run_parallel, taskmap.run_parallel_async], ids=lambda r: r.__name__
)
def test_a_cached_rerun_of_an_expanded_graph_starts_no_worker(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    from taskmap.backends.processes import ProcessPool

    def build(n: int) -> taskmap.Graph:
        funcs = {"items": functools.partial(numbered, n), "square": square, "all": gather}
        deps = {"items": [], "square": ["items"], "all": ["square"]}
        return create_graph(funcs, deps, expand={"square": "items"}, cache=tmp_path)

    run_with(runner, build(3))

    def refuse(self: object, tasks: int) -> None:
        raise AssertionError("a fully cached run started the worker pool")

    monkeypatch.setattr(ProcessPool, "start", refuse)
    assert run_with(runner, build(3)).results["all"] == [0, 1, 4]
    monkeypatch.undo()
    graph = run_with(runner, build(4))  # a new item: the pool starts for it
    assert graph.results["all"] == [0, 1, 4, 9]
    assert graph.stats.tasks[("square", 3)].outcome is TaskOutcome.DONE
    assert graph.stats.tasks[("square", 2)].outcome is TaskOutcome.CACHED


def test_instances_inherit_their_tasks_priority() -> None:
    funcs = {"items": lambda: [1, 2, 3], "low": square, "high": square}
    funcs["all"] = lambda low, high: (low, high)
    deps = {"items": [], "low": ["items"], "high": ["items"], "all": ["low", "high"]}
    graph = create_graph(
        funcs, deps, expand={"low": "items", "high": "items"}, priorities={"high": 5}
    )
    taskmap.run(graph)
    order = [name for name in graph.done if isinstance(name, tuple)]
    assert order == [("high", 0), ("high", 1), ("high", 2), ("low", 0), ("low", 1), ("low", 2)]
    assert graph.results["all"] == ([1, 4, 9], [1, 4, 9])


async def fetch_or_fail_late(page: str) -> str:
    i = int(page.rsplit("-", 1)[1])
    await asyncio.sleep(0.02 * i)
    if i == 2:
        raise ValueError(f"{page} is broken")
    return page.upper()


def test_fail_fast_stops_the_instances_not_yet_done(runner: Runner) -> None:
    funcs = {"pages": lambda: listing(6), "fetch": fetch_or_fail_late, "parse": parse_page}
    funcs["total"] = gather
    graph = create_graph(funcs, CHAIN, io_bound=["fetch"], expand=CHAIN_EXPAND)
    run_with(runner, graph, on_error="fail_fast")
    assert isinstance(graph.results[("fetch", 2)], ValueError)
    assert isinstance(graph.results[("parse", 2)], UpstreamFailedError)
    for name in [("fetch", 5), ("parse", 5), "fetch", "parse", "total"]:
        assert isinstance(graph.results[name], taskmap.RunStoppedError), name


def test_load_result_of_an_expanded_task_is_the_list_of_its_instances(tmp_path: Path) -> None:
    def build(n: int) -> taskmap.Graph:
        funcs = {"pages": functools_partial(listing, n), "parse": parse_page, "total": sum}
        deps = {"pages": [], "parse": ["pages"], "total": ["parse"]}
        return create_graph(funcs, deps, expand={"parse": "pages"}, cache=tmp_path)

    taskmap.run(build(3))
    assert taskmap.load_result(build(3), "parse") == [0, 1, 2]
    assert taskmap.load_result(build(3), "total") == 3
    with pytest.raises(taskmap.NoStoredResultError) as info:
        taskmap.load_result(build(4), "parse")  # the listing changed: it would run
    assert info.value.reason is taskmap.Reason.UPSTREAM
