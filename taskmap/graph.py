"""The graph: `Graph`, `create_graph` and its validation, queries and resets.

`create_graph` validates once, in O(V+E), and compiles the dependencies into a
`Plan` (integer ids, parent and child tuples) that every run and query reuses.
The dependencies are frozen after that (a read-only mapping of tuples); the
functions stay a plain dict, so fixing a bug with ``graph.funcs['x'] = fixed``
and rerunning is the intended workflow.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .checkpoint import (
    NOT_LOADED,
    CacheEntry,
    CacheRun,
    Checkpoint,
    Encoder,
    Explanation,
    Reason,
    WriteMode,
    open_store,
    prune_options,
    resolve_secret,
)
from .errors import (
    CycleError,
    ExpandError,
    MissingDependencyError,
    MissingFunctionError,
    NoStoredResultError,
    NotCallableError,
    UnknownTaskError,
    UpstreamFailedError,
    _did_you_mean,
    with_article,
)
from .policies import Policies, Retry, make_policies
from .record import RunStats

__all__ = [
    "Graph",
    "Plan",
    "clear_cache",
    "configure_logging",
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
]

Task = Hashable
GatherFailures = Literal["raise", "skip"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The dependencies compiled to integer ids; built once by `create_graph`.

    ``names[tid]`` is a task's name, ``index[name]`` its id; ``parents[tid]`` are
    the ids of its dependencies in argument order (repeats kept), ``children[tid]``
    the ids of the tasks that depend on it (once per dependency edge);
    ``expand[tid]`` the id of the dependency an expanded task is expanded over.
    """

    names: tuple[Task, ...]
    index: dict[Task, int]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    order: list[int]  # a topological order: parents before children
    expand: dict[int, int] = field(default_factory=dict)

    def heights(self) -> list[int]:
        """Per task, the number of tasks on the longest path from it to a sink (itself
        included): the static 'longest remaining path' priority. O(V+E)."""
        height = [1] * len(self.names)
        children = self.children
        for tid in reversed(self.order):
            kids = children[tid]
            if kids:
                height[tid] = 1 + max([height[c] for c in kids])
        return height

    def ids(self, where: str, names: Iterable[Task]) -> list[int]:
        """Map task names to ids; raise `UnknownTaskError` naming every unknown one."""
        index = self.index
        try:
            return [index[n] for n in names]
        except (KeyError, TypeError):
            pass
        unknown = [n for n in names if not _is_task(index, n)]
        raise UnknownTaskError(where, unknown, index) from None

    def descendants(self, roots: Iterable[int]) -> list[int]:
        """Ids of the roots and everything downstream of them, each once. O(V+E)."""
        children = self.children
        seen = set(roots)
        stack = list(seen)
        while stack:
            for child in children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return sorted(seen)

    def ancestors(self, roots: Iterable[int]) -> set[int]:
        """Ids of the roots and everything upstream of them. O(V+E)."""
        parents = self.parents
        seen = set(roots)
        stack = list(seen)
        while stack:
            for parent in parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen


@dataclass(slots=True, eq=False)
class Graph:
    """A validated dependency graph and the outcome of its runs so far.

    Runners fill `results` and `done` in place and return the same object.

    Attributes:
        funcs: task name -> function or coroutine function. Replace an entry to fix
            a task, then `reset_tasks` it and run again.
        dependencies: task name -> the names it depends on, in argument order
            (read-only).
        io_bound: names of the io-bound tasks.
        done: names of the finished tasks (succeeded, failed or not run because
            an ancestor failed), in completion order.
        results: task name -> its value, or the exception that is its outcome.
        name: the graph's name; it prefixes the loggers (``<name>-manager``,
            ``<name>-worker``).
        logging_config: as given to `create_graph`.
        checkpoint: the graph's cache (`create_graph`'s ``cache=``), or None.
        policies: the tasks' retries, timeouts, channels and priorities.
        stats: what the last run did (a `RunStats`; empty before the first run).
        expand: expanded task -> the dependency it is expanded over (read-only).
        gather_failures: ``'raise'`` or ``'skip'``, as given to `create_graph`.
    """

    funcs: dict[Task, Callable[..., Any]]
    dependencies: Mapping[Task, tuple[Task, ...]]
    io_bound: frozenset[Task]
    done: list[Task]
    results: dict[Task, Any]
    name: str = "taskmap"
    logging_config: dict[str, Any] = field(default_factory=dict)
    plan: Plan = field(default=None, repr=False)  # type: ignore[assignment]
    checkpoint: Checkpoint | None = field(default=None, repr=False)
    policies: Policies = field(default_factory=Policies, repr=False)
    stats: RunStats = field(default_factory=RunStats, repr=False)
    expand: Mapping[Task, Task] = field(default_factory=lambda: MappingProxyType({}))
    gather_failures: GatherFailures = "raise"

    @property
    def failed(self) -> list[Task]:
        """Names of the done tasks whose outcome is an exception, in completion order.

        This is the legacy rule `reset_failed_tasks` follows: a task failed when
        its result is an `Exception`, including tasks not run because an ancestor
        failed.
        """
        results = self.results
        return [t for t in self.done if isinstance(results.get(t), Exception)]

    def __reduce__(self) -> tuple[object, ...]:
        # The read-only dependencies and the plan are rebuilt (and revalidated) on load.
        state = (
            self.funcs,
            dict(self.dependencies),
            list(self.io_bound),
            self.done,
            self.results,
            self.name,
            self.logging_config,
            self.checkpoint,
            self.policies,
            dict(self.expand),
            self.gather_failures,
        )
        return (_restore, state)

    def __repr__(self) -> str:
        return (
            f"<Graph {self.name!r}: {len(self.dependencies)} tasks, {len(self.done)} done,"
            f" {len(self.failed)} failed>"
        )

    def _repr_html_(self) -> str:
        """Jupyter's view: tasks by state, the failures with their errors, the makespan."""
        results, done = self.results, set(self.done)
        skipped = [t for t in self.done if isinstance(results.get(t), UpstreamFailedError)]
        failed = [t for t in self.failed if not isinstance(results[t], UpstreamFailedError)]
        tasks = len(self.dependencies)
        if self.expand:  # the instances grown so far are tasks too
            tasks += len(self.done) - len(static_names(self.done, self.expand))
        counts = {
            "tasks": tasks,
            "done": len(done) - len(failed) - len(skipped),
            "failed": len(failed),
            "skipped": len(skipped),
            "not run": tasks - len(done),
        }
        cells = "".join(f"<td>{n:,} {html.escape(state)}</td>" for state, n in counts.items())
        parts = [f"<b>Graph {html.escape(repr(self.name))}</b>", f"<table><tr>{cells}</tr></table>"]
        if self.stats.makespan:
            parts.append(f"<p>last run: {self.stats.makespan:.3g} s</p>")
        if failed:
            rows = "".join(
                f"<tr><td>{html.escape(repr(t))}</td><td><code>"
                f"{html.escape(type(results[t]).__name__)}: {html.escape(str(results[t]))}"
                "</code></td></tr>"
                for t in failed[:20]
            )
            more = f"<p>and {len(failed) - 20} more</p>" if len(failed) > 20 else ""
            parts.append(f"<table><tr><th>failed</th><th>error</th></tr>{rows}</table>{more}")
        return "\n".join(parts)


def create_graph(
    funcs: Mapping[Any, Callable[..., Any]],
    dependencies: Mapping[Any, Iterable[Any]],
    io_bound: Iterable[Any] | None = None,
    done: Iterable[Any] | None = None,
    results: Mapping[Any, Any] | None = None,
    name: str = "taskmap",
    logging_config: Mapping[str, Any] | None = None,
    *,
    cache: object = None,
    uncached: Iterable[Any] | None = None,
    versions: Mapping[Any, str | int] | None = None,
    encoders: Mapping[Any, Encoder | str] | None = None,
    cache_write: WriteMode = "exit",
    cache_limit: int | str | None = None,
    cache_secret: str | bytes | None = None,
    capture_output: Iterable[Any] | None = None,
    retries: Mapping[Any, int | Retry] | Iterable[Any] | None = None,
    timeouts: Mapping[Any, float] | None = None,
    channels: Mapping[Any, str | Iterable[str]] | None = None,
    priorities: Mapping[Any, float] | None = None,
    expand: Mapping[Any, Any] | None = None,
    gather_failures: GatherFailures = "raise",
) -> Graph:
    """Validate a dependency graph and return it ready to run.

    A task is a key of ``dependencies``.  It receives the results of its
    dependencies as positional arguments, in the order listed; a dependency whose
    result is ``None`` is not passed (the legacy rule).  Validation is O(V+E).

    Args:
        funcs: task name -> a function or coroutine function (``functools.partial``
            of either works).  Entries that are not tasks are ignored.
        dependencies: task name -> an iterable of the task names it depends on.
            Names are any hashable values.
        io_bound: names of io-bound tasks: they start first, coroutines run on the
            event loop and plain functions in threads.
        done: names of tasks to treat as already finished.
        results: results of tasks already finished, passed on to their children.
        name: names the loggers ``<name>-manager`` and ``<name>-worker``.
        logging_config: ``{'write': True}`` writes a log file (``'path'``, default
            ``<name>.log``); ``{'level': 'INFO'}`` sets the loggers' level.
        cache: where finished values are kept across runs and processes: a
            directory path (the embedded SQLite store), any
            ``MutableMapping[str, bytes]`` (a dict, an fsspec mapper...), or a list
            of those (read from each, write to the first).  A task whose code and
            inputs did not change since it last succeeded is not run again.
        uncached: tasks whose values are never stored (connections, clients).
        versions: task -> a version (str or int) used instead of its code
            fingerprint: bump it to recompute, keep it to keep the cache.
        encoders: task -> ``'pickle'`` (default: cloudpickle, zstd-compressed),
            ``'json'``, or an object with ``name``, ``encode`` and ``decode``
            (``PickleEncoder(level=0)`` stores uncompressed).
        cache_write: when values are written: ``'exit'`` (as each task finishes,
            the default), a number of seconds (periodically), ``'end'`` (at the end
            of the run) or ``'manual'`` (on `save_cache`).
        cache_limit: the most bytes the store may hold after a run: an int, or a
            string such as ``'500MB'`` or ``'20GB'``.  Each run ends by trimming
            least-recently-used entries (on the directory store, of every graph
            sharing it; on another mapping, of this graph's tasks, oldest first).
        cache_secret: a str or bytes that signs every entry (HMAC-SHA256); with
            it, an entry not signed with it is never decoded (a miss, with a
            warning).  Default: ``$TASKMAP_CACHE_SECRET``, if set.
        capture_output: tasks whose stdout and stderr also go to ``stdout.txt`` and
            ``stderr.txt`` in their task directory (`task_directory`), kept with
            their entry and shown by `list_cache`.  Needs ``cache=`` on a local
            directory; a task in ``uncached`` has no directory to capture into.
        retries: task -> how many times to retry it when it raises, or a `Retry`
            (backoff, jitter, which exception types); a list of names gives each
            ``Retry()``: 3 retries after 0.5, 1 and 2 s (less jitter).  Every
            attempt is logged; the final exception lists the earlier ones in its
            notes.
        timeouts: task -> seconds an attempt may run; then it fails with
            `TaskTimeoutError` (a coroutine is cancelled, a worker process is
            killed and replaced, a thread is abandoned).
        channels: task -> a channel name or a list of them; a run's ``limits=``
            caps how many tasks of a channel run at once (``{'db': 2}``).
        priorities: task -> a number; among ready tasks the highest starts first
            (io-bound tasks still start before the others).
        expand: task -> one of its dependencies: the task runs once per item of
            that dependency's result (any iterable), the item in the dependency's
            place among its arguments.  An *instance* is named ``(task, i)``; it
            is a task to every runner, the cache (keyed by its own item), the
            policies and the observers.  A task expanded over an expanded task
            pairs item i with item i, and instance i starts as soon as its own
            input is ready.  Any other task depending on an expanded task gets the
            list of its results, in item order, once every instance is done
            (``graph.results[task]`` is that list).
        gather_failures: when instances failed, ``'raise'`` (default) fails the
            expanded task's list, and so every task gathering it, with an
            `UpstreamFailedError` naming them; ``'skip'`` gathers the results of
            the others (``graph.failed`` still lists the failed instances).

    Returns:
        The `Graph`.

    Raises:
        CycleError: the dependencies form a cycle; the message shows its path.
        MissingDependencyError: a task depends on a name that is not a task.
        MissingFunctionError: a task has no function in ``funcs``.
        NotCallableError: a task's function is not callable.
        UnknownTaskError: ``io_bound``, ``done``, ``results``, ``uncached``,
            ``versions``, ``encoders``, ``capture_output``, ``expand`` or a policy
            names a non-task (a `GraphError`, so a ValueError, naming every one).
        ExpandError: a task is expanded over something it does not depend on,
            over more than one dependency, or along a cycle.
        TypeError: an argument has the wrong type.
        ValueError: a value is out of range (``cache_limit='20 parsecs'``...).

    Example:
        >>> graph = create_graph({'a': lambda: 1, 'b': lambda a: a + 1}, {'a': [], 'b': ['a']})
        >>> run(graph).results
        {'a': 1, 'b': 2}
    """
    _expect_mapping("funcs", funcs)
    _expect_mapping("dependencies", dependencies)
    deps = _freeze_dependencies(dependencies)
    _check_functions(funcs, deps)
    plan = _compile(deps)
    expanded = _check_expand(expand, deps, plan)
    if gather_failures not in ("raise", "skip"):
        raise ValueError(f"gather_failures must be 'raise' or 'skip' (got {gather_failures!r})")
    io = _names_of("io_bound", io_bound, plan)
    done_names = _names_of("done", done, plan, expanded)
    results = dict(results or {})
    plan.ids("results", static_names(results, expanded))
    config = dict(logging_config or {})
    unknown = set(config) - {"level", "write", "path"}
    if unknown:
        raise ValueError(
            f"logging_config has unknown keys: {sorted(unknown)!r} "
            "(known: 'level', 'path', 'write')"
        )
    configure_logging(str(name), config)  # at once, as in 0.0.6 (not at the first run)
    policies = make_policies(retries, timeouts, channels, priorities)
    for where in ("retries", "timeouts", "channels", "priorities"):
        plan.ids(where, getattr(policies, where))
    checkpoint = None
    captured = _names_of("capture_output", capture_output, plan)
    if cache is not None:
        checkpoint = Checkpoint(
            open_store(cache),
            write=cache_write,
            uncached=_names_of("uncached", uncached, plan),
            versions=_per_task("versions", versions, plan),
            encoders=_per_task("encoders", encoders, plan),
            limit=cache_limit,
            secret=resolve_secret(cache_secret),
            capture=captured,
        )
        _check_capture(checkpoint, captured)
    else:
        options = {
            "uncached": uncached,
            "versions": versions,
            "encoders": encoders,
            "capture_output": captured,
        }
        given = [k for k, v in options.items() if v] + [
            k
            for k, v in (("cache_limit", cache_limit), ("cache_secret", cache_secret))
            if v is not None
        ]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{' and '.join(given)} {verb} a cache: pass cache=")
    graph = Graph(
        funcs=dict(funcs),
        dependencies=MappingProxyType(deps),
        io_bound=frozenset(io),
        done=list(dict.fromkeys(done_names)),
        results=results,
        name=str(name),
        logging_config=config,
        plan=plan,
        checkpoint=checkpoint,
        policies=policies,
        expand=MappingProxyType(expanded),
        gather_failures=gather_failures,
    )
    return graph


def _check_capture(checkpoint: Checkpoint, captured: list[Task]) -> None:
    """Output is captured into task directories: those must be possible."""
    if not captured:
        return
    if checkpoint.dirs is None:
        raise ValueError(
            "capture_output needs a cache on a local directory (cache='<directory>', or a "
            "list whose first store is one): the output files live in task directories "
            "beside the entries (the cache given is "
            f"{with_article(type(checkpoint.store).__name__)})"
        )
    opted_out = sorted(map(repr, checkpoint.uncached.intersection(captured)))
    if opted_out:
        raise ValueError(
            f"capture_output names tasks in uncached=, which have no cache key and so no "
            f"directory to capture into: {', '.join(opted_out)}"
        )


def _per_task(where: str, values: Mapping[Task, Any] | None, plan: Plan) -> dict[Task, Any]:
    if values is None:
        return {}
    _expect_mapping(where, values)
    plan.ids(where, values)
    return dict(values)


def _restore(
    funcs: dict[Task, Callable[..., Any]],
    dependencies: dict[Task, tuple[Task, ...]],
    io_bound: list[Task],
    done: list[Task],
    results: dict[Task, Any],
    name: str,
    logging_config: dict[str, Any],
    checkpoint: Checkpoint | None = None,
    policies: Policies | None = None,
    expand: dict[Task, Task] | None = None,
    gather_failures: GatherFailures = "raise",
) -> Graph:
    graph = create_graph(
        funcs,
        dependencies,
        io_bound,
        (),
        results,
        name,
        logging_config,
        expand=expand,
        gather_failures=gather_failures,
    )
    graph.checkpoint = checkpoint
    graph.policies = policies or Policies()
    graph.done[:] = done  # done may name tasks whose result was dropped: keep it as it was
    return graph


# -- validation ---------------------------------------------------------------


def _expect_mapping(what: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping of task names (got {_describe(value)})")


def _describe(value: object) -> str:
    return f"{value!r:.60}, {with_article(type(value).__name__)}"


def _freeze_dependencies(
    dependencies: Mapping[Task, Iterable[Task]],
) -> dict[Task, tuple[Task, ...]]:
    deps: dict[Task, tuple[Task, ...]] = {}
    for task, ds in dependencies.items():
        if type(ds) is tuple:
            deps[task] = ds
        elif type(ds) is list:
            deps[task] = tuple(ds)
        elif isinstance(ds, str | bytes):
            raise TypeError(
                f"dependencies of task {task!r} must be an iterable of task names, "
                f"not a string (got {ds!r}; did you mean [{ds!r}]?)"
            )
        elif isinstance(ds, Iterable):
            deps[task] = tuple(ds)
        else:
            raise TypeError(
                f"dependencies of task {task!r} must be an iterable of task names "
                f"(got {_describe(ds)})"
            )
    return deps


def _check_functions(funcs: Mapping[Task, object], deps: dict[Task, tuple[Task, ...]]) -> None:
    no_function = deps.keys() - funcs.keys()
    if no_function:
        raise MissingFunctionError(no_function)
    not_callable = {t: funcs[t] for t in deps if not callable(funcs[t])}
    if not_callable:
        raise NotCallableError(not_callable)


def _compile(deps: dict[Task, tuple[Task, ...]]) -> Plan:
    names = tuple(deps)
    index = {name: tid for tid, name in enumerate(names)}
    get = index.__getitem__
    try:
        parents = tuple([tuple(map(get, ds)) for ds in deps.values()])
    except (KeyError, TypeError):
        missing = {
            t: [d for d in ds if not _is_task(index, d)]
            for t, ds in deps.items()
            if not all(_is_task(index, d) for d in ds)
        }
        raise MissingDependencyError(missing, names) from None
    kids: list[list[int]] = [[] for _ in names]
    for tid, ps in enumerate(parents):
        for p in ps:
            kids[p].append(tid)
    children = tuple(map(tuple, kids))
    order = _topological_order(names, parents, children)
    return Plan(names, index, parents, children, order)


def _is_task(index: dict[Task, int], name: object) -> bool:
    try:
        return name in index
    except TypeError:  # unhashable
        return False


def _topological_order(
    names: tuple[Task, ...],
    parents: tuple[tuple[int, ...], ...],
    children: tuple[tuple[int, ...], ...],
) -> list[int]:
    """Kahn's algorithm; on a cycle, walk unfinished parents to show one. O(V+E)."""
    waiting = [len(ps) for ps in parents]
    stack = [tid for tid, w in enumerate(waiting) if not w]
    order: list[int] = []
    append = order.append
    while stack:
        tid = stack.pop()
        append(tid)
        for child in children[tid]:
            waiting[child] -= 1
            if not waiting[child]:
                stack.append(child)
    if len(order) == len(names):
        return order
    # Every task left has a parent left: following such parents must revisit one.
    tid = next(t for t, w in enumerate(waiting) if w)
    visit: dict[int, int] = {}
    while tid not in visit:
        visit[tid] = len(visit)
        tid = next(p for p in parents[tid] if waiting[p])
    path = [*list(visit)[visit[tid] :], tid]
    raise CycleError([names[t] for t in path])


def _names_of(
    where: str, names: Iterable[Task] | None, plan: Plan, expand: Mapping[Task, Task] | None = None
) -> list[Task]:
    """Check a list of task names; with ``expand``, instance names ``(task, i)`` pass too."""
    if names is None:
        return []
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        raise TypeError(f"{where} must be an iterable of task names (got {_describe(names)})")
    names = list(names)
    plan.ids(where, static_names(names, expand) if expand else names)
    return names


# -- expansion ----------------------------------------------------------------


def instance_task(name: object, expand: Mapping[Task, Task]) -> Task | None:
    """The expanded task of an instance name ``(task, i)``, or None: not an instance."""
    if type(name) is tuple and len(name) == 2 and type(name[1]) is int:
        try:
            return name[0] if name[0] in expand else None
        except TypeError:  # unhashable
            return None
    return None


def instance_items(graph: Graph) -> dict[Task, list[int]]:
    """Expanded task -> the items of its instances in ``graph.done`` or the last run's
    stats, in order (the observers' view of a graph that grew).  O(done)."""
    if not graph.expand:
        return {}
    found: dict[Task, set[int]] = {}
    for name in [*graph.stats.tasks, *graph.done]:
        task = instance_task(name, graph.expand)
        if task is not None:
            found.setdefault(task, set()).add(name[1])  # type: ignore[index]
    return {task: sorted(items) for task, items in found.items()}


def static_names(names: Iterable[Task], expand: Mapping[Task, Task] | None) -> list[Task]:
    """``names`` without the instance names (all of them when nothing is expanded)."""
    if not expand:
        return list(names)
    return [n for n in names if instance_task(n, expand) is None]


def _check_expand(
    expand: Mapping[Task, Any] | None, deps: dict[Task, tuple[Task, ...]], plan: Plan
) -> dict[Task, Task]:
    """Validate ``expand=`` and record it in the plan (by id). O(expanded tasks)."""
    if expand is None:
        return {}
    _expect_mapping("expand", expand)
    plan.ids("expand", expand)
    for task, over in expand.items():
        if not _is_task(plan.index, over):
            many = isinstance(over, list | tuple | set | frozenset)
            if many and len(over) != 1:
                raise ExpandError(
                    task,
                    f"task {task!r} is expanded over {len(over)} dependencies ({list(over)!r});"
                    " a task is expanded over one dependency",
                )
            if not many or not _is_task(plan.index, next(iter(over))):
                hint = _did_you_mean(over, plan.index) if not many else ""
                raise ExpandError(
                    task, f"task {task!r} is expanded over {over!r}, which is not a task{hint}"
                )
    expanded: dict[Task, Task] = {
        t: o if _is_task(plan.index, o) else next(iter(o)) for t, o in expand.items()
    }
    for task in expanded:  # a cycle along the chain (a -> b -> a) before anything else
        seen = [task]
        while (over := expanded.get(seen[-1])) is not None:
            if over in seen:
                path = " -> ".join(repr(t) for t in [*seen[seen.index(over) :], over])
                raise ExpandError(
                    task, f"expand cycle: {path} (each task is expanded over the next)"
                )
            seen.append(over)
    for task, over in expanded.items():
        if over not in deps[task]:
            raise ExpandError(
                task,
                f"task {task!r} is expanded over {over!r}, which is not one of its "
                f"dependencies {list(deps[task])!r} (add it to its dependencies)",
            )
    for name in deps:  # an instance name must not be a task's too
        if instance_task(name, expanded) is not None:
            raise ExpandError(
                name[0],  # type: ignore[index]
                f"task {name!r} has the name of an instance of the expanded task "
                f"{name[0]!r}; rename it",  # type: ignore[index]
            )
    plan.expand.update({plan.index[t]: plan.index[o] for t, o in expanded.items()})
    return expanded


def _one_or_many(graph: Graph, where: str, tasks: Task | Iterable[Task]) -> list[int]:
    """Ids of ``tasks``: a single task name, or an iterable of names."""
    plan = graph.plan
    if _is_task(plan.index, tasks):
        return [plan.index[tasks]]  # type: ignore[index]
    if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
        raise UnknownTaskError(where, [tasks], plan.index)
    return plan.ids(where, list(tasks))


# -- queries and reruns -------------------------------------------------------


def get_ready_tasks(graph: Graph) -> list[Task]:
    """Return the tasks that are not done and whose dependencies all are, io-bound first."""
    plan = graph.plan
    done = _done_ids(graph)
    ready = [
        tid for tid, ps in enumerate(plan.parents) if tid not in done and all(p in done for p in ps)
    ]
    io = graph.io_bound
    names = plan.names
    return [names[t] for t in ready if names[t] in io] + [
        names[t] for t in ready if names[t] not in io
    ]


def get_all_children(graph: Graph, task: Task) -> set[Task]:
    """Return every descendant of ``task`` (its children, their children...), not itself."""
    (tid,) = graph.plan.ids("task", [task])
    names = graph.plan.names
    return {names[t] for t in graph.plan.descendants([tid]) if t != tid}


def mark_as_done(graph: Graph, tasks: Task | Iterable[Task]) -> Graph:
    """Mark a task (or each of an iterable of tasks) as done; results are left as they are."""
    ids = _one_or_many(graph, "tasks", tasks)
    done = set(graph.done)
    names = graph.plan.names
    graph.done.extend(dict.fromkeys(names[t] for t in ids if names[t] not in done))
    return graph


def mark_as_done_except(graph: Graph, tasks: Task | Iterable[Task]) -> Graph:
    """Mark every task except ``tasks`` (a name or an iterable of names) as done."""
    keep = set(_one_or_many(graph, "tasks", tasks))
    names = graph.plan.names
    return mark_as_done(graph, [names[t] for t in range(len(names)) if t not in keep])


def reset_tasks(graph: Graph, tasks: Task | Iterable[Task]) -> Graph:
    """Make ``tasks`` and all their descendants not done, and drop their results.

    Use it after changing a task's function: the next run recomputes that task
    and everything downstream of it, and nothing else.  With a cache, their
    stored entries are dropped too, so the next run recomputes them even if
    their code and inputs did not change (the source they read did).
    """
    plan = graph.plan
    if graph.expand:
        return _reset_expanded(graph, tasks)
    ids = _one_or_many(graph, "tasks", tasks)
    reset = {plan.names[t] for t in plan.descendants(ids)}
    graph.done[:] = [t for t in graph.done if t not in reset]
    for task in reset:
        graph.results.pop(task, None)
    if graph.checkpoint is not None:
        graph.checkpoint.forget(reset)
    logging.getLogger(f"{graph.name}-manager").debug("reset %d tasks", len(reset))
    return graph


def _reset_expanded(graph: Graph, tasks: Task | Iterable[Task]) -> Graph:
    """`reset_tasks` on a graph with expanded tasks: ``tasks`` may name instances.

    A task resets itself, its descendants and all their instances; an instance
    ``(task, i)`` resets itself, the instances ``(child, i)`` paired with it along
    its expand chain, and the gathered results downstream of them (the other
    instances stay done).  O(done + V + E) per distinct expanded task.
    """
    plan, expand = graph.plan, graph.expand
    if instance_task(tasks, expand) is not None or _is_task(plan.index, tasks):
        given: list[Task] = [tasks]  # type: ignore[list-item]
    elif isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
        raise UnknownTaskError("tasks", [tasks], plan.index)
    else:
        given = list(tasks)
    ids = plan.ids("tasks", static_names(given, expand))
    whole = {plan.names[t] for t in plan.descendants(ids)}
    items: dict[Task, set[int]] = {}
    for name in given:
        if (task := instance_task(name, expand)) is not None and task not in whole:
            items.setdefault(task, set()).add(name[1])  # type: ignore[index]
    partial: set[Task] = set()  # gathered results and tasks below them, not instances
    paired: set[Task] = set()
    for task, indices in items.items():
        for tid in plan.descendants([plan.index[task]]):
            name = plan.names[tid]
            partial.add(name)
            if name not in expand:
                continue
            link = name
            while link != task and link in expand:
                link = expand[link]
            if link == task:  # paired with the failed instance along the chain
                paired.update((name, i) for i in indices)
            else:  # expanded over something that reruns: every instance does
                whole.add(name)
    partial -= whole

    def dropped(name: Task) -> bool:
        if name in whole or name in partial or name in paired:
            return True
        task = instance_task(name, expand)
        return task is not None and task in whole

    graph.done[:] = [t for t in graph.done if not dropped(t)]
    for name in [n for n in graph.results if dropped(n)]:
        del graph.results[name]
    if graph.checkpoint is not None:  # an expanded task's entries are its instances'
        graph.checkpoint.forget(whole | {t for t in partial if t not in expand})
    count = len(whole) + len(partial) + len(paired)
    logging.getLogger(f"{graph.name}-manager").debug("reset %d tasks", count)
    return graph


def reset_failed_tasks(graph: Graph) -> Graph:
    """Make every failed task and all its descendants not done, dropping their results.

    A task failed when its result is an `Exception`.  The next run reruns exactly
    those tasks.  A failed instance of an expanded task resets its paired instances
    and what gathers them, not its task's other instances.
    """
    failed = graph.failed
    if graph.expand:  # reset from the root causes: a gather's are its failed instances
        causes = set(failed)
        results = graph.results
        failed = [
            t
            for t in failed
            if not isinstance(error := results[t], UpstreamFailedError)
            or not causes.issuperset(error.failures)
        ]
    return reset_tasks(graph, failed)


def _done_ids(graph: Graph) -> set[int]:
    index = graph.plan.index
    return {index[t] for t in static_names(graph.done, graph.expand)}


def explain(graph: Graph) -> dict[Task, Explanation]:
    """Say, for every task, whether the next run would run it, and why.

    A dry run: nothing is called.  A task runs when its entry is not in the cache
    (no entry, code changed, input changed, failed before, reset by the user);
    it does not when it is done or cached.  A task below one that runs gets
    `Reason.UPSTREAM`: whether it runs depends on the new value (an unchanged
    value leaves it cached).  Without a cache every task not done runs.  A task
    below a failure still in ``graph.done`` does not run (`Reason.UPSTREAM_FAILED`)
    until `reset_failed_tasks`.

    After a run, ``graph.stats.why`` says what that run did instead.

    Returns:
        task name -> `Explanation`, in a topological order.
    """
    dry = _DryRun(graph)
    try:
        for tid in graph.plan.order:
            dry.explain(tid)
    finally:
        dry.close()
    return dry.found


def load_result(graph: Graph, task: Task) -> Any:
    """Return the stored value of ``task`` for its current code and inputs, running nothing.

    The key is found as a run would find it: the task's ancestors are looked up in
    the cache (their values are not decoded, only their digests read), or taken from
    ``graph.results`` when done.  Only the task's own value is decoded (with a cache
    secret, only if its signature holds).  For an expanded task, the list of its
    instances' values, in item order (its listing is decoded too, to know them).

    Raises:
        NoStoredResultError: there is no such value; ``exc.reason`` and ``exc.detail``
            say why, as `explain` would (code changed, input changed, an upstream
            task runs, the graph has no cache...).
        UnknownTaskError: ``task`` is not a task.

    Example:
        >>> graph = create_graph({'a': lambda: 2}, {'a': []}, cache='.taskmap')
        >>> load_result(run(graph), 'a')
        2
    """
    plan = graph.plan
    (tid,) = plan.ids("task", [task])
    if graph.checkpoint is None:
        raise NoStoredResultError(task, Reason.NOT_CACHED, "the graph has no cache")
    above = plan.ancestors([tid])
    dry = _DryRun(graph, gather=True)
    try:
        for t in plan.order:
            if t in above and t != tid:
                dry.explain(t)
        why = dry.explain(tid, look_up=False)
        if tid in dry.instances and why is not None and not why.runs:
            return dry.scratch[task]  # an expanded task: the list of its instances'
        if why is None:  # nothing upstream decides: its own entry does
            assert dry.cache is not None
            hit, value = dry.cache.lookup(tid)
            if hit:
                return value
            why = dry.cache.why[task]
    finally:
        dry.close()
    raise NoStoredResultError(task, why.reason, why.detail)


class _DryRun:
    """What `explain` and `load_result` share: a run that calls nothing, task by task
    in a topological order, with a scratch results dict (values looked up here never
    reach the graph)."""

    def __init__(self, graph: Graph, *, gather: bool = False) -> None:
        plan, results = graph.plan, graph.results
        self.graph = graph
        #: decode the instances of an expanded task none of whose instances runs, so
        #: that what gathers them has a key (`load_result`; `explain` decodes nothing)
        self.gather = gather
        self.done = _done_ids(graph)
        n = len(plan.names)
        self.runs = [False] * n
        self.failed: list[Task | None] = [None] * n  # the failed ancestor that blocks a task
        self.found: dict[Task, Explanation] = {}
        self.scratch = {name: results[name] for name in graph.done if name in results}
        self.cache: CacheRun | None = None
        if graph.checkpoint is not None:
            self.cache = graph.checkpoint.open_run(
                plan.names, plan.parents, graph.funcs, self.scratch
            )
            if plan.expand:  # instances are looked up by their own item: the lists grow
                cache = self.cache
                cache.names, cache.parents = list(plan.names), list(plan.parents)
                cache.tasks, cache.items = list(plan.names), {}
        #: expanded task -> the ids of its instances; gather nodes none of whose
        #: instances runs (their list is known only when it is gathered)
        self.instances: dict[int, list[int]] = {}
        self.gathered: set[Task] = set()

    def explain(self, tid: int, *, look_up: bool = True) -> Explanation | None:
        """Explain task ``tid``, its ancestors explained already.  ``look_up=False``:
        where the answer is the task's own entry, return None (not looked up)."""
        plan, results = self.graph.plan, self.graph.results
        name = plan.names[tid]
        if tid in self.done and look_up:
            if isinstance(results.get(name), Exception):
                error = results[name]
                self.failed[tid] = error.failed if isinstance(error, UpstreamFailedError) else name
            return self._found(Explanation(name, False, Reason.DONE))
        parents = plan.parents[tid]
        blocked = next((self.failed[p] for p in parents if self.failed[p] is not None), None)
        upstream = [plan.names[p] for p in parents if self.runs[p]]
        if blocked is not None:
            self.failed[tid] = blocked
            detail = f"{blocked!r} failed; reset_failed_tasks(graph) reruns it"
            return self._found(Explanation(name, False, Reason.UPSTREAM_FAILED, detail))
        if tid in plan.expand:
            over = plan.expand[tid]
            paired = over in plan.expand  # then looked at instance by instance
            if not any(self.runs[p] for p in parents if not (paired and p == over)):
                why = self._expand(tid, over)
                if why is not None:
                    return self._found(why)
            self.runs[tid] = True  # its instances exist once its input does
            detail = f"expanded over {plan.names[over]!r}: each instance is looked up by its item"
            return self._found(Explanation(name, True, Reason.UPSTREAM, detail))
        if upstream:
            self.runs[tid] = True
            if upstream[0] in self.gathered:
                detail = (
                    f"{upstream[0]!r} gathers cached instances; an unchanged list leaves it cached"
                )
            else:
                detail = f"{upstream[0]!r} runs; unchanged output leaves it cached"
            return self._found(Explanation(name, True, Reason.UPSTREAM, detail))
        if self.cache is None:
            self.runs[tid] = True
            why = Explanation(name, True, Reason.NOT_CACHED, "the graph has no cache")
            return self._found(why)
        if not look_up:
            return None
        hit, value = self.cache.lookup(tid, load=False)  # decode nothing: a dry run
        self.runs[tid] = not hit
        if hit:
            self.scratch[name] = value
        return self._found(self.cache.why[name])

    def _expand(self, tid: int, over: int) -> Explanation | None:
        """Explain an expanded task instance by instance, when its items are known (its
        listing is done or cached: then decoded); None when they are not."""
        plan, cache = self.graph.plan, self.cache
        if cache is None:
            return None
        task, pairs = plan.names[tid], self.instances.get(over)
        if over in plan.expand:
            if pairs is None:
                return None
            items: list[Any] = [None] * len(pairs)
        else:
            value = self.scratch.get(plan.names[over])
            if value is NOT_LOADED:  # a cached listing: its items are needed
                _, value = cache.lookup(over)
            if value is None:
                return None
            try:
                items = list(value)
            except TypeError:
                return None
        names, parents, tasks = cache.names, cache.parents, cache.tasks
        assert isinstance(names, list)
        assert isinstance(parents, list)
        assert isinstance(tasks, list)
        done, static, ids = set(self.graph.done), plan.parents[tid], []
        for i, item in enumerate(items):
            name, t = (task, i), len(names)
            ids.append(t)
            names.append(name)
            tasks.append(task)
            parents.append(
                tuple([pairs[i] if p == over else p for p in static]) if pairs else static
            )
            if pairs is None:
                cache.items[t] = (over, item)  # type: ignore[index]
            cache.grow(1)
            self.runs.append(False)
            self.failed.append(None)
            pair = pairs[i] if pairs else -1
            if name in done:
                self.explain_done(t, name)
            elif pair >= 0 and self.failed[pair] is not None:
                self.failed[t] = self.failed[pair]
                detail = f"{self.failed[pair]!r} failed; reset_failed_tasks(graph) reruns it"
                self._found(Explanation(name, False, Reason.UPSTREAM_FAILED, detail))
            elif pair >= 0 and self.runs[pair]:
                self.runs[t] = True
                detail = f"{names[pair]!r} runs; unchanged output leaves it cached"
                self._found(Explanation(name, True, Reason.UPSTREAM, detail))
            else:
                hit, value = cache.lookup(t, load=False)
                self.runs[t] = not hit
                if hit:
                    self.scratch[name] = value
                self._found(cache.why[name])
        self.instances[tid] = ids
        self.runs[tid] = True  # what gathers it is looked up with its list
        running = sum(1 for t in ids if self.runs[t])
        if running:
            return Explanation(
                task, True, Reason.UPSTREAM, f"{running} of {len(ids)} instances run"
            )
        if self.gather:  # its list, as a run would gather it
            self.scratch[task] = self.load_instances(tid)
            self.runs[tid] = False
        else:
            self.gathered.add(task)
        return Explanation(task, False, Reason.CACHED, f"each of its {len(ids)} instances is")

    def load_instances(self, tid: int) -> list[Any]:
        """The values of an expanded task's instances, each cached or done (`_expand`
        said none runs), decoded in item order."""
        cache, results = self.cache, self.graph.results
        assert cache is not None
        values = []
        for t in self.instances[tid]:
            name = cache.names[t]
            if self.found[name].reason is Reason.DONE:
                values.append(results.get(name))
                continue
            hit, value = cache.lookup(t)
            if not hit:  # gone since it was looked at
                why = cache.why[name]
                raise NoStoredResultError(name, why.reason, why.detail)
            values.append(value)
        return values

    def explain_done(self, tid: int, name: Task) -> None:
        """Explain a task (or instance) done before: it does not run."""
        result = self.graph.results.get(name)
        if isinstance(result, Exception):
            self.failed[tid] = result.failed if isinstance(result, UpstreamFailedError) else name
        self._found(Explanation(name, False, Reason.DONE))

    def _found(self, why: Explanation) -> Explanation:
        self.found[why.task] = why
        return why

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close(write=False)


def list_cache(graph: Graph, tasks: Task | Iterable[Task] | None = None) -> list[CacheEntry]:
    """List the stored entries of the graph's tasks (or of ``tasks`` only).

    Reads each entry's head only (the default store keeps heads beside the values).

    Returns:
        `CacheEntry` records (task, key, size in bytes, time written, encoder, time
        last used, and its task directory and captured output files when its call
        made them: see `task_directory` and ``capture_output``), sorted by task; an
        empty list when the graph has no cache.
    """
    if graph.checkpoint is None:
        return []
    return graph.checkpoint.entries(_cache_tasks(graph, tasks))


def prune_cache(
    graph: Graph,
    keep_last: int | None = 1,
    older_than: float | str | timedelta | None = None,
    max_bytes: int | str | None = None,
) -> list[CacheEntry]:
    """Drop old entries of the graph's tasks from its cache; return what was dropped.

    Each entry remembers when a run last used it (wrote it, or read it).  For each
    task, the entries beyond its ``keep_last`` most recently used go, and so do
    entries last used more than ``older_than`` ago; then, with ``max_bytes``, the
    store is trimmed as ``cache_limit`` does after a run.  Each task's ``last``
    record stays, so the next miss is still explained.  Entries of other graphs
    sharing the store stay, except to meet ``max_bytes`` on the directory store.

    Args:
        keep_last: entries to keep per task, the most recently used (None: no
            limit; 0 drops every entry of the graph's tasks).
        older_than: seconds, a `datetime.timedelta`, or a string such as ``'30d'``,
            ``'12h'``, ``'90min'`` or ``'2w'``.
        max_bytes: an int or a string such as ``'500MB'`` or ``'20GB'``: on the
            directory store, the most its entries may hold (every graph's,
            least recently used first); on another mapping, this graph's entries,
            oldest written first.

    Returns:
        The dropped entries (`CacheEntry`), sorted by task; an empty list when the
        graph has no cache.

    Raises:
        ValueError: ``keep_last``, ``older_than`` or ``max_bytes`` is not one of the
            above (the message names it and the value).

    Example:
        >>> removed = prune_cache(graph, keep_last=2, older_than='90d')
        >>> sum(entry.size for entry in removed)
        52640
    """
    if graph.checkpoint is None:
        prune_options(keep_last, older_than, max_bytes)  # a bad option is an error still
        return []
    return graph.checkpoint.prune(
        list(graph.plan.names), keep_last=keep_last, older_than=older_than, max_bytes=max_bytes
    )


def clear_cache(graph: Graph, tasks: Task | Iterable[Task] | None = None) -> int:
    """Drop the stored entries of the graph's tasks (or of ``tasks`` only).

    Results already in ``graph.results`` stay; entries of other graphs sharing
    the store stay.  Returns the number of entries dropped.
    """
    if graph.checkpoint is None:
        return 0
    names = _cache_tasks(graph, tasks)
    return graph.checkpoint.forget(names, reset=False)


def save_cache(graph: Graph) -> int:
    """Write the entries held back by ``cache_write='manual'``; return how many."""
    if graph.checkpoint is None:
        raise ValueError("save_cache: the graph has no cache (pass cache= to create_graph)")
    return graph.checkpoint.save(graph.plan.names)


def _cache_tasks(graph: Graph, tasks: Task | Iterable[Task] | None) -> list[Task]:
    names = graph.plan.names
    if tasks is None:
        return list(names)
    return [names[t] for t in _one_or_many(graph, "tasks", tasks)]


_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def loggers(name: str) -> tuple[logging.Logger, logging.Logger]:
    """The manager and worker loggers of graph ``name``."""
    return logging.getLogger(f"{name}-manager"), logging.getLogger(f"{name}-worker")


def configure_logging(name: str, config: Mapping[str, Any]) -> None:
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
            try:
                logger.setLevel(level)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"logging_config['level'] must be a logging level such as 'INFO' or "
                    f"logging.ERROR (got {level!r})"
                ) from exc
        if config.get("write") and not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
            for h in logger.handlers
        ):
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(_LOG_FORMAT))
            logger.addHandler(handler)
