"""Shared fixtures: the runners of the conformance suite, and call counting through files.

Runners that ship tasks to worker processes are appended to `RUNNERS`, so every task a
test hands to the `runner` fixture must be a module-level function or a closure that
cloudpickle can ship, and calls are counted through files (`Calls`), not Python lists.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest

import taskmap

RUNNERS: list[Callable[..., taskmap.Graph]] = [
    taskmap.run,
    taskmap.run_async,
    taskmap.run_parallel,
    taskmap.run_parallel_async,
]


@pytest.fixture(params=RUNNERS, ids=lambda runner: runner.__name__)
def runner(request: pytest.FixtureRequest) -> Callable[..., taskmap.Graph]:
    """Each runner in turn: ``runner(graph, **options)``."""
    return request.param  # type: ignore[no-any-return]


class Calls:
    """Makes tasks that record each call in a file, and counts those calls.

    Files, not lists: a task may run in a worker process.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: Hashable) -> str:
        return str(self.directory / f"{name}.calls")

    def count(self, name: Hashable) -> int:
        try:
            return len(Path(self.path(name)).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0

    def task(self, name: str, *, fail: bool = False, none: bool = False) -> Callable[..., Any]:
        """A task that records its call and returns ``'name(arg, ...)'``.

        With ``fail`` it raises ``ValueError('task <name> exploded')``; with ``none``
        it returns None.  The closure uses only builtins, so cloudpickle ships it.
        """
        path = self.path(name)

        def task(*args: object) -> str | None:
            with open(path, "a", encoding="utf-8") as file:
                file.write("x")
            if fail:
                raise ValueError(f"task {name} exploded")
            if none:
                return None
            return f"{name}({', '.join(map(str, args))})"

        return task


@pytest.fixture
def calls(tmp_path: Path) -> Calls:
    directory = tmp_path / "calls"
    directory.mkdir()
    return Calls(directory)
