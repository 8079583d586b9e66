"""Plain functions in threads of the driver: a daemon thread of its own for a task
with a timeout, waited on from synchronous code or from the loop.

A thread cannot be stopped: on timeout it is abandoned.  It is daemonic so that it
does not hold up the interpreter's exit, and not a pool's, whose thread would stay
taken.  The function runs in a copy of the caller's `contextvars` context, as with
``asyncio.to_thread`` (`taskmap.task_directory` answers from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Hashable
from typing import Any

from ..errors import TaskTimeoutError
from .loop import timed

__all__ = ["call_in_thread", "in_thread"]


def call_in_thread(
    func: Callable[..., Any], args: list[Any], seconds: float, task: Hashable
) -> Any:
    """Call a plain function in a daemon thread and wait at most ``seconds`` for it.

    A thread cannot be stopped: on timeout it is abandoned (daemonic, so it does not
    hold up the interpreter's exit) and `TaskTimeoutError` is raised.
    """
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.append((True, context.run(func, *args)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name=f"taskmap-{task}", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TaskTimeoutError(task, seconds, "abandoned")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def in_thread(
    func: Callable[..., Any], args: list[Any], seconds: float, name: Hashable
) -> asyncio.Future[Any]:
    """Call a plain function in a daemon thread of its own, timed from the loop: on
    timeout the thread is abandoned (a pool's thread would stay taken)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def target() -> None:
        try:
            outcome = (True, context.run(func, *args))
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=f"taskmap-{name}", daemon=True).start()
    return asyncio.ensure_future(timed(future, seconds, name, "abandoned"))
