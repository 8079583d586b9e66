"""executor= with a real Dask cluster: results, where tasks run, task errors, workers
killed by their task and from outside, and no taskmap worker process on the side.

One `distributed.LocalCluster` (2 worker processes of 1 thread, as many as CI has cores)
serves the whole module: starting one takes most of a second.  Its scheduler allows no
retry of a task whose worker died (``allowed-failures: 0``), so a task that kills its
worker fails at once instead of killing a worker up to four times.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402  (after the skip: dask comes with distributed)

import taskmap  # noqa: E402
from tests.procs import live_descendants, still_alive, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(60)

PARALLEL = [taskmap.run_parallel, taskmap.run_parallel_async]


# -- the cluster ---------------------------------------------------------------


def _allowed_failures(dask_scheduler: distributed.Scheduler) -> int:
    return dask_scheduler.allowed_failures


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """A client of a 2-worker LocalCluster whose scheduler retries no killed task."""
    # The scheduler reads allowed-failures when it is created: set it around the cluster.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # without a dashboard the scheduler still serves HTTP, on port 8787 unless
            # told: a free port keeps a second cluster on the machine from a warning
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
    with cluster, distributed.Client(cluster) as client:
        assert client.run_on_scheduler(_allowed_failures) == 0
        yield client


@pytest.fixture
def executor(client: distributed.Client) -> Executor:
    """The client's executor, once both workers run (a kill test's worker may be
    restarting)."""
    client.wait_for_workers(2, timeout=20)
    return client.get_executor()


def worker_pids(client: distributed.Client) -> set[int]:
    return set(client.run(os.getpid).values())


# -- tasks (module-level ones are shipped by reference, the rest by value) -------


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int) -> int:
    return a + b


async def scaled(factor: int, x: int) -> int:
    await asyncio.sleep(0.01)
    return factor * x


def where() -> int:
    return os.getpid()


def make_where(tag: int) -> Callable[[], tuple[int, int]]:
    """A distinct task per tag (equal function and inputs would share one Dask key)."""

    def where_tagged() -> tuple[int, int]:
        time.sleep(0.05)
        return tag, os.getpid()

    return where_tagged


async def where_on_a_loop() -> tuple[int, bool]:
    await asyncio.sleep(0.01)
    return os.getpid(), asyncio.get_running_loop().is_running()


def boom(_: object) -> None:
    raise ValueError("boom")


def kill_own_worker(pid_path: str, *_: object) -> None:
    with open(pid_path, "w") as file:
        file.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_long(pid_path: str, *_: object) -> str:
    with open(pid_path, "w") as file:
        file.write(str(os.getpid()))
    time.sleep(30)
    return "not killed"


def _names_task(error: BaseException, task: str) -> bool:
    """The task's name, quoted, is in the error's message or one of its notes."""
    return any(repr(task) in text for text in [str(error), *getattr(error, "__notes__", [])])


# -- results -----------------------------------------------------------------


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_diamond_graph_results_are_right_with_lambdas_closures_and_partials(runner, executor):
    offset = 5
    graph = taskmap.create_graph(
        {
            "top": lambda: 3,
            "left": lambda top: top + offset,  # a closure
            "right": functools.partial(scaled, 10),  # a partial of a coroutine function
            "bottom": add,
            "twice": double,
        },
        {
            "top": [],
            "left": ["top"],
            "right": ["top"],
            "bottom": ["left", "right"],
            "twice": ["bottom"],
        },
    )
    returned = runner(graph, executor=executor)
    assert returned is graph
    assert graph.results == {"top": 3, "left": 8, "right": 30, "bottom": 38, "twice": 76}
    assert sorted(graph.done) == sorted(graph.funcs)
    assert graph.failed == []


# -- placement ---------------------------------------------------------------


def test_cpu_tasks_run_on_dask_workers_and_io_on_the_driver(client, executor):
    io_plain_thread: list[int] = []

    def io_plain() -> int:
        io_plain_thread.append(threading.get_ident())
        return os.getpid()

    funcs = {f"cpu {i}": make_where(i) for i in range(4)}
    funcs.update({"io coroutine": where_on_a_loop, "io plain": io_plain})
    graph = taskmap.create_graph(
        funcs, {name: [] for name in funcs}, io_bound=["io coroutine", "io plain"]
    )
    taskmap.run_parallel_async(graph, executor=executor)
    workers = worker_pids(client)
    cpu_pids = {graph.results[f"cpu {i}"][1] for i in range(4)}
    assert cpu_pids <= workers
    assert os.getpid() not in cpu_pids
    assert graph.results["io coroutine"] == (os.getpid(), True)
    assert graph.results["io plain"] == os.getpid()
    [thread] = io_plain_thread
    assert thread != threading.get_ident()  # a thread of the driver's pool


def test_run_parallel_sends_io_bound_tasks_to_dask_workers_too(client, executor):
    graph = taskmap.create_graph(
        {"io coroutine": where_on_a_loop, "cpu": where},
        {"io coroutine": [], "cpu": []},
        io_bound=["io coroutine"],
    )
    taskmap.run_parallel(graph, executor=executor)
    pid, on_a_loop = graph.results["io coroutine"]
    assert on_a_loop  # a worker runs a coroutine on its own event loop
    assert {pid, graph.results["cpu"]} <= worker_pids(client)
    assert os.getpid() not in {pid, graph.results["cpu"]}


# -- a task's exception ---------------------------------------------------------


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_failing_task_fails_only_itself_and_its_descendants(runner, executor):
    graph = taskmap.create_graph(
        {"a": lambda: 1, "bad": boom, "below": double, "further": double, "other": double},
        {"a": [], "bad": ["a"], "below": ["bad"], "further": ["below"], "other": ["a"]},
    )
    runner(graph, executor=executor)
    error = graph.results["bad"]
    assert type(error) is ValueError
    assert str(error) == "boom"
    assert 'raise ValueError("boom")' in str(error.__cause__)  # the worker's traceback
    assert _names_task(error, "bad"), getattr(error, "__notes__", [])
    for name in ("below", "further"):
        assert isinstance(graph.results[name], taskmap.UpstreamFailedError)
        assert "its ancestor 'bad' failed" in str(graph.results[name])
    assert graph.results["a"] == 1
    assert graph.results["other"] == 2
    assert sorted(graph.failed) == ["bad", "below", "further"]


# -- killed workers ------------------------------------------------------------


def test_worker_killed_by_its_task_fails_only_that_task_and_the_cluster_recovers(
    client, executor, tmp_path
):
    before = worker_pids(client)
    pid_path = str(tmp_path / "crash.pid")
    graph = taskmap.create_graph(
        {
            "base": lambda: 7,
            "crash": functools.partial(kill_own_worker, pid_path),
            "below": double,
            "io": functools.partial(scaled, 3),  # on the driver, across the crash
        },
        {"base": [], "crash": ["base"], "below": ["crash"], "io": ["base"]},
        io_bound=["io"],
    )
    started = time.monotonic()
    taskmap.run_parallel_async(graph, executor=executor)
    assert time.monotonic() - started < 15  # finished, did not wait for a retry
    error = graph.results["crash"]
    assert isinstance(error, taskmap.WorkerCrashedError)
    assert isinstance(error.__cause__, distributed.KilledWorker)
    assert str(error).startswith("task 'crash' failed: its Dask worker died while running it")
    assert isinstance(graph.results["below"], taskmap.UpstreamFailedError)
    assert graph.results["base"] == 7
    assert graph.results["io"] == 21
    assert sorted(graph.failed) == ["below", "crash"]
    killed = int(Path(pid_path).read_text())
    assert killed in before
    assert not still_alive({killed})

    # the nanny restarts the worker: the next run on the same client uses both workers
    client.wait_for_workers(2, timeout=20)
    after = worker_pids(client)
    assert killed not in after
    again = taskmap.create_graph({"x": make_where(10), "y": make_where(11)}, {"x": [], "y": []})
    taskmap.run_parallel_async(again, executor=client.get_executor())
    assert {again.results["x"][1], again.results["y"][1]} <= after


def _kill_when_started(
    client: distributed.Client, pid_path: Path, killed: list[int], gone: threading.Event
) -> None:
    """The test's hand: SIGKILL the worker once its task has started; set ``gone`` once
    the scheduler has dropped that worker."""
    if not wait_until(pid_path.exists, 20):
        return
    pid = int(pid_path.read_text())
    address = next(a for a, p in client.run(os.getpid).items() if p == pid)
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)
    if wait_until(lambda: address not in client.scheduler_info()["workers"], 20):
        gone.set()


def test_worker_killed_from_outside_fails_its_running_task_and_the_run_goes_on(
    client, executor, tmp_path
):
    pid_path = tmp_path / "long.pid"
    killed: list[int] = []
    gone = threading.Event()

    async def seen_the_kill() -> int:  # io-bound, on the driver, across the kill
        if not await asyncio.to_thread(gone.wait, 20):
            raise TimeoutError("the worker was not killed")
        return killed[0]

    graph = taskmap.create_graph(
        {
            "base": lambda: 4,
            "long": functools.partial(sleep_long, str(pid_path)),
            "below": double,
            "seen": seen_the_kill,
            "after": lambda seen: (seen, os.getpid()),  # CPU, sent after the kill
        },
        {"base": [], "long": ["base"], "below": ["long"], "seen": [], "after": ["seen"]},
        io_bound=["seen"],
    )
    hand = threading.Thread(target=_kill_when_started, args=(client, pid_path, killed, gone))
    hand.start()
    started = time.monotonic()
    try:
        taskmap.run_parallel_async(graph, executor=executor)
    finally:
        hand.join(30)
    assert time.monotonic() - started < 20  # the 30 s task did not run to its end
    assert len(killed) == 1
    error = graph.results["long"]
    assert isinstance(error, taskmap.WorkerCrashedError)
    assert isinstance(error.__cause__, distributed.KilledWorker)
    assert str(error).startswith("task 'long' failed: its Dask worker died while running it")
    assert isinstance(graph.results["below"], taskmap.UpstreamFailedError)
    assert graph.results["base"] == 4
    seen, pid = graph.results["after"]
    assert seen == killed[0]
    assert pid not in {killed[0], os.getpid()}
    assert sorted(graph.failed) == ["below", "long"]
    client.wait_for_workers(2, timeout=20)  # the nanny restarted the killed worker
    assert pid in worker_pids(client)


# -- no process of taskmap's own ------------------------------------------------


class NewProcesses:
    """The processes that appear below this one while the block runs (read from /proc
    every 10 ms by a thread), and the multiprocessing children's names at its end."""

    def __enter__(self) -> NewProcesses:
        self.before = live_descendants(os.getpid())
        self.seen: set[int] = set()
        self.names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.seen |= live_descendants(os.getpid()) - self.before

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen |= live_descendants(os.getpid()) - self.before
        self.names = [p.name for p in multiprocessing.active_children()]


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_no_taskmap_worker_process_starts_when_an_executor_is_given(runner, executor):
    graph = taskmap.create_graph(
        {"a": make_where(1), "b": make_where(2), "io": where_on_a_loop},
        {"a": [], "b": [], "io": []},
        io_bound=["io"],
    )
    with NewProcesses() as new:
        runner(graph, executor=executor)
    assert graph.failed == []
    assert new.seen == set()
    assert not [name for name in new.names if name.startswith(f"{graph.name}-worker-")]


# -- Dask's keys ---------------------------------------------------------------


def _append_pid(path: str) -> str:
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    return "called"


@pytest.mark.parametrize(
    "pure",
    [
        # get_executor() submits pure calls, keyed by their arguments: taskmap gives
        # each call a key of its own, or equal tasks would run once
        pytest.param(None, id="get_executor()"),
        pytest.param(False, id="get_executor(pure=False)"),
    ],
)
def test_tasks_with_equal_function_and_inputs_are_each_called(client, pure, tmp_path):
    client.wait_for_workers(2, timeout=20)
    executor = client.get_executor() if pure is None else client.get_executor(pure=pure)
    path = str(tmp_path / "calls")
    task = functools.partial(_append_pid, path)
    graph = taskmap.create_graph(dict.fromkeys("abc", task), {n: [] for n in "abc"})
    taskmap.run_parallel_async(graph, executor=executor)
    assert graph.results == {"a": "called", "b": "called", "c": "called"}
    assert len(Path(path).read_text().splitlines()) == 3
