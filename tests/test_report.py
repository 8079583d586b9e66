"""The run report: capture -> summarize -> HTML / Chrome trace -> file, and the page in
a real headless Chromium.

Two records are checked.  A real run (`run_parallel_async`, 2 workers) of io
coroutines, CPU tasks, a failure with a skipped child, a task retried once, and
names that are HTML (`XSS`) or unicode.  And a hand-made `Record` with round
numbers, whose figures are exact and whose page is screenshotted pixel by pixel.

In the page, ``.bar`` elements are the tasks that ran (failed and cancelled ones
included) and ``.mark.cached`` elements the cached tasks: counted separately.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Hashable, Iterator
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import taskmap
from taskmap import TaskOutcome
from taskmap.report import (
    Record,
    TaskRow,
    capture,
    check_report_path,
    format_html,
    summarize,
    to_chrome_trace,
    to_html,
    write_report,
)
from tests import browser as chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

XSS = "<script>alert(1)</script>"
UNICODE = "données ✓ 数据"  # a task that runs
SKIPPED = "après l'échec"  # the failed task's child
ERROR = "bad <b>row</b> & <img src=x onerror=alert(2)>"


# -- tasks: module level, so cloudpickle ships them to the workers -------------------


async def nap(seconds: float, *args: object) -> float:
    await asyncio.sleep(seconds)
    return seconds


def spin(seconds: float, *args: object) -> float:
    """Hold a core for ``seconds`` of wall time (a sleep would not be CPU work)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def fail_once(path: str, *args: object) -> str:
    """Fail on the first call, counted in a file (the calls happen in workers)."""
    with open(path, "a", encoding="utf-8") as file:
        file.write("x")
    if Path(path).read_text(encoding="utf-8") == "x":
        raise ConnectionError("the service refused the first call")
    return "ok"


def boom(*args: object) -> None:
    raise ValueError(ERROR)


def noop(*args: object) -> int:
    return 1


# -- the real run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> taskmap.Graph:
    """A mixed run on 2 workers: critical path fetch_a -> parse_a -> merge (0.62 s).

    fetch_* overlap on the event loop; flaky fails once and is retried; XSS fails
    and SKIPPED, its child, is skipped; UNICODE is a quick CPU task.  parse_a is
    long enough that no other chain comes near it, even when flaky's retry waits
    for a worker.
    """
    calls = tmp_path_factory.mktemp("calls") / "flaky.calls"
    funcs: dict[Hashable, Callable[..., Any]] = {
        "fetch_a": partial(nap, 0.2),
        "fetch_b": partial(nap, 0.05),
        "fetch_c": partial(nap, 0.02),
        "parse_a": partial(spin, 0.4),
        "parse_b": partial(spin, 0.01),
        "flaky": partial(fail_once, str(calls)),
        "merge": partial(spin, 0.02),
        XSS: boom,
        SKIPPED: noop,
        UNICODE: noop,
    }
    dependencies = {
        "fetch_a": [],
        "fetch_b": [],
        "fetch_c": [],
        "parse_a": ["fetch_a"],
        "parse_b": ["fetch_b"],
        "flaky": ["fetch_c"],
        "merge": ["parse_a", "parse_b", "flaky"],
        XSS: ["fetch_c"],
        SKIPPED: [XSS],
        UNICODE: ["fetch_b"],
    }
    graph = taskmap.create_graph(
        funcs,
        dependencies,
        io_bound=["fetch_a", "fetch_b", "fetch_c"],
        retries={"flaky": taskmap.Retry(1, delay=0)},
    )
    graph = taskmap.run_parallel_async(graph, ncores=2)
    assert calls.read_text(encoding="utf-8") == "xx"
    return graph


def ran(graph: taskmap.Graph) -> list[taskmap.TaskStats]:
    """The tasks that were called (not cached, not skipped)."""
    return [row for row in graph.stats.tasks.values() if row.lane is not None and not row.cached]


def longest_chain(graph: taskmap.Graph) -> tuple[float, list[Hashable]]:
    """The critical path by brute force: every chain ending at every task."""
    stats = graph.stats.tasks

    def weight(task: Hashable) -> float:
        row = stats.get(task)
        if row is None or row.cached or row.duration is None:
            return 0.0  # did not run
        return row.duration

    def best(task: Hashable) -> tuple[float, list[Hashable]]:
        chains = [best(parent) for parent in graph.dependencies[task]]
        length, path = max(chains, key=lambda chain: chain[0], default=(0.0, []))
        return length + weight(task), [*path, task]

    return max((best(task) for task in graph.dependencies), key=lambda chain: chain[0])


def test_summary_of_a_real_run_finds_the_critical_path_and_the_lower_bound(
    real: taskmap.Graph,
) -> None:
    record = capture(real)
    summary = summarize(record)
    names = [record.tasks[i].task for i in summary.critical_path]
    assert names == ["fetch_a", "parse_a", "merge"]
    length, chain = longest_chain(real)
    assert [str(task) for task in chain if task in names] == names
    assert summary.critical_seconds == pytest.approx(length)
    stats = real.stats.tasks
    assert summary.critical_seconds == pytest.approx(
        sum(stats[name].duration or 0.0 for name in names)
    )
    cpu = sum(row.duration or 0.0 for row in ran(real) if row.task not in real.io_bound)
    assert summary.cpu_seconds == pytest.approx(cpu)
    assert real.stats.workers == summary.workers == 2
    assert summary.lower_bound == pytest.approx(max(length, cpu / 2))
    assert summary.makespan == real.stats.makespan >= summary.lower_bound


def test_summary_counts_outcomes_and_lane_use_as_the_run_stats_do(real: taskmap.Graph) -> None:
    summary = summarize(capture(real))
    assert summary.counts == {
        TaskOutcome.DONE: 8,
        TaskOutcome.CACHED: 0,
        TaskOutcome.FAILED: 1,
        TaskOutcome.SKIPPED: 1,
        TaskOutcome.STOPPED: 0,
    }
    assert list(summary.busy) == ["loop", "worker-1", "worker-2"]
    for lane, busy in real.stats.busy.items():
        assert summary.busy[lane] == pytest.approx(busy)
    slowest = [capture(real).tasks[i].task for i in summary.slowest]
    assert slowest[0] == "parse_a"
    assert len(slowest) == len(ran(real)) == 9  # ten at most: all of them


def test_capture_keeps_attempts_errors_and_escapes_nothing_yet(real: taskmap.Graph) -> None:
    rows = {row.task: row for row in capture(real).tasks}
    assert rows["flaky"].attempts == 2
    assert rows["flaky"].outcome is TaskOutcome.DONE
    assert rows["flaky"].error is None
    assert rows[XSS].error == f"ValueError: {ERROR}"
    assert rows[SKIPPED].outcome is TaskOutcome.SKIPPED
    assert rows[SKIPPED].error == (
        f"UpstreamFailedError: task {SKIPPED!r} not run: its ancestor {XSS!r} failed"
    )
    assert rows[UNICODE].outcome is TaskOutcome.DONE
    assert rows["fetch_a"].io
    assert not rows["parse_a"].io


def test_chrome_trace_has_one_complete_event_per_task_that_ran(real: taskmap.Graph) -> None:
    trace = to_chrome_trace(real)
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    complete = {event["name"]: event for event in events if event["ph"] == "X"}
    assert len(complete) == len([e for e in events if e["ph"] == "X"]) == len(ran(real))
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"loop", "loop (2)", "loop (3)", "worker-1", "worker-2"} <= set(threads.values())
    for row in ran(real):
        event = complete[str(row.task)]
        assert row.start is not None
        assert row.duration is not None
        assert event["ts"] == pytest.approx(row.start * 1e6, abs=0.01)
        assert event["dur"] == pytest.approx(row.duration * 1e6, abs=0.01)
        assert threads[event["tid"]].split(" (")[0] == row.lane
        assert event["pid"] == 1
        assert event["cat"] == ("io" if row.task in real.io_bound else "cpu")
    assert complete["flaky"]["args"] == {"outcome": "done", "attempts": 2}
    assert complete[XSS]["args"]["error"] == f"ValueError: {ERROR}"
    assert json.loads(json.dumps(trace)) == trace


def test_chrome_trace_slices_on_one_thread_do_not_overlap(real: taskmap.Graph) -> None:
    """Trace viewers need a thread's slices to nest: overlapping coroutines get threads."""
    by_thread: dict[int, list[tuple[float, float]]] = {}
    for event in to_chrome_trace(real)["traceEvents"]:
        if event["ph"] == "X":
            by_thread.setdefault(event["tid"], []).append((event["ts"], event["dur"]))
    for spans in by_thread.values():
        spans.sort()
        for (start, duration), (next_start, _) in itertools.pairwise(spans):
            assert start + duration <= next_start


def test_html_of_a_real_run_has_a_bar_per_task_that_ran(real: taskmap.Graph) -> None:
    page = to_html(real)
    bars = elements(page, "bar")
    assert sorted(bars) == sorted(str(row.task) for row in ran(real))
    assert elements(page, "mark") == {}
    assert "failed" in bars[XSS]["class"].split()
    assert bars[XSS]["data-e"] == f"ValueError: {ERROR}"
    assert bars["flaky"]["data-a"] == "2"
    assert "crit" in bars["parse_a"]["class"].split()
    assert bars["fetch_a"]["class"].split()[:3] == ["bar", "io", "done"]
    assert bars["parse_a"]["class"].split()[:3] == ["bar", "cpu", "done"]


def test_html_escapes_task_names_and_errors(real: taskmap.Graph) -> None:
    page = to_html(real)
    assert XSS not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert UNICODE in page
    assert page.count("<script>") == 1  # the page's own


def test_html_needs_no_network(real: taskmap.Graph) -> None:
    page = to_html(real)
    loading = [(tag, attrs) for tag, attrs in tags(page) if {"src", "href"} & attrs.keys()]
    assert loading == []
    assert {tag for tag, _ in tags(page)} & {"link", "img", "iframe", "object"} == set()
    assert "@import" not in page
    assert "url(http" not in page
    assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", page) == []


# -- the hand-made record: exact figures -----------------------------------------------


def made() -> Record:
    """A run of round numbers: 3 coroutines overlap on the loop, 2 workers, one cached
    task, one failure (hatched) and its skipped child.  Critical path: fetch_a (0.3) ->
    parse_a (0.4) -> report (0.25) = 0.95 s; CPU 1.05 s over 2 workers."""
    done, failed = TaskOutcome.DONE, TaskOutcome.FAILED
    return Record(
        graph="nightly <etl>",
        started=1_700_000_000.0,
        makespan=1.0,
        workers=2,
        tasks=(
            TaskRow("fetch_a", done, "loop", 0.0, 0.3, 1, io=True),
            TaskRow("fetch_b", done, "loop", 0.05, 0.4, 1, io=True),
            TaskRow("fetch_c", done, "loop", 0.1, 0.25, 1, io=True),
            TaskRow("config", TaskOutcome.CACHED, "loop", 0.01, 0.01, 0),
            TaskRow("parse_a", done, "worker-1", 0.3, 0.7, 1, parents=(0, 3)),
            TaskRow("parse_b", done, "worker-2", 0.4, 0.6, 2, parents=(1,)),
            TaskRow(
                "parse_c",
                failed,
                "worker-2",
                0.6,
                0.8,
                1,
                error=f"ValueError: {ERROR}",
                parents=(2,),
            ),
            TaskRow("report", done, "worker-1", 0.7, 0.95, 1, parents=(4, 5)),
            TaskRow(
                "publish",
                TaskOutcome.SKIPPED,
                error="UpstreamFailedError: task 'publish' not run: its ancestor 'parse_c' failed",
                parents=(6,),
            ),
            TaskRow("archived", None, parents=()),  # done before this run
        ),
    )


def test_summary_of_a_made_record_is_exact() -> None:
    summary = summarize(made())
    record = made()
    assert [record.tasks[i].task for i in summary.critical_path] == [
        "fetch_a",
        "parse_a",
        "report",
    ]
    assert summary.critical_seconds == pytest.approx(0.95)
    assert summary.cpu_seconds == pytest.approx(0.4 + 0.2 + 0.2 + 0.25)
    assert summary.lower_bound == pytest.approx(0.95)  # max(0.95, 1.05 / 2)
    assert summary.busy == pytest.approx({"loop": 0.4, "worker-1": 0.65, "worker-2": 0.4})
    assert summary.counts[TaskOutcome.CACHED] == 1
    assert summary.counts[TaskOutcome.SKIPPED] == 1
    assert sum(summary.counts.values()) == 9  # 'archived' was not part of the run


def test_lower_bound_is_cpu_time_over_workers_when_that_is_longer() -> None:
    wide = Record(
        "wide",
        1.0,
        2.0,
        2,
        tuple(TaskRow(f"t{i}", TaskOutcome.DONE, "worker-1", 0, 0.5, 1) for i in range(6)),
    )
    summary = summarize(wide)
    assert summary.critical_seconds == pytest.approx(0.5)
    assert summary.lower_bound == pytest.approx(6 * 0.5 / 2)


def test_overlapping_coroutines_are_stacked_into_sub_rows() -> None:
    bars = elements(format_html(made()), "bar")
    loop = [bars[name]["y"] for name in ("fetch_a", "fetch_b", "fetch_c")]
    assert len(set(loop)) == 3
    assert bars["parse_a"]["y"] == bars["report"]["y"]  # one after the other: one row


def test_made_record_tooltip_data_and_lists() -> None:
    page = format_html(made())
    bars = elements(page, "bar")
    assert len(bars) == 7
    assert bars["fetch_a"]["data-d"] == "300 ms"
    assert bars["parse_b"]["data-a"] == "2"
    assert "data-a" not in bars["parse_a"]
    marks = elements(page, "mark")
    assert list(marks) == ["config"]
    assert marks["config"]["class"] == "mark cached"
    assert "nightly &lt;etl&gt;" in page
    assert "publish" in page.split("Skipped")[1]
    assert re.search(r'id="critical-path">.*fetch_a.*parse_a.*report.*</ol>', page)


def test_record_rejects_children_listed_before_parents() -> None:
    with pytest.raises(ValueError, match=r"list parents before children \(task 'b' at 0"):
        Record("g", 1.0, 1.0, 1, (TaskRow("b", None, parents=(1,)), TaskRow("a", None)))


# -- never run, nothing ran, cached, 10,000 tasks --------------------------------------


def test_a_graph_never_run_says_so() -> None:
    graph = taskmap.create_graph({"a": noop, "b": noop}, {"a": [], "b": ["a"]})
    page = to_html(graph)
    assert "has not been run yet" in page
    assert elements(page, "bar") == {}
    trace = to_chrome_trace(graph)
    assert [e for e in trace["traceEvents"] if e["ph"] != "M"] == []
    assert trace["otherData"]["run"] == "never run"


def test_a_run_with_nothing_to_do_says_no_task_ran() -> None:
    graph = taskmap.create_graph({"a": noop}, {"a": []}, done=["a"], results={"a": 1})
    page = to_html(taskmap.run(graph))
    assert "No task ran in this run" in page
    assert summarize(capture(graph)).counts[TaskOutcome.DONE] == 0


async def fail_soon(*args: object) -> None:
    await asyncio.sleep(0.05)
    raise ValueError("failed soon")


def test_cancelled_tasks_are_bars_and_tasks_not_started_are_listed() -> None:
    graph = taskmap.create_graph(
        {"slow": partial(nap, 30), "bad": fail_soon, "after": noop},
        {"slow": [], "bad": [], "after": ["slow"]},
        io_bound=["slow", "bad"],
    )
    graph = taskmap.run_async(graph, on_error="fail_fast")
    page = to_html(graph)
    bars = elements(page, "bar")
    assert sorted(bars) == ["bad", "slow"]
    assert bars["slow"]["class"].split()[:3] == ["bar", "io", "stopped"]
    assert "RunStoppedError: task 'slow' cancelled" in bars["slow"]["data-e"]
    stopped = page.split("Stopped: the run stopped (2)")[1]
    assert "after" in stopped
    assert "slow" in stopped
    events = [e for e in to_chrome_trace(graph)["traceEvents"] if e["ph"] == "X"]
    assert {e["name"]: e["args"]["outcome"] for e in events} == {
        "slow": "stopped",
        "bad": "failed",
    }


def cached_graph(directory: Path) -> taskmap.Graph:
    return taskmap.create_graph(
        {"fetch": partial(nap, 0.01), "parse": spin, "total": noop},
        {"fetch": [], "parse": ["fetch"], "total": ["parse"]},
        io_bound=["fetch"],
        cache=directory,
    )


def test_cached_tasks_are_marks_not_bars(tmp_path: Path) -> None:
    taskmap.run_parallel_async(cached_graph(tmp_path / "c"), ncores=2)
    graph = taskmap.run_parallel_async(cached_graph(tmp_path / "c"), ncores=2)
    assert graph.stats.count(TaskOutcome.CACHED) == 3
    page = to_html(graph)
    assert elements(page, "bar") == {}
    assert sorted(elements(page, "mark")) == ["fetch", "parse", "total"]
    summary = summarize(capture(graph))
    assert summary.critical_path == ()
    assert summary.lower_bound == summary.cpu_seconds == 0.0
    events = to_chrome_trace(graph)["traceEvents"]
    assert [e for e in events if e["ph"] == "X"] == []
    assert sorted(e["name"] for e in events if e["ph"] == "i") == ["fetch", "parse", "total"]

    taskmap.reset_tasks(graph, ["total"])  # drops its entry: a new graph runs only it
    graph = taskmap.run_parallel_async(cached_graph(tmp_path / "c"), ncores=2)
    page = to_html(graph)
    assert list(elements(page, "bar")) == ["total"]
    assert sorted(elements(page, "mark")) == ["fetch", "parse"]


def layered(n: int, width: int = 100) -> taskmap.Graph:
    """n no-op tasks in layers of ``width``, each depending on 3 of the layer above."""
    pick = random.Random(0).sample
    dependencies = {
        i: [] if i < width else pick(range(i - i % width - width, i - i % width), 3)
        for i in range(n)
    }
    return taskmap.create_graph(dict.fromkeys(dependencies, noop), dependencies)


@pytest.fixture(scope="module")
def big() -> taskmap.Graph:
    return taskmap.run(layered(10_000))


def test_report_of_10000_tasks_is_quick_and_small(big: taskmap.Graph) -> None:
    began = time.perf_counter()
    page = to_html(big)
    took = time.perf_counter() - began
    assert took < 5.0  # about 0.1 s on the CI machine
    assert len(page.encode()) < 3_000_000  # about 1.2 MB
    assert page.count('class="bar ') == 10_000
    trace = to_chrome_trace(big)
    assert sum(1 for e in trace["traceEvents"] if e["ph"] == "X") == 10_000


# -- write_report ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run.html", "run.htm", "RUN.HTML"])
def test_write_report_writes_html(real: taskmap.Graph, tmp_path: Path, name: str) -> None:
    written = write_report(real, tmp_path / name)
    assert written == tmp_path / name
    assert written.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_write_report_writes_a_chrome_trace(real: taskmap.Graph, tmp_path: Path) -> None:
    written = write_report(real, str(tmp_path / "run.json"))
    assert isinstance(written, Path)
    trace = json.loads(written.read_text(encoding="utf-8"))
    assert trace == to_chrome_trace(real)
    assert UNICODE in written.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["run.txt", "run", "run.html.bak"])
def test_write_report_refuses_other_suffixes(
    real: taskmap.Graph, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    with pytest.raises(
        ValueError,
        match=rf"report path must end in \.html or \.json \(got '{re.escape(str(path))}'\): "
        r"\.html writes a timeline page, \.json a Chrome trace for Perfetto",
    ):
        write_report(real, path)
    assert not path.exists()


def test_report_path_in_a_missing_directory_is_refused_before_a_run(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "run.html"
    with pytest.raises(ValueError, match=r"in a directory that does not exist \('"):
        check_report_path(path)


def test_report_path_must_be_a_path() -> None:
    with pytest.raises(
        TypeError,
        match=r"report must be a path ending in \.html or \.json"
        r" \(got 3, an int\)",
    ):
        check_report_path(3)
    assert check_report_path("x.JSON") == "json"


def test_capture_refuses_what_is_not_a_graph() -> None:
    with pytest.raises(TypeError, match=r"expected a Graph from create_graph \(got dict\)"):
        capture({})  # type: ignore[arg-type]


# -- in a real headless Chromium ---------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = chromium.unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests, but {reason}")
        pytest.skip(reason)
    with chromium.launch() as launched:
        yield launched


def test_report_page_loads_offline_without_errors(
    browser: Browser, real: taskmap.Graph, tmp_path: Path
) -> None:
    path = write_report(real, tmp_path / "run.html")
    with chromium.open_offline(browser, path) as (page, watch):
        assert page.locator(".bar").count() == len(ran(real))
        assert page.locator(".mark.cached").count() == 0
        assert page.locator("#timeline .lane").count() == 3
        assert page.locator("script").count() == 1  # no task name became a script
        assert page.locator("#failed").inner_text() == "1"
        assert page.title() == "taskmap run: taskmap"
    assert watch.problems == []


def test_hovering_a_bar_shows_its_name_and_duration(
    browser: Browser, real: taskmap.Graph, tmp_path: Path
) -> None:
    path = write_report(real, tmp_path / "run.html")
    with chromium.open_offline(browser, path) as (page, watch):
        tip = hover(page, "parse_a")
        shown = tip.inner_text()
        assert "parse_a" in shown
        assert "worker-" in shown
        bar = page.locator('.bar[data-task="parse_a"]')
        assert f"duration {bar.get_attribute('data-d')}" in shown
        duration = real.stats.tasks["parse_a"].duration
        assert duration is not None
        assert seconds(shown.split("duration ")[1]) == pytest.approx(duration, rel=0.01)
        page.mouse.move(1, 1)  # leaving the timeline hides it
        assert tip.is_hidden()
    assert watch.problems == []


def test_a_failed_bar_is_marked_and_its_tooltip_shows_the_error(
    browser: Browser, real: taskmap.Graph, tmp_path: Path
) -> None:
    path = write_report(real, tmp_path / "run.html")
    with chromium.open_offline(browser, path) as (page, watch):
        bar = page.locator(f".bar[data-task={json.dumps(XSS)}]")
        assert "failed" in (bar.get_attribute("class") or "").split()
        stroke = bar.evaluate("el => getComputedStyle(el).stroke")
        assert stroke == "rgb(214, 39, 40)"  # the failed mark: a red outline, hatched
        shown = hover(page, XSS).inner_text()
        assert XSS in shown  # as text, not as markup
        assert f"ValueError: {ERROR}" in shown
        assert "failed" in shown
    assert watch.problems == []  # nor did the name or error run as a script


def test_a_cached_mark_has_a_tooltip(browser: Browser, tmp_path: Path) -> None:
    # Playwright's sync API keeps an event loop running in this thread: the runner
    # says it blocks that loop (it does, between two page calls)
    def rerun() -> taskmap.Graph:
        taskmap.run_parallel_async(cached_graph(tmp_path / "c"), ncores=2)
        return taskmap.run_parallel_async(cached_graph(tmp_path / "c"), ncores=2)

    with pytest.warns(RuntimeWarning, match="called from a running event loop"):
        graph = rerun()
    path = write_report(graph, tmp_path / "cached.html")
    with chromium.open_offline(browser, path) as (page, watch):
        assert page.locator(".bar").count() == 0
        assert page.locator(".mark.cached").count() == 3
        assert "cached: loaded at" in hover(page, "parse", kind="mark").inner_text()
    assert watch.problems == []


def test_report_of_10000_tasks_opens(browser: Browser, big: taskmap.Graph, tmp_path: Path) -> None:
    path = write_report(big, tmp_path / "big.html")
    with chromium.open_offline(browser, path) as (page, watch):
        assert page.locator(".bar").count() == 10_000
    assert watch.problems == []


def test_screenshot_of_a_made_record_shows_its_colours(browser: Browser, tmp_path: Path) -> None:
    path = tmp_path / "made.html"
    path.write_text(format_html(made()), encoding="utf-8")
    with chromium.open_offline(browser, path, width=1280, height=720) as (page, watch):
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        boxes = {
            name: page.locator(f'[data-task="{name}"]').bounding_box()
            for name in ("fetch_b", "parse_b", "parse_c", "config")
        }
    assert watch.problems == []
    if os.environ.get("TASKMAP_REPORT_SCREENSHOT"):  # to look at it: a path to copy it to
        shutil.copyfile(shot, os.environ["TASKMAP_REPORT_SCREENSHOT"])
    png = chromium.read_png(shot.read_bytes())
    assert (png.width, png.height) == (1280, 720)
    assert len(png.colours()) > 40  # text, bands, bars: not a blank page

    def centre(name: str) -> tuple[int, int, int]:
        box = boxes[name]
        assert box is not None
        return png.pixel(int(box["x"] + box["width"] / 2), int(box["y"] + box["height"] / 2))

    assert near(centre("fetch_b"), (0x4E, 0x79, 0xA7))  # io-bound: blue
    assert near(centre("parse_b"), (0xF2, 0x8E, 0x2B))  # CPU: orange
    assert near(centre("config"), (0x59, 0xA1, 0x4F))  # cached: green
    box = boxes["parse_c"]  # failed: hatched with red
    assert box is not None
    row = int(box["y"] + box["height"] / 2)
    inside = {png.pixel(x, row) for x in range(int(box["x"]) + 2, int(box["x"] + box["width"]) - 2)}
    assert any(near(colour, (0xD6, 0x27, 0x28)) for colour in inside)
    assert any(near(colour, (0xF2, 0x8E, 0x2B)) for colour in inside)


# -- helpers -----------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {key: value or "" for key, value in attrs}))

    handle_startendtag = handle_starttag


def tags(page: str) -> list[tuple[str, dict[str, str]]]:
    """Every element of the page: its tag and its attributes (unescaped)."""
    parser = _Tags()
    parser.feed(page)
    return parser.found


def elements(page: str, kind: str) -> dict[str, dict[str, str]]:
    """Task -> attributes of the page's elements of class ``kind`` ('bar', 'mark')."""
    return {
        attrs["data-task"]: attrs
        for _, attrs in tags(page)
        if kind in attrs.get("class", "").split() and "data-task" in attrs
    }


def hover(page: Page, task: str, kind: str = "bar") -> Any:
    page.locator(f".{kind}[data-task={json.dumps(task)}]").hover(force=True)
    tip = page.locator("#tip")
    tip.wait_for(state="visible", timeout=5_000)
    return tip


def seconds(text: str) -> float:
    """'412 ms ...' -> 0.412."""
    match = re.match(r"([\d.]+) (s|ms|µs)", text)
    assert match is not None, text
    return float(match.group(1)) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[match.group(2)]


def near(colour: tuple[int, int, int], expected: tuple[int, int, int], slack: int = 8) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(colour, expected, strict=True))
