"""Every exception taskmap raises or records.

The hierarchy::

    TaskmapError(Exception)
    ├── GraphError(ValueError)        the graph given to create_graph (or a query) is wrong
    │   ├── CycleError                 the dependencies form a cycle
    │   ├── MissingDependencyError     a task depends on a name that is not a task
    │   ├── MissingFunctionError       a task in ``dependencies`` has no function
    │   ├── NotCallableError           a value in ``funcs`` is not callable
    │   ├── ExpandError                ``expand=`` names a task it cannot expand
    │   └── UnknownTaskError           io_bound / done / targets / ... name a non-task
    ├── TaskError                      recorded as a task's result: why it has no value
    │   ├── UpstreamFailedError        not run: a dependency failed or was not run
    │   ├── RunStoppedError            not run or cancelled: the run stopped (fail_fast)
    │   ├── WorkerCrashedError         the worker process running the task died
    │   ├── TaskTimeoutError(TimeoutError)  an attempt ran past its timeout
    │   └── SerializationError         the task's function, input, result or exception
    │                                  could not cross to or from its worker process
    ├── NoStoredResultError(LookupError)  load_result: the cache holds no value for the
    │                                  task's current code and inputs
    ├── TaskDirectoryError(RuntimeError)  task_directory: no directory for this call
    │                                  (outside a task, no local cache, no cache key)
    └── GraphvizError(RuntimeError)    Graphviz's dot failed or timed out (to_svg)

    CacheWarning(UserWarning)          a cache entry could not be read or written: the
                                       task runs (or its value is not kept); nothing fails
    StallWarning(RuntimeWarning)       an io-bound coroutine blocked the event loop

Graph errors are raised.  Task errors are never raised by a runner: they are *stored*
in ``graph.results`` in place of a value, so ``reset_failed_tasks`` (which resets every
task whose result is an ``Exception``) reruns them.  A task's own exception is stored
as it was raised, its traceback kept.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

__all__ = [
    "CacheWarning",
    "CycleError",
    "ExpandError",
    "GraphError",
    "GraphvizError",
    "MissingDependencyError",
    "MissingFunctionError",
    "NoStoredResultError",
    "NotCallableError",
    "RunStoppedError",
    "SerializationError",
    "StallWarning",
    "TaskDirectoryError",
    "TaskError",
    "TaskTimeoutError",
    "TaskmapError",
    "UnknownTaskError",
    "UpstreamFailedError",
    "WorkerCrashedError",
]

_SHOWN = 10


def format_names(names: Iterable[Hashable]) -> str:
    """Render task names for a message: sorted, the first ten, then 'and N more'."""
    shown = sorted((repr(n) for n in names), key=lambda r: (len(r), r))
    head = ", ".join(shown[:_SHOWN])
    if len(shown) > _SHOWN:
        head += f" and {len(shown) - _SHOWN} more"
    return head


class CacheWarning(UserWarning):
    """A cache entry could not be read (torn, corrupt, written by an incompatible
    version) or written (unpicklable value, store error).  Never an error: an entry
    that cannot be read is a miss, and the task runs again."""


class StallWarning(RuntimeWarning):
    """An io-bound coroutine blocked the driver's event loop longer than the run's
    ``stall_warning`` threshold (a ``time.sleep`` or heavy CPU work in ``async def``):
    meanwhile no other io-bound task could make progress.  Warned once per task and
    run, pointing at the coroutine function."""


class TaskmapError(Exception):
    """Base class of every exception taskmap defines."""


class GraphError(TaskmapError, ValueError):
    """The graph is malformed; raised by `create_graph` and the graph queries.

    A `ValueError`, so code written against taskmap 0.0.6 (which raised plain
    `ValueError`) keeps working.
    """


class CycleError(GraphError):
    """The dependencies form a cycle.

    Attributes:
        cycle: the tasks along the cycle, first task repeated at the end
            (``['a', 'b', 'a']`` means 'a' depends on 'b', which depends on 'a').
    """

    def __init__(self, cycle: Sequence[Hashable]) -> None:
        self.cycle = list(cycle)
        path = " -> ".join(repr(n) for n in self.cycle)
        super().__init__(f"dependency cycle: {path} (each task depends on the next)")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.cycle,))


class MissingDependencyError(GraphError):
    """A task depends on a name that is not a key of ``dependencies``.

    Attributes:
        missing: ``{task: [names it depends on that are not tasks]}``.
    """

    def __init__(
        self, missing: dict[Hashable, list[Hashable]], tasks: Iterable[Hashable] = ()
    ) -> None:
        self.missing = missing
        parts = []
        for task in sorted(missing, key=repr)[:_SHOWN]:
            for dep in missing[task]:
                hint = _did_you_mean(dep, tasks)
                parts.append(f"task {task!r} depends on {dep!r}, which is not a task{hint}")
        more = len(missing) - _SHOWN
        message = "; ".join(parts) + (f"; and {more} more tasks" if more > 0 else "")
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class MissingFunctionError(GraphError):
    """A key of ``dependencies`` has no function in ``funcs``.

    Attributes:
        tasks: the task names without a function.
    """

    def __init__(self, tasks: Iterable[Hashable]) -> None:
        self.tasks = sorted(tasks, key=repr)
        noun = "task has" if len(self.tasks) == 1 else "tasks have"
        super().__init__(f"{noun} no function in funcs: {format_names(self.tasks)}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.tasks,))


class NotCallableError(GraphError):
    """A value of ``funcs`` is not callable.

    Attributes:
        found: ``{task: the non-callable value}``.
    """

    def __init__(self, found: dict[Hashable, object]) -> None:
        self.found = found
        parts = [
            f"{task!r} (got {value!r}, {with_article(type(value).__name__)})"
            for task, value in sorted(found.items(), key=lambda kv: repr(kv[0]))[:_SHOWN]
        ]
        more = len(found) - _SHOWN
        message = "funcs must map each task to a callable; not callable: " + ", ".join(parts)
        super().__init__(message + (f" and {more} more" if more > 0 else ""))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class ExpandError(GraphError):
    """``expand=`` asks for an expansion that cannot be: the task does not depend on
    what it is expanded over, it is expanded over more than one dependency, or the
    expand chain has a cycle.

    Attributes:
        task: the expanded task the error is about.
    """

    def __init__(self, task: Hashable, message: str) -> None:
        self.task = task
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.args[0]))


class UnknownTaskError(GraphError, KeyError):
    """A name given where a task is expected (io_bound, done, targets...) is not a task.

    Also a `KeyError`, as a lookup of an unknown key would be.

    Attributes:
        where: the argument that held the names (``'io_bound'``, ``'done'``...).
        names: the names that are not tasks.
    """

    def __init__(
        self, where: str, names: Iterable[Hashable], tasks: Iterable[Hashable] = ()
    ) -> None:
        self.where = where
        self.names = sorted(names, key=repr)
        hint = _did_you_mean(self.names[0], tasks) if len(self.names) == 1 else ""
        noun = "a name that is not a task" if len(self.names) == 1 else "names that are not tasks"
        super().__init__(f"{where} holds {noun}: {format_names(self.names)}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> BaseException:
    """Unpickle an error whose message was built from data a hint needed (no recomputing)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class TaskError(TaskmapError):
    """Stored as a task's result when the task produced no value of its own.

    Attributes:
        task: the task this error is the result of.
    """

    def __init__(self, task: Hashable, message: str) -> None:
        self.task = task
        super().__init__(message)


class UpstreamFailedError(TaskError):
    """The task was not run because a dependency failed (or was itself not run).

    An expanded task's gathered results (``create_graph(expand=...)``) fail with it
    when instances failed: it names every failed instance, and so does the error of
    each task downstream.

    Attributes:
        task: the task that was not run.
        failed: the task whose failure caused it: the root cause, not the parent
            (the first failed instance, for a gather).
        failures: every root cause: ``[failed]``, or a gather's failed instances.
    """

    def __init__(
        self, task: Hashable, failed: Hashable, failures: Sequence[Hashable] | None = None
    ) -> None:
        self.failed = failed
        self.failures = [failed] if failures is None else list(failures)
        if len(self.failures) > 1:
            what = f"instances {format_names(self.failures)} failed"
        else:
            what = f"ancestor {failed!r} failed"
        super().__init__(task, f"task {task!r} not run: its {what}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.failed, self.failures))


class RunStoppedError(TaskError):
    """The task was not started, or was cancelled, because the run stopped early.

    With ``on_error='fail_fast'`` the first failure stops the run; every task that
    had not finished gets this error.  Unlike `UpstreamFailedError`, the task did
    not depend on the failure.

    Attributes:
        task: the task that was stopped.
        failed: the task whose failure stopped the run.
        cancelled: True when the task had started and was cancelled.
    """

    def __init__(self, task: Hashable, failed: Hashable, cancelled: bool = False) -> None:
        self.failed = failed
        self.cancelled = cancelled
        what = "cancelled" if cancelled else "not run"
        super().__init__(
            task, f"task {task!r} {what}: the run stopped when {failed!r} failed (fail_fast)"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.failed, self.cancelled))


class WorkerCrashedError(TaskError):
    """The worker process running the task died (a signal, ``os._exit``, a crash).

    Only the task that was running is failed; the worker is replaced and the run
    goes on.  On Dask, the scheduler's ``KilledWorker`` becomes this error, with the
    original as its ``__cause__``.

    Attributes:
        task: the task the worker was running.
        pid: the worker's process id (None on a foreign executor).
        exitcode: the process exit code; negative for a signal (``-9`` is SIGKILL).
        detail: how it died, when the pid and exit code cannot say.
        lost: the dependency whose value died with the worker that kept it (a
            zero-copy chain under ``drop_results=True``); None when the task itself
            was running there.
    """

    def __init__(
        self,
        task: Hashable,
        pid: int | None,
        exitcode: int | None,
        detail: str | None = None,
        *,
        lost: Hashable | None = None,
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.detail = detail
        self.lost = lost
        how = detail if detail is not None else describe_exit(pid, exitcode)
        super().__init__(task, f"task {task!r} failed: {how}")

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.task, self.pid, self.exitcode, self.detail)
        return (type(self), args, {"lost": self.lost})


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran longer than its timeout (``create_graph(timeouts=...)``).

    How it was stopped depends on where it ran: a coroutine is cancelled; a task in
    a worker process is stopped by killing that worker, which is replaced; a plain
    function in a thread of this process cannot be stopped, so it is abandoned and
    runs on until it returns (its result is ignored).  Unlike `WorkerCrashedError`,
    the task itself took too long.  It is also a `TimeoutError`, so a `Retry` with
    ``on=(TimeoutError,)`` retries it.

    Attributes:
        task: the task that timed out.
        seconds: its timeout.
        how: how it was stopped (``'cancelled'``, ``'worker replaced'``,
            ``'abandoned'``, or ``'executor'`` for a foreign executor).
    """

    def __init__(self, task: Hashable, seconds: float, how: str) -> None:
        self.seconds = seconds
        self.how = how
        detail = {
            "cancelled": "its coroutine was cancelled",
            "worker replaced": "its worker process was killed and replaced",
            "abandoned": "it runs in a thread, which cannot be stopped: it was abandoned",
            "executor": "the executor was asked to cancel it (a task already running on "
            "a Dask worker runs on until it returns)",
        }.get(how, how)
        super().__init__(task, f"task {task!r} timed out after {seconds:g} s: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.seconds, self.how))


class NoStoredResultError(TaskmapError, LookupError):
    """`load_result` found no stored value for the task's current code and inputs.

    Raised, never stored as a task's result (unlike a `TaskError`): nothing ran.  The
    reason is the one `explain` gives for the task: it would run (code changed, input
    changed, failed before, no entry, an upstream task runs...).

    Attributes:
        task: the task asked for.
        reason: why there is no value: a `Reason` (``Reason.CODE_CHANGED``...).
        detail: what `explain` adds to the reason (which input changed...), or ``""``.
    """

    def __init__(self, task: Hashable, reason: object, detail: str = "") -> None:
        self.task = task
        self.reason = reason
        self.detail = detail
        why = getattr(reason, "value", reason)
        more = f" ({detail})" if detail else ""
        super().__init__(
            f"task {task!r} has no stored result for its current code and inputs: {why}{more}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.reason, self.detail))


class TaskDirectoryError(TaskmapError, RuntimeError):
    """`task_directory` was called where there is no task directory: outside a task,
    in a task of a graph without a cache on a local directory, or in a task without a
    cache key (``uncached=``, or an input with no digest).

    Raised to the caller of `task_directory` (inside a task, it fails the task as any
    exception does); unlike a `TaskError` it is not made by taskmap for a task.

    Attributes:
        task: the task that asked, or None outside a task.
        why: what is missing, in words.
    """

    def __init__(self, task: Hashable | None, why: str) -> None:
        self.task = task
        self.why = why
        where = "outside a task" if task is None else f"in task {task!r}"
        super().__init__(f"task_directory() {where}: {why}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.why))


class GraphvizError(TaskmapError, RuntimeError):
    """Graphviz's ``dot`` ran for `to_svg` and failed, or did not finish in time.

    A missing ``dot`` is a `FileNotFoundError` instead: Graphviz is not installed.

    Attributes:
        returncode: dot's exit code (negative: the signal that killed it); None
            when it timed out.
        stderr: what dot wrote to its standard error, stripped.
    """

    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.args[0], self.returncode, self.stderr))


def describe_exit(pid: int | None, exitcode: int | None) -> str:
    """Say how a worker died, with its signal's name and the likely causes, as loky does."""
    import signal

    who = f"its worker (pid {pid})" if pid else "its worker"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        causes = {
            "SIGKILL": "killed from outside, or by the OS for lack of memory",
            "SIGSEGV": "a crash in native code (segmentation fault)",
            "SIGABRT": "native code aborted",
            "SIGBUS": "a crash in native code (bus error)",
            "SIGTERM": "terminated from outside",
        }.get(name, "the signal was sent by the task or from outside")
        return f"{who} was killed by {name} (exit code {exitcode}); likely cause: {causes}"
    return (
        f"{who} exited with code {exitcode} while running it; likely cause: os._exit() "
        "or sys.exit() called by the task or native code"
    )


class SerializationError(TaskError):
    """Something of the task could not cross to or from its worker process.

    Attributes:
        task: the task.
        what: ``'function'``, ``'arguments'``, ``'argument N'``, ``'result'`` or
            ``'exception'``.
        type_name: the type of the object that could not be pickled; empty when it
            was pickled but could not be rebuilt on the other side.
    """

    def __init__(self, task: Hashable, what: str, type_name: str, detail: str) -> None:
        self.what = what
        self.type_name = type_name
        self.detail = detail
        if not type_name:
            where = "the driver" if what in ("result", "exception") else "its worker process"
            message = f"task {task!r}: its {what} cannot be rebuilt in {where}: {detail}"
        elif what in ("result", "exception"):
            verb = "returned" if what == "result" else "raised"
            message = (
                f"task {task!r} {verb} {with_article(type_name)}, which cannot be pickled to "
                f"send it back from its worker process: {detail}"
            )
        else:
            message = (
                f"task {task!r} cannot be sent to a worker process: its {what} "
                f"({with_article(type_name)}) cannot be pickled: {detail}"
            )
        super().__init__(task, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.what, self.type_name, self.detail))


def with_article(noun: str) -> str:
    """'a lock', 'an int': a type name for a message."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _did_you_mean(name: Hashable, tasks: Iterable[Hashable]) -> str:
    if not isinstance(name, str):
        return ""
    import difflib

    strings = [t for t in tasks if isinstance(t, str)]
    if len(strings) > 20_000:  # difflib is quadratic-ish; a hint is not worth seconds
        return ""
    close = difflib.get_close_matches(name, strings, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


for _name in __all__:
    globals()[_name].__module__ = "taskmap"
