"""A run as a picture: a self-contained HTML timeline, or a Chrome trace for Perfetto.

Like asyncio's ``capture_call_graph`` / ``format_call_graph`` / ``print_call_graph``
it goes capture -> format -> write: `capture` copies what the graph's last run did
into a `Record` (plain data), `summarize`, `format_html` and `format_chrome_trace`
are pure functions of it, and `write_report` is the only I/O.
"""

from __future__ import annotations

import heapq
import html
import json
import math
import os
import re
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import with_article
from .graph import Graph, instance_items
from .record import TaskOutcome, union_length

__all__ = [
    "Record",
    "Summary",
    "TaskRow",
    "capture",
    "check_report_path",
    "format_chrome_trace",
    "format_html",
    "summarize",
    "to_chrome_trace",
    "to_html",
    "write_report",
]

_ERROR_CHARS = 300  # an error's text is cut there: a report stays small
_LISTED = 100  # the most tasks a list of the summary shows
_SLOWEST = 10
_PATH_SHOWN = 30  # the most tasks of the critical path shown (its first and last)


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One task of the graph, as the report sees it.

    Attributes:
        task: the task's name, as ``str(name)``.
        outcome: how it ended in the run; None when the run did not decide it
            (done before the run, or not needed for its targets).
        lane: where it ran or was loaded (see `TaskStats`); None when it did not.
        start: seconds from the start of the run to its first attempt (its lookup,
            when cached); None when it did not run.
        end: seconds from the start of the run to the end of its last attempt.
        attempts: how many times it was called.
        io: whether it is io-bound.
        error: ``'Type: message'`` of its exception when it failed or was not run.
        parents: indexes in `Record.tasks` of its dependencies (all earlier rows).
        group: for an instance ``(task, i)`` of an expanded task, ``str(task)``: the
            instances' rows come in item order just before their task's row, whose
            parents they are (it gathers them).
        instances: for an expanded task, how many instances its run grew.
    """

    task: str
    outcome: TaskOutcome | None
    lane: str | None = None
    start: float | None = None
    end: float | None = None
    attempts: int = 0
    io: bool = False
    error: str | None = None
    parents: tuple[int, ...] = ()
    group: str | None = None
    instances: int = 0

    @property
    def ran(self) -> bool:
        """Whether it was called in the run (also when it failed or was cancelled)."""
        return self.lane is not None and self.outcome is not TaskOutcome.CACHED

    @property
    def duration(self) -> float:
        """Seconds from its first attempt's start to its last attempt's end; 0 when it
        did not run (cached tasks included: they count 0 towards the lower bound)."""
        if not self.ran or self.start is None or self.end is None:
            return 0.0
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Record:
    """What a graph's last run did, as plain data: what `format_html` draws.

    Attributes:
        graph: the graph's name.
        started: when the run started (seconds since the epoch); 0.0: never run.
        makespan: seconds from the start of the run to its end.
        workers: how many CPU tasks could run at once.
        tasks: every task of the graph, parents before children.
    """

    graph: str
    started: float
    makespan: float
    workers: int
    tasks: tuple[TaskRow, ...]

    def __post_init__(self) -> None:
        for index, row in enumerate(self.tasks):
            if any(not 0 <= p < index for p in row.parents):
                raise ValueError(
                    f"Record.tasks must list parents before children (task {row.task!r} "
                    f"at {index} has parents {row.parents!r})"
                )


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of a run, computed from its `Record` by `summarize`.

    Attributes:
        makespan: seconds the run took.
        critical_path: indexes in `Record.tasks` of the tasks that ran on the
            longest chain of dependencies, weighted by duration, first to last.
        critical_seconds: the summed durations along it.
        cpu_seconds: summed durations of the tasks that ran and are not io-bound.
        workers: how many CPU tasks could run at once.
        lower_bound: ``max(critical_seconds, cpu_seconds / workers)``: no schedule
            of these durations can finish sooner.
        busy: lane -> seconds it ran at least one task, lanes in display order
            (idle worker lanes included, with 0).
        counts: outcome -> how many tasks ended so (every outcome listed).
        slowest: indexes of the tasks that ran, longest first (ten at most).
    """

    makespan: float
    critical_path: tuple[int, ...]
    critical_seconds: float
    cpu_seconds: float
    workers: int
    lower_bound: float
    busy: dict[str, float]
    counts: dict[TaskOutcome, int]
    slowest: tuple[int, ...]


# -- capture -----------------------------------------------------------------------


def capture(graph: Graph) -> Record:
    """Copy what the graph's last run did into a `Record`.  Reads the graph only."""
    if not isinstance(graph, Graph):
        raise TypeError(
            f"expected a Graph from create_graph (got {type(graph).__name__}); "
            "run one with a taskmap runner, then report on it"
        )
    stats, plan = graph.stats, graph.plan
    rows_by_name, io, results = stats.tasks, graph.io_bound, graph.results
    instances = instance_items(graph)
    position: dict[Hashable, int] = {}
    rows: list[TaskRow] = []

    def add(name: Hashable, parents: tuple[int, ...], task: Hashable, **extra: Any) -> None:
        position[name] = len(rows)
        row = rows_by_name.get(name)
        if row is None:
            rows.append(TaskRow(str(name), None, io=task in io, parents=parents, **extra))
            return
        error = _error(results.get(name)) if row.outcome is not TaskOutcome.DONE else None
        rows.append(
            TaskRow(
                str(name),
                row.outcome,
                lane=row.lane,
                start=row.start,
                end=row.end,
                attempts=row.attempts,
                io=task in io,
                error=error,
                parents=parents,
                **extra,
            )
        )

    for tid in plan.order:
        name = plan.names[tid]
        deps = [plan.names[p] for p in plan.parents[tid]]
        over = graph.expand.get(name)
        items = instances.get(name, [])
        for i in items:  # its instances first, then its row, which gathers them
            ins = {position.get((d, i), position[d]) if d == over else position[d] for d in deps}
            add((name, i), tuple(sorted(ins)), name, group=str(name))
        parents = {position[d] for d in deps} | {position[(name, i)] for i in items}
        add(name, tuple(sorted(parents)), name, instances=len(items))
    return Record(str(graph.name), stats.started, stats.makespan, stats.workers, tuple(rows))


def _error(value: object) -> str | None:
    if not isinstance(value, BaseException):
        return None
    text = f"{type(value).__name__}: {value}".rstrip(": ")
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"


# -- summarize ---------------------------------------------------------------------


def summarize(record: Record) -> Summary:
    """Compute a run's figures: critical path, lower bound, use of each lane, counts."""
    tasks = record.tasks
    path, critical = _critical_path(tasks)
    cpu = sum(row.duration for row in tasks if row.ran and not row.io)
    workers = max(1, record.workers)
    counts = dict.fromkeys(TaskOutcome, 0)
    for row in tasks:
        if row.outcome is not None:
            counts[row.outcome] += 1
    ran = [i for i, row in enumerate(tasks) if row.ran]
    slowest = heapq.nlargest(_SLOWEST, ran, key=lambda i: tasks[i].duration)
    return Summary(
        makespan=record.makespan,
        critical_path=path,
        critical_seconds=critical,
        cpu_seconds=cpu,
        workers=workers,
        lower_bound=max(critical, cpu / workers),
        busy=_busy(record),
        counts=counts,
        slowest=tuple(slowest),
    )


def _critical_path(tasks: Sequence[TaskRow]) -> tuple[tuple[int, ...], float]:
    """The longest chain by duration (tasks that did not run weigh 0), its tasks that
    ran first to last, and its length.  One pass: rows list parents first."""
    length = [0.0] * len(tasks)
    via = [-1] * len(tasks)
    for i, row in enumerate(tasks):
        best = -1
        for p in row.parents:
            if best < 0 or length[p] > length[best]:
                best = p
        via[i] = best
        length[i] = row.duration + (length[best] if best >= 0 else 0.0)
    if not tasks:
        return (), 0.0
    end = max(range(len(tasks)), key=length.__getitem__)
    path = []
    i = end
    while i >= 0:
        if tasks[i].ran:
            path.append(i)
        i = via[i]
    return tuple(reversed(path)), length[end]


def _busy(record: Record) -> dict[str, float]:
    """Lane -> seconds it ran at least one task (overlaps count once), in lane order."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for row in record.tasks:
        if row.ran and row.start is not None and row.end is not None:
            assert row.lane is not None
            spans.setdefault(row.lane, []).append((row.start, row.end))
    return {lane: union_length(spans.get(lane, [])) for lane in _lanes(record)}


def _lanes(record: Record) -> list[str]:
    """Lanes in display order: main, loop, thread, worker-1..N (idle ones too), others."""
    seen = {row.lane for row in record.tasks if row.lane is not None}
    if any(_WORKER.fullmatch(lane) for lane in seen):
        seen.update(f"worker-{n}" for n in range(1, record.workers + 1))
    return sorted(seen, key=_lane_key)


_WORKER = re.compile(r"worker-(\d+)")
_HOME = {"main": 0, "loop": 1, "thread": 2}


def _by_lane(record: Record) -> dict[str, tuple[list[int], list[int]]]:
    """Lane -> (the tasks that ran there, the cached tasks loaded there), by index,
    lanes in display order."""
    lanes: dict[str, tuple[list[int], list[int]]] = {lane: ([], []) for lane in _lanes(record)}
    for i, row in enumerate(record.tasks):
        if row.lane is not None:
            lanes[row.lane][0 if row.ran else 1].append(i)
    return lanes


def _lane_key(lane: str) -> tuple[int, int, str]:
    if lane in _HOME:
        return (0, _HOME[lane], "")
    worker = _WORKER.fullmatch(lane)
    return (1, int(worker.group(1)), "") if worker else (2, 0, lane)


def _stack(spans: Sequence[tuple[float, float]], cap: int) -> tuple[list[int], int]:
    """A sub-row for each span so that spans in one sub-row do not overlap, lowest
    free sub-row first; past ``cap`` sub-rows, a span goes where one ends first
    (drawn over it).  Returns the sub-rows, in the order given, and how many."""
    rows = [0] * len(spans)
    busy: list[tuple[float, int]] = []  # (end, sub-row) of the spans still open
    free: list[int] = []
    count = 0
    for i in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[i]
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            row = heapq.heappop(free)
        elif count < cap:
            row, count = count, count + 1
        else:
            row = heapq.heappop(busy)[1]
        rows[i] = row
        heapq.heappush(busy, (end, row))
    return rows, count


# -- format: HTML ------------------------------------------------------------------

_LABEL, _PLOT, _RIGHT, _AXIS = 150, 1000, 30, 26  # px: lane labels, time axis, margins
_ROW, _BAR, _PAD, _STRIP = 14, 11, 5, 9  # px: sub-row pitch, bar height, lane padding
_MIN_WIDTH = 1.5  # px: the narrowest bar, so that a short task still shows
_CROWDED = 300  # bars in a lane past which they are drawn at their true width
_MAX_ROWS = 24  # sub-rows per lane; more overlapping tasks are drawn over each other


def format_html(record: Record) -> str:
    """Render a `Record` as one self-contained HTML page (inline CSS, SVG and JS).

    Each task that ran is a ``<rect class="bar ...">`` with ``data-task`` (its
    name); each cached task is a ``<rect class="mark cached">`` on its lane at its
    load time.  Tasks not run (skipped, stopped before they started) have no mark
    and are listed below the timeline.
    """
    title = f"taskmap run: {record.graph}"
    if not record.started:
        body = _header(record) + (
            f'<p class="empty">This graph has not been run yet: its {len(record.tasks)} '
            "tasks have no record. Run it, then make the report again.</p>"
        )
    else:
        summary = summarize(record)
        body = "".join(
            (
                _header(record),
                _cards(summary),
                _timeline(record, summary),
                _tables(record, summary),
            )
        )
    return _PAGE.format(title=_esc(title), css=_CSS, body=body, js=_JS)


def _header(record: Record) -> str:
    if not record.started:
        when = "never run"
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(record.started))
        when = f"started {stamp} · {record.workers} worker{_s(record.workers)}"
    n = len(record.tasks)
    return (
        f'<header><h1>taskmap run of <span class="name">{_esc(record.graph)}</span></h1>'
        f'<p class="meta">{when} · {n} task{_s(n)} in the graph</p></header>'
    )


def _cards(summary: Summary) -> str:
    ratio = summary.makespan / summary.lower_bound if summary.lower_bound > 0 else 0.0
    bound = (
        f"max(critical path {_seconds(summary.critical_seconds)}, CPU "
        f"{_seconds(summary.cpu_seconds)} / {summary.workers} worker{_s(summary.workers)})"
    )
    cards = [
        (
            "makespan",
            _seconds(summary.makespan),
            f"{ratio:.2f}\N{MULTIPLICATION SIGN} the lower bound" if ratio else "",
        ),
        ("lower bound", _seconds(summary.lower_bound), bound),
    ]
    cards += [(o.value, str(n), "") for o, n in summary.counts.items()]
    items = "".join(
        f'<div class="card {_esc(key.replace(" ", "-"))}{" zero" if value == "0" else ""}">'
        f'<div class="k">{_esc(key)}</div>'
        f'<div class="v" id="{_esc(key.replace(" ", "-"))}">{_esc(value)}</div>'
        f'<div class="n">{_esc(note)}</div></div>'
        for key, value, note in cards
    )
    return f'<section class="cards">{items}</section>'


def _timeline(record: Record, summary: Summary) -> str:
    lanes = _by_lane(record)
    if not lanes:
        return '<section><h2>Timeline</h2><p class="empty">No task ran in this run.</p></section>'
    span = max([record.makespan, *(row.end or 0.0 for row in record.tasks)]) or 1.0
    scale = _PLOT / span
    crit = set(summary.critical_path)
    groups, y = [], _AXIS
    for n, (lane, (bars, marks)) in enumerate(lanes.items()):
        group, height = _lane(record, lane, bars, marks, crit, scale, y, n % 2)
        groups.append(group)
        y += height
    width = _LABEL + _PLOT + _RIGHT
    svg = (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 4}"'
        f' viewBox="0 0 {width} {y + 4}">{_DEFS}{_axis(span, scale, y)}{"".join(groups)}</svg>'
    )
    return f'<section><h2>Timeline</h2>{_LEGEND}<div class="scroll">{svg}</div></section>'


def _lane(
    record: Record,
    lane: str,
    bars: list[int],
    marks: list[int],
    crit: set[int],
    scale: float,
    y: int,
    odd: int,
) -> tuple[str, int]:
    """One lane's SVG group (a band, its label, its bars and marks), and its height.

    ``bars``: the tasks that ran there; ``marks``: the cached ones loaded there.
    """
    times = [(record.tasks[i].start or 0.0, record.tasks[i].end or 0.0) for i in bars]
    rows, count = _stack(times, _MAX_ROWS)  # by time: tasks in turn share a sub-row
    height = 2 * _PAD + max(count, 1) * _ROW + (_STRIP if marks else 0)
    label = lane if len(lane) <= 22 else lane[:21] + "…"
    parts = [
        f'<g class="lane" data-lane="{_esc(lane)}" transform="translate(0 {y})">',
        f'<rect class="band{" odd" if odd else ""}" x="0" y="0" width="{_LABEL + _PLOT + _RIGHT}"'
        f' height="{height}"/>',
        f'<text class="label" x="8" y="{height / 2 + 4:.0f}"><title>{_esc(lane)}</title>'
        f"{_esc(label)}</text>",
    ]
    # A short task still shows, unless the lane is crowded: there the faint sub-pixel
    # bars show how busy it really was.
    least = _MIN_WIDTH if len(bars) <= _CROWDED else 0.1
    for i, sub, (start, end) in zip(bars, rows, times, strict=True):
        width = max((end - start) * scale, least)
        parts.append(_bar(record.tasks[i], i in crit, _x(start, scale), width, _PAD + sub * _ROW))
    mark_y = _PAD + max(count, 1) * _ROW
    for i in marks:
        row = record.tasks[i]
        parts.append(
            f'<rect class="mark cached" x="{_x(row.start, scale) - 1:.1f}" y="{mark_y}" width="3"'
            f' height="{_STRIP - 2}" data-task="{_esc(row.task)}" data-s="{_seconds(row.start)}"/>'
        )
    parts.append("</g>")
    return "".join(parts), height


def _bar(row: TaskRow, crit: bool, x: float, width: float, y: int) -> str:
    assert row.outcome is not None
    kind = "io" if row.io else "cpu"
    classes = f"bar {kind} {row.outcome.value}{' crit' if crit else ''}"
    extra = f' data-a="{row.attempts}"' if row.attempts != 1 else ""
    if row.error is not None:
        extra += f' data-e="{_esc(row.error)}"'
    return (
        f'<rect class="{classes}" x="{x:.1f}" y="{y}" width="{width:.1f}" height="{_BAR}"'
        f' data-task="{_esc(row.task)}" data-d="{_seconds(row.duration)}"'
        f' data-s="{_seconds(row.start)}"{extra}/>'
    )


def _x(t: float | None, scale: float) -> float:
    return _LABEL + (t or 0.0) * scale


def _axis(span: float, scale: float, bottom: int) -> str:
    """Ticks at a round step (1, 2 or 5 times a power of ten), with grid lines."""
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    parts = ['<g class="axis">']
    for k in range(int(span / step + 1e-9) + 1):
        x = _x(k * step, scale)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_AXIS - 4}" x2="{x:.1f}" y2="{bottom}"/>'
            f'<text x="{x:.1f}" y="{_AXIS - 9}">{_seconds(k * step) if k else "0"}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _tables(record: Record, summary: Summary) -> str:
    tasks = record.tasks
    return (
        '<section class="tables">'
        + _table("Lanes", ["lane", "busy", "of the makespan"], _use_rows(summary))
        + _table(
            "Slowest tasks",
            ["task", "lane", "duration", "attempts", "outcome"],
            [_task_cells(tasks[i]) for i in summary.slowest],
        )
        + _critical(record, summary)
        + _problems(record)
        + "</section>"
    )


def _use_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for lane, busy in summary.busy.items():
        share = busy / summary.makespan if summary.makespan > 0 else 0.0
        kind = "io" if lane in ("loop", "thread") else "cpu"  # the lanes of io-bound tasks
        width = min(share, 1.0) * 100
        meter = f'<span class="meter {kind}"><span style="width:{width:.0f}%"></span></span>'
        rows.append([_esc(lane), _seconds(busy), f"{meter} {share:.0%}"])
    return rows


def _task_cells(row: TaskRow) -> list[str]:
    outcome = row.outcome.value if row.outcome is not None else ""
    return [
        _esc(row.task),
        _esc(row.lane or ""),
        _seconds(row.duration),
        str(row.attempts),
        outcome,
    ]


def _table(title: str, head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table of cells already escaped."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(head)}" class="empty">none</td></tr>'
    heads = "".join(f"<th>{h}</th>" for h in head)
    return f"<div><h2>{title}</h2><table><thead><tr>{heads}</tr></thead>{body}</table></div>"


def _critical(record: Record, summary: Summary) -> str:
    items = [
        f'<li>{_esc(record.tasks[i].task)} <span class="d">'
        f"{_seconds(record.tasks[i].duration)}</span></li>"
        for i in summary.critical_path
    ]
    if len(items) > _PATH_SHOWN:  # a long chain: its start and its end
        more = len(items) - _PATH_SHOWN
        items[_PATH_SHOWN - 5 : -5] = [f'<li class="more">{more} more</li>']
    n = len(summary.critical_path)
    return (
        f'<div><h2>Critical path <span class="d">{_seconds(summary.critical_seconds)}, '
        f"{n} task{_s(n)}</span></h2>"
        f'<ol id="critical-path">{"".join(items) or "<li class=empty>no task ran</li>"}</ol></div>'
    )


def _problems(record: Record) -> str:
    """Failed tasks with their errors, and the tasks not run with why."""
    parts = []
    for outcome, title in (
        (TaskOutcome.FAILED, "Failed"),
        (TaskOutcome.SKIPPED, "Skipped: an ancestor failed"),
        (TaskOutcome.STOPPED, "Stopped: the run stopped"),
    ):
        items = [
            f'<li><span class="t">{_esc(row.task)}</span>'
            f'<span class="e">{_esc(row.error or "")}</span></li>'
            for row in record.tasks
            if row.outcome is outcome
        ]
        if items:
            parts.append(
                f'<div class="{outcome.value}"><h2>{title} ({len(items)})</h2>'
                f"<ul>{_shortened(items)}</ul></div>"
            )
    return "".join(parts)


def _shortened(items: list[str]) -> str:
    if len(items) <= _LISTED:
        return "".join(items)
    more = len(items) - _LISTED
    return "".join(items[:_LISTED]) + f'<li class="more">and {more} more</li>'


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _seconds(t: float | None) -> str:
    """A duration for people: 3 significant digits, in s, ms or µs."""
    t = max(t or 0.0, 0.0)
    if t >= 99.95:
        return f"{t:.0f} s"
    if t >= 0.9995:
        return f"{t:.3g} s"
    if t >= 0.0009995:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>{body}<div id="tip" role="tooltip" hidden></div><script>{js}</script></body></html>
"""

_CSS = """
:root{--io:#4e79a7;--cpu:#f28e2b;--cached:#59a14f;--failed:#d62728;--stopped:#9d9d9d;
--ink:#1f2328;--muted:#656d76;--line:#d8dee4;--band:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;padding:20px 24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:var(--ink);background:#fff}
h1{font-size:20px;margin:0 0 2px}h1 .name{font-family:ui-monospace,monospace}
h2{font-size:15px;margin:18px 0 8px}
.meta{color:var(--muted);margin:0 0 12px}
.empty{color:var(--muted);font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:96px}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}
.card .n{color:var(--muted);font-size:12px;max-width:330px}
.card.failed .v{color:var(--failed)}.card.zero .v{color:var(--muted);font-weight:400}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;color:var(--muted);margin:0 0 6px}
.legend i{display:inline-block;width:18px;height:10px;margin-right:5px;vertical-align:-1px;
border-radius:2px}
.legend .io{background:var(--io)}.legend .cpu{background:var(--cpu)}
.legend .cached{background:var(--cached);width:4px}
.legend .failed{background:repeating-linear-gradient(135deg,var(--cpu) 0 3px,var(--failed) 3px 5px);
outline:1.5px solid var(--failed)}
.legend .stopped{background:var(--stopped);opacity:.6}
.legend .crit{background:#fff;outline:2px solid var(--ink)}
.scroll{display:inline-block;max-width:100%;overflow-x:auto;border:1px solid var(--line);
border-radius:6px;vertical-align:top}
svg{display:block;font-size:11px}
.band{fill:#fff}.band.odd{fill:var(--band)}
.label{fill:var(--ink);font-family:ui-monospace,monospace}
.axis line{stroke:var(--line);stroke-width:1}.axis text{fill:var(--muted);text-anchor:middle}
.bar{stroke:none}.bar:hover{stroke:var(--ink);stroke-width:1.5}
.bar.io{fill:var(--io)}.bar.cpu{fill:var(--cpu)}
.bar.crit{stroke:var(--ink);stroke-width:1.5}
.bar.io.failed{fill:url(#hatch-io)}.bar.cpu.failed{fill:url(#hatch-cpu)}
.bar.failed{stroke:var(--failed);stroke-width:1.5}
.bar.stopped{fill:var(--stopped);opacity:.6;stroke:var(--ink);stroke-dasharray:2 2}
.mark.cached{fill:var(--cached)}
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:0 28px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid var(--line);
vertical-align:top;overflow-wrap:anywhere}
th{color:var(--muted);font-weight:500}
.meter{display:inline-block;width:80px;height:8px;background:var(--band);
border:1px solid var(--line);vertical-align:0}
.meter span{display:block;height:100%;background:var(--cpu)}
.meter.io span{background:var(--io)}
ol,ul{margin:0;padding-left:22px;font-size:13px}
#critical-path{display:flex;flex-wrap:wrap;gap:2px 0;padding:0;list-style:none}
#critical-path li+li::before{content:"\\2192";color:var(--muted);margin:0 6px}
#critical-path .more{color:var(--muted);font-style:italic}
li .d,h2 .d{color:var(--muted);font-weight:400}
.failed li .t,.skipped li .t,.stopped li .t{font-family:ui-monospace,monospace;margin-right:8px}
li .e{color:var(--muted);overflow-wrap:anywhere}.failed li .e{color:var(--failed)}
#tip{position:fixed;z-index:9;max-width:440px;padding:6px 9px;background:#1f2328;color:#fff;
border-radius:5px;font-size:12px;pointer-events:none;box-shadow:0 2px 8px #0004}
#tip b{font-family:ui-monospace,monospace;overflow-wrap:anywhere}
#tip .e{color:#ffb3b3;overflow-wrap:anywhere}
"""

_LEGEND = (
    '<div class="legend"><span><i class="io"></i>io-bound</span>'
    '<span><i class="cpu"></i>CPU</span><span><i class="cached"></i>cached (loaded)</span>'
    '<span><i class="failed"></i>failed</span><span><i class="stopped"></i>cancelled</span>'
    '<span><i class="crit"></i>critical path</span></div>'
)

_DEFS = (
    "<defs>"
    + "".join(
        f'<pattern id="hatch-{kind}" width="5" height="5" patternUnits="userSpaceOnUse"'
        f' patternTransform="rotate(45)"><rect width="5" height="5" fill="{colour}"/>'
        '<rect width="2" height="5" fill="#d62728"/></pattern>'
        for kind, colour in (("io", "#4e79a7"), ("cpu", "#f28e2b"))
    )
    + "</defs>"
)

# The tooltip: one listener on the timeline; text goes in with textContent (no HTML).
_JS = """
(function () {
  var svg = document.getElementById("timeline"), tip = document.getElementById("tip");
  if (!svg) return;
  var OUTCOMES = ["done", "failed", "stopped", "cached"];
  function line(parent, cls, text) {
    var el = document.createElement(cls === "name" ? "b" : "div");
    if (cls !== "name") el.className = cls;
    el.textContent = text;
    parent.appendChild(el);
  }
  function show(event) {
    var el = event.target, d = el.dataset;
    if (!d || d.task === undefined) { tip.hidden = true; return; }
    var outcome = OUTCOMES.filter(function (o) { return el.classList.contains(o); })[0];
    var lane = el.parentNode.getAttribute("data-lane");
    tip.textContent = "";
    line(tip, "name", d.task);
    if (outcome === "cached") {
      line(tip, "o", "cached: loaded at " + d.s + " on " + lane);
    } else {
      line(tip, "o", outcome + " · duration " + d.d + " · attempts " + (d.a || "1"));
      line(tip, "w", (el.classList.contains("io") ? "io-bound" : "CPU") + " · " + lane +
        " · started at " + d.s + (el.classList.contains("crit") ? " · critical path" : ""));
    }
    if (d.e) line(tip, "e", d.e);
    tip.hidden = false;
    move(event);
  }
  function move(event) {
    if (tip.hidden) return;
    var x = event.clientX + 14, y = event.clientY + 14, r = tip.getBoundingClientRect();
    if (x + r.width > innerWidth - 4) x = Math.max(4, event.clientX - r.width - 14);
    if (y + r.height > innerHeight - 4) y = Math.max(4, event.clientY - r.height - 14);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  svg.addEventListener("mouseover", show);
  svg.addEventListener("mousemove", move);
  svg.addEventListener("mouseleave", function () { tip.hidden = true; });
})();
"""


# -- format: Chrome trace ----------------------------------------------------------


def format_chrome_trace(record: Record) -> dict[str, Any]:
    """Render a `Record` as Chrome trace-event JSON (Perfetto, chrome://tracing).

    Each task that ran is a complete event (``"ph": "X"``, microseconds) and each
    cached task an instant event (``"ph": "i"``) on its lane's thread.  Tasks that
    overlap on a lane (coroutines on the event loop) go to extra threads named
    ``'loop (2)'``, ``'loop (3)'``...: a trace's slices on one thread must nest.
    """
    events: list[dict[str, Any]] = [
        {
            "ph": "M",
            "pid": 1,
            "name": "process_name",
            "args": {"name": f"taskmap run of {record.graph!r}"},
        }
    ]
    threads: dict[tuple[str, int], int] = {}
    for lane, (ran, loaded) in _by_lane(record).items():
        bars = sorted((record.tasks[i] for i in ran), key=lambda row: row.start or 0.0)
        rows, _ = _stack([(row.start or 0.0, row.end or 0.0) for row in bars], len(bars))
        home = _thread(threads, events, lane, 0)  # named even when idle
        for row, sub in zip(bars, rows, strict=True):
            events.append(_complete(row, _thread(threads, events, lane, sub)))
        events += [_instant(record.tasks[i], home) for i in loaded]
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": _other(record)}


def _thread(
    threads: dict[tuple[str, int], int], events: list[dict[str, Any]], lane: str, row: int
) -> int:
    """The trace thread id of a lane's sub-row, named by a metadata event when new."""
    key = (lane, row)
    if key not in threads:
        tid = threads[key] = len(threads) + 1
        name = lane if row == 0 else f"{lane} ({row + 1})"
        events.append(
            {"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )
        events.append(
            {
                "ph": "M",
                "pid": 1,
                "tid": tid,
                "name": "thread_sort_index",
                "args": {"sort_index": tid},
            }
        )
    return threads[key]


def _complete(row: TaskRow, tid: int) -> dict[str, Any]:
    assert row.outcome is not None
    args: dict[str, Any] = {"outcome": row.outcome.value, "attempts": row.attempts}
    if row.error is not None:
        args["error"] = row.error
    return {
        "name": row.task,
        "cat": "io" if row.io else "cpu",
        "ph": "X",
        "ts": _us(row.start),
        "dur": _us(row.duration),
        "pid": 1,
        "tid": tid,
        "args": args,
    }


def _instant(row: TaskRow, tid: int) -> dict[str, Any]:
    return {
        "name": row.task,
        "cat": "cached",
        "ph": "i",
        "s": "t",
        "ts": _us(row.start),
        "pid": 1,
        "tid": tid,
        "args": {"outcome": "cached"},
    }


def _us(seconds: float | None) -> float:
    return round((seconds or 0.0) * 1e6, 3)


def _other(record: Record) -> dict[str, Any]:
    if not record.started:
        return {"graph": record.graph, "run": "never run"}
    summary = summarize(record)
    return {
        "graph": record.graph,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.started)),
        "workers": summary.workers,
        "makespan_s": summary.makespan,
        "lower_bound_s": summary.lower_bound,
        "critical_path_s": summary.critical_seconds,
        "cpu_s": summary.cpu_seconds,
    }


# -- the public functions ----------------------------------------------------------


def to_html(graph: Graph) -> str:
    """Render the graph's last run as one self-contained HTML page.

    The page needs no network: CSS, the SVG timeline and the script of its tooltips
    are inline.  It shows a timeline with one lane per place tasks ran (``main``,
    the event loop, threads, each worker process, an executor's workers; tasks
    overlapping on a lane are stacked), io-bound and CPU tasks in their own colours,
    failed tasks hatched in red and cached tasks as green marks at their load time;
    then the makespan against its lower bound ``max(critical path, CPU time /
    workers)``, each lane's use, the slowest tasks, the critical path, and the tasks
    that failed or did not run, with why.

    Args:
        graph: a graph after a run (before one, the page says it has not run).

    Returns:
        The page.

    Example:
        >>> graph = taskmap.run_parallel_async(graph)
        >>> Path('run.html').write_text(to_html(graph), encoding='utf-8')
    """
    return format_html(capture(graph))


def to_chrome_trace(graph: Graph) -> dict[str, Any]:
    """Render the graph's last run as Chrome trace-event JSON, for Perfetto.

    Open the file at https://ui.perfetto.dev or chrome://tracing: one thread per
    lane, one complete event per task that ran (``args`` hold its outcome,
    attempts and error), an instant event per cached task.

    Args:
        graph: a graph after a run (before one, the trace has no task events).

    Returns:
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``,
        ready for `json.dump`.
    """
    return format_chrome_trace(capture(graph))


def write_report(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write the graph's last run to ``path``: an HTML page or a Chrome trace.

    Args:
        graph: a graph after a run.
        path: ``*.html`` (or ``*.htm``) for the page of `to_html`, ``*.json`` for
            the trace of `to_chrome_trace`.

    Returns:
        The path written, as a `pathlib.Path`.

    Raises:
        ValueError: the path ends in neither, or its directory does not exist.

    Example:
        >>> write_report(taskmap.run_parallel_async(graph), 'run.html')
        PosixPath('run.html')
    """
    kind = check_report_path(path)
    if kind == "html":
        text = to_html(graph)
    else:
        text = json.dumps(to_chrome_trace(graph), ensure_ascii=False)
    target = Path(path)
    target.write_text(text, encoding="utf-8")
    return target


def check_report_path(path: object) -> Literal["html", "json"]:
    """Check a report's path before a run, so a typo does not cost the run's report.

    Returns what it will hold, from its suffix: ``'html'`` or ``'json'``.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"report must be a path ending in .html or .json (got {path!r}, "
            f"{with_article(type(path).__name__)})"
        )
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".html", ".htm", ".json"):
        raise ValueError(
            f"report path must end in .html or .json (got {str(path)!r}): "
            ".html writes a timeline page, .json a Chrome trace for Perfetto"
        )
    if not target.parent.is_dir():
        raise ValueError(
            f"report path {str(path)!r} is in a directory that does not exist "
            f"({str(target.parent)!r}): create it first"
        )
    return "json" if suffix == ".json" else "html"
