"""The ``taskmap`` command (also ``python -m taskmap``), over the public API only.

    taskmap run FILE.py[:NAME]     run a graph from a Python file
    taskmap plan FILE.py[:NAME]    what a run would do, and why (a dry run)
    taskmap show FILE.py[:NAME]    draw the graph (dot, mermaid, svg)
    taskmap cache ls|stats|prune|clear FILE.py[:NAME]
    taskmap status LOGFILE         which tasks a running graph is running

Exit status: 0 when every task succeeded, 1 when a task failed (or was not run
because one did), 2 for a usage error (a missing file, a bad option).
"""

from __future__ import annotations

import argparse
import datetime
import runpy
import sys
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from . import (
    Graph,
    TaskOutcome,
    clear_cache,
    create_graph,
    explain,
    get_all_children,
    in_progress,
    list_cache,
    prune_cache,
    run,
    run_async,
    run_parallel,
    run_parallel_async,
    to_dot,
    to_mermaid,
    to_svg,
)

__all__ = ["main"]

RUNNERS: dict[str, Callable[..., Graph]] = {
    "run": run,
    "run_async": run_async,
    "run_parallel": run_parallel,
    "run_parallel_async": run_parallel_async,
}
#: how many failures `taskmap run` lists before "and N more"
SHOWN = 20
#: the module name a graph's file runs as: not __main__, so its main block does not run
RUN_NAME = "__taskmap__"


class UsageError(Exception):
    """A problem with what the command was given: reported in one line, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``taskmap`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except UsageError as exc:
        print(f"taskmap {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


# -- the subcommands --------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, args.cache, args.cache_limit)
    runner = RUNNERS[args.runner]
    options: dict[str, Any] = {"progress": args.progress, "report": args.report}
    if args.limit:
        options["limits"] = dict(args.limit)
    if args.fail_fast:
        options["on_error"] = "fail_fast"
    if args.ncores is not None:
        if args.runner in ("run", "run_async"):
            raise UsageError(f"--ncores needs a parallel runner (got --runner {args.runner})")
        options["ncores"] = args.ncores
    if args.rerun_failed:
        options["targets"] = _failed_before(graph, args.graph)
        if not options["targets"]:
            print("no task failed in the last run: nothing to rerun")
            return 0
    try:
        graph = runner(graph, **options)
    except (TypeError, ValueError) as exc:  # bad limits, report path...
        raise UsageError(str(exc)) from None
    print(_summary(graph))
    return _print_failures(graph)


def _plan(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, args.cache)
    explanations = explain(graph)
    rows = [
        (str(e.task), "runs" if e.runs else "-", e.reason.value, e.detail)
        for e in explanations.values()
    ]
    print(_table(("task", "runs", "why", "detail"), rows))
    runs = sum(1 for e in explanations.values() if e.runs)
    print(f"\n{runs} of {len(explanations)} tasks would run")
    return 0


def _show(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, None)
    draw = {"dot": to_dot, "mermaid": to_mermaid, "svg": to_svg}[args.format]
    try:
        text = draw(graph)
    except (OSError, RuntimeError) as exc:  # Graphviz missing or failing
        raise UsageError(str(exc)) from None
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cache(args: argparse.Namespace) -> int:
    pruning = {"--keep-last": args.keep_last, "--older-than": args.older_than}
    pruning["--max-bytes"] = args.max_bytes
    misplaced = [option for option, value in pruning.items() if value is not None]
    if misplaced and args.action != "prune":
        raise UsageError(f"{', '.join(misplaced)}: only with 'taskmap cache prune'")
    graph = load_graph(args.graph, args.cache)
    if graph.checkpoint is None:
        raise UsageError(f"{args.graph} has no cache: pass --cache DIR")
    tasks = args.task or None
    if args.action == "clear":
        removed = clear_cache(graph, tasks)
        print(f"removed {_entries(removed)}")
        return 0
    if args.action == "prune":
        return _prune(graph, args)
    entries = list_cache(graph, tasks)
    if args.action == "stats":
        _print_stats(entries)
        return 0
    rows = [
        (e.task, f"{e.size:,}", _when(e.written), _when(e.used), e.encoder, e.key) for e in entries
    ]
    print(_table(("task", "bytes", "written", "last used", "encoder", "key"), rows))
    print(f"\n{_entries(len(entries))}, {sum(e.size for e in entries):,} bytes")
    return 0


def _prune(graph: Graph, args: argparse.Namespace) -> int:
    if args.task:
        raise UsageError("--task: 'taskmap cache prune' prunes every task of the graph")
    keep = args.keep_last if args.keep_last is not None else "1"
    if keep != "all" and not keep.isdigit():
        raise UsageError(f"--keep-last must be a number of entries or 'all' (got {keep!r})")
    try:
        removed = prune_cache(
            graph,
            keep_last=None if keep == "all" else int(keep),
            older_than=args.older_than,
            max_bytes=args.max_bytes,
        )
    except ValueError as exc:  # a duration or size it cannot read
        raise UsageError(
            str(exc).replace("older_than", "--older-than").replace("max_bytes", "--max-bytes")
        ) from None
    tasks = sorted({str(e.task) for e in removed})
    shown = f": {', '.join(tasks[:SHOWN])}" + (" ..." if len(tasks) > SHOWN else "")
    print(
        f"removed {_entries(len(removed))}, {sum(e.size for e in removed):,} bytes"
        + (f" ({len(tasks)} tasks{shown})" if removed else "")
    )
    return 0


def _print_stats(entries: Sequence[Any]) -> None:
    """Entries and bytes per task, with when each task's entries were last used."""
    per_task: dict[str, list[Any]] = {}
    for entry in entries:
        per_task.setdefault(str(entry.task), []).append(entry)
    rows = [
        (
            task,
            f"{len(found):,}",
            f"{sum(e.size for e in found):,}",
            _when(max(e.used for e in found)),
        )
        for task, found in sorted(per_task.items())
    ]
    print(_table(("task", "entries", "bytes", "last used"), rows))
    total = sum(e.size for e in entries)
    print(f"\n{len(per_task)} tasks, {_entries(len(entries))}, {total:,} bytes")


def _entries(count: int) -> str:
    return f"{count:,} entr{'y' if count == 1 else 'ies'}"


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).isoformat(" ", "seconds")


def _status(args: argparse.Namespace) -> int:
    if not Path(args.log).is_file():
        raise UsageError(f"no such log file: {args.log}")
    state = in_progress(args.log)
    for label, key in (("running", "in_progress"), ("queued", "queued")):
        names = sorted(state[key])
        print(f"{label} ({len(names)}): {', '.join(names) if names else '-'}")
    return 0


# -- loading a graph from a file ------------------------------------------------


def load_graph(spec: str, cache: str | None = None, cache_limit: str | None = None) -> Graph:
    """The graph named by ``FILE.py[:NAME]``: a `Graph`, or a function returning one.

    The file runs as a module named ``__taskmap__`` (its ``if __name__ ==
    '__main__':`` block does not run), with its directory first on ``sys.path``.
    Without NAME the file must define exactly one graph, or one function whose name
    contains 'graph'.  ``cache``: a directory for the graph's cache, trimmed to
    ``cache_limit`` after each run when given.
    """
    path, name = _split(spec)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    sys.path.insert(0, str(path.resolve().parent))
    try:
        namespace = runpy.run_path(str(path), run_name=RUN_NAME)
    finally:
        sys.path.remove(str(path.resolve().parent))
    found = namespace.get(name) if name else _only_graph(path, namespace)
    if found is None:
        raise UsageError(f"{path} defines no {name!r}")
    graph = found() if callable(found) and not isinstance(found, Graph) else found
    if not isinstance(graph, Graph):
        what = f"{path}:{name}" if name else str(path)
        raise UsageError(
            f"{what} is {type(graph).__name__}, not a taskmap Graph (or a function returning one)"
        )
    if cache_limit and not cache:
        raise UsageError("--cache-limit needs --cache DIR")
    return _with_cache(graph, cache, spec, cache_limit) if cache else graph


def _split(spec: str) -> tuple[Path, str]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isidentifier() and head:
        return Path(head), tail
    return Path(spec), ""


def _only_graph(path: Path, namespace: dict[str, Any]) -> object:
    graphs = [k for k, v in namespace.items() if isinstance(v, Graph)]
    if not graphs:
        graphs = [
            k
            for k, v in namespace.items()
            if callable(v)
            and "graph" in k.lower()
            and getattr(v, "__module__", "") == "__taskmap__"
        ]
    if len(graphs) == 1:
        return namespace[graphs[0]]
    if not graphs:
        raise UsageError(
            f"{path} defines no taskmap Graph: name it, or a function returning one, as {path}:NAME"
        )
    raise UsageError(
        f"{path} defines {len(graphs)} graphs ({', '.join(sorted(graphs))}): name one, "
        f"as {path}:{sorted(graphs)[0]}"
    )


def _with_cache(graph: Graph, cache: str, spec: str, cache_limit: str | None = None) -> Graph:
    if graph.checkpoint is not None:
        raise UsageError(f"the graph of {spec} already has a cache: leave out --cache")
    try:
        return _recreate(graph, cache, cache_limit)
    except ValueError as exc:  # a cache limit it cannot read
        raise UsageError(str(exc).replace("cache_limit", "--cache-limit")) from None


def _recreate(graph: Graph, cache: str, cache_limit: str | None) -> Graph:
    policies = graph.policies
    return create_graph(
        graph.funcs,
        graph.dependencies,
        graph.io_bound,
        done=graph.done,
        results=graph.results,
        name=graph.name,
        logging_config=graph.logging_config,
        cache=cache,
        cache_limit=cache_limit,
        retries=dict(policies.retries),
        timeouts=dict(policies.timeouts),
        channels=dict(policies.channels),
        priorities=dict(policies.priorities),
        expand=dict(graph.expand),
        gather_failures=graph.gather_failures,
    )


def _failed_before(graph: Graph, spec: str) -> list[Any]:
    """The tasks whose last run failed, and their descendants (from the cache)."""
    if graph.checkpoint is None:
        raise UsageError(
            "--rerun-failed needs to know what failed last time: give the graph a cache "
            "(--cache DIR, or create_graph(cache=...))"
        )
    failed = {
        _task_of(t, graph) for t, e in explain(graph).items() if e.reason.name == "FAILED_BEFORE"
    }
    targets = set(failed)
    for task in failed:
        targets |= get_all_children(graph, task)
    return sorted(targets, key=list(graph.dependencies).index)


def _task_of(name: Hashable, graph: Graph) -> Hashable:
    """The expanded task of an instance name ``(task, i)``; else the name itself."""
    if isinstance(name, tuple) and len(name) == 2 and type(name[1]) is int:
        task: Hashable = name[0]
        return task if task in graph.expand else name
    return name


# -- output ---------------------------------------------------------------------


def _summary(graph: Graph) -> str:
    stats = graph.stats
    counts = [
        f"{stats.count(outcome)} {outcome.value}"
        for outcome in TaskOutcome
        if stats.count(outcome) or outcome is TaskOutcome.DONE
    ]
    return f"ran {len(stats.tasks)} tasks in {stats.makespan:.2f} s: {', '.join(counts)}"


def _print_failures(graph: Graph) -> int:
    tasks = graph.stats.tasks
    failed = [t for t, row in tasks.items() if row.outcome is TaskOutcome.FAILED]
    skipped = [str(t) for t, row in tasks.items() if row.outcome is TaskOutcome.SKIPPED]
    if not failed and not skipped:
        return 0
    rows = [(str(t), _one_line(graph.results.get(t))) for t in failed[:SHOWN]]
    print("\nfailed:\n" + _table(("task", "error"), rows))
    if len(failed) > SHOWN:
        print(f"and {len(failed) - SHOWN} more")
    if skipped:
        shown = ", ".join(skipped[:SHOWN]) + (
            f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else ""
        )
        print(f"not run because an ancestor failed ({len(skipped)}): {shown}")
    return 1


def _one_line(error: object) -> str:
    if not isinstance(error, BaseException):
        return repr(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


# -- the parser -----------------------------------------------------------------


def _limit(text: str) -> tuple[str, int]:
    channel, sep, number = text.partition("=")
    if not sep or not channel or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"expected CHANNEL=N with N >= 1 (got {text!r})")
    return channel, int(number)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (got {text!r})")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmap",
        description="Run, plan, draw and inspect taskmap graphs defined in Python files.",
        epilog="GRAPH is FILE.py or FILE.py:NAME, NAME a Graph or a function returning one.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, handler: Callable[[argparse.Namespace], int]) -> Any:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("run", "Run a graph; exit 1 if a task fails.", _run)
    sub.add_argument("graph", metavar="GRAPH", help="FILE.py or FILE.py:NAME")
    sub.add_argument("--runner", choices=list(RUNNERS), default="run_parallel_async")
    sub.add_argument("--ncores", type=_positive, help="worker processes (parallel runners)")
    sub.add_argument("--cache", metavar="DIR", help="keep finished values in DIR")
    sub.add_argument(
        "--cache-limit",
        metavar="SIZE",
        help="trim the cache to SIZE after the run, least recently used first ('20GB')",
    )
    sub.add_argument("--report", metavar="FILE", help="write FILE.html (timeline) or FILE.json")
    sub.add_argument(
        "--rerun-failed",
        action="store_true",
        help="run only what failed last time and what depends on it (needs a cache)",
    )
    sub.add_argument(
        "--limit",
        type=_limit,
        action="append",
        metavar="CHANNEL=N",
        help="at most N tasks of CHANNEL at once (repeatable; 'io': io-bound tasks)",
    )
    sub.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )

    sub = command("plan", "Say which tasks a run would run, and why (runs nothing).", _plan)
    sub.add_argument("graph", metavar="GRAPH", help="FILE.py or FILE.py:NAME")
    sub.add_argument("--cache", metavar="DIR", help="the cache to check against")

    sub = command("show", "Draw the graph.", _show)
    sub.add_argument("graph", metavar="GRAPH", help="FILE.py or FILE.py:NAME")
    sub.add_argument("--format", choices=["dot", "mermaid", "svg"], default="dot")
    sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")

    sub = command(
        "cache",
        "List a graph's cached values (ls), count them per task (stats), drop old ones "
        "(prune) or all of them (clear).",
        _cache,
    )
    sub.add_argument("action", choices=["ls", "stats", "prune", "clear"])
    sub.add_argument("graph", metavar="GRAPH", help="FILE.py or FILE.py:NAME")
    sub.add_argument("--cache", metavar="DIR", help="the cache directory")
    sub.add_argument("--task", action="append", help="only this task (repeatable; not prune)")
    sub.add_argument(
        "--keep-last",
        metavar="N",
        help="prune: keep each task's N most recently used entries (default 1; 'all')",
    )
    sub.add_argument(
        "--older-than",
        metavar="AGE",
        help="prune: drop entries last used more than AGE ago ('30d', '12h', '90min')",
    )
    sub.add_argument(
        "--max-bytes",
        metavar="SIZE",
        help="prune: trim the store to SIZE, least recently used first ('20GB')",
    )

    sub = command("status", "Say what a graph writing LOGFILE is running.", _status)
    sub.add_argument("log", metavar="LOGFILE", help="a log written with logging_config")
    return parser


if __name__ == "__main__":  # pragma: no cover - python -m taskmap.cli
    raise SystemExit(main())
