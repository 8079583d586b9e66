"""taskmap: run a dependency graph of functions and coroutines as fast as one machine allows."""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

if _typing.TYPE_CHECKING:
    from .checkpoint import CacheEntry as CacheEntry
    from .checkpoint import CacheStats as CacheStats
    from .checkpoint import ChainStore as ChainStore
    from .checkpoint import DirectoryStore as DirectoryStore
    from .checkpoint import Encoder as Encoder
    from .checkpoint import Explanation as Explanation
    from .checkpoint import Reason as Reason
    from .checkpoint.encoders import Encrypted as Encrypted
    from .checkpoint.encoders import JsonEncoder as JsonEncoder
    from .checkpoint.encoders import PickleEncoder as PickleEncoder
    from .draw import to_dot as to_dot
    from .draw import to_mermaid as to_mermaid
    from .draw import to_svg as to_svg
    from .errors import CacheWarning as CacheWarning
    from .errors import CycleError as CycleError
    from .errors import ExpandError as ExpandError
    from .errors import GraphError as GraphError
    from .errors import GraphvizError as GraphvizError
    from .errors import MissingDependencyError as MissingDependencyError
    from .errors import MissingFunctionError as MissingFunctionError
    from .errors import NoStoredResultError as NoStoredResultError
    from .errors import NotCallableError as NotCallableError
    from .errors import RunStoppedError as RunStoppedError
    from .errors import SerializationError as SerializationError
    from .errors import StallWarning as StallWarning
    from .errors import TaskDirectoryError as TaskDirectoryError
    from .errors import TaskError as TaskError
    from .errors import TaskmapError as TaskmapError
    from .errors import TaskTimeoutError as TaskTimeoutError
    from .errors import UnknownTaskError as UnknownTaskError
    from .errors import UpstreamFailedError as UpstreamFailedError
    from .errors import WorkerCrashedError as WorkerCrashedError
    from .events import RunFinished as RunFinished
    from .events import RunStarted as RunStarted
    from .events import TaskExpanded as TaskExpanded
    from .events import TaskFailed as TaskFailed
    from .events import TaskFinished as TaskFinished
    from .events import TaskQueued as TaskQueued
    from .events import TaskRetrying as TaskRetrying
    from .events import TaskSkipped as TaskSkipped
    from .events import TaskStarted as TaskStarted
    from .frontier import TaskState as TaskState
    from .graph import Graph as Graph
    from .graph import clear_cache as clear_cache
    from .graph import create_graph as create_graph
    from .graph import explain as explain
    from .graph import get_all_children as get_all_children
    from .graph import get_ready_tasks as get_ready_tasks
    from .graph import list_cache as list_cache
    from .graph import load_result as load_result
    from .graph import mark_as_done as mark_as_done
    from .graph import mark_as_done_except as mark_as_done_except
    from .graph import prune_cache as prune_cache
    from .graph import reset_failed_tasks as reset_failed_tasks
    from .graph import reset_tasks as reset_tasks
    from .graph import save_cache as save_cache
    from .logs import in_progress as in_progress
    from .policies import Retry as Retry
    from .record import RunStats as RunStats
    from .record import TaskOutcome as TaskOutcome
    from .record import TaskStats as TaskStats
    from .report import to_chrome_trace as to_chrome_trace
    from .report import to_html as to_html
    from .report import write_report as write_report
    from .runners import arun_async as arun_async
    from .runners import arun_parallel_async as arun_parallel_async
    from .runners import events as events
    from .runners import run as run
    from .runners import run_async as run_async
    from .runners import run_parallel as run_parallel
    from .runners import run_parallel_async as run_parallel_async
    from .taskdir import task_directory as task_directory

__version__ = "1.0.0.dev0"

__all__ = [
    "CacheEntry",
    "CacheStats",
    "CacheWarning",
    "ChainStore",
    "CycleError",
    "DirectoryStore",
    "Encoder",
    "Encrypted",
    "ExpandError",
    "Explanation",
    "Graph",
    "GraphError",
    "GraphvizError",
    "JsonEncoder",
    "MissingDependencyError",
    "MissingFunctionError",
    "NoStoredResultError",
    "NotCallableError",
    "PickleEncoder",
    "Reason",
    "Retry",
    "RunFinished",
    "RunStarted",
    "RunStats",
    "RunStoppedError",
    "SerializationError",
    "StallWarning",
    "TaskDirectoryError",
    "TaskError",
    "TaskExpanded",
    "TaskFailed",
    "TaskFinished",
    "TaskOutcome",
    "TaskQueued",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "TaskState",
    "TaskStats",
    "TaskTimeoutError",
    "TaskmapError",
    "UnknownTaskError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "arun_async",
    "arun_parallel_async",
    "clear_cache",
    "create_graph",
    "events",
    "explain",
    "get_all_children",
    "get_ready_tasks",
    "in_progress",
    "list_cache",
    "load_result",
    "mark_as_done",
    "mark_as_done_except",
    "prune_cache",
    "reset_failed_tasks",
    "reset_tasks",
    "run",
    "run_async",
    "run_parallel",
    "run_parallel_async",
    "save_cache",
    "task_directory",
    "to_chrome_trace",
    "to_dot",
    "to_html",
    "to_mermaid",
    "to_svg",
    "write_report",
]

#: module -> the public names it defines.  ``import taskmap`` imports none of them: a
#: name's module is imported when the name is first used (PEP 562), so a script, the
#: fork server and each worker pay only for what they use (issue 13).
_LAZY: dict[str, tuple[str, ...]] = {
    ".checkpoint": (
        "CacheEntry",
        "CacheStats",
        "ChainStore",
        "DirectoryStore",
        "Encoder",
        "Explanation",
        "Reason",
    ),
    ".checkpoint.encoders": (
        "Encrypted",
        "JsonEncoder",
        "PickleEncoder",
    ),
    ".draw": (
        "to_dot",
        "to_mermaid",
        "to_svg",
    ),
    ".errors": (
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
    ),
    ".events": (
        "RunFinished",
        "RunStarted",
        "TaskExpanded",
        "TaskFailed",
        "TaskFinished",
        "TaskQueued",
        "TaskRetrying",
        "TaskSkipped",
        "TaskStarted",
    ),
    ".frontier": ("TaskState",),
    ".graph": (
        "Graph",
        "clear_cache",
        "create_graph",
        "explain",
        "get_all_children",
        "get_ready_tasks",
        "list_cache",
        "load_result",
        "mark_as_done",
        "mark_as_done_except",
        "prune_cache",
        "reset_failed_tasks",
        "reset_tasks",
        "save_cache",
    ),
    ".logs": ("in_progress",),
    ".policies": ("Retry",),
    ".record": (
        "RunStats",
        "TaskOutcome",
        "TaskStats",
    ),
    ".report": (
        "to_chrome_trace",
        "to_html",
        "write_report",
    ),
    ".runners": (
        "arun_async",
        "arun_parallel_async",
        "events",
        "run",
        "run_async",
        "run_parallel",
        "run_parallel_async",
    ),
    ".taskdir": ("task_directory",),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'taskmap' has no attribute {name!r}")
    _importlib.import_module(module, __name__)
    _adopt()
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _adopt() -> None:
    """Bind the public names of every taskmap module imported so far, and name them
    ``taskmap.X`` (tracebacks and pickles say ``taskmap.CycleError``, as trio's do)."""
    namespace = globals()
    for module, names in _LAZY.items():
        loaded = _sys.modules.get(__name__ + module)
        if loaded is None or namespace.get(names[0]) is getattr(loaded, names[0]):
            continue
        for name in names:
            obj = namespace[name] = getattr(loaded, name)
            if isinstance(obj, type) or callable(obj):
                obj.__module__ = __name__
    for name in _WHERE.keys() & namespace.keys():
        if isinstance(namespace[name], _types.ModuleType):
            # importing taskmap.events bound the module over the function `events`
            # until .runners loads: unbind it, and the next use comes back here
            del namespace[name]
