"""Compatibility logging (``<name>-manager`` / ``<name>-worker``) and `in_progress`.

Messages keep taskmap 0.0.6's shape, ``pid <pid>: <verb> task <name>``, so logs and
the tools that read them keep working.  Following the convention for libraries,
the loggers get a `logging.NullHandler` and log nothing unless asked: by the
application's own logging set-up, or by ``logging_config`` on `create_graph`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import (
    EVENT_TYPES,
    Event,
    RunFinished,
    RunStarted,
    TaskFailed,
    TaskFinished,
    TaskQueued,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
)

__all__ = ["LogObserver", "configure", "in_progress", "loggers"]

_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_LINE = re.compile(r"pid \d+: (queueing|starting|finished|failed|skipped) task (.*?)\s*$")


def loggers(name: str) -> tuple[logging.Logger, logging.Logger]:
    """The manager and worker loggers of graph ``name``."""
    return logging.getLogger(f"{name}-manager"), logging.getLogger(f"{name}-worker")


def configure(name: str, config: Mapping[str, Any]) -> None:
    """Apply a graph's ``logging_config``; idempotent for the same graph name.

    Keys: ``'level'`` (a level name or number) sets both loggers' level;
    ``'write': True`` adds a file handler writing to ``'path'`` (default
    ``<name>.log`` in the current directory), at level INFO unless ``'level'``
    says otherwise.
    """
    level = config.get("level")
    if level is None and config.get("write"):
        level = logging.INFO
    path = Path(config.get("path") or f"{name}.log").resolve()
    for logger in loggers(name):
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        if level is not None:
            logger.setLevel(level)
        if config.get("write") and not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
            for h in logger.handlers
        ):
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(handler)


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
