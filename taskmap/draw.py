"""Pictures of a graph: Graphviz DOT and Mermaid source, and SVG through Graphviz's dot.

Rendering is pure (graph -> text, deterministic, O(V+E)); `to_svg` is the only I/O.
A task's colour is its state: what the last run decided (``graph.stats``) when that
still agrees with ``graph.done`` / ``graph.results``, otherwise what those say, so a
graph built with ``done=`` / ``results=``, or reset after a run, draws right too.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Hashable, Mapping
from typing import Any

from .errors import GraphvizError, RunStoppedError, UpstreamFailedError
from .graph import Graph, instance_items
from .record import TaskOutcome, TaskStats

__all__ = ["GraphvizError", "to_dot", "to_mermaid", "to_svg"]

#: state -> (fill colour, border colour, what it means); "pending": not run yet
_STATES: dict[str, tuple[str, str, str]] = {
    "pending": ("#ffffff", "#495057", "white = not run yet"),
    "done": ("#b2f2bb", "#2f9e44", "green = done"),
    "cached": ("#a5d8ff", "#1971c2", "blue = cached"),
    "failed": ("#ffa8a8", "#e03131", "red = failed"),
    "skipped": ("#dee2e6", "#868e96", "grey = skipped (an ancestor failed)"),
    "stopped": ("#ffd8a8", "#e8590c", "orange = stopped (the run stopped first)"),
}
_SHAPES = "parallelogram = io-bound task, rounded box = CPU task, arrow = dependency -> task"
_MEANINGS = [meaning for _, _, meaning in _STATES.values()]
_LEGEND = (", ".join(_MEANINGS[:4]) + ",", ", ".join(_MEANINGS[4:]))

_STACKED = "double outline = expanded task (one instance per item; the count after a run)"

_INSTALL_DOT = (
    "to_svg needs Graphviz's 'dot' program, which is not on PATH: install Graphviz"
    " (apt-get install graphviz, brew install graphviz) or draw with to_dot / to_mermaid"
)


# -- what to draw: one label, shape and state per task --------------------------------

# Line breaks as str.splitlines() knows them, and the other control characters, which
# are shown as their Unicode "control pictures" (U+2400...): visible, and never syntax.
_CONTROLS = {c: 0x2400 + c for c in range(0x20)} | {0x7F: 0x2421}
_LINE_BREAKS = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _label_lines(name: Hashable) -> list[str]:
    text = str(name)
    if text.isprintable():  # the common case: no line breaks, no control characters
        return [text]
    return [line.translate(_CONTROLS) for line in _LINE_BREAKS.split(text)]


def _state(name: Hashable, done: set[Hashable], results: Mapping[Hashable, Any]) -> str:
    """The state ``graph.done`` / ``graph.results`` give (cached is not told apart)."""
    if name not in done:
        return "pending"
    result = results.get(name)
    if isinstance(result, UpstreamFailedError):
        return "skipped"
    if isinstance(result, RunStoppedError):
        return "stopped"
    if isinstance(result, Exception):  # the graph.failed rule: an exception is a failure
        return "failed"
    return "done"


def _seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _nodes(graph: Graph) -> list[tuple[list[str], bool, str]]:
    """Per task in ``graph.dependencies`` order: its label lines, io-bound, its state;
    an expanded task's lines end with its item count once it has instances.

    The last run's row wins when it agrees with the results (it alone knows a task
    was cached, and how long it took); a row that disagrees is stale (the task was
    reset or marked done since), and the results decide.
    """
    done, results, io_bound = set(graph.done), graph.results, graph.io_bound
    rows: dict[Hashable, TaskStats] = graph.stats.tasks
    items = instance_items(graph)
    nodes = []
    for name in graph.dependencies:
        lines = _label_lines(name)
        if name in items:
            count = len(items[name])
            bad = sum(1 for i in items[name] if isinstance(results.get((name, i)), Exception))
            failed = f", {bad:,} failed" if bad else ""
            lines = [*lines, f"{count:,} item{'s' if count != 1 else ''}{failed}"]
        state = _state(name, done, results)
        row = rows.get(name)
        if row is not None and state != "pending":
            outcome = row.outcome.value
            if outcome == state or (outcome == "cached" and state == "done"):
                state = outcome
                if row.duration is not None and row.outcome is not TaskOutcome.CACHED:
                    lines = [*lines, _seconds(row.duration)]
        nodes.append((lines, name in io_bound, state))
    return nodes


def _edges(graph: Graph) -> list[tuple[int, int]]:
    """(dependency id, task id) per distinct dependency, tasks in order, then arguments."""
    index = {name: tid for tid, name in enumerate(graph.dependencies)}
    edges = []
    for tid, parents in enumerate(graph.dependencies.values()):
        for parent in dict.fromkeys(parents):  # a repeated dependency is one arrow
            edges.append((index[parent], tid))
    return edges


# -- Graphviz DOT -----------------------------------------------------------------

# In a quoted DOT string only \" and \\ are escapes, but a label also reads \n, \l,
# \N... as its own escapes and decodes HTML entities (&amp;), hence & and \ here.
_DOT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "&": "&amp;"})


def _dot_string(lines: list[str]) -> str:
    return '"' + "\\n".join(line.translate(_DOT_ESCAPES) for line in lines) + '"'


def to_dot(graph: Graph) -> str:
    """Draw the graph as Graphviz DOT source, left to right.

    One node per task, labelled with ``str(name)`` (and, for a task the last run
    ran, a second line with its duration); an arrow from each dependency to the
    task that uses it, once however often it is listed.  io-bound tasks are
    parallelograms, CPU tasks rounded boxes.  The fill is the task's state: white
    (not run yet), green (done), blue (cached), red (failed: its result is an
    exception), grey (skipped: an ancestor failed) or orange (stopped: the run
    stopped first).  Node ids are ``t0, t1, ...`` in ``graph.dependencies``
    order, so tasks whose names print alike stay apart.  The same graph gives the
    same text; O(V+E).

    Args:
        graph: from `create_graph`, before or after a run.

    Returns:
        The DOT source; render it with `to_svg`, or ``dot -Tpng``.

    Example:
        >>> funcs = {'a': lambda: 1, 'b': lambda a: a + 1}
        >>> graph = create_graph(funcs, {'a': [], 'b': ['a']}, io_bound=['a'])
        >>> print(to_dot(graph), end="")  # doctest: +ELLIPSIS
        digraph "taskmap" {
          ...
          t0 [label="a", shape=parallelogram, style=filled, fillcolor="#ffffff", color="#495057"];
          t1 [label="b", fillcolor="#ffffff", color="#495057"];
          t0 -> t1;
        }
    """
    out = [
        f"digraph {_dot_string(_label_lines(graph.name))} {{",
        f"  // {_SHAPES}",
        *(f"  // {line}" for line in _LEGEND),
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica,Arial,sans-serif"];',
    ]
    if graph.expand:
        out.insert(4, f"  // {_STACKED}")
    expanded = {tid for tid, name in enumerate(graph.dependencies) if name in graph.expand}
    for tid, (lines, io_bound, state) in enumerate(_nodes(graph)):
        fill, border, _ = _STATES[state]
        shape = " shape=parallelogram, style=filled," if io_bound else ""
        if tid in expanded:  # a stack of instances
            shape += " peripheries=2,"
        out.append(
            f'  t{tid} [label={_dot_string(lines)},{shape} fillcolor="{fill}", color="{border}"];'
        )
    out.extend(f"  t{parent} -> t{child};" for parent, child in _edges(graph))
    out.append("}\n")
    return "\n".join(out)


# -- Mermaid ----------------------------------------------------------------------

# Mermaid decodes its own entity codes (#quot;, #35;) in labels, and labels may be
# read as HTML.  ':' is escaped too: Mermaid's preprocessing rewrites any line that
# matches `style.*:\S*#.*;` or `classDef.*:\S*#.*;`, labels included.
_MERMAID_ESCAPES = str.maketrans(
    {
        "#": "#35;",
        '"': "#quot;",
        "&": "#amp;",
        "<": "#lt;",
        ">": "#gt;",
        "\\": "#92;",
        "`": "#96;",
        ":": "#58;",
    }
)


def to_mermaid(graph: Graph) -> str:
    """Draw the graph as Mermaid ``flowchart LR`` source.

    The same picture as `to_dot`: node ids ``t0, t1, ...``, labels ``str(name)``
    (quoted, with Mermaid's ``#quot;`` entity codes for awkward characters) plus
    the duration of a task the last run ran, io-bound tasks as parallelograms, the
    state as a class (``pending``, ``done``, ``cached``, ``failed``, ``skipped``,
    ``stopped``) with the colours of `to_dot`.  Paste it into a Markdown
    ``mermaid`` block (GitHub, GitLab, mkdocs); Mermaid's default limits
    (``maxEdges`` 500, ``maxTextSize`` 50,000) stop it drawing graphs much past a
    few hundred tasks, where `to_svg` still works.

    Args:
        graph: from `create_graph`, before or after a run.

    Returns:
        The Mermaid source.

    Example:
        >>> funcs = {'a': lambda: 1, 'b': lambda a: a + 1}
        >>> graph = create_graph(funcs, {'a': [], 'b': ['a']}, io_bound=['a'])
        >>> print(to_mermaid(graph), end="")  # doctest: +ELLIPSIS
        flowchart LR
          ...
          t0[/"a"/]:::pending
          t1("b"):::pending
          t0 --> t1
    """
    out = ["flowchart LR", f"  %% {_SHAPES}", *(f"  %% {line}" for line in _LEGEND)]
    out.extend(
        f"  classDef {state} fill:{fill},stroke:{border},color:#000000"
        for state, (fill, border, _) in _STATES.items()
    )
    if graph.expand:
        out.insert(4, "  %% " + _STACKED.replace("double outline", "double-barred box"))
    expanded = {tid for tid, name in enumerate(graph.dependencies) if name in graph.expand}
    for tid, (lines, io_bound, state) in enumerate(_nodes(graph)):
        # Mermaid rejects an empty label ("")
        label = "<br>".join(line.translate(_MERMAID_ESCAPES) for line in lines) or " "
        if tid in expanded:  # a stack of instances: Mermaid's subroutine box
            node = f'[["{label}"]]'
        else:
            node = f'[/"{label}"/]' if io_bound else f'("{label}")'
        out.append(f"  t{tid}{node}:::{state}")
    out.extend(f"  t{parent} --> t{child}" for parent, child in _edges(graph))
    return "\n".join(out) + "\n"


# -- SVG through Graphviz -----------------------------------------------------------


def to_svg(graph: Graph, *, timeout: float = 60.0) -> str:
    """Draw the graph as an SVG document, running Graphviz's ``dot -Tsvg`` on `to_dot`.

    Graphviz must be installed (``apt-get install graphviz``, ``brew install
    graphviz``, ``conda install graphviz``); ``dot`` is looked up on ``PATH``.
    dot's layout slows sharply with size and tangle: 1,000 tasks take from a tenth
    of a second (independent chains) to seconds (many long-range dependencies),
    10,000 from seconds to many minutes.  For such graphs, run ``sfdp -Tsvg`` on
    `to_dot`'s output.

    Args:
        graph: from `create_graph`, before or after a run.
        timeout: seconds dot may take; then it is killed.

    Returns:
        The SVG text (``<?xml ...><svg ...>``), ready to write to a ``.svg`` file
        or show in Jupyter with ``IPython.display.SVG``.

    Raises:
        FileNotFoundError: ``dot`` is not on ``PATH``; the message says how to
            install Graphviz.
        GraphvizError: dot failed (its standard error is in the message and in
            ``exc.stderr``) or did not finish within ``timeout`` seconds.

    Example:
        >>> svg = to_svg(run(graph))  # coloured by what the run did
        >>> _ = Path('graph.svg').write_text(svg, encoding='utf-8')
    """
    source = to_dot(graph).encode("utf-8")
    dot = shutil.which("dot")
    if dot is None:
        raise FileNotFoundError(_INSTALL_DOT)
    tasks = len(graph.dependencies)
    try:
        done = subprocess.run(
            [dot, "-Tsvg"], input=source, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:  # removed between the lookup and the call
        raise FileNotFoundError(_INSTALL_DOT) from None
    except subprocess.TimeoutExpired as exc:
        stderr = _text(exc.stderr)
        raise GraphvizError(
            f"dot -Tsvg did not finish within {timeout:g} s on a graph of {tasks} tasks:"
            " pass a larger timeout=, or run Graphviz's faster sfdp -Tsvg on to_dot's output",
            None,
            stderr,
        ) from None
    if done.returncode != 0:
        stderr = _text(done.stderr)
        raise GraphvizError(
            f"dot -Tsvg failed ({_exit(done.returncode)}) on a graph of {tasks} tasks:"
            f" {stderr or 'it wrote nothing to stderr'}",
            done.returncode,
            stderr,
        )
    return done.stdout.decode("utf-8", errors="replace")


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    return (output or "").strip()


def _exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exit code {returncode}"
