"""The live progress bar: done / cached / failed / running counts, elapsed, ETA.

An observer like the others: it learns about the run from events only.  It draws
with tqdm (imported when a bar is first shown, so ``import taskmap`` stays light),
on stderr, at most ten times a second, and only the bar's own line.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from typing import IO, Any

from .events import (
    Event,
    RunFinished,
    RunStarted,
    TaskExpanded,
    TaskFailed,
    TaskFinished,
    TaskRetrying,
    TaskSkipped,
    TaskStarted,
)

__all__ = ["ProgressBar", "wants_progress"]

#: seconds between two redraws
REFRESH = 0.1


def wants_progress(progress: bool | None, stream: IO[str] | None = None) -> bool:
    """``progress=`` of the runners: None means on when stderr is a terminal."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None (got {progress!r})")
        return progress
    if stream is None and in_notebook():
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _unmonitored(bar: type[Any]) -> type[Any]:
    """A tqdm bar class without tqdm's monitor thread: the driver redraws its bar
    itself, and a thread would keep it from forking its workers (pool Rule 7)."""
    return type(bar.__name__, (bar,), {"monitor_interval": 0})


def in_notebook() -> bool:
    """In a Jupyter kernel that can show widgets: the bar is tqdm's notebook form."""
    return "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None


class ProgressBar:
    """An observer drawing one tqdm bar for a run: call it with each event."""

    events = (
        RunStarted,
        TaskExpanded,
        TaskStarted,
        TaskFinished,
        TaskFailed,
        TaskRetrying,
        TaskSkipped,
        RunFinished,
    )

    def __init__(self, name: str, stream: IO[str] | None = None) -> None:
        self.name = name
        self.stream = stream
        self.bar: Any = None
        self.counts = dict.fromkeys(("done", "cached", "failed", "skipped", "running"), 0)
        self.finished = 0  # tasks finished, failed or skipped since the last redraw
        self.drawn = 0.0

    def __call__(self, event: Event) -> None:
        counts = self.counts
        match event:
            case TaskStarted():
                counts["running"] += 1
            case TaskFinished(cached=True):
                counts["cached"] += 1
                self.finished += 1
            case TaskFinished():
                counts["running"] -= 1
                counts["done"] += 1
                self.finished += 1
            case TaskFailed():
                counts["running"] -= 1
                counts["failed"] += 1
                self.finished += 1
            case TaskRetrying():  # the attempt ended; the next one starts again
                counts["running"] -= 1
            case TaskSkipped():
                counts["skipped"] += 1
                self.finished += 1
            case RunStarted(tasks=tasks):
                self._open(tasks)
                return
            case TaskExpanded(instances=instances):  # the run has more tasks
                if self.bar is not None:
                    self.bar.total += instances
                    self.bar.refresh()
                return
            case RunFinished():
                self._close()
                return
        if self.bar is not None and time.monotonic() - self.drawn >= REFRESH:
            self._draw()

    def _open(self, tasks: int) -> None:
        if self.stream is None and in_notebook():
            from tqdm.notebook import tqdm as notebook_bar

            self.bar = notebook_bar(total=tasks, desc=self.name, unit="task")
            self.drawn = time.monotonic()
            return
        from tqdm import tqdm  # the progress library: imported when a bar is shown

        stream = self.stream if self.stream is not None else sys.stderr
        size = _size(stream)
        self.bar = _unmonitored(tqdm)(
            total=tasks,
            desc=self.name,
            unit="task",
            file=stream,
            dynamic_ncols=size is None,
            ncols=size and size.columns,
            nrows=size and size.lines,
            mininterval=REFRESH,
            leave=True,
        )
        self.drawn = time.monotonic()

    def _draw(self) -> None:
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.update(self.finished)
        self.finished = 0
        self.drawn = time.monotonic()

    def _postfix(self) -> str:
        counts = self.counts
        parts = [f"{counts['done']} done"]
        parts += [f"{counts[k]} {k}" for k in ("cached", "failed", "skipped") if counts[k]]
        parts.append(f"{max(0, counts['running'])} running")
        return ", ".join(parts)

    def _close(self) -> None:
        if self.bar is None:
            return
        self.counts["running"] = 0
        self._draw()
        self.bar.refresh()
        self.bar.close()
        self.bar = None


def _size(stream: IO[str]) -> os.terminal_size | None:
    """None when the terminal knows its size (the bar follows resizes); else a size
    to draw for: on a terminal of zero rows and columns (some CI and container
    ttys) tqdm would draw nothing."""
    try:
        if os.get_terminal_size(stream.fileno()).columns > 0:
            return None
    except (AttributeError, OSError, ValueError):  # not a terminal, or no fileno
        pass
    return shutil.get_terminal_size((100, 24))
