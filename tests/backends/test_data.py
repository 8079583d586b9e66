"""The data plane: large values cross between processes in shared memfd segments.

Values arrive intact, a task that mutates its input leaves every other reader's
value unchanged (copy-on-write), and no segment outlives a run however it ends
(normally, a worker crash, Ctrl-C, the driver SIGKILLed).
"""

from __future__ import annotations

import functools
import gc
import mmap
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import taskmap
from taskmap import WorkerCrashedError
from taskmap.worker import SHARED_MIN
from tests.procs import live_descendants, still_alive, tagged, wait_until, workers_left

PARALLEL = [taskmap.run_parallel, taskmap.run_parallel_async]
N = 2 * SHARED_MIN // 8  # float64 elements: twice the threshold
MEMFD = "memfd:taskmap-value"


def segments_held(pid: int | str = "self") -> tuple[int, int]:
    """(open fds, mappings) of data-plane segments in process ``pid``."""
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD)
        except OSError:
            continue
    maps = Path(f"/proc/{pid}/maps").read_text().count(MEMFD)
    return fds, maps


def segments_anywhere(tag: str | None = None) -> int:
    """Data-plane segments held by this process, its descendants and, with ``tag``,
    every process of a driver started with ``TM_TAG=<tag>`` (orphans included); not
    by other programs' runs on a shared machine (their memory is freed at zero)."""
    total = 0
    for pid in {os.getpid(), *live_descendants(os.getpid()), *(tagged(tag) if tag else ())}:
        try:
            total += sum(segments_held(pid))
        except OSError:
            continue
    return total


def shm_names() -> set[str]:
    """Named shared memory.  multiprocessing's semaphores (``sem.mp-*``), which other
    programs on a shared machine make and taskmap does not, are left out."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {name for name in names if not name.startswith("sem.mp-")}


def array(i: int, n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + i


def scale(x: np.ndarray) -> np.ndarray:
    return x * 2.0


def mutate(x: np.ndarray) -> float:
    x[:] = -1.0  # in place, as Python allows
    return float(x.sum())


def total(*xs: object) -> float:
    return float(sum(float(np.asarray(x).sum()) for x in xs))


def backed_by_a_segment(x: np.ndarray) -> bool:
    base: object = x
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def where(x: np.ndarray) -> tuple[bool, int]:
    return backed_by_a_segment(x), os.getpid()


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(n, dtype=np.float64), "b": np.ones(n), "c": "x"})


def records(n: int) -> list[dict[str, float]]:
    return [{"i": i, "v": i / 2} for i in range(n)]


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_large_values_of_every_kind_arrive_intact_along_chains(runner):
    funcs = {
        "a": functools.partial(array, 1),
        "a2": scale,
        "f": functools.partial(frame, 200_000),
        "f2": lambda df: df.assign(a=df.a * 2),
        "r": functools.partial(records, 60_000),
        "r2": lambda rs: [{**r, "v": r["v"] * 2} for r in rs],
        "b": lambda: bytearray(b"z" * (3 * SHARED_MIN)),
        "b2": lambda b: bytes(b[::-1]).count(b"z"),
    }
    deps = {"a": [], "a2": ["a"], "f": [], "f2": ["f"], "r": [], "r2": ["r"], "b": [], "b2": ["b"]}
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2)
    np.testing.assert_array_equal(graph.results["a"], array(1))
    np.testing.assert_array_equal(graph.results["a2"], array(1) * 2)
    pd.testing.assert_frame_equal(graph.results["f"], frame(200_000))
    pd.testing.assert_frame_equal(graph.results["f2"], frame(200_000).assign(a=lambda d: d.a * 2))
    assert graph.results["r"] == records(60_000)
    assert graph.results["r2"][-1] == {"i": 59_999, "v": 59_999.0}
    assert graph.results["b"] == bytearray(b"z" * (3 * SHARED_MIN))
    assert graph.results["b2"] == 3 * SHARED_MIN


def test_a_large_input_is_mapped_from_a_segment_and_a_small_one_is_not():
    graph = taskmap.create_graph(
        {
            "big": functools.partial(array, 0),
            "small": functools.partial(array, 0, 1000),
            "on_big": where,
            "on_small": where,
        },
        {"big": [], "small": [], "on_big": ["big"], "on_small": ["small"]},
    )
    taskmap.run_parallel_async(graph, ncores=2)
    assert graph.results["on_big"][0] is True
    assert graph.results["on_small"][0] is False
    assert graph.results["on_big"][1] != os.getpid()


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_task_that_mutates_its_input_leaves_every_other_reader_s_value_unchanged(runner):
    # siblings on either worker, an io task on the driver, and graph.results
    async def read_on_the_driver(x: np.ndarray) -> float:
        return float(x[0])

    funcs = {"src": functools.partial(array, 5)}
    funcs |= {f"mutate{i}": mutate for i in range(4)}
    funcs |= {f"read{i}": total for i in range(4)}
    funcs["io"] = read_on_the_driver
    deps = {"src": []} | {t: ["src"] for t in funcs if t != "src"}
    graph = runner(taskmap.create_graph(funcs, deps, io_bound=["io"]), ncores=2)
    expected = float(array(5).sum())
    assert [graph.results[f"mutate{i}"] for i in range(4)] == [-float(N)] * 4
    assert [graph.results[f"read{i}"] for i in range(4)] == [expected] * 4
    assert graph.results["io"] == 5.0
    np.testing.assert_array_equal(graph.results["src"], array(5))


def test_a_large_value_made_on_the_driver_crosses_once_and_stays_unchanged():
    async def fetch() -> np.ndarray:  # an io task's result, on the driver
        return array(3)

    funcs = {"fetch": fetch, "m0": mutate, "m1": mutate, "read": total, "on": where}
    deps = {"fetch": [], "m0": ["fetch"], "m1": ["fetch"], "read": ["fetch"], "on": ["fetch"]}
    graph = taskmap.run_parallel_async(
        taskmap.create_graph(funcs, deps, io_bound=["fetch"]), ncores=2
    )
    assert graph.results["m0"] == graph.results["m1"] == -float(N)
    assert graph.results["read"] == float(array(3).sum())
    assert graph.results["on"][0] is True
    np.testing.assert_array_equal(graph.results["fetch"], array(3))


@pytest.mark.parametrize("drop", [False, True])
def test_a_run_leaves_no_segment_behind_once_its_results_go(drop):
    before = shm_names()
    funcs = {"a": functools.partial(array, 1), "b": scale, "c": scale, "d": total}
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"]}
    graph = taskmap.run_parallel_async(
        taskmap.create_graph(funcs, deps), ncores=2, drop_results=drop
    )
    assert graph.results["d"] == float((array(1) * 4).sum())
    assert segments_held()[0] == 0  # results are mapped, their fds closed
    assert set(graph.results) == ({"d"} if drop else {"a", "b", "c", "d"})
    del graph
    gc.collect()
    assert segments_held() == (0, 0)
    assert workers_left() == set()
    assert shm_names() == before  # memfds have no name in /dev/shm


def crash_on(x: np.ndarray) -> None:
    os._exit(3)


def test_a_worker_that_dies_holding_a_segment_leaks_nothing():
    funcs = {"a": functools.partial(array, 1), "crash": crash_on, "fine": total}
    deps = {"a": [], "crash": ["a"], "fine": ["a"]}
    graph = taskmap.run_parallel_async(taskmap.create_graph(funcs, deps), ncores=2)
    assert isinstance(graph.results["crash"], WorkerCrashedError)
    assert graph.results["fine"] == float(array(1).sum())
    del graph
    gc.collect()
    assert segments_held() == (0, 0)
    assert wait_until(lambda: segments_anywhere() == 0, 10)


DRIVER = textwrap.dedent(
    """
    import functools, os, sys, time
    import numpy as np
    import taskmap

    def make(i):
        return np.full(400_000, float(i))

    def hold(path, x):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(120)

    if __name__ == "__main__":
        path = sys.argv[1]
        funcs = {f"make{i}": functools.partial(make, i) for i in range(2)}
        funcs |= {f"hold{i}": functools.partial(hold, path) for i in range(2)}
        deps = {"make0": [], "make1": [], "hold0": ["make0"], "hold1": ["make1"]}
        graph = taskmap.create_graph(funcs, deps)
        try:
            taskmap.run_parallel_async(graph, ncores=2)
        except KeyboardInterrupt:
            kept = [type(graph.results[f"make{i}"]).__name__ for i in range(2)]
            print("kept", *kept, flush=True)
            raise
    """
)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_no_segment_outlives_a_driver_interrupted_or_killed(tmp_path, how):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    pids = tmp_path / "pids"
    before = shm_names()
    tag = f"data-{os.getpid()}-{how}"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TM_TAG": tag},
    )
    try:
        assert wait_until(lambda: pids.exists() and pids.read_text().count("\n") >= 2, 30)
        workers = {int(p) for p in pids.read_text().split()}
        assert all(sum(segments_held(pid)) > 0 for pid in workers)  # each maps its input
        proc.send_signal(how)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    if how == signal.SIGINT:
        assert "kept ndarray ndarray" in out  # finished values reached graph.results
    assert wait_until(lambda: not still_alive(workers), 10), still_alive(workers)
    assert wait_until(lambda: segments_anywhere(tag) == 0, 10)
    assert shm_names() == before


class Pickled:
    """Records the pid of each process that pickles it (in ``path``)."""

    def __init__(self, path: str, payload: object) -> None:
        self.path, self.payload = path, payload

    def __reduce__(self) -> tuple[object, ...]:
        with open(self.path, "a") as file:
            file.write(f"{os.getpid()}\n")
        return (Pickled, (self.path, self.payload))


def make_pickled(path: str, n: int) -> Pickled:
    return Pickled(path, array(0, n))


@pytest.mark.parametrize("n", [10, N], ids=["small", "large"])
def test_with_a_cache_the_worker_digests_and_encodes_its_value_not_the_driver(tmp_path, n):
    # a small value goes to its consumer through the driver, which pickles it: the
    # small case has none; a large one is mapped by its consumer from the segment
    record = tmp_path / "pickled-by"
    funcs = {"make": functools.partial(make_pickled, str(record), n)}
    deps: dict[str, list[str]] = {"make": []}
    if n == N:
        funcs["use"] = lambda p: float(p.payload.sum())
        deps["use"] = ["make"]
    graph = taskmap.create_graph(funcs, deps, cache=tmp_path / "cache")
    taskmap.run_parallel_async(graph, ncores=1)
    assert graph.stats.cache.stored == len(funcs)
    pids = {int(line) for line in record.read_text().split()}
    assert pids
    assert os.getpid() not in pids  # the driver never pickled it
    rerun = taskmap.create_graph(funcs, deps, cache=tmp_path / "cache")
    taskmap.run_parallel_async(rerun, ncores=1)
    assert rerun.stats.cache.hits == len(funcs)
    np.testing.assert_array_equal(rerun.results["make"].payload, array(0, n))


# -- zero-copy chains: under drop_results a value with one consumer stays put -------


def made(path: str, i: int) -> np.ndarray:
    x = array(i)
    with open(path, "a") as f:
        f.write(f"made {i} {os.getpid()} {id(x)}\n")
    return x


def took(path: str, x: np.ndarray) -> np.ndarray:
    with open(path, "a") as f:
        f.write(f"took {os.getpid()} {id(x)} {backed_by_a_segment(x)}\n")
    x *= 2.0  # in place: it is this task's own value
    return x


@pytest.mark.parametrize("drop", [True, False], ids=["drop_results", "control"])
@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_under_drop_results_a_chain_hands_its_value_over_in_place(runner, drop, tmp_path):
    log = tmp_path / "log"
    funcs = {f"make{i}": functools.partial(made, str(log), i) for i in range(3)}
    funcs |= {f"take{i}": functools.partial(took, str(log)) for i in range(3)}
    funcs["sum"] = total  # takes values kept by both workers
    deps = {f"make{i}": [] for i in range(3)} | {f"take{i}": [f"make{i}"] for i in range(3)}
    deps["sum"] = [f"take{i}" for i in range(3)]
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2, drop_results=drop)
    assert graph.results["sum"] == sum(float((array(i) * 2).sum()) for i in range(3))
    assert set(graph.results) == ({"sum"} if drop else set(funcs))
    lines = [line.split() for line in log.read_text().splitlines()]
    makers = {(pid, oid) for _, _, pid, oid in (w for w in lines if w[0] == "made")}
    takers = {(pid, oid) for _, pid, oid, _ in (w for w in lines if w[0] == "took")}
    mapped = {segment for *_, segment in (w for w in lines if w[0] == "took")}
    if drop:  # each taker got the very object its maker returned, in its process
        assert takers == makers
        assert mapped == {"False"}
    else:  # kept in graph.results: each value went to a segment, mapped by its taker
        assert mapped == {"True"}  # (an id may recur: the maker's array is freed)
    assert segments_held()[0] == 0  # results are mapped, their fds closed
    assert workers_left() == set()


def boom() -> None:
    raise ValueError("no")


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_kept_value_whose_consumer_never_runs_is_in_the_results(runner):
    funcs = {"make": functools.partial(array, 1), "boom": boom, "take": total}
    deps = {"make": [], "boom": [], "take": ["make", "boom"]}
    graph = runner(taskmap.create_graph(funcs, deps), ncores=2, drop_results=True)
    assert isinstance(graph.results["boom"], ValueError)
    assert isinstance(graph.results["take"], taskmap.UpstreamFailedError)
    np.testing.assert_array_equal(graph.results["make"], array(1))
    assert "make" in graph.done
    assert workers_left() == set()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def counted(path: str, i: int) -> np.ndarray:
    with open(path, "a") as f:
        f.write("made\n")
    return array(i)


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_a_kept_value_lost_with_its_worker_fails_its_consumer_and_is_made_again(runner, tmp_path):
    calls = tmp_path / "calls"
    funcs = {
        "make": functools.partial(counted, str(calls), 1),
        "take": scale,
        "crash": kill_self,  # runs after make, on the same (only) worker
        "after": total,
    }
    deps = {"make": [], "take": ["make"], "crash": [], "after": ["take"]}
    graph = taskmap.create_graph(funcs, deps, priorities={"make": 10, "crash": 5})
    graph = runner(graph, ncores=1, drop_results=True)
    lost = graph.results["take"]
    assert isinstance(lost, WorkerCrashedError)
    assert lost.lost == "make"
    assert "its input 'make' was lost: the worker process that kept it died" in str(lost)
    assert "SIGKILL" in str(lost)
    assert isinstance(graph.results["crash"], WorkerCrashedError)
    assert graph.results["crash"].lost is None
    assert isinstance(graph.results["after"], taskmap.UpstreamFailedError)
    # the lost value's task counts as not run: the next run makes it again
    assert "make" not in graph.done
    assert "make" not in graph.results
    graph.funcs["crash"] = lambda: None
    taskmap.reset_failed_tasks(graph)
    graph = runner(graph, ncores=1, drop_results=True)
    assert graph.results == {"after": float((array(1) * 2).sum()), "crash": None}
    assert calls.read_text() == "made\nmade\n"
    assert workers_left() == set()


def kill_after(seconds: float) -> None:
    import time

    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_pool_fails_what_waits_for_a_dead_worker_s_values_and_nothing_else():
    """At the pool's level, where placement is known: one worker keeps two values and
    then dies running a third task, while a job pinned to it waits in the backlog and
    the export of the other value waits behind the task."""
    import asyncio

    from taskmap.backends.processes import Held, ProcessPool

    async def scenario() -> tuple[object, ...]:
        pool = ProcessPool(1)
        pool.start(4)
        try:
            first = await pool.submit(0, "first", functools.partial(array, 1), (), hold=True)
            second = await pool.submit(1, "second", functools.partial(array, 2), (), hold=True)
            assert type(first) is Held
            assert type(second) is Held
            killer = pool.submit(2, "killer", functools.partial(kill_after, 0.3), ())
            pinned = pool.submit(3, "pinned", scale, (first,))
            assert pool.capacity() == 0  # the worker is busy; the pinned job waits for it
            results = {"second": second}
            lost = await pool.collect(results)  # its export waits behind the killer
            outcomes = await asyncio.gather(killer, pinned, return_exceptions=True)
            shared = await pool.submit(4, "after", functools.partial(array, 3), ())
            after = shared.load()
            shared.close()
            return (*outcomes, lost, results, after)
        finally:
            await pool.aclose(cancel=False)

    killer, pinned, lost, results, after = asyncio.run(scenario())
    assert isinstance(killer, WorkerCrashedError)
    assert killer.lost is None
    assert isinstance(pinned, WorkerCrashedError)
    assert pinned.lost == "first"
    assert "its input 'first' was lost" in str(pinned)
    assert lost == ["second"]
    assert results == {}
    np.testing.assert_array_equal(after, array(3))  # the replacement runs what comes next
    assert workers_left() == set()


MAIN_CLASSES = textwrap.dedent(
    """
    import taskmap
    from dataclasses import dataclass

    @dataclass
    class Row:  # defined in __main__, which workers do not import
        i: int
        v: float

    async def fetch():  # on the driver
        return [Row(i, i / 2) for i in range(20_000)]

    async def fetch_few():  # a few KB: in the message, pickled once
        return [Row(i, i / 2) for i in range(200)]

    def make():  # in a worker
        return [Row(i, i / 2) for i in range(20_000)]

    def count(rows):
        return sum(r.v for r in rows), type(rows[0]).__name__

    if __name__ == "__main__":
        funcs = {"fetch": fetch, "make": make, "from_io": count, "from_worker": count}
        funcs |= {"fetch_few": fetch_few, "from_few": count}
        deps = {"fetch": [], "make": [], "from_io": ["fetch"], "from_worker": ["make"]}
        deps |= {"fetch_few": [], "from_few": ["fetch_few"]}
        graph = taskmap.create_graph(funcs, deps, io_bound=["fetch", "fetch_few"])
        graph = taskmap.run_parallel_async(graph, ncores=2)
        print(graph.results["from_io"], graph.results["from_worker"], graph.results["from_few"])
        print(type(graph.results["make"][0]).__module__, len(graph.results["make"]))
    """
)


def test_large_values_of_classes_from_main_cross_by_value(tmp_path):
    script = tmp_path / "main_classes.py"
    script.write_text(MAIN_CLASSES)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "(99995000.0, 'Row') (99995000.0, 'Row') (9950.0, 'Row')",
        "__main__ 20000",
    ]


def pid_of(x: np.ndarray) -> tuple[int, float]:
    return os.getpid(), float(x[0])


def sleep_then(seconds: float) -> int:
    import time

    time.sleep(seconds)
    return os.getpid()


def test_a_core_does_not_idle_while_jobs_wait_for_the_worker_holding_their_inputs():
    """Three values kept by one worker, busy with a long task, and their three
    consumers waiting for it: the other worker takes one of them, exported to it."""
    import asyncio

    from taskmap.backends.processes import Held, ProcessPool

    async def scenario() -> tuple[list[Held], int, list[tuple[int, float]]]:
        pool = ProcessPool(2)
        pool.start(8)
        try:
            # both workers up: otherwise everything waits for the first one
            await asyncio.gather(*(pool.submit(i, f"warm{i}", sleep_then, (0.2,)) for i in (0, 1)))
            held = [
                await pool.submit(2 + i, f"make{i}", functools.partial(array, i), (), hold=True)
                for i in range(3)
            ]
            assert len({h.worker.pid for h in held}) == 1  # the least busy: the first
            long = pool.submit(5, "long", sleep_then, (0.5,))
            takers = [pool.submit(6 + i, f"take{i}", pid_of, (h,)) for i, h in enumerate(held)]
            return held, await long, list(await asyncio.gather(*takers))
        finally:
            await pool.aclose(cancel=False)

    held, long_pid, taken = asyncio.run(scenario())
    owner = held[0].worker.pid
    assert long_pid == owner  # the long task runs where the values are
    assert [value for _, value in taken] == [0.0, 1.0, 2.0]
    places = [pid for pid, _ in taken]
    assert places.count(owner) == 2  # two consumers took theirs in place...
    assert len(set(places)) == 2  # ...and one went to the idle worker, exported there
    assert workers_left() == set()


def combine(k: int, *xs: np.ndarray) -> np.ndarray:
    if k % 17 == 0:
        raise ValueError(f"task {k} fails")
    out = np.zeros(max([len(x) for x in xs] + [1]))
    for x in xs:
        out[: len(x)] += x  # in place on a fresh array: inputs are left alone
    return out * 1.001 + k


def reduce_to_float(k: int, *xs: np.ndarray) -> float:
    return float(sum(float(np.asarray(x).sum()) for x in xs)) + k


def random_graph(seed: int, n: int = 40) -> tuple[dict, dict]:
    import random

    rnd = random.Random(seed)
    funcs, deps = {}, {}
    for t in range(n):
        parents = rnd.sample(range(t), k=min(t, rnd.choice([0, 1, 1, 1, 2, 3])))
        deps[f"t{t}"] = [f"t{p}" for p in parents]
        if parents:
            funcs[f"t{t}"] = functools.partial(rnd.choice([combine, combine, reduce_to_float]), t)
        else:  # below, at and above the segment threshold
            funcs[f"t{t}"] = functools.partial(array, t, rnd.choice([1000, N, 4 * N]))
    return funcs, deps


def summed(results: dict) -> dict:
    return {
        name: type(v).__name__ if isinstance(v, Exception) else float(np.asarray(v).sum())
        for name, v in results.items()
    }


@pytest.mark.parametrize("runner", PARALLEL, ids=lambda r: r.__name__)
def test_random_graphs_under_drop_results_end_as_they_do_in_one_process(runner):
    """Chains, fan-ins and failures mixed: what is kept matches `run`, and every
    task that ran in one process ran here too (no value lost, no hang)."""
    for seed in range(12):
        funcs, deps = random_graph(seed)
        reference = taskmap.run(taskmap.create_graph(funcs, deps))
        graph = runner(taskmap.create_graph(funcs, deps), ncores=2, drop_results=True)
        assert set(graph.done) == set(reference.done), seed
        kept = summed(graph.results)
        assert kept == {name: summed(reference.results)[name] for name in kept}, seed
    assert workers_left() == set()


def test_a_job_queued_behind_a_crash_takes_its_segment_to_the_next_worker(monkeypatch):
    """A tiny-task pool queues a job behind the running one (prefetch).  If that one
    kills its worker, the queued job runs on the replacement: its segments' fds go
    with it again (they used to be sent once, and the job waited for them forever)."""
    import asyncio

    from taskmap.backends.processes import ProcessPool

    # prefetch whatever the timings: one tiny task preempted would lift the mean
    monkeypatch.setattr("taskmap.backends.processes.PREFETCH_BELOW", float("inf"))

    async def scenario() -> float:
        pool = ProcessPool(1)
        pool.start(20)
        try:
            for i in range(5):  # timed tasks: the pool starts queueing one behind another
                await pool.submit(i, f"tiny{i}", int, (i,))
            assert pool._depth() == 2
            crash = pool.submit(10, "crash", crash_on, (0,))
            queued = pool.submit(11, "queued", total, (array(2),))  # a driver value: a segment
            assert [job.task for job in pool.workers[0].jobs] == ["crash", "queued"]
            with pytest.raises(WorkerCrashedError):
                await crash
            return await asyncio.wait_for(queued, 20)
        finally:
            await pool.aclose(cancel=False)

    assert asyncio.run(scenario()) == float(array(2).sum())
    assert workers_left() == set()
