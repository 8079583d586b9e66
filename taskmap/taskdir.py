"""The running task's own directory, and its captured output: `task_directory`.

Design note
-----------
A task with a cache key may keep files in a directory of its own, the one
`task_directory()` returns: ``<cache directory>/task-dirs/<key>``, one per cache key,
so it belongs to the entry its call makes (issue 14).  Rules:

1. **Set around the call, never shipped with the function.**  Whoever calls a task
   calls it in a `contextvars.Context` that holds its `Call` (`context`): the sync
   driver, the asyncio driver (a coroutine's Task and a thread inherit that context),
   a worker process (the directory travels in the "run" message, as `Call.wire`), a
   foreign executor (`worker.call_pickled`).  The driver's own context is never
   changed, so nothing of taskmap's runs "inside" a task.  Outside a call, or in a
   task that has no directory, `task_directory` raises `TaskDirectoryError` saying
   what is missing.
2. **Emptied at each call.**  The first `task_directory()` of a call empties the
   directory (or makes it); before a call, its caller also empties a directory an
   earlier call of the same key left (a failure, a retry), where one exists.
3. **Kept with the entry.**  The store removes a key's directory when it drops the
   entry (prune, trim, ``clear_cache``, ``reset_tasks``): see `checkpoint.store`.
4. **Captured output goes by context, at the level of sys.stdout and sys.stderr.**
   With ``capture_output``, a call's writes to ``sys.stdout`` and ``sys.stderr`` also
   go to ``stdout.txt`` and ``stderr.txt`` in its directory.  While a run captures,
   both streams are `Tee` proxies that look up the writer's context: coroutines
   interleaved on one loop, and threads, each write to their own files, and what
   no captured task writes passes through untouched.  The driver does not redirect
   file descriptors 1 and 2: every task running in its process at once, and
   taskmap itself, share them.  A worker process runs one task at a time, so there
   fd 1 and 2 are redirected to the files as well: what C code and subprocesses
   write is captured too (and then goes to the files only).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import IO, Any

from .errors import TaskDirectoryError

__all__ = ["STDERR", "STDOUT", "Call", "Tee", "context", "task_directory"]

#: the files a captured call's output goes to, in its directory
STDOUT = "stdout.txt"
STDERR = "stderr.txt"

#: what `task_directory` says outside any call
OUTSIDE = (
    "it returns the directory of the task that calls it, during a run of a graph with "
    "cache=<directory> (from the task's code, a coroutine it awaits or a thread it starts "
    "with a copy of its context)"
)


class Call:
    """One call of a task, as `task_directory` sees it.

    ``path``: the key's directory, or None when there is none (then ``why`` says why);
    ``capture``: its output is captured; ``ready``: the directory was emptied for this
    call; ``files``: the open capture files (stdout, stderr) while it captures.
    """

    __slots__ = ("capture", "files", "path", "ready", "saved", "task", "why")

    def __init__(
        self, task: object, path: str | None, capture: bool = False, why: str = ""
    ) -> None:
        self.task = task
        self.path = path
        self.capture = capture
        self.why = why
        self.ready = False
        self.files: tuple[IO[str], IO[str]] | None = None
        self.saved: tuple[int, int] | None = None  # fds 1 and 2, while redirected

    def wire(self) -> tuple[object, str | None, bool, str]:
        """What crosses to a worker (plain values: the worker need not import us)."""
        return (self.task, self.path, self.capture, self.why)

    def directory(self) -> Path:
        if self.path is None:
            raise TaskDirectoryError(self.task, self.why)
        if not self.ready:
            empty(self.path)
            self.ready = True
        return Path(self.path)

    def open(self, *, fds: bool = False) -> None:
        """Start capturing: an empty directory, its two files open (line-buffered);
        with ``fds`` (a worker process), fd 1 and 2 redirected to them as well."""
        if not self.capture or self.path is None:
            return
        self.close()  # a retry in the same call object: start afresh
        self.directory()
        self.files = (_open(self.path, STDOUT), _open(self.path, STDERR))
        if fds:
            _flush_c_streams()
            self.saved = (os.dup(1), os.dup(2))
            os.dup2(self.files[0].fileno(), 1)
            os.dup2(self.files[1].fileno(), 2)

    def close(self) -> None:
        """Stop capturing (idempotent)."""
        saved, self.saved = self.saved, None
        if saved is not None:
            _flush_c_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        files, self.files = self.files, None
        if files is not None:
            for file in files:
                with contextlib.suppress(OSError, ValueError):
                    file.close()


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "taskmap_task_call", default=None
)


def task_directory() -> Path:
    """Return the calling task's own directory, emptied for this call.

    The directory belongs to the task's cache key (its code and inputs): it is
    ``<cache>/task-dirs/<key>``, emptied (or made) when a call first asks for it, kept
    with the entry the call stores, and removed when that entry is pruned, trimmed or
    cleared.  Files a task writes there are what its cached value refers to: a model,
    a report, intermediate data too large to return.  It works in every runner, in
    worker processes, in coroutines the task awaits, and in threads that inherit the
    task's `contextvars` context (``asyncio.to_thread``, ``contextvars.copy_context``).

    Returns:
        The directory, a `pathlib.Path`; it exists and is empty at the call's first ask.

    Raises:
        TaskDirectoryError: called outside a task; the graph's cache is not a directory
            on this machine (a dict, an fsspec mapper: the entries have no place beside
            them); or the task has no cache key (``uncached=``, or an input with no
            digest).  The message says which.

    Example:
        >>> def fit(rows):
        ...     out = taskmap.task_directory() / "model.bin"
        ...     out.write_bytes(train(rows))
        ...     return str(out)
    """
    call = _CURRENT.get()
    if call is None:
        raise TaskDirectoryError(None, OUTSIDE)
    return call.directory()


def context(call: Call) -> contextvars.Context:
    """A copy of the current context in which `task_directory` answers for ``call``."""
    ctx = contextvars.copy_context()
    ctx.run(_CURRENT.set, call)
    return ctx


def from_wire(wire: tuple[Any, ...]) -> tuple[Call, contextvars.Context]:
    """A worker's `Call` and context from what crossed (`Call.wire`)."""
    call = Call(*wire)
    return call, context(call)


def empty(path: str) -> None:
    """Make ``path`` an empty directory (its parents too)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def clear(path: str) -> None:
    """Remove ``path`` and what it holds, if it exists."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        shutil.rmtree(path)


def _open(path: str, name: str) -> IO[str]:
    # closed by Call.close, when the call ends
    return open(
        os.path.join(path, name), "a", buffering=1, encoding="utf-8", errors="backslashreplace"
    )


def _flush_c_streams() -> None:
    """Flush C's stdio buffers (what C code printed goes where fd 1 points now)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class Tee:
    """Stands for ``sys.stdout`` (``index`` 0) or ``sys.stderr`` (1) while a run
    captures: a write also goes to the writer's capture file, if its context has one."""

    def __init__(self, stream: Any, index: int) -> None:
        self.stream = stream
        self.index = index

    def write(self, text: str) -> int:
        call = _CURRENT.get()
        if call is not None and call.files is not None:
            with contextlib.suppress(ValueError):  # closed by the end of its call meanwhile
                call.files[self.index].write(text)
        stream = self.stream
        return len(text) if stream is None else int(stream.write(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_LOCK = threading.Lock()
_TEES = 0  # runs capturing now in this process (the Tees are installed while > 0)


def begin_capture() -> None:
    """Install the `Tee` proxies (a run that captures starts; nests)."""
    global _TEES
    with _LOCK:
        if _TEES == 0:
            sys.stdout = Tee(sys.stdout, 0)
            sys.stderr = Tee(sys.stderr, 1)
        _TEES += 1


def end_capture() -> None:
    """Remove the proxies when the last capturing run ends (a stream someone replaced
    meanwhile is left as it is)."""
    global _TEES
    with _LOCK:
        _TEES -= 1
        if _TEES > 0:
            return
        _TEES = 0
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if type(stream) is Tee:
                setattr(sys, name, stream.stream)
