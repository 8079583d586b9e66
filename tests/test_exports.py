"""The public API is exactly `taskmap.__all__` (httpx's test_exported_members.py)."""

from __future__ import annotations

import pickle
import types

import pytest

import taskmap
from taskmap import (
    CycleError,
    GraphvizError,
    MissingDependencyError,
    MissingFunctionError,
    NoStoredResultError,
    NotCallableError,
    Reason,
    RunStoppedError,
    SerializationError,
    TaskmapError,
    TaskTimeoutError,
    UnknownTaskError,
    UpstreamFailedError,
    WorkerCrashedError,
)


def test_every_name_in_all_exists() -> None:
    missing = [name for name in taskmap.__all__ if not hasattr(taskmap, name)]
    assert missing == []


def test_all_is_sorted_without_duplicates() -> None:
    assert taskmap.__all__ == sorted(set(taskmap.__all__))


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(taskmap).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert public - set(taskmap.__all__) == set()


@pytest.mark.parametrize("name", taskmap.__all__)
def test_public_objects_say_they_are_from_taskmap(name: str) -> None:
    obj = getattr(taskmap, name)
    if isinstance(obj, type) or callable(obj):
        assert obj.__module__ == "taskmap"


def test_public_classes_are_named_by_taskmap_in_reprs() -> None:
    assert repr(CycleError) == "<class 'taskmap.CycleError'>"
    assert repr(taskmap.TaskState.READY) == "<TaskState.READY: 2>"


def test_version_is_a_string() -> None:
    assert isinstance(taskmap.__version__, str)


ERRORS = [
    CycleError(["a", "b", "a"]),
    MissingDependencyError({"load": ["extrct"]}, ["extract", "load"]),
    MissingFunctionError(["b", "a"]),
    NotCallableError({"a": 3}),
    UnknownTaskError("done", ["lod"], ["load"]),
    UpstreamFailedError("b", "a"),
    RunStoppedError("b", "a", cancelled=True),
    WorkerCrashedError("b", 1234, -9),
    SerializationError("b", "result", "Lock", "cannot pickle '_thread.lock' object"),
    TaskTimeoutError("b", 2.5, "worker replaced"),
    WorkerCrashedError("b", None, None, "its Dask worker died while running it"),
    GraphvizError("dot failed", 3, "syntax error"),
    NoStoredResultError("c", Reason.INPUT_CHANGED, "from 'b'"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_public_exceptions_survive_pickling(error: TaskmapError) -> None:
    """Errors cross process boundaries (worker results, graphs sent to workers)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
