"""Worker processes: real faults (os._exit, SIGKILL, segfault, Ctrl-C, a killed driver),
pickling failures, large values, output and logging, and no process left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

import taskmap
from taskmap import SerializationError, UpstreamFailedError, WorkerCrashedError
from tests.procs import live_descendants, still_alive, wait_until, workers_left

pytestmark = pytest.mark.timeout(60)

PARALLEL = [taskmap.run_parallel, taskmap.run_parallel_async]


# -- helpers ----------------------------------------------------------------


def touch(path: str, *args: object) -> str:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return "ok"


def exit_hard() -> None:
    os._exit(1)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def identity(x: object) -> object:
    return x


def add(*xs: int) -> int:
    return sum(xs)


# -- crashes ------------------------------------------------------------------


def crash_graph(crash, tmp_path: Path) -> taskmap.Graph:
    log = str(tmp_path / "calls")
    funcs = {
        "crash": crash,
        "child": functools.partial(touch, log + ".child"),
        "grandchild": functools.partial(touch, log + ".grandchild"),
        **{f"other{i}": functools.partial(touch, log + ".other") for i in range(6)},
        "after": functools.partial(touch, log + ".after"),
    }
    deps = {
        "crash": [],
        "child": ["crash"],
        "grandchild": ["child"],
        **{f"other{i}": [] for i in range(6)},
        "after": [f"other{i}" for i in range(6)],
    }
    return taskmap.create_graph(funcs, deps)


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
@pytest.mark.parametrize(
    ("crash", "expected"),
    [
        (exit_hard, r"its worker \(pid \d+\) exited with code 1"),
        (kill_self, r"killed by SIGKILL \(exit code -9\)"),
        (segfault, r"killed by SIGSEGV \(exit code -11\); likely cause: a crash in native"),
    ],
    ids=["os._exit", "sigkill", "segfault"],
)
def test_worker_crash_fails_only_its_task(runner, crash, expected, tmp_path):
    graph = runner(crash_graph(crash, tmp_path), ncores=2)

    error = graph.results["crash"]
    assert isinstance(error, WorkerCrashedError)
    assert error.task == "crash"
    assert str(error).startswith("task 'crash' failed: ")
    assert error.__notes__ == ["2 descendants not run"]
    assert re.search(expected, str(error)), str(error)
    assert isinstance(graph.results["child"], UpstreamFailedError)
    assert isinstance(graph.results["grandchild"], UpstreamFailedError)
    assert not (tmp_path / "calls.child").exists()
    assert not (tmp_path / "calls.grandchild").exists()
    # every other task ran, on workers that include a replacement
    assert (tmp_path / "calls.other").read_text().count("\n") == 6
    assert graph.results["after"] == "ok"
    assert wait_until(lambda: not workers_left(), 5), workers_left()


def test_crashed_worker_is_replaced_and_runs_later_tasks(tmp_path):
    log = tmp_path / "pids"
    funcs = {"crash": kill_self, "later": functools.partial(touch, str(log))}
    deps = {"crash": [], "later": []}
    # one worker: 'later' can only run if the dead worker was replaced
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=1)
    assert isinstance(graph.results["crash"], WorkerCrashedError)
    assert graph.results["later"] == "ok"


# -- pickling -------------------------------------------------------------------


def return_lock() -> object:
    return threading.Lock()


class Unrebuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"needs two arguments: {a}, {b}")


def raise_unrebuildable() -> None:
    raise Unrebuildable(1, 2)


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_unpicklable_result_fails_its_own_task(runner):
    graph = taskmap.create_graph(
        {"lock": return_lock, "use": identity, "fine": lambda: 1},
        {"lock": [], "use": ["lock"], "fine": []},
    )
    runner(graph, ncores=1)
    error = graph.results["lock"]
    assert isinstance(error, SerializationError)
    assert error.what == "result"
    assert error.type_name == "lock"
    assert str(error).startswith(
        "task 'lock' returned a lock, which cannot be pickled to send it back from its worker"
    )
    assert isinstance(graph.results["use"], UpstreamFailedError)
    assert graph.results["fine"] == 1


def test_exception_that_cannot_be_rebuilt_is_reported_by_type_and_message():
    graph = taskmap.create_graph({"bad": raise_unrebuildable}, {"bad": []})
    taskmap.run_parallel(graph, ncores=1)
    error = graph.results["bad"]
    assert isinstance(error, SerializationError)
    assert error.what == "exception"
    assert error.type_name == "Unrebuildable"
    assert "task 'bad' raised an Unrebuildable" in str(error)
    assert "needs two arguments: 1, 2" in str(error)
    assert "raise Unrebuildable(1, 2)" in str(error.__cause__)


async def open_lock() -> object:
    return threading.Lock()


def test_unpicklable_input_fails_the_task_that_needs_it():
    graph = taskmap.create_graph(
        {"conn": open_lock, "use": identity, "fine": lambda: 2},
        {"conn": [], "use": ["conn"], "fine": []},
        io_bound=["conn"],
    )
    taskmap.run_parallel_async(graph, ncores=1)
    error = graph.results["use"]
    assert isinstance(error, SerializationError)
    assert error.what == "argument 0"
    assert str(error).startswith(
        "task 'use' cannot be sent to a worker process: its argument 0 (a lock) cannot be pickled"
    )
    assert graph.results["fine"] == 2


def test_user_exception_keeps_type_and_carries_the_worker_traceback():
    def inner(x):
        raise KeyError(f"missing {x}")

    graph = taskmap.create_graph({"a": lambda: 7, "b": inner}, {"a": [], "b": ["a"]})
    taskmap.run_parallel(graph, ncores=1)
    error = graph.results["b"]
    assert type(error) is KeyError
    assert error.args == ("missing 7",)
    assert 'raise KeyError(f"missing {x}")' in str(error.__cause__)
    assert error.__notes__[0].startswith("task 'b' failed in worker process ")


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_worker_traceback_names_this_file_and_line_for_lambdas_and_nested_functions(runner):
    # cloudpickle >= 3.1.2 ships code as "<dynamic-code>"; the worker restores the name
    def outer(scale):
        def nested(x):
            return x / scale  # the nested function's failing line

        return nested

    graph = taskmap.create_graph(
        {"a": lambda: 1, "b": outer(0), "c": lambda a: {}[a]},  # the lambda's failing line
        {"a": [], "b": ["a"], "c": ["a"]},
    )
    runner(graph, ncores=1)
    lines = Path(__file__).read_text().splitlines()
    for task, marker in [("b", "the nested function's"), ("c", "the lambda's")]:
        line = next(i for i, text in enumerate(lines, 1) if f"# {marker} failing line" in text)
        remote = str(graph.results[task].__cause__)
        assert f'File "{__file__}", line {line}, in ' in remote, remote
        assert lines[line - 1].strip() in remote
        assert "<dynamic-code>" not in remote


# -- values and functions ---------------------------------------------------------


def big() -> bytes:
    return b"x" * (50 * 1024 * 1024)


def size(data: bytes) -> int:
    return len(data)


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_50_mb_result_reaches_a_cpu_child(runner):
    graph = runner(taskmap.create_graph({"big": big, "size": size}, {"big": [], "size": ["big"]}))
    assert graph.results["size"] == 50 * 1024 * 1024


async def scale(k: int, x: int) -> int:
    await asyncio.sleep(0)
    return k * x


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_lambdas_closures_and_partial_coroutines_run_in_workers(runner):
    offset = 5

    def closure(x):
        return x + offset

    graph = taskmap.create_graph(
        {"a": lambda: 1, "b": closure, "c": functools.partial(scale, 10), "d": add},
        {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "b", "c"]},
    )
    runner(graph, ncores=2)
    assert graph.results == {"a": 1, "b": 6, "c": 60, "d": 67}


def test_each_function_is_shipped_once_per_worker():
    from taskmap.backends.processes import ProcessPool

    sent: list[bytes] = []
    original = ProcessPool._function

    def counting(self, task, func):
        fid, blob = original(self, task, func)
        sent.append(blob)
        return fid, blob

    funcs = dict.fromkeys(range(50), add)
    deps = {i: [] for i in range(50)}
    ProcessPool._function = counting
    try:
        graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    finally:
        ProcessPool._function = original
    assert graph.results == dict.fromkeys(range(50), 0)
    # the pool pickles the function once for all 50 tasks
    assert len({id(b) for b in sent}) == 1


def make_scaler(k: int):
    def scaled(x: int = 1) -> int:
        return k * x

    return scaled


def test_lambdas_and_closures_sharing_a_code_object_ship_it_once(monkeypatch):
    from taskmap import worker

    pickled: list[str] = []
    original = worker._CodePickler.reducer_override

    def counting(self, obj):
        if type(obj) is types.CodeType:
            pickled.append(obj.co_name)
        return original(self, obj)

    monkeypatch.setattr(worker._CodePickler, "reducer_override", counting)
    funcs = {f"l{i}": lambda i=i, *, j=2 * i: add(i, j) for i in range(40)}
    funcs.update({f"c{i}": make_scaler(i) for i in range(40)})
    funcs["one"] = lambda: 1
    deps = {name: [] for name in funcs}
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, deps), ncores=2)
    expected = {f"l{i}": 3 * i for i in range(40)} | {f"c{i}": i for i in range(40)}
    assert graph.results == {**expected, "one": 1}
    # each code object crossed once, with the first function that had it
    assert sorted(pickled) == ["<lambda>", "<lambda>", "scaled"]


def test_a_function_sharing_code_keeps_its_own_names_defaults_and_cells():
    from taskmap.worker import SameCode

    first, second = make_scaler(2), make_scaler(5)
    second.__qualname__ = "renamed"
    same = SameCode.of(second, 0, first)
    assert same is not None
    rebuilt = pickle.loads(pickle.dumps(same)).build(first)
    assert (rebuilt(3), rebuilt.__qualname__, rebuilt.__module__) == (15, "renamed", __name__)
    second.attribute = 1  # a function with attributes of its own crosses whole
    assert SameCode.of(second, 0, first) is None
    assert SameCode.of(lambda: 1, 0, first) is None  # another code object
    with pytest.raises(ValueError, match="boom"):
        same.build(ValueError("boom"))  # the first could not be rebuilt there


# -- worker hygiene -------------------------------------------------------------------


def thread_limits() -> tuple[str, str, str]:
    return tuple(
        os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    )


def test_workers_limit_native_thread_pools(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    graph = taskmap.run_parallel(taskmap.create_graph({"t": thread_limits}, {"t": []}), ncores=1)
    share = str(os.cpu_count())
    assert graph.results["t"] == (share, os.environ.get("OPENBLAS_NUM_THREADS", share), "3")


def interrupt_self() -> str:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    return "survived"


def test_workers_ignore_sigint():
    graph = taskmap.run_parallel(taskmap.create_graph({"t": interrupt_self}, {"t": []}), ncores=1)
    assert graph.results["t"] == "survived"


def chatty(x: int) -> int:
    print(f"printed by task {x}")
    print("to stderr", file=sys.stderr)
    logging.getLogger("etl.chatty").warning("logged by task %d", x)
    return x


def test_print_output_and_log_records_reach_the_driver(capsys, caplog):
    graph = taskmap.create_graph({"a": lambda: 4, "c": chatty}, {"a": [], "c": ["a"]})
    with caplog.at_level(logging.INFO, logger="etl"):
        taskmap.run_parallel(graph, ncores=1)
    assert graph.results["c"] == 4
    out, err = capsys.readouterr()
    assert "printed by task 4\n" in out
    assert "to stderr\n" in err
    records = [r for r in caplog.records if r.name == "etl.chatty"]
    assert [r.getMessage() for r in records] == ["logged by task 4"]
    assert records[0].process != os.getpid()


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_no_worker_process_is_left_after_a_run(runner):
    graph = taskmap.create_graph(dict.fromkeys(range(10), add), {i: [] for i in range(10)})
    runner(graph, ncores=2)
    assert wait_until(lambda: not workers_left(), 5), workers_left()


def sleep_then(seconds: float, *args: object) -> str:
    time.sleep(seconds)
    return "slept"


def fail_soon() -> None:
    time.sleep(0.1)
    raise RuntimeError("first failure")


def test_fail_fast_kills_running_workers_and_stops():
    graph = taskmap.create_graph(
        {"slow": functools.partial(sleep_then, 30), "bad": fail_soon, "after": identity},
        {"slow": [], "bad": [], "after": ["slow"]},
    )
    started = time.monotonic()
    taskmap.run_parallel(graph, ncores=2, on_error="fail_fast")
    assert time.monotonic() - started < 10
    assert isinstance(graph.results["bad"], RuntimeError)
    slow = graph.results["slow"]
    assert isinstance(slow, taskmap.RunStoppedError)
    assert slow.cancelled
    assert str(slow) == "task 'slow' cancelled: the run stopped when 'bad' failed (fail_fast)"
    assert isinstance(graph.results["after"], taskmap.RunStoppedError)
    assert wait_until(lambda: not workers_left(), 5), workers_left()


def test_drop_results_frees_consumed_values_but_keeps_targets_and_leaves():
    graph = taskmap.create_graph(
        {"a": lambda: 1, "b": lambda a: a + 1, "c": lambda b: b + 1, "d": lambda a: a * 10},
        {"a": [], "b": ["a"], "c": ["b"], "d": ["a"]},
    )
    taskmap.run_parallel_async(graph, ncores=1, drop_results=True)
    assert graph.results == {"c": 3, "d": 10}
    assert set(graph.done) == {"a", "b", "c", "d"}


def test_executor_replaces_the_pool_for_cpu_tasks():
    def failing(x):
        raise ValueError(f"remote {x}")

    graph = taskmap.create_graph(
        {"a": lambda: 3, "b": lambda a: a * 2, "c": failing}, {"a": [], "b": ["a"], "c": ["a"]}
    )
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        taskmap.run_parallel_async(graph, executor=executor)
    assert graph.results["b"] == 6
    assert isinstance(graph.results["c"], ValueError)
    assert 'raise ValueError(f"remote {x}")' in str(graph.results["c"].__cause__)


def test_invalid_ncores_is_rejected():
    graph = taskmap.create_graph({"a": add}, {"a": []})
    with pytest.raises(ValueError, match=r"ncores must be a positive integer \(got 0\)"):
        taskmap.run_parallel(graph, ncores=0)
    with pytest.raises(ValueError, match=r"ncores and nprocs are the same setting"):
        taskmap.run_parallel_async(graph, ncores=1, nprocs=2)


# -- Ctrl-C and a killed driver (real signals, in a child interpreter) -----------

DRIVER = textwrap.dedent(
    """
    import functools, os, sys, time
    import taskmap

    def hang(path, i):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(120)

    async def wait_io():
        import asyncio
        await asyncio.sleep(120)

    if __name__ == "__main__":
        path = sys.argv[1]
        funcs = {i: functools.partial(hang, path, i) for i in range(4)}
        funcs["io"] = wait_io
        deps = {k: [] for k in funcs}
        graph = taskmap.create_graph(funcs, deps, io_bound=["io"])
        try:
            getattr(taskmap, sys.argv[2])(graph, ncores=2, mp_context=sys.argv[3] or None)
        except KeyboardInterrupt:
            print("KeyboardInterrupt reached the caller", flush=True)
            raise
    """
)


def _start_driver(
    tmp_path: Path, runner: str, context: str = ""
) -> tuple[subprocess.Popen[str], Path]:
    """A driver script hanging in 4 CPU tasks; its workers fork from it (it has one
    thread), or from the fork server with ``context="forkserver"``."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids), runner, context],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: pids.exists() and pids.read_text().count("\n") >= 1, 20)
    return proc, pids


@pytest.mark.parametrize("context", ["", "forkserver"])
@pytest.mark.parametrize("runner", ["run_parallel", "run_parallel_async"])
def test_ctrl_c_stops_every_worker_and_raises_keyboard_interrupt(tmp_path, runner, context):
    proc, pids = _start_driver(tmp_path, runner, context)
    workers = {int(p) for p in pids.read_text().split()}
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 5
    assert proc.returncode != 0
    assert "KeyboardInterrupt reached the caller" in out
    assert "KeyboardInterrupt" in err
    assert wait_until(lambda: not still_alive(workers), 5)
    assert not live_descendants(proc.pid)


@pytest.mark.parametrize("context", ["", "forkserver"])
def test_workers_die_when_the_driver_is_killed(tmp_path, context):
    proc, pids = _start_driver(tmp_path, "run_parallel_async", context)
    workers = {int(p) for p in pids.read_text().split()}
    proc.kill()
    proc.communicate(timeout=10)
    assert wait_until(lambda: not still_alive(workers), 10), still_alive(workers)


# -- prefetching tiny tasks --------------------------------------------------------


def tiny(*args: object) -> str:
    return "ok"


def test_a_job_queued_behind_a_crashing_task_runs_on_the_replacement(monkeypatch):
    from taskmap.backends.processes import ProcessPool

    queued_at_crash: list[int] = []
    original = ProcessPool._on_exit

    def spy(self, worker):
        if not worker.dead:
            queued_at_crash.append(len(worker.jobs))
        original(self, worker)

    monkeypatch.setattr(ProcessPool, "_on_exit", spy)
    # the pool prefetches while the workers' running mean of durations is under
    # PREFETCH_BELOW: one tiny task preempted on a busy machine lifts it for a while
    monkeypatch.setattr("taskmap.backends.processes.PREFETCH_BELOW", float("inf"))
    funcs = {f"tiny{i}": tiny for i in range(30)}
    funcs["crash"] = kill_self
    funcs.update({f"after{i}": tiny for i in range(5)})
    graph = taskmap.create_graph(funcs, {name: [] for name in funcs})
    # one worker, tasks handed out in id order: the pool prefetches, so 'after0'
    # sits in the pipe behind 'crash' when the worker dies
    taskmap.run_parallel(graph, ncores=1)
    assert queued_at_crash == [2]
    assert isinstance(graph.results["crash"], WorkerCrashedError)
    assert all(graph.results[f"after{i}"] == "ok" for i in range(5))
    assert all(graph.results[f"tiny{i}"] == "ok" for i in range(30))


def slow_task(*args: object) -> str:
    time.sleep(0.05)
    return "slow"


def test_longer_tasks_are_never_queued_behind_one_another(monkeypatch):
    from taskmap.backends.processes import ProcessPool

    depths: list[int] = []
    original = ProcessPool._dispatch

    def spy(self, job):
        sent = original(self, job)
        depths.append(max((len(w.jobs) for w in self.workers), default=0))
        return sent

    monkeypatch.setattr(ProcessPool, "_dispatch", spy)
    funcs = dict.fromkeys(range(8), slow_task)
    graph = taskmap.run_parallel(taskmap.create_graph(funcs, {i: [] for i in funcs}), ncores=2)
    assert all(v == "slow" for v in graph.results.values())
    assert max(depths) == 1


# -- values that pickle but cannot be rebuilt on the other side ---------------------


class RefusedByWorkers:
    """Unpickling raises in any process but the one that pickled it."""

    def __init__(self) -> None:
        self.home = os.getpid()

    def __reduce__(self) -> tuple[object, ...]:
        return (_only_at_home, (self.home,))


def _only_at_home(home: int) -> object:
    if os.getpid() != home:
        raise RuntimeError("cannot be rebuilt away from home")
    return "home"


async def _make_refused_by_workers() -> RefusedByWorkers:
    return RefusedByWorkers()


def test_arguments_a_worker_cannot_rebuild_fail_that_task_and_the_worker_goes_on():
    graph = taskmap.create_graph(
        {"make": _make_refused_by_workers, "use": identity} | {f"fine{i}": tiny for i in range(3)},
        {"make": [], "use": ["make"]} | {f"fine{i}": [] for i in range(3)},
        io_bound=["make"],
    )
    taskmap.run_parallel_async(graph, ncores=1)
    error = graph.results["use"]
    assert isinstance(error, SerializationError)
    assert error.what == "arguments"
    assert str(error) == (
        "task 'use': its arguments cannot be rebuilt in its worker process: "
        "RuntimeError: cannot be rebuilt away from home"
    )
    assert all(graph.results[f"fine{i}"] == "ok" for i in range(3))


def made_in_worker() -> RefusedByWorkers:
    return RefusedByWorkers()


def test_a_result_the_driver_cannot_rebuild_fails_its_own_task():
    graph = taskmap.create_graph(
        {"made": made_in_worker, "child": identity, "fine": tiny},
        {"made": [], "child": ["made"], "fine": []},
    )
    taskmap.run_parallel(graph, ncores=1)
    error = graph.results["made"]
    assert isinstance(error, SerializationError)
    assert error.what == "result"
    assert str(error) == (
        "task 'made': its result cannot be rebuilt in the driver: "
        "RuntimeError: cannot be rebuilt away from home"
    )
    assert isinstance(graph.results["child"], UpstreamFailedError)
    assert graph.results["fine"] == "ok"


def test_drop_results_keeps_targets_given_as_a_generator():
    graph = taskmap.create_graph(
        {"a": lambda: 1, "b": lambda a: a + 1, "c": lambda b: b + 1},
        {"a": [], "b": ["a"], "c": ["b"]},
    )
    targets = (t for t in ["a", "c"])  # 'a' is consumed by 'b', and kept as a target
    taskmap.run_parallel_async(graph, ncores=1, drop_results=True, targets=targets)
    assert graph.results == {"a": 1, "c": 3}


def big_quickly(*args: object) -> bytes:
    return b"r" * (4 * 1024 * 1024)


async def big_input() -> bytes:
    return b"i" * (4 * 1024 * 1024)


@pytest.mark.timeout(30)
def test_large_messages_are_never_queued_behind_a_running_task():
    # Tiny tasks switch prefetching on; then 'out' writes 4 MB back while 'in' (4 MB of
    # arguments) is ready: queueing 'in' behind 'out' could block both pipe ends.
    funcs = {f"tiny{i}": tiny for i in range(30)}
    funcs |= {"source": big_input, "out": big_quickly, "in": size}
    deps = {name: [] for name in funcs} | {"in": ["source"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=["source"])
    taskmap.run_parallel_async(graph, ncores=1)
    assert len(graph.results["out"]) == 4 * 1024 * 1024
    assert graph.results["in"] == 4 * 1024 * 1024


MAIN_SCRIPT = textwrap.dedent(
    """
    import taskmap

    class Order:  # defined in __main__, which workers do not import
        def __init__(self, n):
            self.n = n

    async def load():
        return Order(3)

    def total(order):
        return Order(order.n * 2)

    graph = taskmap.create_graph(
        {"load": load, "total": total}, {"load": [], "total": ["load"]}, io_bound=["load"]
    )
    taskmap.run_parallel_async(graph, ncores=1)  # no __main__ guard: 0.0.6 scripts had none
    print("total:", graph.results["total"].n)
    """
)


def test_a_script_without_main_guard_passes_its_own_classes_to_workers(tmp_path):
    script = tmp_path / "etl.py"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "total: 6\n"


# -- the CPython internal that keeps workers from re-running __main__ -------------


def test_the_preparation_data_still_names_the_main_module_the_way_taskmap_strips_it():
    # taskmap pops these keys (backends/processes.py, _main_not_rerun); if a new
    # Python renames them, this fails here instead of workers re-running scripts
    from multiprocessing import spawn

    data = spawn.get_preparation_data("taskmap-test")
    assert {"init_main_from_path", "init_main_from_name"} & data.keys()


def test_a_missing_multiprocessing_internal_is_a_loud_error(monkeypatch):
    from multiprocessing import spawn

    monkeypatch.delattr(spawn, "get_preparation_data")
    graph = taskmap.create_graph({"a": add}, {"a": []})
    with pytest.raises(
        RuntimeError, match=r"patching multiprocessing\.spawn\.get_preparation_data"
    ):
        taskmap.run_parallel_async(graph, ncores=1)
    assert workers_left() == set()


# -- the fork server imports the modules of a graph's functions once ---------------

PRELOAD_DRIVER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    os.environ["DRIVER_PID"] = str(os.getpid())
    import taskmap, good_mod, bad_mod

    graph = taskmap.create_graph(
        {"good": good_mod.work, "also": good_mod.work, "bad": bad_mod.work},
        {"good": [], "also": [], "bad": []},
    )
    # the fork server's way (a driver with no other thread forks its workers itself)
    graph = taskmap.run_parallel_async(graph, ncores=2, mp_context="forkserver")
    print(graph.results["good"], graph.results["also"], type(graph.results["bad"]).__name__)
    from multiprocessing import forkserver
    print("forkserver", forkserver._forkserver._forkserver_pid)
    """
)


def test_the_fork_server_imports_the_functions_modules_once_and_survives_one_that_fails(
    tmp_path: Path,
) -> None:
    imported = tmp_path / "imported"
    (tmp_path / "good_mod.py").write_text(
        textwrap.dedent(
            f"""
            import os
            with open({str(imported)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")

            def work():
                return os.getpid()
            """
        )
    )
    (tmp_path / "bad_mod.py").write_text(
        textwrap.dedent(
            """
            import os
            if os.environ.get("DRIVER_PID") != str(os.getpid()):
                raise RuntimeError("this module imports in the driver only")

            def work():
                return 0
            """
        )
    )
    script = tmp_path / "driver.py"
    script.write_text(PRELOAD_DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines, err
    good, also, bad = lines[0].split()
    server = int(lines[1].split()[1])
    importers = [int(pid) for pid in imported.read_text().split()]
    assert importers == [proc.pid, server]  # the driver, then the server: no worker
    assert int(good) not in importers
    assert int(also) not in importers
    assert bad == "RuntimeError"  # the worker's own import of it fails that task only
