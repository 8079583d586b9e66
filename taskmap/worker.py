"""The worker process: its main loop and the wire messages.

Design note
-----------
A worker is one process running `main`.  It talks to the driver over one duplex
pipe of length-prefixed messages (`multiprocessing.connection.Connection`), each
a pickled tuple whose first item is its tag::

    driver -> worker   ("fn", fid, function bytes)          before its first use there
                       (the bytes of a `SameCode`: a function whose code came with fid
                       ``base``, sent before it)
                       ("run", tid, fid, arguments, post fid or -1, keywords or None, flags
                        [, directory])
                       ("runs", tid, fid, layouts, (arguments, keywords) bytes, post fid,
                        flags [, directory])               + one fd per layout
                       directory: the task's `taskdir.Call` (a cached graph), as plain
                       values; the call is made in a context that holds it
                       ("export", tid)               a held value, for use elsewhere
                       ("stop",)
    worker -> driver   ("ready", pid)
                       ("ok", tid, result, start, end, posted)  perf_counter() readings;
                                                  posted: post(result), or None
                       ("shm", tid, layout, start, end, posted)  + the segment's fd
                       ("held", tid, start, end, posted)   the value stayed here (Rule 8)
                       ("err", tid, start, end, exception bytes or None, type name,
                        message, traceback text)
                       ("unpicklable", tid, result type name, why)
                       ("badinput", why)            a "run" whose arguments cannot be rebuilt
                       ("out", stream number, text)        print output, line by line
                       ("log", logging.LogRecord)          records of the task's loggers

Rules:
1. A function crosses once per worker (``fid``); the worker keeps it by id.  A
   ``functools.partial`` is not a function of its own: its function crosses once
   and its bound arguments travel with each "run", as data.  Functions sharing a
   code object (``lambda i=i: f(i)`` in a loop, closures made by one factory) share
   its shipping too: the first crosses whole, the others as a `SameCode`, which
   holds only what differs (defaults, closure cell values, names).
2. Arguments and results cross with `dumps`/`loads` below, the only pickling for the
   wire (cloudpickle where plain pickle cannot: lambdas, closures, local classes),
   pickled once with their message: a large value is not copied twice.
   Every "run" gets exactly one reply, in order.
3. An exception crosses with its traceback as text; one that cannot be pickled
   crosses as its type name and message.
4. The worker ignores SIGINT (the driver decides), and exits at once when the driver
   dies: a watchdog thread blocks on a second pipe whose other end only the driver
   holds, and reading EOF there means the driver is gone.
5. This module imports only the standard library and cloudpickle, so a new worker
   starts fast; asyncio only when a task returns a coroutine.
6. Tracebacks name the user's file: a code object shipped by value keeps its
   ``co_filename`` (`_CodePickler`), whatever cloudpickle version sent it.
7. The data plane's wire: a value whose protocol-5 pickle (in-band part and
   out-of-band buffers) is at least `SHARED_MIN` bytes is written once into a
   memfd segment (`Shared`): the in-band bytes, then each buffer 64-byte aligned.
   Its fd crosses the socket beside the message (SCM_RIGHTS), never its bytes.
   A reader maps the segment privately (copy-on-write): a task may mutate its
   input and no other reader sees it.  A memfd has no name: the kernel frees it
   when the last fd and mapping go, however the processes end.
8. Zero-copy chains: a "run" flagged `HOLD` keeps its value here, as the object
   itself, and replies "held"; the driver pins the value's one consumer to this
   worker, whose "run" (flagged `TAKES`) names it with a `Kept` placeholder: the
   consumer gets the object (it is its only user, so it may mutate it) and the
   worker lets it go.  "export" sends a held value as any result, for a consumer
   elsewhere or for ``graph.results``.  A held value dies with its worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import gc
import importlib
import io
import logging
import logging.handlers
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "HOLD",
    "SHARED_MIN",
    "TAKES",
    "Kept",
    "Pickled",
    "RemoteTraceback",
    "SameCode",
    "Shared",
    "call_pickled",
    "dumps",
    "dumps_for_worker",
    "loads",
    "main",
    "oob_size",
    "pickle_oob",
    "recv_fds",
    "run_message",
    "send_fds",
    "small",
    "to_segment",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL
loads = pickle.loads


def dumps(value: object) -> bytes:
    """Pickle for the wire: plain pickle first (fast), cloudpickle for what it cannot do."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        blob: bytes = cloudpickle.dumps(value, PROTOCOL)
        return blob


def dumps_for_worker(obj: object) -> bytes:
    """Pickle for a worker: what refers to the user's ``__main__`` (which workers do
    not import: functions, classes and their instances) goes by value, with
    cloudpickle; the rest with plain pickle, five times cheaper per message.

    Code shipped by value keeps its file name (Rule 6), so a worker's traceback
    names the user's file and line."""
    try:
        blob = pickle.dumps(obj, PROTOCOL)
    except Exception:
        blob = b"__main__"  # lambdas, closures, local classes: cloudpickle below
    if b"__main__" in blob:
        buffer = io.BytesIO()
        _CodePickler(buffer, PROTOCOL).dump(obj)
        blob = buffer.getvalue()
    return blob


class _CodePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, but a code object carries its real ``co_filename``.

    Since cloudpickle 3.1.2 every code object shipped by value is rebuilt with
    ``co_filename == "<dynamic-code>"`` (deterministic payloads), so a worker's
    traceback read ``File "<dynamic-code>", line 190`` with no source line.  Each
    code object (nested ones too: they are constants of their parent) is wrapped
    in `_code_in_file`, which puts the name back when the worker unpickles it.
    """

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is types.CodeType:
            rebuild, args = self.dispatch_table[types.CodeType](obj)
            return _code_in_file, (rebuild, args, obj.co_filename)
        return super().reducer_override(obj)


def _code_in_file(
    rebuild: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str
) -> types.CodeType:
    """Rebuild a code object shipped by `_CodePickler` with its real file name."""
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)


class SameCode:
    """A function whose code object crossed before, with another function (Rule 1):
    what differs, to rebuild it on the code and globals of that one (fid ``base``).

    `of` makes one only for a plain function with the same code and globals as
    ``base`` in the driver, without attributes of its own (``__dict__``: a
    ``functools.wraps`` wrapper, ``func.attr = ...``) and with every closure cell
    filled; else the function crosses whole."""

    __slots__ = ("base", "cells", "defaults", "kwdefaults", "name", "qualname")

    def __init__(
        self,
        base: int,
        name: str,
        qualname: str,
        defaults: tuple[Any, ...] | None,
        kwdefaults: dict[str, Any] | None,
        cells: tuple[Any, ...] | None,
    ) -> None:
        self.base = base
        self.name = name
        self.qualname = qualname
        self.defaults = defaults
        self.kwdefaults = kwdefaults
        self.cells = cells

    @classmethod
    def of(cls, func: object, base_fid: int, base: object) -> SameCode | None:
        """``func`` as a `SameCode` of ``base``, or None when it must cross whole."""
        if type(func) is not types.FunctionType or type(base) is not types.FunctionType:
            return None
        if func.__code__ is not base.__code__ or func.__globals__ is not base.__globals__:
            return None
        if func.__dict__ or func.__module__ != base.__module__:
            return None
        closure = func.__closure__
        try:
            cells = None if closure is None else tuple(c.cell_contents for c in closure)
        except ValueError:  # an empty cell (a name the factory had not bound yet)
            return None
        return cls(
            base_fid,
            func.__name__,
            func.__qualname__,
            func.__defaults__,
            func.__kwdefaults__,
            cells,
        )

    def build(self, base: Callable[..., Any] | Exception) -> Callable[..., Any]:
        """The function, on ``base``'s code and globals as this process rebuilt them."""
        if isinstance(base, Exception):
            raise base
        assert type(base) is types.FunctionType, base
        cells = None if self.cells is None else tuple(types.CellType(v) for v in self.cells)
        func = types.FunctionType(base.__code__, base.__globals__, self.name, self.defaults, cells)
        func.__qualname__ = self.qualname
        func.__kwdefaults__ = self.kwdefaults
        func.__module__ = base.__module__
        return func

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.name, self.qualname, self.defaults, self.kwdefaults, self.cells)
        return (SameCode, (self.base, *fields))


#: Rule 7: from this many bytes a value crosses in a shared segment.  Measured on a
#: chain of 300 hops on one worker (per hop, pipe against segment): 16 KB 0.60 ms
#: against 1.16, 64 KB 0.78 against 1.25, 256 KB 2.26 against 1.69, 1 MB 4.56
#: against 2.88: the segment wins from about 128 KB.
SHARED_MIN = 1 << 17 if hasattr(os, "memfd_create") else 1 << 62  # Linux: memfd
_ALIGN = 64  # numpy's preferred alignment for the out-of-band buffers


class Shared:
    """A value in a memfd segment (Rule 7): the holder of one holds the segment open.

    ``layout`` is ``(in-band length, ((offset, length) per buffer), total length)``.
    `load` rebuilds the value on a private (copy-on-write) mapping: no copy is made,
    and writes to the value stay in the loading process.  The fd is closed by
    `close`, or when the last reference goes (the segment is freed with the last
    fd and mapping).
    """

    __slots__ = ("fd", "layout")

    def __init__(self, fd: int, layout: tuple[int, tuple[tuple[int, int], ...], int]) -> None:
        self.fd = fd
        self.layout = layout

    @property
    def nbytes(self) -> int:
        return self.layout[2]

    def load(self) -> Any:
        if self.fd < 0:
            raise ValueError("the shared value was released")
        return load_segment(self.fd, self.layout)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Shared value of {self.nbytes:,} bytes, fd {self.fd}>"


def pickle_oob(value: object) -> tuple[bytes, list[memoryview]] | None:
    """Pickle protocol 5 with the large buffers out of band, as `dumps_for_worker`
    does: what refers to the user's ``__main__`` (which workers do not import: its
    classes' instances) goes by value, with cloudpickle.  None if neither can (the
    caller's path then reports why)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(value, 5, buffer_callback=buffers.append)
    except Exception:  # lambdas, local classes, classes shipped by value: below
        head = b"__main__"
    try:
        if b"__main__" in head:
            buffers, out = [], io.BytesIO()
            _CodePickler(out, 5, buffer_callback=buffers.append).dump(value)
            head = out.getvalue()
        return head, [buffer.raw() for buffer in buffers]
    except Exception:  # unpicklable, or a non-contiguous buffer
        return None


class Pickled:
    """A value already pickled (by `pickle_oob`, to learn its size), riding in its
    "run" message as bytes and unpickled with it: it is not pickled twice."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.blob,))


def oob_size(packed: tuple[bytes, list[memoryview]]) -> int:
    return len(packed[0]) + sum(raw.nbytes for raw in packed[1])


def to_segment(head: bytes, raws: list[memoryview]) -> Shared:
    """Write a protocol-5 pickle into a new memfd (one copy, no page faults here:
    the kernel copies) and return it as a `Shared`."""
    fd = os.memfd_create("taskmap-value", os.MFD_CLOEXEC)
    try:
        _write_all(fd, memoryview(head), 0)
        position, spans = len(head), []
        for raw in raws:
            position = -(-position // _ALIGN) * _ALIGN
            _write_all(fd, raw, position)
            spans.append((position, raw.nbytes))
            position += raw.nbytes
        os.ftruncate(fd, max(position, 1))
    except BaseException:
        os.close(fd)
        raise
    return Shared(fd, (len(head), tuple(spans), max(position, 1)))


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while data.nbytes:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def load_segment(fd: int, layout: tuple[int, tuple[tuple[int, int], ...], int]) -> Any:
    """The value in a segment, on a private copy-on-write mapping of it.

    Pages are mapped as they are read (MAP_POPULATE measured slower: a task that
    reads two numbers of a 400 MB input paid 0.8 s to map all of it)."""
    head, spans, total = layout
    flags = mmap.MAP_PRIVATE
    view = memoryview(mmap.mmap(fd, total, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    return pickle.loads(view[:head], buffers=[view[o : o + n] for o, n in spans])


#: "run" flags (Rule 8): keep the value here; the arguments name held values
HOLD, TAKES = 1, 2

_SMALL_TYPES = (int, float, bool, str, type(None), complex)


def small(value: object) -> bool:
    """Certainly below `SHARED_MIN` without pickling it (the common tiny value)."""
    kind = type(value)
    if kind in _SMALL_TYPES:
        return kind is not str or len(value) < SHARED_MIN // 4  # type: ignore[arg-type]
    return kind is bytes and len(value) < SHARED_MIN  # type: ignore[arg-type]


class Kept:
    """Stands in a "run" message for the held value of task ``tid`` (Rule 8)."""

    __slots__ = ("tid",)

    def __init__(self, tid: int) -> None:
        self.tid = tid

    def __reduce__(self) -> tuple[Any, ...]:
        return (Kept, (self.tid,))


def _take_held(args: tuple[Any, ...], held: dict[int, Any]) -> tuple[Any, ...]:
    """The arguments with each `Kept` replaced by its value, which leaves ``held``."""
    out = []
    for arg in args:
        if type(arg) is Kept:
            if arg.tid not in held:
                raise RuntimeError(f"taskmap: the value of task id {arg.tid} is not held here")
            arg = held.pop(arg.tid)
        out.append(arg)
    return tuple(out)


class _Slot:
    """Stands in a "runs" message for the argument in segment ``index``."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.index,))


def run_message(
    tid: int,
    fid: int,
    args: Sequence[Any],
    post_fid: int = -1,
    kwargs: dict[str, Any] | None = None,
    flags: int = 0,
    directory: tuple[Any, ...] | None = None,
) -> tuple[bytes, list[Shared]]:
    """The "run" message for a task, and the segments whose fds must follow it."""
    more = () if directory is None else (directory,)  # optional last field
    shared = [a for a in args if type(a) is Shared]
    if not shared:
        return dumps_for_worker(("run", tid, fid, tuple(args), post_fid, kwargs, flags, *more)), []
    index, placed = 0, []
    for arg in args:
        if type(arg) is Shared:
            placed.append(_Slot(index))
            index += 1
        else:
            placed.append(arg)
    blob = dumps_for_worker((tuple(placed), kwargs))
    layouts = [s.layout for s in shared]
    return dumps(("runs", tid, fid, layouts, blob, post_fid, flags, *more)), shared


def send_fds(sock: socket.socket, fds: Sequence[int]) -> None:
    """Send fds beside the byte stream (after the message that announces them)."""
    socket.send_fds(sock, [b"F"], list(fds))


def recv_fds(sock: socket.socket, count: int) -> list[int]:
    fds: list[int] = []
    while len(fds) < count:
        data, received, _, _ = socket.recv_fds(sock, 1, count - len(fds))
        if not data:
            for fd in received:
                os.close(fd)
            for fd in fds:
                os.close(fd)
            raise EOFError("the peer closed the socket while sending fds")
        fds.extend(received)
    return fds


class RemoteTraceback(Exception):
    """Carries a worker's traceback text; set as the ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class _PipeWriter(io.TextIOBase):
    """A text stream that forwards each complete line to the driver."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], stream: int) -> None:
        self._send = send
        self._stream = stream
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        if "\n" in self._buffer:
            head, _, self._buffer = self._buffer.rpartition("\n")
            self._send(("out", self._stream, head + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            text, self._buffer = self._buffer, ""
            self._send(("out", self._stream, text))


class _PipeQueue:
    """What `logging.handlers.QueueHandler` puts records into: the driver's pipe."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._send(("log", record))


def forked_main(
    shed: Sequence[Any],
    inherited: dict[int, Callable[..., Any]],
    conn: Connection,
    alive: Connection,
    env: dict[str, str],
    log_levels: dict[str, int],
) -> None:
    """`main`, in a worker forked from the driver itself (pool Rule 7): first shed
    what the driver's state would do here, so that the worker is as one forked from
    the server.  ``shed`` are the driver's ends of its pipes (this worker's and the
    others'): held open here, they would keep a pipe from ever reaching EOF.
    ``inherited`` are the graph's functions by id: the driver sends them no "fn"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: Ctrl-C is the driver's
    gc.freeze()  # the driver's objects: never traversed here, their pages stay shared
    with contextlib.suppress(ValueError):  # the driver loop's: a signal would wake it
        signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            if callable(signal.getsignal(signum)):  # the driver's Python handlers
                signal.signal(signum, signal.SIG_DFL)
    for end in shed:
        with contextlib.suppress(OSError):
            end.close()
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):  # the driver's files, bars, captures
            logger.handlers.clear()
    main(conn, alive, env, log_levels, inherited)


def main(
    conn: Connection,
    alive: Connection,
    env: dict[str, str],
    log_levels: dict[str, int],
    inherited: dict[int, Callable[..., Any]] | None = None,
) -> None:
    """Run tasks sent by the driver until told to stop or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ.update(env)
    _limit_loaded_blas(env)
    threading.Thread(target=_watchdog, args=(alive,), daemon=True).start()

    lock = threading.Lock()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))

    def send(message: tuple[Any, ...]) -> None:
        send_blob(dumps(message))

    def send_blob(blob: bytes, fds: Sequence[int] = ()) -> None:
        with lock:  # task threads may print or log too
            conn.send_bytes(blob)
            if fds:
                send_fds(sock, fds)

    _route_logging(send, log_levels)
    sys.stdout = _PipeWriter(send, 1)
    sys.stderr = _PipeWriter(send, 2)
    functions: dict[int, Callable[..., Any] | Exception] = dict(inherited or {})
    held: dict[int, Any] = {}  # Rule 8: values kept here for their consumer
    runner: asyncio.Runner | None = None  # made at the first coroutine (asyncio: imported then)
    send(("ready", os.getpid()))
    try:
        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                message = loads(raw)
            except Exception as exc:  # arguments this process cannot rebuild
                send(("badinput", f"{type(exc).__qualname__}: {exc}"))
                continue
            if message[0] == "stop":
                return
            if message[0] == "export":
                value = held.pop(message[1], _MISSING)
                if value is _MISSING:
                    send(("badinput", f"no value of task id {message[1]} is held here"))
                    continue
                answer, copy = _result_reply(message[1], value, time.perf_counter(), None)
                del value
                send_blob(answer, [] if copy is None else [copy.fd])
                if copy is not None:
                    copy.close()
                continue
            if message[0] == "fn":
                try:
                    function = loads(message[2])
                    if type(function) is SameCode:
                        function = function.build(functions[function.base])
                    functions[message[1]] = function
                except Exception as exc:  # raised by each task that uses it
                    functions[message[1]] = exc
                continue
            segments: list[Shared] = []
            if message[0] == "runs":  # Rule 7: the fds of its segments follow it
                _, tid, fid, layouts, blob, post_fid, flags, *where = message
                fds = recv_fds(sock, len(layouts))
                segments = [Shared(fd, layout) for fd, layout in zip(fds, layouts, strict=True)]
                try:
                    args, kwargs = loads(blob)
                except Exception as exc:  # arguments this process cannot rebuild
                    for shared in segments:
                        shared.close()
                    send(("badinput", f"{type(exc).__qualname__}: {exc}"))
                    continue
            else:
                _, tid, fid, args, post_fid, kwargs, flags, *where = message
            call, context = _enter(where[0]) if where else (None, None)
            started = time.perf_counter()
            try:
                if segments:
                    args = _fill_slots(args, segments)
                if flags & TAKES:
                    args = _take_held(args, held)
                func = functions[fid]
                if isinstance(func, Exception):
                    raise func
                if context is not None:  # task_directory() answers from it
                    func = functools.partial(context.run, func)
                try:
                    value = func(*args, **kwargs) if kwargs else func(*args)
                except TypeError as exc:
                    if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                        exc.add_note(f"the task was called with {len(args)} positional argument(s)")
                    raise
                if type(value) is CoroutineType:
                    if runner is None:
                        import asyncio

                        runner = asyncio.Runner(loop_factory=_new_event_loop())
                    value = runner.run(value, context=context or contextvars.copy_context())
            except BaseException as exc:
                reply: bytes = dumps(_error_reply(tid, exc, started))
                segment = None
            else:
                post = functions.get(post_fid) if post_fid >= 0 else None
                keep = flags & HOLD and not small(value)
                if keep:
                    held[tid] = value
                reply, segment = _result_reply(tid, value, started, post, held=bool(keep))
            finally:
                for shared in segments:  # mapped (or never used): the fds can go
                    shared.close()
                args = kwargs = value = None  # large inputs and results go before the next task
                if call is not None:
                    _leave(call)
            sys.stdout.flush()
            sys.stderr.flush()
            if segment is None:
                send_blob(reply)
            else:
                send_blob(reply, [segment.fd])
                segment.close()
    finally:
        if runner is not None:
            runner.close()


def _enter(wire: tuple[Any, ...], *, fds: bool = True) -> tuple[Any, Any]:
    """The task's `taskdir.Call` and context; its output captured from now on (in
    its files only, for what is written to fd 1 and 2 below Python)."""
    from . import taskdir  # only a cached graph's calls need it

    call, context = taskdir.from_wire(wire)
    if call.capture:
        try:
            call.open(fds=fds)
        except OSError as exc:
            print(f"taskmap: output of task {call.task!r} not captured: {exc!r}", file=sys.stderr)
        else:
            taskdir.begin_capture()
    return call, context


def _leave(call: Any) -> None:
    from . import taskdir

    if call.files is not None:
        call.close()
        taskdir.end_capture()


def _fill_slots(args: tuple[Any, ...], segments: list[Shared]) -> tuple[Any, ...]:
    """The arguments of a "runs" message, each `_Slot` loaded from its segment."""
    return tuple(segments[a.index].load() if type(a) is _Slot else a for a in args)


def _result_reply(
    tid: int,
    value: Any,
    started: float,
    post: Callable[[Any], Any] | Exception | None,
    *,
    held: bool = False,
) -> tuple[bytes, Shared | None]:
    """The reply for a task's value: in the message, or (Rule 7) in a new segment,
    or (``held``, Rule 8) "held": it stays here; with what ``post`` makes of it
    (None if it raised: the driver then does it)."""
    posted = None
    if post is not None and not isinstance(post, Exception):
        with contextlib.suppress(Exception):
            posted = post(value)
    if held:
        return dumps(("held", tid, started, time.perf_counter(), posted)), None
    packed = pickle_oob(value)
    if packed is not None and oob_size(packed) >= SHARED_MIN:
        try:
            segment = to_segment(*packed)
        except OSError:  # no memfd here, or no room: the pipe still works
            pass
        else:
            del packed
            layout = segment.layout
            return dumps(("shm", tid, layout, started, time.perf_counter(), posted)), segment
    del packed
    try:  # one pickle for the message and the value: no copy of a large value
        return dumps(("ok", tid, value, started, time.perf_counter(), posted)), None
    except Exception as exc:
        return dumps(("unpicklable", tid, type(value).__qualname__, str(exc))), None


_MISSING = object()


def _error_reply(tid: int, exc: BaseException, started: float) -> tuple[Any, ...]:
    ended = time.perf_counter()
    tb = "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = dumps(exc)
        loads(blob)  # type: ignore[arg-type]  # some exceptions pickle but cannot be rebuilt
    except Exception:
        blob = None
    return ("err", tid, started, ended, blob, type(exc).__qualname__, str(exc), tb)


def call_pickled(
    fn_blob: bytes, args_blob: bytes, directory: tuple[Any, ...] | None = None
) -> tuple[Any, str, float]:
    """Call a pickled function on pickled arguments: what a foreign Executor runs.

    ``directory``: the task's `taskdir.Call` as plain values (a cached graph): the
    call is made in a context that holds it; its path must be reachable where the
    call runs (the same machine, or a shared file system).

    Returns ``(value, where, seconds)``: where it ran (``host/pid``, and the thread
    unless it is the main one) and how long the call took.  A coroutine function's
    coroutine is run to completion on a new event loop.  An exception is re-raised
    with the traceback text and the same ``(where, seconds)`` attached, which the
    driver turns back into its ``__cause__`` and its span.
    """
    started = time.perf_counter()
    # (an executor may run calls in threads of one process: no fd redirection there)
    call, context = _enter(directory, fds=False) if directory is not None else (None, None)
    try:
        if context is None:
            context = contextvars.copy_context()
        value = context.run(loads(fn_blob), *loads(args_blob))
        if type(value) is CoroutineType:
            import asyncio

            with asyncio.Runner(loop_factory=_new_event_loop()) as runner:
                value = runner.run(value, context=context)
        return value, _where(), time.perf_counter() - started
    except Exception as exc:
        # __cause__ does not survive pickling but __dict__ does: the driver restores it.
        exc._taskmap_remote_tb = "".join(traceback.format_exception(exc))  # type: ignore[attr-defined]
        exc._taskmap_span = (_where(), time.perf_counter() - started)  # type: ignore[attr-defined]
        raise
    finally:
        if call is not None:
            _leave(call)


def _where() -> str:
    thread = threading.current_thread()
    where = f"{socket.gethostname()}/{os.getpid()}"
    return where if thread is threading.main_thread() else f"{where}/{thread.name}"


def _watchdog(alive: Connection) -> None:
    """Exit the moment the driver dies (its end of ``alive`` closes)."""
    with contextlib.suppress(EOFError, OSError):
        alive.recv_bytes()
    os._exit(70)


def _route_logging(send: Callable[[tuple[Any, ...]], None], levels: dict[str, int]) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(_PipeQueue(send)))  # type: ignore[arg-type]
    for name, level in levels.items():
        logging.getLogger(None if name == "root" else name).setLevel(level)


def openblas_libraries() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries loaded in this process (numpy's, scipy's), as
    ``/proc/self/maps`` lists them; none where there is no such file."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line}
    except OSError:
        return []
    found = []
    for path in sorted(paths):
        if path.startswith("/") and ".so" in path:
            with contextlib.suppress(OSError):
                found.append(ctypes.CDLL(path))  # loaded already: the same handle
    return found


#: OpenBLAS's own setter, under the names its builds export (numpy's wheels: scipy_)
_SET_BLAS_THREADS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)


def _limit_loaded_blas(env: dict[str, str]) -> None:
    """An OpenBLAS loaded before this worker began (a forked driver's, or numpy
    imported by the fork server) read ``OPENBLAS_NUM_THREADS`` then: set its count
    now, or two workers would run two BLAS threads each on two cores."""
    wanted = env.get("OPENBLAS_NUM_THREADS", "")
    if not wanted.isdigit() or not ({"numpy", "scipy"} & sys.modules.keys()):
        return
    for library in openblas_libraries():
        for name in _SET_BLAS_THREADS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(int(wanted)))
                break


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent exits (the driver, or the forkserver, which
    exits with the driver).  Backs up the watchdog pipe under the fork start method,
    where siblings inherit each other's pipe ends and EOF may never come."""
    if not sys.platform.startswith("linux"):
        return
    try:
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - unusual libc
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(70)


def _new_event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.new_event_loop
    return uvloop.new_event_loop


#: the modules of a graph's functions, for the fork server to import when it starts
PRELOAD_VARIABLE = "TASKMAP_PRELOAD"


def _preload() -> None:
    """In a fork server started by taskmap: import the modules its workers will need
    (`PRELOAD_VARIABLE`: JSON, the modules and the driver's ``sys.path``, which a
    Python 3.11 fork server does not apply), so each worker forks with them instead
    of importing them at every run.  One that fails is left for the worker to report."""
    wanted = os.environ.pop(PRELOAD_VARIABLE, "")
    if not wanted:
        return
    import json

    try:
        modules, path = json.loads(wanted)
    except ValueError:
        return
    sys.path[:] = [p for p in path if isinstance(p, str)]
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


_preload()
