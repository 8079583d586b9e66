"""The ``taskmap`` command, run as a real subprocess: exit codes and output."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GRAPH = """
import os
import taskmap

def extract():
    with open(os.environ["CALLS"], "a") as f:
        f.write("extract\\n")
    return [1, 2, 3]

def clean(rows):
    with open(os.environ["CALLS"], "a") as f:
        f.write("clean\\n")
    if os.environ.get("BROKEN"):
        raise ValueError("bad row 2")
    return [r * 10 for r in rows]

def load(rows):
    with open(os.environ["CALLS"], "a") as f:
        f.write("load\\n")
    return sum(rows)

async def notify():
    return "sent"

graph = taskmap.create_graph(
    {"extract": extract, "clean": clean, "load": load, "notify": notify},
    {"extract": [], "clean": ["extract"], "load": ["clean"], "notify": []},
    io_bound=["notify"],
)

if __name__ == "__main__":
    raise SystemExit("the file's main block must not run")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(GRAPH)
    return tmp_path


def taskmap_cmd(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {"CALLS": str(project / "calls"), "PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "taskmap", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_inherited(), **environ},
    )


def _inherited() -> dict[str, str]:
    import os

    keep = ("PYTHONPATH", "HOME", "LANG", "SYSTEMROOT", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def calls(project: Path) -> list[str]:
    path = project / "calls"
    return path.read_text().split() if path.exists() else []


def test_run_runs_the_graph_and_exits_0(project: Path) -> None:
    done = taskmap_cmd(project, "run", "pipeline.py", "--runner", "run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ran 4 tasks in ")
    assert ": 4 done" in done.stdout
    assert sorted(calls(project)) == ["clean", "extract", "load"]


def test_a_failed_task_exits_1_with_a_table_of_failures(project: Path) -> None:
    done = taskmap_cmd(
        project, "run", "pipeline.py", "--ncores", "1", "--no-progress", env={"BROKEN": "1"}
    )
    assert done.returncode == 1
    assert "2 done, 1 failed, 1 skipped" in done.stdout
    assert "failed:\ntask   error\n-----  ---------------------\nclean  ValueError: bad row 2" in (
        done.stdout
    )
    assert "not run because an ancestor failed (1): load" in done.stdout


def test_rerun_failed_runs_only_what_failed_and_below(project: Path) -> None:
    cache = str(project / "cache")
    first = taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, env={"BROKEN": "1"})
    assert first.returncode == 1
    (project / "calls").unlink()
    again = taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--rerun-failed")
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls(project) == ["clean", "load"]
    assert "1 cached" in again.stdout
    nothing = taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--rerun-failed")
    assert nothing.returncode == 0
    assert "no task failed in the last run: nothing to rerun" in nothing.stdout


def test_rerun_failed_without_a_cache_is_a_usage_error(project: Path) -> None:
    done = taskmap_cmd(project, "run", "pipeline.py", "--rerun-failed")
    assert done.returncode == 2
    assert done.stderr.startswith("taskmap run: --rerun-failed needs to know what failed")
    assert calls(project) == []


def test_plan_says_what_would_run_and_why(project: Path) -> None:
    cache = str(project / "cache")
    assert taskmap_cmd(project, "run", "pipeline.py", "--cache", cache).returncode == 0
    (project / "pipeline.py").write_text(GRAPH.replace("r * 10", "r * 100"))
    done = taskmap_cmd(project, "plan", "pipeline.py", "--cache", cache)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line}
    assert lines["extract"].split()[1:3] == ["-", "cached"]
    assert "runs  code changed" in lines["clean"]
    assert "runs  an upstream task runs" in lines["load"]
    assert "2 of 4 tasks would run" in done.stdout
    assert calls(project).count("clean") == 1  # the plan ran nothing


def test_show_draws_dot_and_mermaid(project: Path) -> None:
    dot = taskmap_cmd(project, "show", "pipeline.py", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph")
    mermaid = taskmap_cmd(project, "show", "pipeline.py:graph", "--format", "mermaid")
    assert mermaid.stdout.startswith("flowchart")
    out = project / "g.mmd"
    written = taskmap_cmd(project, "show", "pipeline.py", "--format", "mermaid", "-o", str(out))
    assert written.stdout == f"wrote {out}\n"
    assert out.read_text() == mermaid.stdout


def test_show_svg_without_graphviz_says_how_to_install_it(project: Path) -> None:
    done = taskmap_cmd(project, "show", "pipeline.py", "--format", "svg", env={"PATH": ""})
    assert done.returncode == 2
    assert "Graphviz" in done.stderr
    assert done.stderr.startswith("taskmap show: ")


def test_cache_ls_and_clear(project: Path) -> None:
    cache = str(project / "cache")
    taskmap_cmd(project, "run", "pipeline.py", "--cache", cache)
    listed = taskmap_cmd(project, "cache", "ls", "pipeline.py", "--cache", cache)
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()[2:6]} == {
        "extract",
        "clean",
        "load",
        "notify",
    }
    assert "4 entries" in listed.stdout
    cleared = taskmap_cmd(
        project, "cache", "clear", "pipeline.py", "--cache", cache, "--task", "load"
    )
    assert cleared.stdout == "removed 1 entry\n"
    assert (
        "3 entries" in taskmap_cmd(project, "cache", "ls", "pipeline.py", "--cache", cache).stdout
    )
    no_cache = taskmap_cmd(project, "cache", "ls", "pipeline.py")
    assert no_cache.returncode == 2
    assert no_cache.stderr == "taskmap cache: pipeline.py has no cache: pass --cache DIR\n"


def test_cache_stats_counts_entries_and_bytes_per_task(project: Path) -> None:
    cache = str(project / "cache")
    taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--runner", "run")
    done = taskmap_cmd(project, "cache", "stats", "pipeline.py", "--cache", cache)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["task", "entries", "bytes", "last", "used"]
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert sorted(rows) == ["clean", "extract", "load", "notify"]
    assert all(row[1] == "1" and int(row[2].replace(",", "")) > 0 for row in rows.values())
    total = sum(int(row[2].replace(",", "")) for row in rows.values())
    assert lines[-1] == f"4 tasks, 4 entries, {total:,} bytes"
    listed = taskmap_cmd(project, "cache", "ls", "pipeline.py", "--cache", cache)
    assert "last used" in listed.stdout.splitlines()[0]


def test_cache_prune_keeps_the_last_entries_of_each_task(project: Path) -> None:
    cache = str(project / "cache")
    taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--runner", "run")
    (project / "pipeline.py").write_text(GRAPH.replace("r * 10", "r * 100"))  # clean's code
    taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--runner", "run")
    stats = taskmap_cmd(project, "cache", "stats", "pipeline.py", "--cache", cache).stdout
    assert stats.splitlines()[-1].startswith("4 tasks, 6 entries, ")  # clean and load: 2 each
    kept = taskmap_cmd(
        project, "cache", "prune", "pipeline.py", "--cache", cache, "--keep-last", "2"
    )
    assert kept.stdout.startswith("removed 0 entries, 0 bytes\n")
    done = taskmap_cmd(project, "cache", "prune", "pipeline.py", "--cache", cache)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"removed 2 entries, [\d,]+ bytes \(2 tasks: clean, load\)\n", done.stdout)
    stats = taskmap_cmd(project, "cache", "stats", "pipeline.py", "--cache", cache).stdout
    assert stats.splitlines()[-1].startswith("4 tasks, 4 entries, ")
    calls_before = len(calls(project))
    taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--runner", "run")
    assert len(calls(project)) == calls_before  # what was kept is what the graph needs
    aged = taskmap_cmd(
        project,
        "cache",
        "prune",
        "pipeline.py",
        "--cache",
        cache,
        "--keep-last",
        "all",
        "--older-than",
        "0s",
    )
    assert aged.stdout.startswith("removed 4 entries, ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["prune", "--keep-last", "two"],
            "--keep-last must be a number of entries or 'all' (got 'two')",
        ),
        (
            ["prune", "--older-than", "soon"],
            "--older-than must be a number of seconds, a "
            "timedelta or a duration such as '30d' or '12h' (got 'soon')",
        ),
        (
            ["prune", "--max-bytes", "lots"],
            "--max-bytes must be a number of bytes or a size "
            "such as '500MB' or '20GB' (got 'lots')",
        ),
        (["ls", "--keep-last", "2"], "--keep-last: only with 'taskmap cache prune'"),
        (
            ["prune", "--task", "load"],
            "--task: 'taskmap cache prune' prunes every task of the graph",
        ),
    ],
)
def test_bad_cache_options_are_usage_errors(project: Path, args: list[str], message: str) -> None:
    cache = str(project / "cache")
    done = taskmap_cmd(project, "cache", args[0], "pipeline.py", "--cache", cache, *args[1:])
    assert done.returncode == 2
    assert done.stderr == f"taskmap cache: {message}\n"


def test_run_with_a_cache_limit_trims_the_store(project: Path) -> None:
    cache = str(project / "cache")
    done = taskmap_cmd(
        project, "run", "pipeline.py", "--cache", cache, "--cache-limit", "1", "--runner", "run"
    )
    assert done.returncode == 0, done.stderr
    listed = taskmap_cmd(project, "cache", "ls", "pipeline.py", "--cache", cache).stdout
    assert listed.splitlines()[-1] == "0 entries, 0 bytes"  # every value trimmed: 1 byte
    bad = taskmap_cmd(project, "run", "pipeline.py", "--cache", cache, "--cache-limit", "big")
    assert bad.returncode == 2
    assert bad.stderr == (
        "taskmap run: --cache-limit must be a number of bytes or a size such as '500MB' or "
        "'20GB' (got 'big')\n"
    )
    alone = taskmap_cmd(project, "run", "pipeline.py", "--cache-limit", "1GB")
    assert alone.stderr == "taskmap run: --cache-limit needs --cache DIR\n"


def test_status_reads_a_log(project: Path) -> None:
    log = project / "run.log"
    log.write_text(
        "2026-01-01 taskmap-manager INFO pid 1: queueing task a\n"
        "2026-01-01 taskmap-manager INFO pid 1: queueing task b\n"
        "2026-01-01 taskmap-worker INFO pid 1: starting task a\n"
    )
    done = taskmap_cmd(project, "status", str(log))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "running (1): a\nqueued (1): b\n"
    missing = taskmap_cmd(project, "status", "nope.log")
    assert (missing.returncode, missing.stderr) == (
        2,
        "taskmap status: no such log file: nope.log\n",
    )


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (GRAPH, "missing.py", "no such file: missing.py"),
        (GRAPH, "pipeline.py:nope", "pipeline.py defines no 'nope'"),
        ("x = 1\n", "pipeline.py", "pipeline.py defines no taskmap Graph: name it, or a function"),
        (GRAPH + "\nother = graph\n", "pipeline.py", "pipeline.py defines 2 graphs (graph, other)"),
        ("x = 1\n", "pipeline.py:x", "pipeline.py:x is int, not a taskmap Graph"),
    ],
)
def test_a_graph_that_cannot_be_found_is_a_usage_error(
    project: Path, source: str, spec: str, message: str
) -> None:
    (project / "pipeline.py").write_text(source)
    done = taskmap_cmd(project, "plan", spec)
    assert done.returncode == 2
    assert done.stderr.startswith(f"taskmap plan: {message}")


def test_a_function_returning_a_graph_is_found_and_called(project: Path) -> None:
    source = GRAPH.replace(
        "graph = taskmap.create_graph(", "def build_graph():\n    return taskmap.create_graph("
    )
    (project / "pipeline.py").write_text(textwrap.dedent(source))
    done = taskmap_cmd(project, "run", "pipeline.py", "--runner", "run_async")
    assert done.returncode == 0, done.stderr
    assert ": 4 done" in done.stdout


def test_a_report_and_limits_are_passed_to_the_run(project: Path) -> None:
    report = project / "run.html"
    done = taskmap_cmd(project, "run", "pipeline.py", "--report", str(report), "--limit", "io=1")
    assert done.returncode == 0, done.stderr
    assert report.read_text().lstrip().lower().startswith("<!doctype html")
    bad = taskmap_cmd(project, "run", "pipeline.py", "--limit", "db=2")
    assert bad.returncode == 2
    assert "limits name channels no task belongs to: 'db'" in bad.stderr
    assert taskmap_cmd(project, "run", "pipeline.py", "--limit", "io").returncode == 2


@pytest.mark.parametrize("command", ["run", "plan", "show", "cache", "status"])
def test_every_subcommand_has_help(project: Path, command: str) -> None:
    done = taskmap_cmd(project, command, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: taskmap {command}")


def test_the_entry_point_is_installed() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "taskmap"]
    assert script.value == "taskmap.cli:main"


EXPANDED = """
import os
import taskmap

def pages():
    return [f"page-{i}" for i in range(int(os.environ.get("PAGES", "3")))]

def fetch(page):
    with open(os.environ["CALLS"], "a") as f:
        f.write(f"fetch-{page}\\n")
    if page == os.environ.get("BROKEN"):
        raise ConnectionError(f"{page} is gone")
    return page.upper()

def total(texts):
    return len(texts)

graph = taskmap.create_graph(
    {"pages": pages, "fetch": fetch, "total": total},
    {"pages": [], "fetch": ["pages"], "total": ["fetch"]},
    expand={"fetch": "pages"},
)
"""


def test_plan_and_rerun_failed_name_the_instances_of_an_expanded_task(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(EXPANDED)
    cache = str(tmp_path / "cache")
    broken = {"BROKEN": "page-1"}
    first = taskmap_cmd(tmp_path, "run", "pipeline.py", "--cache", cache, env=broken)
    assert first.returncode == 1
    assert "('fetch', 1)  ConnectionError: page-1 is gone" in first.stdout
    plan = taskmap_cmd(tmp_path, "plan", "pipeline.py", "--cache", cache)
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"\('fetch', 1\)\s+runs\s+failed before\s+ConnectionError", plan.stdout)
    assert re.search(r"\('fetch', 2\)\s+-\s+cached", plan.stdout)
    (tmp_path / "calls").unlink()
    again = taskmap_cmd(tmp_path, "run", "pipeline.py", "--cache", cache, "--rerun-failed")
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls(tmp_path) == ["fetch-page-1"]
