"""Policies, applied the same way by every runner: retries, timeouts, limits, priorities;
and the execution stats each run leaves on ``graph.stats``.

Tasks may run in worker processes, so they measure themselves through files: each
records its calls, its start times, and how many tasks of its channel were running
when it started (a file per running task in a shared directory).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest

import taskmap
from taskmap import Retry, TaskOutcome, TaskTimeoutError, UpstreamFailedError, create_graph
from tests.procs import workers_left

if TYPE_CHECKING:
    from tests.conftest import Calls

Runner = Callable[..., taskmap.Graph]
PARALLEL = [taskmap.run_parallel, taskmap.run_parallel_async]
CONCURRENT = [taskmap.run_async, *PARALLEL]


# -- tasks that measure themselves ----------------------------------------------------


def gauged(directory: Path, name: str, seconds: float, *, coroutine: bool) -> Callable[..., Any]:
    """A task that, while it runs, has a file in ``directory/running``, and appends the
    number of files it saw there on starting to ``directory/seen``."""
    running, seen = str(directory / "running"), str(directory / "seen")
    os.makedirs(running, exist_ok=True)

    def enter() -> str:
        mine = os.path.join(running, name)
        open(mine, "w").close()
        count = len(os.listdir(running))
        with open(seen, "a", encoding="utf-8") as file:
            file.write(f"{count}\n")
        return mine

    if coroutine:

        async def task_async(*args: object) -> str:
            mine = enter()
            try:
                await asyncio.sleep(seconds)
            finally:
                os.remove(mine)
            return name

        return task_async

    def task(*args: object) -> str:
        mine = enter()
        try:
            time.sleep(seconds)
        finally:
            os.remove(mine)
        return name

    return task


def most_at_once(directory: Path) -> int:
    return max(int(line) for line in (directory / "seen").read_text().split())


def flaky(path: str, failures: int, error: type[Exception] = ConnectionError) -> Callable[..., Any]:
    """Fails its first ``failures`` calls, then returns 'ok'; each call appends its time."""

    def task(*args: object) -> str:
        with open(path, "a", encoding="utf-8") as file:
            file.write(f"{time.time()}\n")
        with open(path, encoding="utf-8") as file:
            calls = len(file.read().split())
        if calls <= failures:
            raise error(f"call {calls} refused")
        return "ok"

    return task


def call_times(path: str) -> list[float]:
    return [float(t) for t in Path(path).read_text().split()]


def sleeper(seconds: float, *, coroutine: bool) -> Callable[..., Any]:
    if coroutine:

        async def nap_async(*args: object) -> int:
            await asyncio.sleep(seconds)
            return os.getpid()

        return nap_async

    def nap(*args: object) -> int:
        time.sleep(seconds)
        return os.getpid()

    return nap


def pid(*args: object) -> int:
    return os.getpid()


def parallel_options(runner: Runner, ncores: int = 1) -> dict[str, Any]:
    return {"ncores": ncores} if runner in PARALLEL else {}


# -- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("coroutine", [True, False], ids=["coroutines", "functions"])
def test_a_limit_of_two_is_never_exceeded_and_is_reached(
    runner: Runner, tmp_path: Path, coroutine: bool
) -> None:
    names = [f"load_{i}" for i in range(8)]
    funcs = {n: gauged(tmp_path, n, 0.15, coroutine=coroutine) for n in names}
    graph = create_graph(
        funcs,
        {key: [] for key in names},
        io_bound=names if coroutine else None,
        channels={key: ["db"] for key in names},
    )
    graph = runner(graph, limits={"db": 2}, **parallel_options(runner, ncores=4))
    assert graph.results == {n: n for n in names}
    # run calls one task at a time, and so does run_async with plain functions (inline)
    one_at_a_time = runner is taskmap.run or (runner is taskmap.run_async and not coroutine)
    assert most_at_once(tmp_path) == (1 if one_at_a_time else 2)


def test_without_the_limit_the_same_tasks_overlap_more(tmp_path: Path) -> None:
    """The control for the test above: the gauge does see more than two at once."""
    names = [f"load_{i}" for i in range(8)]
    funcs = {n: gauged(tmp_path, n, 0.15, coroutine=True) for n in names}
    graph = create_graph(
        funcs, {key: [] for key in names}, io_bound=names, channels={"load_0": "db"}
    )
    taskmap.run_async(graph)
    assert most_at_once(tmp_path) == 8


@pytest.mark.parametrize("runner", CONCURRENT, ids=lambda r: r.__name__)
def test_the_io_limit_caps_io_bound_tasks_only(runner: Runner, tmp_path: Path) -> None:
    io_names = [f"fetch_{i}" for i in range(9)]
    funcs: dict[str, Callable[..., Any]] = {
        n: gauged(tmp_path / "io", n, 0.1, coroutine=True) for n in io_names
    }
    funcs["parse"] = pid
    deps: dict[str, list[str]] = {**{key: [] for key in io_names}, "parse": []}
    graph = create_graph(funcs, deps, io_bound=io_names)
    graph = runner(graph, limits={"io": 3}, **parallel_options(runner, ncores=4))
    assert most_at_once(tmp_path / "io") == 3
    assert not graph.failed


@pytest.mark.parametrize("runner", CONCURRENT, ids=lambda r: r.__name__)
def test_a_task_in_two_channels_waits_for_a_slot_in_each(runner: Runner, tmp_path: Path) -> None:
    # 'both' needs a slot of 'a' and of 'b'; the others hold one each.
    names = ["a1", "a2", "b1", "b2", "both"]
    channels = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "both": ["a", "b"]}
    # one gauge per channel: a task records into the gauge of each of its channels
    funcs = {}
    for n in names:
        gauges = [gauged(tmp_path / c, n, 0.1, coroutine=False) for c in channels[n]]
        funcs[n] = _both(gauges)
    graph = create_graph(funcs, {key: [] for key in names}, io_bound=names, channels=channels)
    graph = runner(graph, limits={"a": 1, "b": 1}, **parallel_options(runner, ncores=4))
    assert not graph.failed
    assert most_at_once(tmp_path / "a") == 1
    assert most_at_once(tmp_path / "b") == 1


def _both(gauges: list[Callable[..., Any]]) -> Callable[..., Any]:
    async def task(*args: object) -> None:
        await asyncio.gather(*(asyncio.to_thread(g) for g in gauges))

    return task


def test_a_limit_of_a_channel_no_task_belongs_to_is_an_error() -> None:
    graph = create_graph({"a": pid}, {"a": []}, channels={"a": "db"})
    with pytest.raises(
        ValueError,
        match=r"^limits name channels no task belongs to: 'dbb' \(channels: 'db', 'io'; "
        r"give tasks channels with create_graph\(channels=\{task: \[channel, \.\.\.\]\}\)\)$",
    ):
        taskmap.run(graph, limits={"dbb": 2})
    with pytest.raises(
        ValueError, match=r"^limit of channel 'db' must be an integer >= 1 \(got 0\)$"
    ):
        taskmap.run(graph, limits={"db": 0})
    with pytest.raises(TypeError, match=r"^limits must be a mapping of channel name"):
        taskmap.run(graph, limits=["db"])  # type: ignore[arg-type]
    assert graph.done == []  # nothing ran


# -- retries ----------------------------------------------------------------------------


def test_a_retry_really_calls_the_task_again(runner: Runner, tmp_path: Path) -> None:
    path = str(tmp_path / "fetch.calls")
    graph = create_graph(
        {"fetch": flaky(path, failures=2), "use": lambda r: r + "!"},
        {"fetch": [], "use": ["fetch"]},
        retries={"fetch": Retry(3, delay=0.01)},
    )
    graph = runner(graph, **parallel_options(runner))
    assert graph.results == {"fetch": "ok", "use": "ok!"}
    assert len(call_times(path)) == 3
    stats = graph.stats.tasks
    assert (stats["fetch"].attempts, stats["fetch"].outcome) == (3, TaskOutcome.DONE)
    assert stats["use"].attempts == 1
    # its span covers every attempt: from the first call to the end of the last
    first, *_, last = (t - graph.stats.started for t in call_times(path))
    assert abs(stats["fetch"].start - first) < 0.1  # type: ignore[operator]
    assert stats["fetch"].end >= last - 0.1  # type: ignore[operator]


def test_a_task_out_of_retries_fails_with_its_own_error_and_its_history(
    runner: Runner, tmp_path: Path
) -> None:
    path = str(tmp_path / "fetch.calls")
    graph = create_graph(
        {"fetch": flaky(path, failures=99), "use": lambda r: r},
        {"fetch": [], "use": ["fetch"]},
        retries={"fetch": Retry(2, delay=0.01, jitter=0)},
    )
    graph = runner(graph, **parallel_options(runner))
    error = graph.results["fetch"]
    assert type(error) is ConnectionError
    assert str(error) == "call 3 refused"
    assert len(call_times(path)) == 3
    history = "\n".join(error.__notes__)
    assert "task 'fetch' failed 3 attempts; the earlier ones:" in history
    assert "  attempt 1: ConnectionError: call 1 refused (retried after 0.01 s)" in history
    assert "  attempt 2: ConnectionError: call 2 refused (retried after 0.02 s)" in history
    assert isinstance(graph.results["use"], UpstreamFailedError)
    assert graph.stats.tasks["fetch"].attempts == 3
    assert graph.stats.tasks["fetch"].outcome is TaskOutcome.FAILED
    assert graph.stats.tasks["use"].outcome is TaskOutcome.SKIPPED


def test_only_the_listed_exception_types_are_retried(runner: Runner, tmp_path: Path) -> None:
    path = str(tmp_path / "parse.calls")
    graph = create_graph(
        {"parse": flaky(path, failures=5, error=ValueError)},
        {"parse": []},
        retries={"parse": Retry(3, delay=0, on=(ConnectionError, TimeoutError))},
    )
    graph = runner(graph, **parallel_options(runner))
    assert isinstance(graph.results["parse"], ValueError)
    assert len(call_times(path)) == 1
    assert not hasattr(graph.results["parse"], "__notes__") or not any(
        "attempts" in note for note in graph.results["parse"].__notes__
    )


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_value_that_cannot_be_pickled_is_not_retried(runner: Runner) -> None:
    graph = create_graph(
        {"lock": threading.Lock, "use": pid},
        {"lock": [], "use": ["lock"]},
        io_bound=["lock"],
        retries={"lock": Retry(3, delay=0), "use": Retry(3, delay=0)},
    )
    graph = runner(graph, ncores=1)
    # run_parallel: the lock cannot come back from its worker; run_parallel_async
    # makes it in a driver thread, and it cannot be sent to 'use' in a worker
    failed = "lock" if runner is taskmap.run_parallel else "use"
    assert isinstance(graph.results[failed], taskmap.SerializationError)
    assert graph.stats.tasks[failed].attempts == 1


def test_retries_back_off_exponentially(runner: Runner, tmp_path: Path) -> None:
    path = str(tmp_path / "fetch.calls")
    retry = Retry(2, delay=0.2, backoff=3, jitter=0)
    graph = create_graph(
        {"fetch": flaky(path, failures=2)}, {"fetch": []}, retries={"fetch": retry}
    )
    runner(graph, **parallel_options(runner))
    first, second, third = call_times(path)
    assert 0.2 <= second - first < 0.2 + 1.0
    assert 0.6 <= third - second < 0.6 + 1.0


def test_every_attempt_is_logged(
    runner: Runner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "fetch.calls")
    graph = create_graph(
        {"fetch": flaky(path, failures=2)},
        {"fetch": []},
        retries={"fetch": Retry(2, delay=0.01, jitter=0)},
        name="etl",
    )
    with caplog.at_level(logging.WARNING, logger="etl-worker"):
        runner(graph, **parallel_options(runner))
    lines = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].endswith(
        "retrying task fetch in 0.01 s: attempt 1 of 3 failed: ConnectionError: call 1 refused"
    )
    assert lines[1].endswith(
        "retrying task fetch in 0.02 s: attempt 2 of 3 failed: ConnectionError: call 2 refused"
    )


@pytest.mark.parametrize("runner", CONCURRENT, ids=lambda r: r.__name__)
def test_fail_fast_cancels_a_task_waiting_to_be_retried(runner: Runner, tmp_path: Path) -> None:
    path = str(tmp_path / "fetch.calls")
    graph = create_graph(
        {"fetch": flaky(path, failures=99), "broken": sleeper_then_fail(0.3)},
        {"fetch": [], "broken": []},
        io_bound=["fetch", "broken"],
        retries={"fetch": Retry(3, delay=30)},
    )
    started = time.monotonic()
    graph = runner(graph, on_error="fail_fast", **parallel_options(runner, ncores=2))
    assert time.monotonic() - started < 10
    assert isinstance(graph.results["broken"], RuntimeError)
    stopped = graph.results["fetch"]
    assert isinstance(stopped, taskmap.RunStoppedError)
    assert stopped.cancelled
    assert graph.stats.tasks["fetch"].outcome is TaskOutcome.STOPPED


def sleeper_then_fail(seconds: float) -> Callable[..., Any]:
    async def broken(*args: object) -> None:
        await asyncio.sleep(seconds)
        raise RuntimeError("broken")

    return broken


def test_retry_waits_grow_and_are_jittered_down_to_the_jitter_fraction() -> None:
    retry = Retry(5, delay=1, backoff=2, max_delay=5, jitter=0.5)
    assert [retry.wait(n, 0.0) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert [retry.wait(n, 0.999999) for n in (1, 2)] == pytest.approx([0.5, 1.0], abs=1e-5)
    assert Retry(1, on=KeyError).on == (KeyError,)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"times": -1}, ValueError, r"Retry times must be an integer >= 0 \(got -1\)"),
        ({"delay": -1}, ValueError, r"Retry delay must be a number of seconds >= 0 \(got -1\)"),
        ({"backoff": 0.5}, ValueError, r"Retry backoff must be a number >= 1 \(got 0.5\)"),
        ({"jitter": 2}, ValueError, r"Retry jitter must be a number from 0 to 1 \(got 2\)"),
        ({"on": int}, TypeError, r"Retry on must be an exception type or a tuple of them"),
    ],
)
def test_a_bad_retry_policy_is_an_error(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=f"^{message}"):
        Retry(**kwargs)


# -- timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("coroutine", [True, False], ids=["coroutine", "function"])
def test_a_task_over_its_timeout_fails_and_the_run_goes_on(
    runner: Runner, coroutine: bool, tmp_path: Path
) -> None:
    funcs = {
        # an abandoned thread sleeps on: keep it short
        "slow": sleeper(30 if coroutine or runner in PARALLEL else 3, coroutine=coroutine),
        "after": pid,
        "child": pid,
    }
    graph = create_graph(
        funcs,
        {"slow": [], "after": [], "child": ["slow"]},
        io_bound=["slow"] if coroutine else None,
        timeouts={"slow": 0.3},
    )
    started = time.monotonic()
    graph = runner(graph, **parallel_options(runner))
    assert time.monotonic() - started < 2.5
    error = graph.results["slow"]
    assert isinstance(error, TaskTimeoutError)
    assert isinstance(error, TimeoutError)
    in_worker = runner is taskmap.run_parallel or (
        runner is taskmap.run_parallel_async and not coroutine
    )
    how = "worker replaced" if in_worker else "cancelled" if coroutine else "abandoned"
    assert (error.task, error.seconds, error.how) == ("slow", 0.3, how)
    assert str(error).startswith("task 'slow' timed out after 0.3 s: ")
    assert isinstance(graph.results["child"], UpstreamFailedError)
    assert isinstance(graph.results["after"], int)
    assert graph.stats.tasks["slow"].outcome is TaskOutcome.FAILED
    assert workers_left() == set()


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_timeout_frees_the_only_worker_for_the_next_task(runner: Runner) -> None:
    graph = create_graph(
        {"stuck": sleeper(60, coroutine=False), "next": pid},
        {"stuck": [], "next": []},
        timeouts={"stuck": 0.5},
        priorities={"stuck": 1},  # the only worker takes 'stuck' first
    )
    started = time.monotonic()
    graph = runner(graph, ncores=1)
    assert time.monotonic() - started < 5
    assert isinstance(graph.results["stuck"], TaskTimeoutError)
    # 'next' ran after 'stuck' on a replacement worker, in the same lane
    assert isinstance(graph.results["next"], int)
    tasks = graph.stats.tasks
    assert tasks["stuck"].lane == tasks["next"].lane == "worker-1"
    assert tasks["next"].start >= tasks["stuck"].end - 0.05  # type: ignore[operator]
    assert workers_left() == set()


def test_a_timed_out_attempt_is_retried(runner: Runner, tmp_path: Path) -> None:
    path = str(tmp_path / "calls")

    def slow_once(*args: object) -> str:
        with open(path, "a", encoding="utf-8") as file:
            file.write("x")
        if len(Path(path).read_text()) == 1:
            time.sleep(2)
        return "ok"

    graph = create_graph(
        {"fetch": slow_once},
        {"fetch": []},
        timeouts={"fetch": 0.3},
        retries={"fetch": Retry(1, delay=0, on=TimeoutError)},
    )
    graph = runner(graph, **parallel_options(runner))
    assert graph.results["fetch"] == "ok"
    assert graph.stats.tasks["fetch"].attempts == 2
    assert len(Path(path).read_text()) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"timeouts": {"a": 0}},
            ValueError,
            r"timeout of task 'a' must be a number of seconds > 0 \(got 0\)",
        ),
        (
            {"timeouts": {"zz": 1}},
            taskmap.UnknownTaskError,
            r"^timeouts holds a name that is not a task: 'zz'$",
        ),
        ({"timeouts": [1]}, TypeError, r"timeouts must be a mapping of task names \(got a list\)"),
        (
            {"retries": {"a": -1}},
            TypeError,
            r"retries of task 'a' must be a number of retries or a taskmap.Retry \(got -1\)",
        ),
        (
            {"retries": 3},
            TypeError,
            r"retries must be a mapping of task names to a number of retries or a Retry, "
            r"or a list of task names \(got an int\)",
        ),
        (
            {"retries": ["zz"]},
            taskmap.UnknownTaskError,
            r"^retries holds a name that is not a task: 'zz'$",
        ),
        (
            {"channels": {"a": 3}},
            TypeError,
            r"channels of task 'a' must be a channel name or a list of them \(got 3\)",
        ),
        (
            {"priorities": {"a": "high"}},
            ValueError,
            r"priority of task 'a' must be a finite number \(got 'high'\)",
        ),
    ],
)
def test_a_bad_policy_is_an_error_naming_the_task(
    kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        create_graph({"a": pid}, {"a": []}, **kwargs)


def test_a_list_of_names_gets_the_default_retry() -> None:
    graph = create_graph({"a": pid, "b": pid}, {"a": [], "b": []}, retries=["a"])
    assert graph.policies.retries == {"a": Retry()}


# -- priorities -------------------------------------------------------------------------


def test_the_highest_priority_ready_task_starts_first(runner: Runner, calls: Calls) -> None:
    log = str(calls.directory / "order")

    def record(name: str) -> Callable[..., Any]:
        def task(*args: object) -> None:
            with open(log, "a", encoding="utf-8") as file:
                file.write(name + " ")

        return task

    names = ["low", "mid", "high", "none", "top"]
    graph = create_graph(
        {n: record(n) for n in names},
        {key: [] for key in names},
        priorities={"low": -1, "mid": 5, "high": 10, "top": 10.5},
    )
    runner(graph, **parallel_options(runner))
    assert Path(log).read_text().split() == ["top", "high", "mid", "none", "low"]


# -- execution stats --------------------------------------------------------------------


def test_stats_say_what_each_task_did_where_and_when(runner: Runner, tmp_path: Path) -> None:
    funcs: dict[str, Callable[..., Any]] = {
        "fetch": sleeper(0.05, coroutine=True),
        "parse": sleeper(0.1, coroutine=False),
        "bad": lambda pid: 1 / 0,
        "skipped": pid,
    }
    deps = {"fetch": [], "parse": ["fetch"], "bad": ["fetch"], "skipped": ["bad"]}
    graph = create_graph(funcs, deps, io_bound=["fetch"], cache=tmp_path / "cache")
    graph = runner(graph, **parallel_options(runner))
    stats = graph.stats
    tasks = stats.tasks
    assert {t: row.outcome for t, row in tasks.items()} == {
        "fetch": TaskOutcome.DONE,
        "parse": TaskOutcome.DONE,
        "bad": TaskOutcome.FAILED,
        "skipped": TaskOutcome.SKIPPED,
    }
    lanes = {
        taskmap.run: ("main", "main"),
        taskmap.run_async: ("loop", "loop"),
        taskmap.run_parallel: ("worker-1", "worker-1"),
        taskmap.run_parallel_async: ("loop", "worker-1"),
    }[runner]
    assert (tasks["fetch"].lane, tasks["parse"].lane) == lanes
    assert tasks["skipped"].lane is tasks["skipped"].start is None
    assert tasks["skipped"].attempts == 0
    for name in ("fetch", "parse", "bad"):
        row = tasks[name]
        assert row.attempts == 1
        assert 0 <= row.start <= row.end <= stats.makespan  # type: ignore[operator]
    assert tasks["parse"].start >= tasks["fetch"].end - 0.01  # type: ignore[operator]
    assert 0.1 <= tasks["parse"].duration < 0.5  # type: ignore[operator]
    assert stats.busy[lanes[1]] >= 0.1
    assert time.time() - 60 < stats.started <= time.time()
    assert stats.count(TaskOutcome.DONE) == 2

    # a rerun loads what succeeded from the cache; those tasks did not run
    graph = runner(
        create_graph(funcs, deps, io_bound=["fetch"], cache=tmp_path / "cache"),
        **parallel_options(runner),
    )
    tasks = graph.stats.tasks
    assert tasks["fetch"].cached
    assert tasks["fetch"].attempts == 0
    assert tasks["bad"].outcome is TaskOutcome.FAILED


def test_stats_of_a_graph_never_run_are_empty() -> None:
    graph = create_graph({"a": pid}, {"a": []})
    assert graph.stats.tasks == {}
    assert graph.stats.busy == {}
    assert graph.stats.makespan == 0.0


def test_policies_survive_pickling() -> None:
    graph = create_graph(
        {"a": pid, "b": pid},
        {"a": [], "b": ["a"]},
        retries={"a": Retry(2, on=KeyError)},
        timeouts={"b": 1.5},
        channels={"a": ["db", "api"]},
        priorities={"b": 3},
    )
    for dumps in (pickle.dumps, cloudpickle.dumps):
        restored = pickle.loads(dumps(graph))
        assert restored.policies == graph.policies
