"""taskmap: run a dependency graph of functions and coroutines as fast as one machine allows."""

from __future__ import annotations

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
from .errors import GraphError as GraphError
from .errors import GraphvizError as GraphvizError
from .errors import MissingDependencyError as MissingDependencyError
from .errors import MissingFunctionError as MissingFunctionError
from .errors import NoStoredResultError as NoStoredResultError
from .errors import NotCallableError as NotCallableError
from .errors import RunStoppedError as RunStoppedError
from .errors import SerializationError as SerializationError
from .errors import StallWarning as StallWarning
from .errors import TaskError as TaskError
from .errors import TaskmapError as TaskmapError
from .errors import TaskTimeoutError as TaskTimeoutError
from .errors import UnknownTaskError as UnknownTaskError
from .errors import UpstreamFailedError as UpstreamFailedError
from .errors import WorkerCrashedError as WorkerCrashedError
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
from .runners import run as run
from .runners import run_async as run_async
from .runners import run_parallel as run_parallel
from .runners import run_parallel_async as run_parallel_async

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
    "RunStats",
    "RunStoppedError",
    "SerializationError",
    "StallWarning",
    "TaskError",
    "TaskOutcome",
    "TaskState",
    "TaskStats",
    "TaskTimeoutError",
    "TaskmapError",
    "UnknownTaskError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "clear_cache",
    "create_graph",
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
    "to_chrome_trace",
    "to_dot",
    "to_html",
    "to_mermaid",
    "to_svg",
    "write_report",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        _obj.__module__ = "taskmap"
del _name, _obj
