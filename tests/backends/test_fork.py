"""Workers forked from the driver itself (pool Rule 7), in child interpreters: the
test process has threads (pytest-timeout's, faulthandler's), so in here the pool
always takes the fork server's way; a script with one thread forks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.procs import live_descendants, still_alive, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def run_script(tmp_path: Path, source: str, *args: str) -> tuple[str, str]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(source))
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


WHO = """
    import functools, json, os, sys, threading, time
    import taskmap

    def parent(i):
        time.sleep(0.2)  # both workers take one
        return os.getppid()

    def run():
        funcs = {i: functools.partial(parent, i) for i in range(2)}
        graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
        return sorted(set(taskmap.run_parallel_async(graph, ncores=2).results.values()))

    alone = run()
    threading.Thread(target=threading.Event().wait, daemon=True).start()  # a second thread
    print(json.dumps({"driver": os.getpid(), "alone": alone, "threaded": run()}))
"""


def test_a_thread_counts_against_forking_unless_it_is_exiting_or_an_io_uring_worker():
    """The flags field of /proc/<pid>/task/<tid>/stat (the 7th after the state), read
    past a name that may hold spaces and parentheses."""
    from taskmap.backends.processes import _inert_stat

    def stat(flags: int, name: str = "python3") -> bytes:
        return f"4242 ({name}) S 1 4242 4242 0 -1 {flags} 12 0 0 0 3 1".encode()

    assert not _inert_stat(stat(0x400040))  # a running thread (PF_FORKNOEXEC...)
    assert _inert_stat(stat(0x400044))  # PF_EXITING: joined, not yet gone
    assert _inert_stat(stat(0x400050))  # PF_IO_WORKER
    assert not _inert_stat(stat(0x400040, name="a) S 1 (b"))
    assert _inert_stat(stat(0x4, name="x (y) z"))
    assert not _inert_stat(b"garbage")  # unreadable: it counts


def test_a_driver_with_one_thread_forks_its_workers_one_with_two_does_not(tmp_path):
    out, _ = run_script(tmp_path, WHO)
    seen = json.loads(out)
    assert seen["alone"] == [seen["driver"]]  # forked by the driver
    [server] = seen["threaded"]  # by the fork server, one process for both
    assert server != seen["driver"]


BAR = """
    import functools, json, os, threading
    import taskmap

    def parent(i):
        return os.getppid()

    funcs = {i: functools.partial(parent, i) for i in range(4)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    graph = taskmap.run_parallel_async(graph, ncores=2, progress=True)
    threads = [t.name for t in threading.enumerate()]
    print(json.dumps({"driver": os.getpid(), "parents": sorted(set(graph.results.values())),
                      "threads": threads}))
"""


def test_the_progress_bar_starts_no_thread_so_workers_still_fork(tmp_path):
    """tqdm's monitor thread would have made the driver threaded before the pool
    started: the bar is redrawn by the driver and needs none."""
    out, err = run_script(tmp_path, BAR)
    seen = json.loads(out)
    assert "4/4" in err  # the bar was drawn
    assert seen["threads"] == ["MainThread"]
    assert seen["parents"] == [seen["driver"]]


SHED = """
    import functools, json, os, signal, sys, time
    import taskmap
    from taskmap.backends.processes import ProcessPool

    def on_usr1(signum, frame):
        print("the driver's handler ran", flush=True)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_usr1)

    def end(fd):  # (inode, access mode): a pipe's two ends share their inode
        with open(f"/proc/self/fdinfo/{fd}") as info:
            flags = next(line for line in info if line.startswith("flags:"))
        return os.fstat(fd).st_ino, int(flags.split()[1], 8) & os.O_ACCMODE

    driver_ends = set()  # the driver's ends of its workers' pipes
    adopt = ProcessPool._adopt

    def spy(self, slot, process, conn, alive, **kwargs):
        driver_ends.update(end(e.fileno()) for e in (conn, alive))
        return adopt(self, slot, process, conn, alive, **kwargs)

    ProcessPool._adopt = spy

    def inherited(i):
        time.sleep(0.3)  # both workers take one
        ends = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                ends.append(end(int(fd)))
            except OSError:  # the listing's own fd
                pass
        return {
            "pid": os.getpid(),
            "usr1": repr(signal.getsignal(signal.SIGUSR1)),
            "term": repr(signal.getsignal(signal.SIGTERM)),
            "wakeup": signal.set_wakeup_fd(-1),
            "ends": ends,
        }

    funcs = {i: functools.partial(inherited, i) for i in range(2)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    workers = list(taskmap.run_parallel_async(graph, ncores=2).results.values())
    print(json.dumps({"workers": workers, "driver_ends": sorted(driver_ends)}))
    print(signal.getsignal(signal.SIGUSR1).__name__)
"""


def test_a_forked_worker_sheds_the_drivers_handlers_wakeup_fd_and_pipe_ends(tmp_path):
    out, _ = run_script(tmp_path, SHED)
    first, handler = out.splitlines()
    seen = json.loads(first)
    workers = seen["workers"]
    assert len({w["pid"] for w in workers}) == 2
    for worker in workers:
        assert worker["usr1"] == worker["term"] == "<Handlers.SIG_DFL: 0>"
        assert worker["wakeup"] == -1
        # no end the driver keeps of any worker's pipes, its own or the first's: held
        # here, it would keep the other end from seeing EOF when the driver dies
        assert not {tuple(e) for e in worker["ends"]} & {tuple(e) for e in seen["driver_ends"]}
    assert len(seen["driver_ends"]) == 4
    assert handler == "on_usr1"  # the driver's own handler stays


LOGS = """
    import functools, logging, sys
    import taskmap

    app = logging.getLogger("app")
    app.addHandler(logging.FileHandler(sys.argv[1]))
    app.setLevel(logging.INFO)

    def talk(i):
        logging.getLogger("app").info("hello from task %s", i)
        return i

    funcs = {i: functools.partial(talk, i) for i in range(4)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    print(taskmap.run_parallel_async(graph, ncores=2).results)
"""


def test_a_forked_workers_records_reach_the_drivers_handlers_once(tmp_path):
    log = tmp_path / "app.log"
    run_script(tmp_path, LOGS, str(log))
    lines = log.read_text().splitlines()
    assert sorted(lines) == [f"hello from task {i}" for i in range(4)]


CRASH = """
    import functools, json, os, signal, sys, time
    import taskmap

    def step(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)
        return os.getppid()

    funcs = {i: functools.partial(step, i) for i in range(6)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    graph = taskmap.run_parallel(graph, ncores=2)
    print(json.dumps({
        "driver": os.getpid(),
        "results": {str(k): v if isinstance(v, int) else type(v).__name__
                    for k, v in graph.results.items()},
    }))
"""


def test_a_forked_worker_killed_is_replaced_by_another_fork(tmp_path):
    out, _ = run_script(tmp_path, CRASH)
    seen = json.loads(out)
    results = seen.pop("results")
    assert results.pop("1") == "WorkerCrashedError"
    # the replacement forked from the driver too: it still has no other thread
    assert set(results.values()) == {seen["driver"]}
    assert sorted(results) == ["0", "2", "3", "4", "5"]


HANG = """
    import functools, os, sys, time
    import taskmap

    def hang(path, i):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(120)

    funcs = {i: functools.partial(hang, sys.argv[1], i) for i in range(4)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    try:
        taskmap.run_parallel_async(graph, ncores=2)
    except KeyboardInterrupt:
        print("KeyboardInterrupt reached the caller", flush=True)
        raise
"""


def test_ctrl_c_to_the_whole_process_group_stops_forked_workers(tmp_path):
    """A terminal's Ctrl-C signals the driver and every worker at once."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(HANG))
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pids)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: pids.exists() and pids.read_text().count("\n") >= 2, 20)
        workers = {int(p) for p in pids.read_text().split()}
        assert all(os.getpgid(w) == proc.pid for w in workers)  # forked: the same group
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - started < 5
    assert proc.returncode != 0
    assert "KeyboardInterrupt reached the caller" in out, err
    assert wait_until(lambda: not still_alive(workers), 5)
    assert not live_descendants(proc.pid)


INHERITED = """
    import json, os, signal, sys, threading, time
    import taskmap

    lock = threading.Lock()  # no pickle can carry it

    def crash(_):
        os.kill(os.getpid(), signal.SIGKILL)

    def io():
        time.sleep(0.1)  # a thread of the driver's runs it: the driver is threaded now
        return 1

    funcs = {
        "locked": lambda *_: (lock.locked(), os.getppid()),  # a function each
        "plain": lambda *_: (False, os.getppid()),
    }
    deps = {"locked": [], "plain": []}
    if sys.argv[1] == "replaced":  # the worker dies once the driver has a thread
        funcs.update(io=io, crash=crash, after_crash=lambda _: 0)
        deps = {"io": [], "crash": ["io"], "after_crash": ["crash"], "locked": ["io"],
                "plain": ["io"]}
    graph = taskmap.create_graph(funcs, deps, io_bound=[k for k in ["io"] if k in funcs])
    graph = taskmap.run_parallel_async(graph, ncores=1)
    out = {k: list(v) if isinstance(v, tuple) else f"{type(v).__name__}: {v}"
           for k, v in graph.results.items() if k in ("locked", "plain", "crash")}
    print(json.dumps({"driver": os.getpid(), "results": out}))
"""


def test_forked_workers_inherit_the_graphs_functions_unpickled(tmp_path):
    """A lambda holding a lock cannot be pickled: a forked worker runs it as the
    driver has it (no function crosses a pipe)."""
    out, _ = run_script(tmp_path, INHERITED, "forked")
    seen = json.loads(out)
    assert seen["results"] == {"locked": [False, seen["driver"]], "plain": [False, seen["driver"]]}


def test_a_replacement_from_the_fork_server_gets_inherited_functions_pickled(tmp_path):
    """The worker dies after an io task's thread made the driver threaded: its
    replacement comes from the fork server, and the functions the forked worker had
    cross now, pickled; the one that cannot be fails its own task, by name."""
    out, _ = run_script(tmp_path, INHERITED, "replaced")
    seen = json.loads(out)
    results = seen["results"]
    assert results["crash"].startswith("WorkerCrashedError: task 'crash' failed")
    locked = results["locked"]
    assert locked.startswith("SerializationError: "), locked
    assert "'locked'" in locked
    assert "function" in locked
    plain, server = results["plain"]
    assert plain is False
    assert server != seen["driver"]


NUMPY = """
    import ctypes, json, os, sys
    import numpy as np
    import taskmap
    from taskmap.worker import openblas_libraries

    def blas_threads():
        for library in openblas_libraries():
            for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
                getter = getattr(library, name, None)
                if getter is not None:
                    return getter()
        return None

    def work(i):
        x = np.arange(90_000, dtype=float).reshape(300, 300) / 1e5
        return os.getppid(), float((x @ x).sum()), blas_threads()

    def threads():  # io_uring's kernel threads aside (uvloop 0.19's libuv starts one)
        names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
        return sum(not name.startswith("iou-") for name in names)

    x = np.arange(90_000, dtype=float).reshape(300, 300) / 1e5
    expected = float((x @ x).sum())  # the driver's BLAS pool is up: 2 threads on 2 cores
    before = threads()
    funcs = {i: (lambda i=i: work(i)) for i in range(4)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    graph = taskmap.run_parallel_async(graph, ncores=2)
    again = float((x @ x).sum())  # the driver's BLAS after its pool was shut down
    print(json.dumps({
        "driver": os.getpid(), "before": before, "results": list(graph.results.values()),
        "expected": expected, "again": again, "driver_blas": blas_threads(),
        "threads_now": threads(),
    }))
"""


def test_a_numpy_driver_still_forks_and_its_workers_use_their_share_of_blas_threads(tmp_path):
    """numpy's import starts OpenBLAS's thread pool: the pool is shut down as
    OpenBLAS itself does before a fork, the workers fork, each with one BLAS thread
    (2 workers, 2 cores), and the driver's BLAS works on after the run."""
    pytest.importorskip("numpy")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(NUMPY))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    if os.cpu_count() == 2:
        assert seen["before"] == 2  # the driver and OpenBLAS's one worker thread
    for parent, total, blas in seen["results"]:
        assert parent == seen["driver"]
        assert total == seen["expected"]
        assert blas == max(1, (os.cpu_count() or 1) // 2)
    assert seen["again"] == seen["expected"]
    assert seen["driver_blas"] == os.cpu_count()
    assert seen["threads_now"] == seen["before"]  # its pool started again


FOREIGN = """
    import ctypes, json, os
    import numpy as np
    import taskmap
    from taskmap.backends.processes import ProcessPool

    libc = ctypes.CDLL(None)  # a thread started from C: Python's threading sees none
    thread = ctypes.c_ulong()
    sleep = ctypes.cast(libc.sleep, ctypes.c_void_p)
    assert libc.pthread_create(ctypes.byref(thread), None, sleep, ctypes.c_void_p(100)) == 0
    x = np.ones((200, 200))
    x @ x  # and OpenBLAS's pool: a fork is tried, as OpenBLAS stops its pool for one

    refused = []
    fork = ProcessPool._fork

    def spy(self, process, conn, alive):
        try:
            fork(self, process, conn, alive)
        except OSError as exc:
            refused.append((str(exc), process.exitcode))
            raise

    ProcessPool._fork = spy
    funcs = {i: (lambda: os.getppid()) for i in range(2)}
    graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
    graph = taskmap.run_parallel_async(graph, ncores=2)
    print(json.dumps({"driver": os.getpid(), "parents": sorted(set(graph.results.values())),
                      "refused": refused}))
"""


def test_a_fork_that_finds_another_thread_is_undone_and_the_fork_server_used(tmp_path):
    """The driver's threads looked like OpenBLAS's pool, but a thread started from C
    was there too: the child of that fork is killed (a lock held by the other
    thread would be held in it forever), and the workers come from the fork server.
    Python 3.12+'s warning about a threaded fork does not reach the user."""
    pytest.importorskip("numpy")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(FOREIGN))
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["refused"] == [["the driver had another thread when it forked", -9]]
    [server] = seen["parents"]
    assert server != seen["driver"]


COROUTINE = """
    import asyncio, functools, json, os
    import taskmap

    async def step(x):  # a CPU task that is a coroutine: the worker runs its own loop
        await asyncio.sleep(0.01)
        return [x, os.getppid()]

    async def main():  # the driver's loop runs while the workers fork from it
        funcs = {i: functools.partial(step, i) for i in range(4)}
        graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
        return (await taskmap.arun_parallel_async(graph, ncores=2)).results

    print(json.dumps({"driver": os.getpid(), "results": asyncio.run(main())}))
"""


def test_a_worker_forked_from_a_running_loop_runs_coroutine_tasks_on_its_own(tmp_path):
    """The child inherits the driver's running loop as running: asyncio tells them
    apart by pid, so the worker's own loop starts."""
    out, _ = run_script(tmp_path, COROUTINE)
    seen = json.loads(out)
    assert seen["results"] == {str(i): [i, seen["driver"]] for i in range(4)}


LARGE = """
    import json, os
    import taskmap
    from taskmap.backends import processes

    def run():
        funcs = {i: (lambda: os.getppid()) for i in range(2)}
        graph = taskmap.create_graph(funcs, {i: [] for i in funcs})
        return sorted(set(taskmap.run_parallel_async(graph, ncores=2).results.values()))

    small = run()
    with open("/proc/self/statm") as statm:  # what this driver would copy per fork
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    processes.FORK_MAX_COPY = 2 * resident - 1  # two workers: more than that
    print(json.dumps({"driver": os.getpid(), "small": small, "large": run()}))
"""


def test_a_driver_too_large_to_fork_quickly_uses_the_fork_server(tmp_path):
    """A fork copies the page tables of what is resident, on the loop, once per
    worker: past `FORK_MAX_COPY` the fork server is cheaper."""
    out, _ = run_script(tmp_path, LARGE)
    seen = json.loads(out)
    assert seen["small"] == [seen["driver"]]
    [server] = seen["large"]
    assert server != seen["driver"]
