"""Compatibility logging (``<name>-manager`` / ``<name>-worker``) and `in_progress`."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import taskmap
from taskmap import create_graph, in_progress
from taskmap.logs import loggers

if TYPE_CHECKING:
    from tests.conftest import Calls

Runner = Callable[..., taskmap.Graph]


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A graph name of this test's own; its loggers' handlers are closed afterwards."""
    graph_name = "logs-" + re.sub(r"\W", "-", request.node.name)
    yield graph_name
    for logger in loggers(graph_name):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)


def write_to(path: Path) -> dict[str, Any]:
    return {"write": True, "path": str(path)}


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def has_line(path: Path, text: str) -> bool:
    pattern = re.compile(rf"pid \d+: {re.escape(text)}$")
    return any(pattern.search(line) for line in lines(path))


def test_the_log_records_each_task_s_progress(
    runner: Runner, calls: Calls, name: str, tmp_path: Path
) -> None:
    log = tmp_path / "x.log"
    funcs = {
        "load data": calls.task("load data"),
        "bad": calls.task("bad", fail=True),
        "below": calls.task("below"),
    }
    graph = create_graph(
        funcs,
        {"load data": [], "bad": ["load data"], "below": ["bad"]},
        name=name,
        logging_config=write_to(log),
    )
    runner(graph)
    for text in [
        "queueing task load data",
        "starting task load data",
        "finished task load data",
        "queueing task bad",
        "starting task bad",
        "failed task bad",
    ]:
        assert has_line(log, text), (text, lines(log))
    assert any(re.search(r"pid \d+: skipped task below$", line) for line in lines(log))
    assert "ValueError: task bad exploded" in log.read_text(encoding="utf-8")
    assert in_progress(log) == {"in_progress": set(), "queued": set()}


def peek_at(log: Path) -> Callable[[], Any]:
    """A task that reads the log while it runs and returns `in_progress` of it."""
    path = str(log)

    def peek() -> dict[str, set[str]]:
        from taskmap import in_progress

        return in_progress(path)

    return peek


def peek_at_async(log: Path) -> Callable[[], Any]:
    path = str(log)

    async def peek() -> dict[str, set[str]]:
        from taskmap import in_progress

        return in_progress(path)

    return peek


@pytest.mark.parametrize("make", [peek_at, peek_at_async], ids=["function", "coroutine"])
def test_in_progress_shows_a_running_task_in_its_own_log(
    runner: Runner, make: Callable[[Path], Any], name: str, tmp_path: Path
) -> None:
    log = tmp_path / "x.log"
    graph = create_graph(
        {"peek at the log": make(log), "after": peek_at(log)},
        {"peek at the log": [], "after": ["peek at the log"]},
        name=name,
        logging_config=write_to(log),
    )
    runner(graph)
    seen = graph.results["peek at the log"]
    assert isinstance(seen, dict), seen
    assert seen["in_progress"] == {"peek at the log"}
    assert seen["queued"] == set()
    assert in_progress(log) == {"in_progress": set(), "queued": set()}


def test_in_progress_shows_queued_tasks_while_run_runs_one(name: str, tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    graph = create_graph(
        {"first": peek_at(log), "second task": peek_at(log), "third": peek_at(log)},
        {"first": [], "second task": [], "third": ["first"]},
        name=name,
        logging_config=write_to(log),
    )
    taskmap.run(graph)
    assert graph.results["first"] == {"in_progress": {"first"}, "queued": {"second task"}}


def test_in_progress_reads_queued_started_finished_and_failed_lines(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    log.write_text(
        textwrap.dedent(
            """\
            2024-01-01 10:00:00,000 g-manager INFO pid 7: queueing task fetch a
            2024-01-01 10:00:00,000 g-manager INFO pid 7: queueing task fetch b
            2024-01-01 10:00:00,000 g-manager INFO pid 7: queueing task parse
            2024-01-01 10:00:00,000 g-manager INFO pid 7: queueing task done one
            2024-01-01 10:00:00,001 g-worker INFO pid 8: starting task fetch a
            2024-01-01 10:00:00,001 g-worker INFO pid 8: starting task fetch b
            2024-01-01 10:00:00,001 g-worker INFO pid 8: starting task done one
            2024-01-01 10:00:00,002 g-worker INFO pid 8: finished task done one
            2024-01-01 10:00:00,003 g-worker ERROR pid 8: failed task fetch b
            Traceback (most recent call last):
              File "x.py", line 1, in fetch
            ValueError: starting task nothing
            a line that is not a log line
            """
        ),
        encoding="utf-8",
    )
    assert in_progress(log) == {"in_progress": {"fetch a"}, "queued": {"parse"}}
    assert in_progress(str(log)) == in_progress(log)


def test_by_default_a_failing_run_prints_nothing_and_writes_no_file(
    runner: Runner, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import taskmap

            def bad():
                raise ValueError("boom")

            def ok(*args):
                return 1

            if __name__ == "__main__":
                graph = taskmap.create_graph(
                    {{"bad": bad, "ok": ok, "below": ok}},
                    {{"bad": [], "ok": [], "below": ["bad"]}},
                )
                taskmap.{runner.__name__}(graph)
                assert isinstance(graph.results["bad"], ValueError)
                assert isinstance(graph.results["below"], taskmap.UpstreamFailedError)
            """
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["script.py"]


def test_an_unknown_logging_config_key_is_a_value_error(name: str) -> None:
    message = "logging_config has unknown keys: ['wirte'] (known: 'level', 'path', 'write')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        create_graph({"a": print}, {"a": []}, name=name, logging_config={"wirte": True})


def test_configuring_the_same_log_twice_writes_each_line_once(name: str, tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    for _ in range(2):
        graph = create_graph(
            {"a": peek_at(log)}, {"a": []}, name=name, logging_config=write_to(log)
        )
    taskmap.run(graph)
    assert sum("starting task a" in line for line in lines(log)) == 1


@pytest.mark.parametrize("level", [logging.ERROR, "WARNING"])
def test_logging_config_level_takes_effect_in_create_graph(name: str, level: int | str) -> None:
    # taskmap 0.0.6's test_explicit_logging_severity_level: set before any run
    create_graph({"a": print}, {"a": []}, name=name, logging_config={"level": level})
    expected = logging.getLevelName(level) if isinstance(level, str) else level
    assert [logger.level for logger in loggers(name)] == [expected, expected]


def test_a_bad_logging_level_is_a_value_error_naming_it(name: str) -> None:
    message = (
        "logging_config['level'] must be a logging level such as 'INFO' or logging.ERROR "
        "(got 'LOUD')"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        create_graph({"a": print}, {"a": []}, name=name, logging_config={"level": "LOUD"})
