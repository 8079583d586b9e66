"""The progress bar, and the warning for io-bound coroutines that block the loop."""

from __future__ import annotations

import asyncio
import functools
import io
import os
import pty
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import taskmap
from taskmap import StallWarning, create_graph
from taskmap.progress import wants_progress

Runner = Callable[..., taskmap.Graph]
ROOT = Path(__file__).resolve().parent.parent


def ok(*args: object) -> int:
    return 1


def boom(*args: object) -> None:
    raise ValueError("boom")


def options(runner: Runner) -> dict[str, Any]:
    return {"ncores": 1} if runner in (taskmap.run_parallel, taskmap.run_parallel_async) else {}


# -- the progress bar -------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_on_by_default_only_on_a_terminal() -> None:
    assert wants_progress(None, Terminal()) is True
    assert wants_progress(None, io.StringIO()) is False
    assert wants_progress(True, io.StringIO()) is True
    assert wants_progress(False, Terminal()) is False
    with pytest.raises(TypeError, match=r"^progress must be True, False or None \(got 'yes'\)$"):
        wants_progress("yes")  # type: ignore[arg-type]


def test_the_bar_counts_done_failed_skipped_and_cached(
    runner: Runner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def build() -> taskmap.Graph:
        return create_graph(
            {"a": ok, "b": ok, "bad": boom, "below": ok},
            {"a": [], "b": ["a"], "bad": [], "below": ["bad"]},
            cache=tmp_path / "cache",
        )

    runner(build(), progress=True, **options(runner))
    first = capsys.readouterr().err.splitlines()[-1]
    assert "4/4" in first
    assert "2 done, 1 failed, 1 skipped, 0 running" in first
    runner(build(), progress=True, **options(runner))
    second = capsys.readouterr().err.splitlines()[-1]
    assert "0 done, 2 cached, 1 failed, 1 skipped, 0 running" in second


def test_no_bar_when_stderr_is_not_a_terminal(
    runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    runner(create_graph({"a": ok}, {"a": []}), **options(runner))
    assert capsys.readouterr().err == ""


@pytest.mark.timeout(60)
def test_a_terminal_gets_a_live_bar_by_default(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        "import asyncio, taskmap\n"
        "async def nap():\n    await asyncio.sleep(0.05)\n"
        "names = [f't{i}' for i in range(20)]\n"
        "g = taskmap.create_graph(dict.fromkeys(names, nap), {n: [] for n in names},"
        " io_bound=names)\n"
        "taskmap.run_async(g, limits={'io': 2})\n"
    )
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, str(script)], stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(30) == 0
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert "20/20" in screen
    assert "20 done, 0 running" in screen
    assert "\r" in screen  # redrawn in place
    assert screen.count("task/s") >= 3  # drawn while running, not only at the end


# -- stalls -----------------------------------------------------------------------------


async def blocks_twice() -> str:
    time.sleep(0.25)  # noqa: ASYNC251 - the mistake being warned about
    await asyncio.sleep(0)
    time.sleep(0.25)  # noqa: ASYNC251
    return "done"


async def polite() -> str:
    await asyncio.sleep(0.3)
    return "done"


@pytest.mark.parametrize("runner", [taskmap.run_async, taskmap.run_parallel_async])
def test_a_blocking_io_coroutine_is_warned_about_once_by_name(runner: Runner) -> None:
    graph = create_graph(
        {"fetch": blocks_twice, "other": polite},
        {"fetch": [], "other": []},
        io_bound=["fetch", "other"],
    )
    with pytest.warns(StallWarning) as caught:
        graph = runner(graph, **options(runner))
    assert graph.results == {"fetch": "done", "other": "done"}
    assert len(caught) == 1
    warning = caught[0]
    assert str(warning.message).startswith("io-bound task 'fetch' blocked the event loop for 0.2")
    assert "(more than 0.1 s)" in str(warning.message)
    assert "await asyncio.to_thread(func, ...)" in str(warning.message)
    assert (warning.filename, warning.lineno) == (__file__, blocks_twice.__code__.co_firstlineno)


def test_no_warning_for_cpu_coroutines_polite_ones_or_when_turned_off() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = create_graph(
            {"cpu": blocks_twice, "io": polite}, {"cpu": [], "io": []}, io_bound=["io"]
        )
        taskmap.run_async(graph)
        graph = create_graph({"io": blocks_twice}, {"io": []}, io_bound=["io"])
        taskmap.run_async(graph, stall_warning=None)
        taskmap.run_async(
            create_graph({"io": blocks_twice}, {"io": []}, io_bound=["io"]), stall_warning=5
        )


def test_a_stall_warning_made_an_error_ends_the_run_with_it() -> None:
    graph = create_graph({"io": blocks_twice}, {"io": []}, io_bound=["io"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(StallWarning, match=r"^io-bound task 'io' blocked the event loop"):
            taskmap.run_async(graph)


async def blocks_then_fails() -> None:
    time.sleep(0.2)  # noqa: ASYNC251
    await asyncio.sleep(0)
    raise KeyError("missing")


async def blocks_then_hangs() -> None:
    time.sleep(0.2)  # noqa: ASYNC251
    await asyncio.sleep(3600)


def test_a_watched_coroutine_keeps_its_errors_timeouts_and_cancellation() -> None:
    graph = create_graph(
        {"fails": blocks_then_fails, "hangs": blocks_then_hangs},
        {"fails": [], "hangs": []},
        io_bound=["fails", "hangs"],
        timeouts={"hangs": 0.5},
    )
    with pytest.warns(StallWarning):
        graph = taskmap.run_async(graph)
    assert isinstance(graph.results["fails"], KeyError)
    assert isinstance(graph.results["hangs"], taskmap.TaskTimeoutError)


async def fetch(i: int) -> int:
    await asyncio.sleep(0.01)
    if i == 7:
        time.sleep(0.3)  # noqa: ASYNC251 - the one that blocks
    await asyncio.sleep(0.01)
    return i


def test_the_watch_names_the_blocking_task_among_many_sharing_its_code() -> None:
    funcs = {f"fetch{i}": functools.partial(fetch, i) for i in range(20)}
    graph = create_graph(funcs, dict.fromkeys(funcs, ()), io_bound=funcs)
    with pytest.warns(StallWarning) as caught:
        graph = taskmap.run_async(graph)
    assert graph.results == {f"fetch{i}": i for i in range(20)}
    assert [str(w.message).split(" blocked")[0] for w in caught] == ["io-bound task 'fetch7'"]


async def own_coroutine() -> bool:
    task = asyncio.current_task()
    assert task is not None
    return task.get_coro().cr_code is own_coroutine.__code__  # type: ignore[union-attr]


def test_watched_coroutines_run_as_bare_tasks_and_the_watch_ends_with_the_run() -> None:
    # no wrapper stepping each coroutine (what cost the watch 1.2-1.5x a bare loop)
    graph = taskmap.run_async(create_graph({"a": own_coroutine}, {"a": []}, io_bound=["a"]))
    assert graph.results == {"a": True}
    assert not [t for t in threading.enumerate() if t.name == "taskmap-stall-watch"]


def test_a_bad_stall_threshold_is_an_error() -> None:
    with pytest.raises(
        TypeError, match=r"^stall_warning must be a number of seconds or None \(got 'x'\)$"
    ):
        taskmap.run_async(create_graph({"a": ok}, {"a": []}), stall_warning="x")  # type: ignore[arg-type]


def interrupt(*args: object) -> None:
    raise KeyboardInterrupt


def test_an_interrupted_run_still_writes_its_report(tmp_path: Path) -> None:
    report = tmp_path / "run.html"
    graph = create_graph({"a": ok, "stop": interrupt}, {"a": [], "stop": ["a"]})
    with pytest.raises(KeyboardInterrupt):
        taskmap.run(graph, report=report)
    page = report.read_text()
    assert 'data-task="a"' in page
    assert graph.results["a"] == 1


def test_in_a_jupyter_kernel_with_widgets_the_bar_is_tqdm_s_notebook_form(monkeypatch) -> None:
    import importlib.util
    import sys
    import types

    from taskmap import progress

    assert not progress.in_notebook()
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "ipywidgets" else real_find_spec(name, *a),
    )
    assert progress.in_notebook()
    assert progress.wants_progress(None)  # on by default there, though stderr is no tty
    made = []
    fake_notebook = types.ModuleType("tqdm.notebook")
    fake_notebook.tqdm = lambda **kwargs: made.append(kwargs) or types.SimpleNamespace()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm.notebook", fake_notebook)
    bar = progress.ProgressBar("etl")
    bar(taskmap.RunStarted("etl", 3))
    assert made == [{"total": 3, "desc": "etl", "unit": "task"}]
