"""to_dot, to_mermaid, to_svg: whole texts for a small graph, colours after real runs,
escaping of awkward names (checked by Graphviz itself and by decoding Mermaid's entity
codes), and to_svg's errors when dot is missing, fails or hangs."""

from __future__ import annotations

import html
import os
import pickle
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Hashable
from pathlib import Path

import pytest

import taskmap
from taskmap import RunStoppedError, UpstreamFailedError, create_graph, reset_failed_tasks
from taskmap.draw import GraphvizError, to_dot, to_mermaid, to_svg

SVG = "{http://www.w3.org/2000/svg}"

#: fill colour -> the colour the README promises for that state
COLOURS = {
    "#ffffff": "white",  # not run yet
    "#b2f2bb": "green",  # done
    "#a5d8ff": "blue",  # cached
    "#ffa8a8": "red",  # failed
    "#dee2e6": "grey",  # skipped
    "#ffd8a8": "orange",  # stopped
}

DOT_NODE = re.compile(
    r'^  (?P<id>t\d+) \[label="(?P<label>(?:[^"\\]|\\.)*)",'
    r'(?P<io> shape=parallelogram, style=filled,)? fillcolor="(?P<fill>#[0-9a-f]{6})",'
    r' color="#[0-9a-f]{6}"\];$'
)
DOT_EDGE = re.compile(r"^  (t\d+) -> (t\d+);$")
MERMAID_NODE = re.compile(
    r'^  (?P<id>t\d+)(?:\("(?P<label>[^"]*)"\)|\[/"(?P<io>[^"]*)"/\]):::(?P<state>\w+)$'
)
MERMAID_EDGE = re.compile(r"^  (t\d+) --> (t\d+)$")


def work(*args: object) -> str:
    return "ok"


def explode(*args: object) -> str:
    raise ValueError("explode was called")


def dot_nodes(dot: str) -> dict[str, tuple[str, str]]:
    """First label line -> (colour, whole label) for every node line of ``dot``."""
    nodes = {}
    for line in dot.splitlines():
        if found := DOT_NODE.match(line):
            label = found["label"]
            nodes[label.split("\\n")[0]] = (COLOURS[found["fill"]], label)
    return nodes


def mermaid_classes(mermaid: str) -> dict[str, str]:
    """First label line -> class for every node line of ``mermaid``."""
    nodes = {}
    for line in mermaid.splitlines():
        if found := MERMAID_NODE.match(line):
            label = found["label"] if found["label"] is not None else found["io"]
            nodes[label.split("<br>")[0]] = found["state"]
    return nodes


def require_dot() -> None:
    """Skip without Graphviz, except on CI, which must install it."""
    if shutil.which("dot") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Graphviz for these tests: apt-get install -y graphviz")
        pytest.skip("Graphviz's dot is not on PATH (apt-get install -y graphviz)")


# -- the whole text --------------------------------------------------------------


def diamond() -> taskmap.Graph:
    """fetch (io-bound) -> parse, count -> report; report lists count twice."""
    deps = {
        "fetch": [],
        "parse": ["fetch"],
        "count": ["fetch"],
        "report": ["count", "parse", "count"],
    }
    return create_graph(dict.fromkeys(deps, work), deps, io_bound=["fetch"])


def test_to_dot_draws_every_task_and_dependency_before_a_run() -> None:
    assert to_dot(diamond()) == (
        'digraph "taskmap" {\n'
        "  // parallelogram = io-bound task, rounded box = CPU task, arrow = dependency -> task\n"
        "  // white = not run yet, green = done, blue = cached, red = failed,\n"
        "  // grey = skipped (an ancestor failed), orange = stopped (the run stopped first)\n"
        "  rankdir=LR;\n"
        '  node [shape=box, style="rounded,filled", fontname="Helvetica,Arial,sans-serif"];\n'
        '  t0 [label="fetch", shape=parallelogram, style=filled, fillcolor="#ffffff",'
        ' color="#495057"];\n'
        '  t1 [label="parse", fillcolor="#ffffff", color="#495057"];\n'
        '  t2 [label="count", fillcolor="#ffffff", color="#495057"];\n'
        '  t3 [label="report", fillcolor="#ffffff", color="#495057"];\n'
        "  t0 -> t1;\n"
        "  t0 -> t2;\n"
        "  t2 -> t3;\n"
        "  t1 -> t3;\n"
        "}\n"
    )


def test_to_mermaid_draws_every_task_and_dependency_before_a_run() -> None:
    assert to_mermaid(diamond()) == (
        "flowchart LR\n"
        "  %% parallelogram = io-bound task, rounded box = CPU task, arrow = dependency -> task\n"
        "  %% white = not run yet, green = done, blue = cached, red = failed,\n"
        "  %% grey = skipped (an ancestor failed), orange = stopped (the run stopped first)\n"
        "  classDef pending fill:#ffffff,stroke:#495057,color:#000000\n"
        "  classDef done fill:#b2f2bb,stroke:#2f9e44,color:#000000\n"
        "  classDef cached fill:#a5d8ff,stroke:#1971c2,color:#000000\n"
        "  classDef failed fill:#ffa8a8,stroke:#e03131,color:#000000\n"
        "  classDef skipped fill:#dee2e6,stroke:#868e96,color:#000000\n"
        "  classDef stopped fill:#ffd8a8,stroke:#e8590c,color:#000000\n"
        '  t0[/"fetch"/]:::pending\n'
        '  t1("parse"):::pending\n'
        '  t2("count"):::pending\n'
        '  t3("report"):::pending\n'
        "  t0 --> t1\n"
        "  t0 --> t2\n"
        "  t2 --> t3\n"
        "  t1 --> t3\n"
    )


def test_the_same_graph_draws_the_same_text() -> None:
    graph = taskmap.run(diamond())
    assert to_dot(graph) == to_dot(graph)
    assert to_mermaid(graph) == to_mermaid(graph)
    assert to_dot(diamond()) == to_dot(diamond())


# -- colours after a run ---------------------------------------------------------

FAILING = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": []}


def failing_graph(io_bound: tuple[str, ...] = ("d",), **options: object) -> taskmap.Graph:
    """b raises; c depends on b; a, d, e succeed."""
    funcs = dict.fromkeys(FAILING, work) | {"b": explode}
    return create_graph(funcs, FAILING, io_bound=io_bound, **options)  # type: ignore[arg-type]


def test_a_run_colours_done_failed_and_skipped_tasks() -> None:
    graph = taskmap.run(failing_graph())
    expected = {"a": "green", "b": "red", "c": "grey", "d": "green", "e": "green"}
    assert {name: colour for name, (colour, _) in dot_nodes(to_dot(graph)).items()} == expected
    assert mermaid_classes(to_mermaid(graph)) == {
        "a": "done",
        "b": "failed",
        "c": "skipped",
        "d": "done",
        "e": "done",
    }


def test_tasks_that_ran_show_their_duration_on_a_second_line() -> None:
    graph = taskmap.run(failing_graph())
    labels = {name: label for name, (_, label) in dot_nodes(to_dot(graph)).items()}
    duration = r"\\n\d+ (µs|ms)"  # tiny tasks
    assert all(re.fullmatch(name + duration, labels[name]) for name in "abde"), labels
    assert labels["c"] == "c"  # skipped: it did not run
    assert re.search(r'\("e<br>\d+ (µs|ms)"\)', to_mermaid(graph))


def test_a_rerun_from_the_cache_colours_loaded_tasks_blue(tmp_path: Path) -> None:
    taskmap.run(failing_graph(cache=tmp_path / "c"))
    graph = taskmap.run(failing_graph(cache=tmp_path / "c"))
    assert graph.stats.count(taskmap.TaskOutcome.CACHED) == 3
    nodes = dot_nodes(to_dot(graph))
    assert {name: colour for name, (colour, _) in nodes.items()} == {
        "a": "blue",
        "b": "red",  # a failure is not cached: it ran and failed again
        "c": "grey",
        "d": "blue",
        "e": "blue",
    }
    assert nodes["a"][1] == "a"  # loaded, not run: no duration
    assert mermaid_classes(to_mermaid(graph))["d"] == "cached"


def test_tasks_a_fail_fast_run_did_not_start_are_orange() -> None:
    # a starts first (the longest chain), then io-bound b before d and e; b stops the run
    graph = taskmap.run(failing_graph(io_bound=("b",)), on_error="fail_fast")
    colours = {name: colour for name, (colour, _) in dot_nodes(to_dot(graph)).items()}
    assert colours == {"a": "green", "b": "red", "c": "grey", "d": "orange", "e": "orange"}


def test_reset_tasks_are_white_again_after_a_run() -> None:
    graph = reset_failed_tasks(taskmap.run(failing_graph()))
    colours = {name: colour for name, (colour, _) in dot_nodes(to_dot(graph)).items()}
    assert colours == {"a": "green", "b": "white", "c": "white", "d": "green", "e": "green"}


def test_without_a_run_the_colours_come_from_done_and_results() -> None:
    results = {
        "a": 1,
        "b": ValueError("bad input"),
        "c": UpstreamFailedError("c", "b"),
        "d": RunStoppedError("d", "b"),
    }
    graph = failing_graph(done=["a", "b", "c", "d"], results=results)
    colours = {name: (colour, label) for name, (colour, label) in dot_nodes(to_dot(graph)).items()}
    assert colours == {
        "a": ("green", "a"),
        "b": ("red", "b"),
        "c": ("grey", "c"),
        "d": ("orange", "d"),
        "e": ("white", "e"),
    }


# -- awkward names -----------------------------------------------------------------

#: task name -> the label lines a reader should see
AWKWARD: dict[Hashable, list[str]] = {
    'say "hi"': ['say "hi"'],
    "back\\slash\\": ["back\\slash\\"],
    "\\N \\G \\l \\n": ["\\N \\G \\l \\n"],  # Graphviz label escapes, shown as typed
    "two\nlines": ["two", "lines"],
    "crlf\r\nend\u2028sep": ["crlf", "end", "sep"],
    "tab\tnul\x00": ["tab\u2409nul\u2400"],  # control pictures
    "<b>not bold</b>": ["<b>not bold</b>"],
    "a &amp; b": ["a &amp; b"],  # an entity stays as typed
    "#quot; #35;": ["#quot; #35;"],  # so does a Mermaid entity code
    "style:x#1;": ["style:x#1;"],  # Mermaid rewrites lines like 'style...:...#...;'
    "naïve → 東京 🚀": ["naïve → 東京 🚀"],
    "`md` {x} [y] (z) a|b": ["`md` {x} [y] (z) a|b"],
    "end": ["end"],  # a Mermaid keyword
    1: ["1"],
    "1": ["1"],  # prints like the int 1: its own node all the same
    ("extract", 2): ["('extract', 2)"],
    "": [],
}


def awkward_graph() -> taskmap.Graph:
    deps: dict[Hashable, list[Hashable]] = {name: [] for name in AWKWARD}
    deps["end"] = [1, "1", ("extract", 2), 'say "hi"', 1]
    deps[""] = ["end", "two\nlines"]
    return create_graph(dict.fromkeys(deps, work), deps, io_bound=["two\nlines", 1])


def test_names_that_print_alike_get_their_own_nodes() -> None:
    dot = to_dot(awkward_graph())
    ends = [found.groups() for line in dot.splitlines() if (found := DOT_EDGE.match(line))]
    # 'end' is t12 and depends on 1 (t13), '1' (t14), the tuple (t15) and t0, in that order
    assert ends[:4] == [("t13", "t12"), ("t14", "t12"), ("t15", "t12"), ("t0", "t12")]
    assert len(ends) == 6


def test_awkward_names_make_dot_that_graphviz_draws_as_typed() -> None:
    require_dot()
    svg = ET.fromstring(to_svg(awkward_graph()))
    shown = {
        node.findtext(f"{SVG}title"): [text.text or "" for text in node.iter(f"{SVG}text")]
        for node in svg.iter(f"{SVG}g")
        if node.get("class") == "node"
    }
    assert shown == {f"t{tid}": lines for tid, lines in enumerate(AWKWARD.values())}


def decode_mermaid(label: str) -> list[str]:
    """Mermaid's reading of a label: entity codes (#quot;, #35;) and <br> line breaks."""
    if "<" in label.replace("<br>", "") or ">" in label.replace("<br>", ""):
        raise AssertionError(f"raw < or > in {label!r}")
    text = re.sub(
        r"#(\w+);", lambda m: html.unescape(f"&#{m[1]};" if m[1].isdigit() else f"&{m[1]};"), label
    )
    return [] if label == " " else text.split("<br>")


def test_awkward_names_make_well_formed_mermaid() -> None:
    lines = to_mermaid(awkward_graph()).splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, list[str]] = {}
    edges = []
    for line in lines[1:]:
        if line.startswith(("  %% ", "  classDef ")):
            continue
        if found := MERMAID_NODE.match(line):
            assert found["id"] not in nodes, f"{found['id']} defined twice"
            label = found["label"] if found["label"] is not None else found["io"]
            nodes[found["id"]] = decode_mermaid(label)
        elif found := MERMAID_EDGE.match(line):
            edges.append(found.groups())
        else:
            raise AssertionError(f"not a node, edge, class or comment line: {line!r}")
    assert nodes == {f"t{tid}": lines for tid, lines in enumerate(AWKWARD.values())}
    assert len(edges) == 6
    assert {end for edge in edges for end in edge} <= nodes.keys()


# -- to_svg ----------------------------------------------------------------------------


def test_to_svg_returns_an_svg_document() -> None:
    require_dot()
    svg = to_svg(taskmap.run(failing_graph()))
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    nodes = {node.findtext(f"{SVG}title") for node in root.iter(f"{SVG}g")}
    assert {"t0", "t1", "t2", "t3", "t4", "t0->t1", "t1->t2"} <= nodes


def test_to_svg_without_dot_says_how_to_install_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    message = (
        "to_svg needs Graphviz's 'dot' program, which is not on PATH: install Graphviz"
        " (apt-get install graphviz, brew install graphviz) or draw with to_dot / to_mermaid"
    )
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        to_svg(diamond())


def fake_dot(directory: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put a shell script named dot first on PATH."""
    path = directory / "dot"
    path.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="fake dot is a shell script")


@posix_only
def test_to_svg_shows_what_dot_wrote_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot(tmp_path, "echo 'Error: <stdin>: syntax error in line 3' >&2; exit 3", monkeypatch)
    message = (
        "dot -Tsvg failed (exit code 3) on a graph of 4 tasks:"
        " Error: <stdin>: syntax error in line 3"
    )
    with pytest.raises(GraphvizError, match=f"^{re.escape(message)}$") as caught:
        to_svg(diamond())
    assert (caught.value.returncode, caught.value.stderr) == (
        3,
        "Error: <stdin>: syntax error in line 3",
    )


@posix_only
def test_to_svg_names_the_signal_that_killed_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot(tmp_path, "kill -KILL $$", monkeypatch)
    message = (
        "dot -Tsvg failed (killed by SIGKILL) on a graph of 4 tasks: it wrote nothing to stderr"
    )
    with pytest.raises(GraphvizError, match=f"^{re.escape(message)}$") as caught:
        to_svg(diamond())
    assert caught.value.returncode == -9


@posix_only
def test_to_svg_stops_dot_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dot(tmp_path, f"exec '{sys.executable}' -c 'import time; time.sleep(30)'", monkeypatch)
    message = (
        "dot -Tsvg did not finish within 0.2 s on a graph of 4 tasks:"
        " pass a larger timeout=, or run Graphviz's faster sfdp -Tsvg on to_dot's output"
    )
    with pytest.raises(GraphvizError, match=f"^{re.escape(message)}$") as caught:
        to_svg(diamond(), timeout=0.2)
    assert caught.value.returncode is None


def test_graphviz_error_survives_pickling() -> None:
    error = GraphvizError("dot -Tsvg failed (exit code 1)", 1, "Error: bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), vars(copy)) == (GraphvizError, str(error), vars(error))
