"""The built-in pool of worker processes.

Design note
-----------
The pool runs one task at a time per worker.  It is driven entirely by the event
loop: every worker contributes two readers, its pipe (messages) and its process
sentinel (death), so the driver never polls and never blocks waiting.

::

    driver loop ── submit(tid) ─► pickle function (once per function) and arguments
        │                         └─► a free worker's pipe ─► worker.main runs it
        │
        ├── pipe readable ──► "ok" / "err" / "unpicklable" / ... ─► the oldest job's future
        │                     "out" / "log" ─► driver's sys.stdout/stderr, loggers
        └── sentinel readable ─► drain the pipe, fail the running task with
                                 WorkerCrashedError, start a replacement worker

Rules:
1. Arguments are pickled before a worker is taken: an unpicklable input fails
   its own task (`SerializationError`), and the worker stays free.
2. A worker's death fails only the task it was running; the pool replaces it.
3. Cancelling a task's future kills its worker (a running function cannot be
   interrupted otherwise); the pool replaces it.  So does a job's timeout, armed
   when it is written to an idle worker: a job with a timeout is never queued
   behind another, so its clock starts when it does.
4. `aclose` leaves no process behind: stop messages when the run ended normally,
   SIGTERM then SIGKILL when it did not.  Workers are daemonic too, as a last net.
5. While tasks are tiny (their mean duration, as workers time them, under
   ``PREFETCH_BELOW``) a worker may also hold its next job in its pipe, so it never
   idles through the round trip via the driver; longer tasks, and jobs larger than
   the pipe buffers at once, are never queued behind a running task.  A queued job
   has not started: if its worker dies it goes to another; if it is cancelled it
   runs and is ignored.
6. Zero-copy chains (worker Rule 8): a job submitted with ``hold`` leaves its value
   in its worker, and its future gets a `Held` handle.  A job taking held values is
   pinned to the worker holding them, which hands them over in place; one held
   elsewhere is exported first (the job waits for it, off the backlog).  Pinned jobs
   wait for their worker without taking another's room: `capacity` counts each
   worker's room less the jobs waiting for it.  But a core does not idle while two
   jobs wait for one worker: with no other job waiting, the last of them is sent to
   the idle worker, its inputs exported (`_steal`).  If the worker dies, the jobs pinned
   to it fail with `WorkerCrashedError` naming the lost input.  `collect` brings the
   held values left in the results to the driver before the workers stop.
7. Workers start as fast as the machine can start a process: a driver with no other
   thread (Linux, no start method asked for; but for OpenBLAS's idle pool, which
   OpenBLAS stops before any fork: checked after it) and not too large for its
   page tables to be copied once a worker (`FORK_MAX_COPY`) forks them itself, on
   the loop, in milliseconds, and the child sheds what it inherited (`worker.forked_main`:
   the driver's pipe ends, signal handlers, logging) and starts with the graph's
   functions (none is pickled for it).  A driver with another thread never forks
   (a lock held there would stay held in the child): its workers fork from the fork
   server, whose first start (an interpreter, the worker's modules) runs in a
   thread while jobs wait in the backlog.

State: ``workers`` every live worker; each `_Worker` holds ``jobs``, the jobs sent
and not yet answered, in order (the first is running; replies come in the same
order), and ``known``, the ids of the functions it has been sent; ``functions``
holds each function sent (by ``id``), ``codes`` the first function sent with each
code object, ``bases`` what each function sent as a `SameCode` needs first; ``backlog``
holds jobs no worker had room for when they were submitted (their worker had just
died, or the job was too large to queue), sent as soon as one has room;
``mean_duration`` is the running mean of task durations.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import json
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import spawn
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from .. import worker as worker_module
from ..errors import SerializationError, TaskTimeoutError, WorkerCrashedError, describe_exit
from ..worker import (
    HOLD,
    SHARED_MIN,
    TAKES,
    Kept,
    Pickled,
    RemoteTraceback,
    SameCode,
    Shared,
    dumps,
    loads,
    oob_size,
    pickle_oob,
    recv_fds,
    send_fds,
    small,
    to_segment,
)
from . import Remote

__all__ = ["Held", "ProcessPool", "function_modules", "get_context"]

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Rule 5: below this mean task duration (seconds) a worker gets its next job queued
#: while it runs one, so it never waits for the round trip through the driver.
PREFETCH_BELOW = 0.002
#: ...and only a job whose messages the pipe's buffer takes without blocking.
PREFETCH_MAX_BYTES = 64 * 1024
#: Rule 7: the driver forks its workers itself while its resident memory times the
#: workers to fork stays under this.  A fork copies the page tables of what is
#: resident, on the loop: about 14 ms a GB here (1 GB: 13 ms, 4 GB: 55 ms), where
#: the fork server costs 0.1-0.3 s once, and then a millisecond a worker.
FORK_MAX_COPY = 8 * 2**30


class PoolState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


_Launched = tuple[BaseProcess, Connection, Connection]  # a process, its pipe, its watchdog end


@dataclass(slots=True, eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    sock: socket.socket  # the same socket as ``conn``, for the fds of shared values
    alive: Connection  # the driver's end of the watchdog pipe; never written
    slot: int  # its number, 1..n: its lane is worker-<slot>; a replacement takes it over
    pid: int | None = None
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    known: set[int] = field(default_factory=set)
    dead: bool = False
    waiting: int = 0  # backlog jobs pinned to it (Rule 6)


@dataclass(slots=True, eq=False)
class _Job:
    tid: int
    task: Hashable
    fid: int
    fn_blob: bytes | None  # None: inherited by forked workers, pickled when needed
    message: bytes  # the pickled "run" message, arguments included
    future: asyncio.Future[Any]
    shared: list[Shared]  # segments of its arguments: their fds follow the message
    post: tuple[int, bytes | None] | None  # the function called on its value there
    timeout: float | None = None
    timer: asyncio.TimerHandle | None = None  # armed when it starts, with a timeout
    expired: bool = False  # it ran past its timeout: its worker is being killed
    sent: float = 0.0  # when it was written to its worker (perf_counter)
    flags: int = 0  # HOLD: its value stays in its worker (Rule 6)
    pinned: _Worker | None = None  # the worker holding its inputs (Rule 6)
    holds: tuple[Held, ...] = ()  # its inputs held by its pinned worker
    args: Sequence[Any] = ()  # a pinned job's arguments: to send it elsewhere instead
    kwargs: dict[str, Any] | None = None
    export: bool = False  # not a task: the export of a held value (``tid`` is its task's)
    directory: tuple[Any, ...] | None = None  # its task directory's `taskdir.Call`, wired


class Held(Remote):
    """A task's value that stayed, as the object itself, in the worker that made it
    (Rule 6).  ``export`` is the future of its copy for use elsewhere, once asked."""

    __slots__ = ("export", "task", "tid", "worker")

    def __init__(self, worker: _Worker, tid: int, task: Hashable) -> None:
        self.worker = worker
        self.tid = tid
        self.task = task
        self.export: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        where = "lost" if self.worker.dead else f"in worker process {self.worker.pid}"
        return f"<value of task {self.task!r}, {where}>"


def get_context(method: str | BaseContext | None) -> BaseContext:
    """The multiprocessing context for workers: forkserver where there is one, else spawn.

    ``fork`` is allowed when asked for, but is unsafe with a running event loop or
    threads, so it is never the default.
    """
    if isinstance(method, BaseContext):
        return method
    if method is None:
        available = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in available else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Workers fork from a server that has already imported what they need.  Add
        # to the application's preload list, never replace it (effective only if the
        # server has not started yet).
        from multiprocessing import forkserver

        modules = list(getattr(forkserver._forkserver, "_preload_modules", []))
        if "taskmap.worker" not in modules:
            context.set_forkserver_preload([*modules, "taskmap.worker"])
    return context


def function_modules(funcs: Iterable[Callable[..., Any]]) -> list[str]:
    """The modules workers will import to run a graph's functions: the modules of
    those defined in one, and those that functions of the user's ``__main__`` (shipped
    by value) name as globals (``pd`` for pandas).  Only modules imported here."""
    found: dict[str, None] = {}
    for func in funcs:
        while isinstance(func, functools.partial):
            func = func.func
        module = getattr(func, "__module__", None)
        if module == "__main__":
            names = getattr(getattr(func, "__code__", None), "co_names", ())
            scope = getattr(func, "__globals__", {})
            for name in names:
                if isinstance(value := scope.get(name), types.ModuleType):
                    found.setdefault(value.__name__)
        elif isinstance(module, str):
            found.setdefault(module)
    return [m for m in found if m in sys.modules and not m.startswith(("taskmap", "__"))]


class ProcessPool:
    """``n`` worker processes, one task each at a time.  Use from the driver's loop only."""

    def __init__(
        self,
        n: int,
        *,
        context: str | BaseContext | None = None,
        name: str = "taskmap",
        preload: Iterable[str] = (),
        functions: Iterable[Callable[..., Any]] = (),
    ) -> None:
        if n < 1:
            raise ValueError(f"a process pool needs at least 1 worker (got {n})")
        self.n = n
        self.name = name
        self.context = get_context(context)
        #: the driver forks workers itself while it has no other thread (Rule 7);
        #: None when a start method was asked for, or off Linux
        self.fork: BaseContext | None = None
        if context is None and sys.platform.startswith("linux"):
            self.fork = multiprocessing.get_context("fork")
        self.forked = 0  # workers forked from the driver itself, of ``started``
        #: modules the fork server imports when it starts (`function_modules`), so that
        #: each worker forks with them instead of importing them at every run
        self.preload = list(preload)
        #: the graph's functions: a worker forked from the driver has them (Rule 7)
        self.graph_functions = list(functions)
        #: fid -> function registered before the first fork, pickled only if a worker
        #: from the fork server needs it
        self.inherited: dict[int, Callable[..., Any]] = {}
        self.state = PoolState.NEW
        self.workers: list[_Worker] = []
        self.mean_duration: float | None = None  # of recent tasks, as workers time them
        self.backlog: collections.deque[_Job] = collections.deque()
        self.functions: dict[int, tuple[Callable[..., Any], int, bytes | None]] = {}
        #: code object -> the first function sent with it: (function, fid, bytes)
        self.codes: dict[Any, tuple[Callable[..., Any], int, bytes]] = {}
        #: fid of a `SameCode` -> (fid, bytes) of the function whose code it shares
        self.bases: dict[int, tuple[int, bytes]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = 0
        self.env = _thread_limits(n)
        #: task id -> (lane, start, end) of its last attempt, until the driver takes it
        self.spans: dict[int, tuple[str, float, float]] = {}
        #: slots of the workers still to start, and 1 while one starts (`start`)
        self.unborn: list[int] = []
        self.launching = 0
        #: task id -> what its job's ``post`` returned, until the driver takes it
        self.posts: dict[int, Any] = {}
        #: id -> (value, its segment): large values of the driver's, written once a run
        self.exported: dict[int, tuple[Any, Shared]] = {}
        #: jobs waiting for held inputs to be exported from other workers (Rule 6)
        self.gathering = 0

    # -- lifecycle ----------------------------------------------------------

    def start(self, tasks: int) -> None:
        """Start the workers on the running loop; no more than ``tasks`` of them (a
        1-task run starts one).  They start one after another in a thread, off the
        loop: the first may start the fork server, which imports what workers need
        (taskmap.worker, the graph's modules: pandas...) before it answers, a second
        and more that would hold the loop (the caller's, under ``arun_*``).  Jobs
        wait in the backlog meanwhile."""
        if self.state is not PoolState.NEW:
            raise RuntimeError(f"cannot start a pool that is {self.state.value}")
        self.loop = asyncio.get_running_loop()
        self.state = PoolState.RUNNING
        self.unborn = list(range(max(1, min(self.n, tasks)), 0, -1))
        _check_preparation_data()  # fail here, loudly, rather than in a callback
        self._launch_next()

    def _launch_next(self) -> None:
        if self.state is not PoolState.RUNNING or not self.unborn or self.launching:
            return
        assert self.loop is not None
        if self.fork is not None and forkable(len(self.unborn)):
            self._inherit()
            try:  # a fork takes milliseconds: all of them now, on the loop (Rule 7)
                while self.unborn:
                    self._adopt(self.unborn[-1], *self._launch(fork=True), forked=True)
                    self.unborn.pop()
                return
            except OSError:  # (a thread, out of memory...) the fork server's way, in a thread
                self.fork = None
        slot = self.unborn.pop()
        self.launching = 1
        launched = self.loop.run_in_executor(None, self._launch)
        launched.add_done_callback(functools.partial(self._on_launched, slot))

    def _on_launched(self, slot: int, launched: asyncio.Future[_Launched]) -> None:
        self.launching = 0
        if launched.cancelled():
            return
        error = launched.exception()
        if error is not None:  # no worker to run the waiting jobs: fail them, no hang
            self._fail_backlog(error)
            return
        process, conn, alive = launched.result()
        if self.state is not PoolState.RUNNING:  # closed meanwhile: this one goes too
            _signal(process, "kill")
            conn.close()
            alive.close()
            return
        self._adopt(slot, process, conn, alive)
        self._launch_next()

    def _fail_backlog(self, exc: BaseException) -> None:
        self.unborn.clear()
        if not self.workers:  # nothing will ever take them
            for job in list(self.backlog):
                if not job.future.done():
                    job.future.set_exception(exc)
            self.backlog.clear()

    def _spawn(self, slot: int) -> None:
        """Start a worker now, on the loop (a replacement: the server is up)."""
        if self.fork is not None and forkable(1):
            try:
                self._adopt(slot, *self._launch(fork=True), forked=True)
                return
            except OSError:  # the fork server's way from now on
                self.fork = None
        self._adopt(slot, *self._launch())

    def _inherit(self) -> None:
        """Before the first fork: give the graph's functions their ids, as `submit`
        would (a partial's function), so that forked workers have them (Rule 7)."""
        if self.inherited or not self.graph_functions:
            return
        for func in self.graph_functions:
            if type(func) is functools.partial:
                func = func.func
            if id(func) not in self.functions:
                fid = len(self.functions)
                self.functions[id(func)] = (func, fid, None)
                self.inherited[fid] = func
        self.graph_functions = []

    def _launch(self, *, fork: bool = False) -> _Launched:
        """Start a worker process (blocking: a fork of the driver, or through the
        server, or a spawn); from the loop or a thread, one at a time."""
        context = self.fork if fork and self.fork is not None else self.context
        conn, child_conn = context.Pipe(duplex=True)
        alive_r, alive_w = context.Pipe(duplex=False)
        self.started += 1
        args: tuple[Any, ...] = (child_conn, alive_r, self.env, _log_levels())
        target: Callable[..., None] = worker_module.main
        if fork:  # the child closes the driver's ends of every pipe it inherits
            shed: list[Any] = [end for w in self.workers for end in (w.conn, w.sock, w.alive)]
            shed += [conn, alive_w, *(segment for _, segment in self.exported.values())]
            target, args = worker_module.forked_main, (shed, self.inherited, *args)
        process = context.Process(  # type: ignore[attr-defined]
            target=target, args=args, name=f"{self.name}-worker-{self.started}", daemon=True
        )
        try:
            if fork:
                self._fork(process, conn, alive_w)
            else:
                with _main_not_rerun(), _preloading(self.preload):
                    process.start()
        finally:
            child_conn.close()
            alive_r.close()
        return process, conn, alive_w

    def _fork(self, process: BaseProcess, conn: Connection, alive: Connection) -> None:
        """Fork a worker from the driver.  With OpenBLAS's pool running, the fork
        relies on OpenBLAS stopping it first: then the driver has one thread after
        it (the pool comes back at its next BLAS call).  If not, another thread was
        there: the child may hold a lock forever, so it is killed, and the pool
        takes the fork server's way (`_ForkedThreaded`)."""
        threaded = not single_threaded()
        with warnings.catch_warnings():
            if threaded:  # Python 3.12+ warns of the thread: it is checked just below
                warnings.simplefilter("ignore", DeprecationWarning)
            process.start()
        if threaded and not single_threaded():
            _signal(process, "kill")
            process.join(2.0)
            conn.close()
            alive.close()
            raise _ForkedThreaded("the driver had another thread when it forked")
        self.forked += 1

    def _adopt(
        self,
        slot: int,
        process: BaseProcess,
        conn: Connection,
        alive: Connection,
        *,
        forked: bool = False,
    ) -> None:
        """Watch a started worker from the loop and give it work."""
        assert self.loop is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
        worker = _Worker(process, conn, sock, alive, slot, pid=process.pid)
        if forked:  # it has the graph's functions already
            worker.known.update(self.inherited)
        self.workers.append(worker)
        self._drain_backlog()
        self.loop.add_reader(conn.fileno(), self._guarded, self._on_readable, worker)
        self.loop.add_reader(process.sentinel, self._guarded, self._on_exit, worker)
        # uvloop (libuv) makes a watched fd non-blocking; Connection reads and writes
        # whole messages and needs it blocking (a 50 MB message is read in one go).
        os.set_blocking(conn.fileno(), True)

    async def aclose(self, *, cancel: bool) -> None:
        """Stop every worker: gently after a normal run, at once with ``cancel``."""
        if self.state is PoolState.CLOSED:
            return
        self.state = PoolState.CLOSED
        self._release_exported()
        self._stop_spawning()
        workers, self.workers = self.workers, []
        for w in workers:
            self._unwatch(w)
            busy = bool(w.jobs)
            for job in w.jobs:
                job.future.cancel()
            if cancel or busy:
                _signal(w.process, "terminate")
            else:
                with contextlib.suppress(OSError):
                    w.conn.send_bytes(dumps(("stop",)))
        deadline = time.monotonic() + (2.0 if cancel else 5.0)
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                _signal(w.process, "kill")
                w.process.join(2.0)
            _close(w)

    def close_now(self) -> None:
        """Kill every worker without waiting on the loop (a last resort from ``finally``)."""
        if self.state is PoolState.CLOSED:
            return
        self.state = PoolState.CLOSED
        self._release_exported()
        self._stop_spawning()
        for w in self.workers:
            _signal(w.process, "kill")
            w.process.join(2.0)
            _close(w)
        self.workers = []

    def _stop_spawning(self) -> None:
        self.unborn.clear()  # one starting now is killed when it is up (_on_launched)

    def _release_exported(self) -> None:
        exported, self.exported = self.exported, {}
        for _, shared in exported.values():
            shared.close()

    # -- tasks --------------------------------------------------------------

    def capacity(self) -> int:
        depth = self._depth()
        free = pinned = 0
        for w in self.workers:
            pinned += w.waiting
            if not w.dead:
                free += max(0, depth - len(w.jobs) - w.waiting)
        # a worker about to start has room: its jobs wait in the backlog; a job pinned
        # to a worker waits for that one only (Rule 6)
        unpinned = len(self.backlog) - pinned + self.gathering
        return free + len(self.unborn) + self.launching - unpinned

    def _depth(self) -> int:
        """Jobs a worker may hold: 1, or 2 while tasks are tiny (see Rule 5)."""
        mean = self.mean_duration
        return 2 if mean is not None and mean < PREFETCH_BELOW else 1

    def span(self, tid: int) -> tuple[str, float, float] | None:
        return self.spans.pop(tid, None)

    def posted(self, tid: int) -> Any:
        return self.posts.pop(tid, None)

    def submit(
        self,
        tid: int,
        task: Hashable,
        func: Callable[..., Any],
        args: Sequence[Any],
        *,
        timeout: float | None = None,
        post: Callable[[Any], Any] | None = None,
        hold: bool = False,
        directory: tuple[Any, ...] | None = None,
    ) -> asyncio.Future[Any]:
        """Send a task to a worker with room.  Raises SerializationError before taking one.

        ``post`` is called on the value in the worker (the cache's digest and
        encoding, off the driver); `posted` hands its result over.  With ``hold``
        the value stays in its worker and the future gets a `Held` (Rule 6).

        Raises:
            WorkerCrashedError: a held input was lost with its worker."""
        assert self.loop is not None
        kwargs: dict[str, Any] | None = None
        if type(func) is functools.partial:  # one function shipped once; bound values are data
            args, kwargs, func = (*func.args, *args), func.keywords or None, func.func
        fid, fn_blob = self._function(task, func)
        shipped = None
        if post is not None:
            try:
                shipped = self._function(task, post)
            except SerializationError:  # a user's encoder: the driver encodes instead
                shipped = None
        future = self.loop.create_future()
        job = _Job(tid, task, fid, fn_blob, b"", future, [], shipped, timeout)
        job.flags, job.directory = HOLD if hold else 0, directory
        holds = [a for a in args if type(a) is Held]
        exports = self._place(job, holds) if holds else []
        if exports:
            self._gather(job, args, kwargs, exports)
            return future
        self._message(job, args, kwargs, held=bool(holds))
        if job.pinned is not None:
            job.args, job.kwargs = args, kwargs
        self._enqueue(job)
        return future

    def _gather(
        self,
        job: _Job,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        exports: list[asyncio.Future[Any]],
    ) -> None:
        """The job waits for its inputs to be exported, then is sent (`_gathered`)."""
        self.gathering += 1
        count = [len(exports)]
        for export in exports:
            export.add_done_callback(functools.partial(self._gathered, job, args, kwargs, count))

    def _steal(self) -> None:
        """Rule 6: a worker idles, no job waits for any worker, and one worker has two
        or more jobs waiting for it: the last of them goes to whichever worker is
        free, once its held inputs are exported (after the task their worker runs)."""
        if self.gathering or not self.backlog or self.state is not PoolState.RUNNING:
            return
        busy = [w for w in self.workers if not w.dead and w.waiting >= 2]
        if not busy or not any(not (w.dead or w.jobs or w.waiting) for w in self.workers):
            return
        if any(job.pinned is None for job in self.backlog):
            return  # the idle worker gets that one
        victim = busy[0]
        job = next(j for j in reversed(self.backlog) if j.pinned is victim)
        self.backlog.remove(job)
        victim.waiting -= 1
        job.pinned, job.holds = None, ()
        args, kwargs, job.args, job.kwargs = job.args, job.kwargs, (), None
        exports = [self._export(a) for a in args if type(a) is Held]
        self._gather(job, args, kwargs, exports)

    def _message(
        self, job: _Job, args: Sequence[Any], kwargs: dict[str, Any] | None, *, held: bool = True
    ) -> None:
        """Pickle the job's "run" message (Rule 1: before it takes a worker); ``held``:
        some arguments may be `Held` (the caller has looked)."""
        flags, placed = job.flags, list(args)
        if held:
            for i, arg in enumerate(args):
                if type(arg) is Held:
                    if arg.export is not None:  # it left its worker: the copy
                        placed[i] = arg.export.result()
                    else:  # in the job's worker: taken there in place
                        placed[i] = Kept(arg.tid)
                        flags |= TAKES
        try:
            # cloudpickle: instances of classes from the user's __main__, which is not
            # re-run in workers, cross by value.  Large values cross as segments.
            post_fid = -1 if job.post is None else job.post[0]
            job.message, job.shared = worker_module.run_message(
                job.tid, job.fid, self._share(placed), post_fid, kwargs, flags, job.directory
            )
        except Exception as exc:
            raise _unpicklable_args(job.task, args, exc) from None

    def _enqueue(self, job: _Job) -> None:
        if not self._dispatch(job):
            self.backlog.append(job)
            if job.pinned is not None:
                job.pinned.waiting += 1
                self._steal()

    def _place(self, job: _Job, holds: list[Held]) -> list[asyncio.Future[Any]]:
        """Pin a job taking held values to the worker holding most of them (Rule 6);
        return the exports it must wait for (values held elsewhere)."""
        for held in holds:
            if held.worker.dead and held.export is None:
                raise _lost(job.task, held)
        here = [h for h in holds if h.export is None]
        if here:
            counts = collections.Counter(h.worker for h in here)
            job.pinned = max(counts, key=counts.__getitem__)
        job.holds = tuple(h for h in here if h.worker is job.pinned)
        exports = []
        for held in holds:
            if held.export is None:
                if held.worker is not job.pinned:  # kept by another worker: ask it
                    exports.append(self._export(held))
            elif not held.export.done():  # asked already: wait for it too
                exports.append(held.export)
        return exports

    def _gathered(
        self,
        job: _Job,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        count: list[int],
        _: asyncio.Future[Any],
    ) -> None:
        """One export a job waits for is done; once all are, send the job."""
        count[0] -= 1
        if count[0]:
            return
        self.gathering -= 1
        if job.future.done() or self.state is not PoolState.RUNNING:
            return
        try:
            for held in args:
                if type(held) is Held and held.export is not None:
                    export = held.export
                    if export.cancelled() or export.exception() is not None:
                        raise _lost(job.task, held)
            if job.pinned is not None and job.pinned.dead:
                raise _lost(job.task, job.holds[0])
            self._message(job, args, kwargs)
        except Exception as exc:
            job.future.set_exception(exc)
            return
        if job.pinned is not None:
            job.args, job.kwargs = args, kwargs
        self._enqueue(job)

    def _export(self, held: Held) -> asyncio.Future[Any]:
        """Ask a held value's worker for it (after the job it runs): the future gets
        a `Shared`, or the value itself when small."""
        if held.export is not None:
            return held.export
        assert self.loop is not None
        future = held.export = self.loop.create_future()
        worker = held.worker
        job = _Job(held.tid, held.task, -1, b"", b"", future, [], None, export=True)
        try:
            if worker.dead:
                raise OSError("its worker is gone")
            worker.conn.send_bytes(dumps(("export", held.tid)))
        except OSError:
            future.set_exception(_lost(held.task, held))
            return future
        worker.jobs.append(job)
        return future

    async def collect(self, results: dict[Hashable, Any]) -> list[Hashable]:
        """Bring each held value in ``results`` to the driver (a `Shared`, or the
        value), before the workers stop; drop those lost with their worker and
        return their names."""
        exports = {name: self._export(v) for name, v in results.items() if type(v) is Held}
        if not exports:
            return []
        await asyncio.wait(exports.values())
        lost = []
        for name, export in exports.items():
            if export.cancelled() or export.exception() is not None:
                lost.append(name)
                del results[name]
            else:
                results[name] = export.result()
        return lost

    def _share(self, args: Sequence[Any]) -> list[Any]:
        """The arguments, each large value the driver holds (an io task's result, a
        ``results=`` entry) written once into a segment that every worker maps."""
        if not args:
            return []
        out = []
        for arg in args:
            if type(arg) not in (Shared, Kept) and not small(arg):
                entry = self.exported.get(id(arg))
                if entry is None or entry[0] is not arg:
                    packed = pickle_oob(arg)
                    if packed is None or oob_size(packed) < SHARED_MIN:
                        # in the message: pickled once only, unless tiny (re-pickling
                        # 200 bytes is cheaper than a wrapper) or with buffers
                        if packed is None or packed[1] or len(packed[0]) < 1024:
                            out.append(arg)
                        else:
                            out.append(Pickled(packed[0]))
                        continue
                    entry = self.exported[id(arg)] = (arg, to_segment(*packed))
                arg = entry[1]
            out.append(arg)
        return out

    def _dispatch(self, job: _Job) -> bool:
        """Send a job to the least busy worker with room; False if none has room."""
        depth = self._depth()
        if job.pinned is not None:
            workers = [job.pinned]
        else:
            workers = sorted(self.workers, key=lambda w: len(w.jobs))
        for worker in workers:
            if worker.dead or len(worker.jobs) >= depth:
                continue
            if worker.jobs and (
                job.timeout is not None or not _fits_in_pipe(job, worker, self.bases.get(job.fid))
            ):
                # A busy worker may be writing a large result while we write to it:
                # queue behind a running task only what the pipe buffers at once.
                # A job with a timeout is timed from its start: never queued.
                continue
            try:
                if job.fid not in worker.known:
                    self._send_function(worker, job.fid, job.fn_blob, job.task)
                if job.post is not None and job.post[0] not in worker.known:
                    self._send_function(worker, *job.post, job.task)
                worker.conn.send_bytes(job.message)
                if job.shared:  # kept until answered: a job whose worker died
                    send_fds(worker.sock, [s.fd for s in job.shared])  # before it ran
                    # goes to another one, with its fds again
            except OSError:  # died just now; its sentinel will replace it
                continue
            except SerializationError as exc:  # an inherited function, for a worker
                job.future.set_exception(exc)  # from the fork server: its task fails
                return True
            worker.jobs.append(job)
            job.sent = time.perf_counter()
            if job.timeout is not None:
                assert self.loop is not None
                job.timer = self.loop.call_later(job.timeout, self._expire, worker, job)
            job.future.add_done_callback(functools.partial(self._on_future_done, worker, job))
            return True
        return False

    def _drain_backlog(self) -> None:
        """Send waiting jobs to workers with room (after a result or a new worker), in
        order; a pinned job that waits for its worker does not stop the others."""
        backlog = self.backlog
        if not backlog:
            return
        depth = self._depth()
        waiting: collections.deque[_Job] = collections.deque()
        stuck = False  # an unpinned job found no room: the next ones would not either
        while backlog and any(not w.dead and len(w.jobs) < depth for w in self.workers):
            job = backlog.popleft()
            if (job.pinned is None and stuck) or not (job.future.done() or self._dispatch(job)):
                stuck = stuck or job.pinned is None
                waiting.append(job)
            elif job.pinned is not None:
                job.pinned.waiting -= 1
        waiting.extend(backlog)
        self.backlog = waiting
        self._steal()

    def _function(self, task: Hashable, func: Callable[..., Any]) -> tuple[int, bytes | None]:
        """The id and bytes of a function; its code crosses once (worker Rule 1): a
        function whose code object a function sent before has is sent as a
        `SameCode` of that one (`bases` says which must reach a worker first)."""
        entry = self.functions.get(id(func))
        if entry is None or entry[0] is not func:
            fid = len(self.functions)
            code = getattr(func, "__code__", None)
            first = self.codes.get(code) if type(func) is types.FunctionType else None
            same = None if first is None else SameCode.of(func, first[1], first[0])
            blob = _pickled_function(task, func, same)
            if same is not None:
                self.bases[fid] = first[1:]  # type: ignore[index]
            elif type(func) is types.FunctionType:
                self.codes.setdefault(code, (func, fid, blob))
            entry = self.functions[id(func)] = (func, fid, blob)
        return entry[1], entry[2]

    def _send_function(self, worker: _Worker, fid: int, blob: bytes | None, task: Hashable) -> None:
        """Send a function to a worker, after the one whose code it shares; one the
        forked workers inherited is pickled now, for one from the fork server.

        Raises:
            SerializationError: that function cannot be pickled."""
        base = self.bases.get(fid)
        if base is not None and base[0] not in worker.known:
            self._send_function(worker, *base, task)
        if blob is None:  # inherited by forked workers: pickled once, when first needed
            func = self.inherited[fid]
            blob = self.functions[id(func)][2]
            if blob is None:
                blob = _pickled_function(task, func)
                self.functions[id(func)] = (func, fid, blob)
        worker.conn.send_bytes(dumps(("fn", fid, blob)))
        worker.known.add(fid)

    # -- events from the loop -----------------------------------------------

    def _guarded(self, callback: Callable[[_Worker], object], worker: _Worker) -> None:
        """Run a reader callback; an exception (a bug, a message that cannot be read)
        fails the worker's task instead of vanishing into the loop's log (no hang)."""
        try:
            callback(worker)
        except Exception as exc:
            if worker.jobs and not worker.jobs[0].future.done():
                worker.jobs[0].future.set_exception(exc)
            _signal(worker.process, "kill")  # its sentinel replaces it

    def _on_readable(self, worker: _Worker) -> bool:
        """Read and handle one message (the loop calls again while more are waiting:
        its readers are level-triggered).  Return False once the pipe is closed."""
        try:
            raw = worker.conn.recv_bytes()
        except (EOFError, OSError):
            # The worker is gone; its sentinel says how.  Stop reading the pipe.
            assert self.loop is not None
            self.loop.remove_reader(worker.conn.fileno())
            return False
        try:
            message = loads(raw)
        except Exception as exc:  # a result this process cannot rebuild
            message = ("unreadable", f"{type(exc).__qualname__}: {exc}")
        if message[0] == "shm":  # its segment's fd follows it on the socket
            (fd,) = recv_fds(worker.sock, 1)
            message = ("ok", message[1], Shared(fd, message[2]), *message[3:])
        self._handle(worker, message)
        return True

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == "out":
            (sys.stdout if message[1] == 1 else sys.stderr).write(message[2])
            return
        if tag == "log":
            record: logging.LogRecord = message[1]
            logging.getLogger(record.name).handle(record)
            return
        if tag == "ready":
            worker.pid = message[1]
            return
        job = worker.jobs.popleft()
        future, task = job.future, job.task
        if job.export:
            if self.state is PoolState.RUNNING:
                self._drain_backlog()
            if future.done():
                return
            if tag == "ok":
                future.set_result(message[2])
            else:
                future.set_exception(SerializationError(task, "result", "", str(message[-1])))
            return
        if tag == "held":
            tag, message = "ok", ("ok", message[1], Held(worker, job.tid, task), *message[2:])
        if tag in ("ok", "err"):
            start, end = (message[3], message[4]) if tag == "ok" else (message[2], message[3])
            if tag == "ok" and message[5] is not None:
                self.posts[job.tid] = message[5]
            self.spans[job.tid] = (f"worker-{worker.slot}", start, end)
            if tag == "ok":
                mean, duration = self.mean_duration, end - start
                self.mean_duration = duration if mean is None else 0.8 * mean + 0.2 * duration
        else:
            self.spans[job.tid] = (f"worker-{worker.slot}", job.sent, time.perf_counter())
        if self.state is PoolState.RUNNING:
            self._drain_backlog()
        if future.done():  # cancelled meanwhile
            return
        if tag == "ok":
            future.set_result(message[2])
        elif tag == "unreadable":
            future.set_exception(SerializationError(task, "result", "", message[1]))
        elif tag == "badinput":
            future.set_exception(SerializationError(task, "arguments", "", message[1]))
        elif tag == "err":
            future.set_exception(_rebuild(task, worker.pid, *message[4:]))
        elif tag == "unpicklable":
            future.set_exception(SerializationError(task, "result", message[2], message[3]))

    def _on_exit(self, worker: _Worker) -> None:
        """A worker's process ended: record what it sent, fail its task, replace it."""
        if worker.dead:
            return
        while worker.conn.poll() and self._on_readable(worker):
            pass  # what it sent before dying (a result, output, logs)
        worker.dead = True
        self._unwatch(worker)
        worker.process.join(1.0)
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.jobs:
            running = worker.jobs.popleft()
            lane = f"worker-{worker.slot}"
            if not running.export:
                self.spans[running.tid] = (lane, running.sent, time.perf_counter())
            if running.expired and running.timeout is not None:
                error: Exception = TaskTimeoutError(
                    running.task, running.timeout, "worker replaced"
                )
            else:
                error = WorkerCrashedError(running.task, worker.pid, worker.process.exitcode)
            if not running.future.done():
                running.future.set_exception(error)
            # jobs queued behind it never started: they go to the next worker, unless
            # they need what it held (Rule 6)
            lost = [j for j in worker.jobs if j.export or j.pinned is worker]
            self.backlog.extendleft(reversed([j for j in worker.jobs if j not in lost]))
            self._fail_lost(lost, worker)
            worker.jobs.clear()
        if worker.waiting:
            self._fail_lost([j for j in self.backlog if j.pinned is worker], worker)
            self.backlog = collections.deque(j for j in self.backlog if j.pinned is not worker)
            worker.waiting = 0
        _close(worker)
        if self.state is PoolState.RUNNING:
            self._spawn(worker.slot)

    def _fail_lost(self, jobs: list[_Job], worker: _Worker) -> None:
        """Fail jobs that needed a value held by a worker that died (Rule 6)."""
        for job in jobs:
            if job.future.done():
                continue
            held = job.holds[0] if job.holds else Held(worker, job.tid, job.task)
            job.future.set_exception(_lost(job.task, held))

    def _on_future_done(self, worker: _Worker, job: _Job, future: asyncio.Future[Any]) -> None:
        # Rule 3: the driver cancelled a running task (fail_fast): kill the worker.  A
        # job still queued behind another is left to run and be ignored.
        if job.timer is not None:
            job.timer.cancel()
        if future.cancelled() and worker.jobs and worker.jobs[0] is job and not worker.dead:
            _signal(worker.process, "kill")

    def _expire(self, worker: _Worker, job: _Job) -> None:
        """A job ran past its timeout: kill its worker.  Its sentinel then fails the
        job with `TaskTimeoutError`, after starting a replacement, so the driver
        hears of the failure when the pool has room again."""
        job.timer = None
        if job.future.done() or worker.dead or not worker.jobs or worker.jobs[0] is not job:
            return
        job.expired = True
        _signal(worker.process, "kill")

    def _unwatch(self, worker: _Worker) -> None:
        assert self.loop is not None
        for fd in (worker.conn, worker.process.sentinel):
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(fd if isinstance(fd, int) else fd.fileno())


def _close(worker: _Worker) -> None:
    worker.conn.close()
    worker.sock.close()
    worker.alive.close()


def _lost(task: Hashable, held: Held) -> WorkerCrashedError:
    """The error of a task whose input, held by a worker, died with it (Rule 6)."""
    worker = held.worker
    how = describe_exit(worker.pid, worker.process.exitcode)
    return WorkerCrashedError(
        task,
        worker.pid,
        worker.process.exitcode,
        f"its input {held.task!r} was lost: the worker process that kept it died "
        f"before task {task!r} could take it ({how})",
        lost=held.task,
    )


def _pickled_function(task: Hashable, func: Callable[..., Any], same: Any = None) -> bytes:
    """A function's bytes for a worker (``same``: the `SameCode` sent in its place).

    Raises:
        SerializationError: it cannot be pickled (naming the task)."""
    try:
        return worker_module.dumps_for_worker(func if same is None else same)
    except Exception as exc:
        raise SerializationError(task, "function", type(func).__qualname__, str(exc)) from None


def _fits_in_pipe(job: _Job, worker: _Worker, base: tuple[int, bytes] | None) -> bool:
    size = len(job.message)
    if job.fid not in worker.known:
        size += len(job.fn_blob or b"")
        if base is not None and base[0] not in worker.known:  # sent first (`SameCode`)
            size += len(base[1])
    if job.post is not None and job.post[0] not in worker.known:
        size += len(job.post[1] or b"")
    return size <= PREFETCH_MAX_BYTES


def _rebuild(
    task: Hashable, pid: int | None, blob: bytes | None, type_name: str, message: str, tb: str
) -> BaseException:
    """The task's exception from the wire, with the worker's traceback as its cause."""
    exc: BaseException
    if blob is None:
        exc = SerializationError(task, "exception", type_name, message)
    else:
        try:
            exc = loads(blob)
        except Exception:
            exc = SerializationError(task, "exception", type_name, message)
    exc.__cause__ = RemoteTraceback(tb)
    exc.add_note(f"task {task!r} failed in worker process {pid}")
    return exc


def _unpicklable_args(task: Hashable, args: Sequence[Any], exc: Exception) -> SerializationError:
    for i, arg in enumerate(args):
        try:
            worker_module.dumps_for_worker(arg)
        except Exception:
            return SerializationError(task, f"argument {i}", type(arg).__qualname__, str(exc))
    return SerializationError(task, "arguments", "tuple", str(exc))


def _thread_limits(workers: int) -> dict[str, str]:
    """Native thread pools sized to cores // workers, unless the user set them."""
    share = str(max(1, (os.cpu_count() or 1) // workers))
    return {var: os.environ.get(var, share) for var in _THREAD_VARS}


def _log_levels() -> dict[str, int]:
    """The levels the driver's loggers have, so workers emit the records wanted here."""
    levels = {"root": logging.getLogger().getEffectiveLevel()}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


_START_LOCK = threading.Lock()


def forkable(workers: int) -> bool:
    """Whether the driver may fork ``workers`` workers itself (Rule 7): they cost
    less than the fork server would (`FORK_MAX_COPY`), and it has one thread, or
    its other threads are, it seems, OpenBLAS's idle pool (numpy's, started at its
    import), which OpenBLAS stops before any fork (its pthread_atfork handler) and
    starts again at its next call.  `ProcessPool._fork` checks that the fork found
    one thread; never with another Python thread."""
    if _resident_bytes() * workers > FORK_MAX_COPY:
        return False
    if single_threaded():
        return True
    return threading.active_count() == 1 and bool(worker_module.openblas_libraries())


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _ForkedThreaded(OSError):
    """A fork found a thread besides the driver's own: its child was killed."""


def single_threaded() -> bool:
    """Whether this process has one thread, as the kernel counts them: threads
    started from C count too (a BLAS pool, libuv's).  Only then may it fork.  The
    kernel's io_uring workers (libuv's io_uring, in uvloop 0.19) run no code of this
    process and hold none of its locks: they do not count.  They are told by their
    flag, not their name (``iou-sqp-*``), which a new one takes only once it runs.
    Nor does a thread that is exiting: it has left this process's code for good."""
    try:
        others = [t for t in os.listdir("/proc/self/task") if t != str(os.getpid())]
    except OSError:
        return False
    return all(_inert(tid) for tid in others)


_PF_EXITING = 0x4  # the kernel's task flags (linux/sched.h): in do_exit
_PF_IO_WORKER = 0x10  # an io_uring worker


def _inert(tid: str) -> bool:
    """Whether a thread of this process runs none of its code: gone since the listing
    (io_uring's workers come and go), or `_inert_stat`."""
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            return _inert_stat(f.read())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _inert_stat(stat: bytes) -> bool:
    """Whether a thread's ``/proc/.../stat`` says it is an io_uring worker of the
    kernel, or exiting.  An exiting thread matters after a fork: OpenBLAS stops its
    pool before one, and ``pthread_join`` returns as soon as a thread's exit wakes it,
    while the kernel lists the thread until its exit ends: the likely cause of a
    numpy driver's fork judged threaded once in CI (its workers went to the fork
    server), not reproduced here in 600 forks."""
    try:
        flags = int(stat[stat.rindex(b")") + 2 :].split()[6])  # after "(comm) state ..."
    except (ValueError, IndexError):
        return False
    return bool(flags & (_PF_IO_WORKER | _PF_EXITING))


@contextlib.contextmanager
def _preloading(modules: Sequence[str]) -> Iterator[None]:
    """While a worker starts (and with it, the first time, the fork server), name the
    modules the server should import: taskmap.worker imports each there and survives
    one that fails, which multiprocessing's own preload list would not."""
    if not modules:
        yield
        return
    os.environ[worker_module.PRELOAD_VARIABLE] = json.dumps([list(modules), sys.path])
    try:
        yield
    finally:
        os.environ.pop(worker_module.PRELOAD_VARIABLE, None)


def _check_preparation_data() -> None:
    if not callable(getattr(spawn, "get_preparation_data", None)):  # 3.14+ may move it
        raise RuntimeError(
            "taskmap starts workers without re-running __main__ by patching "
            "multiprocessing.spawn.get_preparation_data, which this Python "
            f"({sys.version.split()[0]}) does not have; please report it to taskmap"
        )


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start a worker without re-running the user's ``__main__`` in it.

    Under spawn and forkserver, multiprocessing re-imports the main script in each
    child, which breaks scripts without an ``if __name__ == '__main__'`` guard (the
    norm with taskmap 0.0.6, which forked).  Workers do not need it: functions from
    ``__main__`` cross by value with cloudpickle.  So the preparation data a child
    receives is stripped of the main-module entries while a worker starts.
    """
    _check_preparation_data()  # a CPython internal: fail loudly if it moves (3.14+)
    original = spawn.get_preparation_data

    def without_main(name: str) -> dict[str, Any]:
        data = original(name)
        if not isinstance(data, dict):
            raise RuntimeError(
                "multiprocessing.spawn.get_preparation_data returned "
                f"{type(data).__qualname__}, not a dict, on Python {sys.version.split()[0]}: "
                "taskmap cannot keep workers from re-running __main__; please report it"
            )
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _START_LOCK:
        spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            spawn.get_preparation_data = original


def _signal(process: BaseProcess, how: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        getattr(process, how)()
