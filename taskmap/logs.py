"""Compatibility logging (``<name>-manager`` / ``<name>-worker``) and `in_progress`.

Messages keep taskmap 0.0.6's shape, ``pid <pid>: <verb> task <name>``, so logs and
the tools that read them keep working.  Following the convention for libraries,
the loggers get a `logging.NullHandler` and log nothing unless asked: by the
application's own logging set-up, or by ``logging_config`` on `create_graph`, which
applies it at once (`taskmap.graph.configure_logging`), as 0.0.6 did.
"""

from __future__ import annotations

import logging
import os
import re

from .events import (
    EVENT_TYPES,
    Event,
    RunFinished,
    RunStarted,
    TaskExpanded,
    TaskFailed,
    TaskFinished,
    TaskQueued,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
)
from .graph import configure_logging, loggers

__all__ = ["LogObserver", "configure_logging", "in_progress", "loggers"]

_LINE = re.compile(r"pid \d+: (queueing|starting|finished|failed|skipped) task (.*?)\s*$")


class LogObserver:
    """Writes the legacy log lines for a run's events."""

    def __init__(self, name: str) -> None:
        self.manager, self.worker = loggers(name)
        self.pid = os.getpid()
        #: the events that would be written at the loggers' current levels
        self.events: tuple[type, ...] = ()
        if self.manager.isEnabledFor(logging.INFO) or self.worker.isEnabledFor(logging.INFO):
            self.events = EVENT_TYPES
        elif self.worker.isEnabledFor(logging.WARNING):
            self.events = (TaskFailed, TaskRetrying)
        elif self.worker.isEnabledFor(logging.ERROR):
            self.events = (TaskFailed,)

    def __call__(self, event: Event) -> None:
        pid = self.pid
        match event:
            case TaskQueued(task):
                self.manager.info("pid %d: queueing task %s", pid, task)
            case TaskStarted(task, lane):
                self.worker.info("pid %d: starting task %s", pid, task, extra={"lane": lane})
            case TaskFinished(task):
                self.worker.info("pid %d: finished task %s", pid, task)
            case TaskFailed(task, error):
                self.worker.error("pid %d: failed task %s", pid, task, exc_info=error)
            case TaskRetrying(task, attempt, attempts, error, delay):
                self.worker.warning(
                    "pid %d: retrying task %s in %.3g s: attempt %d of %d failed: %s",
                    pid,
                    task,
                    delay,
                    attempt,
                    attempts,
                    _one_line(error),
                )
            case TaskSkipped(task, error):
                self.manager.info("pid %d: skipped task %s", pid, task)
            case TaskExpanded(task, instances):
                self.manager.info("pid %d: expanded task %s: %d instances", pid, task, instances)
            case RunStarted(graph, tasks):
                self.manager.info("pid %d: run of %s started: %d tasks", pid, graph, tasks)
            case RunFinished(graph, interrupted):
                how = "interrupted" if interrupted else "finished"
                self.manager.info("pid %d: run of %s %s", pid, graph, how)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__qualname__}: {text[0]}" if text else type(error).__qualname__


def in_progress(path_to_log: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Read a taskmap log file and say which tasks are running and which are queued.

    Returns:
        ``{'in_progress': names started and not yet finished, failed or cancelled,
        'queued': names queued and not yet started or skipped}``, as strings (a log
        is text).
    """
    queued: set[str] = set()
    started: set[str] = set()
    with open(path_to_log, encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _LINE.search(line)
            if match is None:
                continue
            verb, task = match.groups()
            if verb == "queueing":
                queued.add(task)
            elif verb == "starting":
                queued.discard(task)
                started.add(task)
            else:
                queued.discard(task)
                started.discard(task)
    return {"in_progress": started, "queued": queued}
