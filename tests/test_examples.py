"""The README's main example and the benchmarks run end to end (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(120)
def test_etl_example_fetches_parses_and_loads(tmp_path):
    cache = tmp_path / "cache"
    done = run_script("examples/etl_pipeline.py", "--cache", str(cache), timeout=100)
    assert done.returncode == 0, done.stderr
    assert "ran 27 tasks in" in done.stdout  # list, 12 fetches, 12 parses, aggregate, load
    assert "(0 failed; 12 pages)" in done.stdout
    assert "loaded 156 terms into" in done.stdout
    assert "(156 rows)" in done.stdout
    assert f"timeline of the run: {cache / 'report.html'}" in done.stdout
    page = (cache / "report.html").read_text()
    assert "taskmap run of" in page
    assert page.count('class="bar ') == 27


@pytest.mark.timeout(60)
def test_cli_example_runs_through_the_command(tmp_path):
    done = run_script("-m", "taskmap", "run", "examples/cli_pipeline.py", timeout=50)
    assert done.returncode == 0, done.stderr
    assert "ran 5 tasks in" in done.stdout
    broken = subprocess.run(
        [sys.executable, "-m", "taskmap", "run", "examples/cli_pipeline.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "BROKEN": "1"},
    )
    assert broken.returncode == 1
    assert "clean  ValueError: row 3 is not a number" in broken.stdout


@pytest.mark.timeout(60)
def test_draw_example_colours_the_graph_after_its_run():
    done = run_script("examples/draw_graph.py", timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart LR")
    assert "digraph" in done.stdout
    assert done.stdout.count(":::pending") == 4  # before the run: nothing ran


@pytest.mark.timeout(60)
def test_report_example_writes_a_page_and_a_trace(tmp_path):
    done = run_script("examples/report_demo.py", str(tmp_path), timeout=50)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert "traceEvents" in (tmp_path / "run.json").read_text()


@pytest.mark.timeout(120)
def test_etl_example_rerun_story_serves_from_the_cache(tmp_path):
    """The README's story: the load fails, the rerun runs only the load, then nothing."""
    cache = str(tmp_path / "cache")
    env = {**os.environ, "ETL_DB_DOWN": "1"}
    down = subprocess.run(
        [sys.executable, "examples/etl_pipeline.py", "--cache", cache],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert down.returncode == 1
    assert "0 from the cache, 26 run (1 failed;" in down.stdout
    assert "is down (ETL_DB_DOWN is set)" in down.stdout
    back = run_script("examples/etl_pipeline.py", "--cache", cache, timeout=100)
    assert back.returncode == 0, back.stderr
    assert "26 from the cache, 1 run (0 failed;" in back.stdout
    assert "'load' runs: failed before (ConnectionError: database" in back.stdout
    assert "(156 rows)" in back.stdout
    again = run_script("examples/etl_pipeline.py", "--cache", cache, timeout=100)
    assert again.returncode == 0, again.stderr
    assert "27 from the cache, 0 run (0 failed;" in again.stdout
    cleared = run_script("examples/etl_pipeline.py", "--cache", cache, "--clear", timeout=100)
    assert "0 from the cache, 27 run (0 failed;" in cleared.stdout


@pytest.mark.timeout(60)
def test_policies_example_retries_times_out_and_limits():
    done = run_script("examples/policies.py", timeout=50)
    assert done.returncode == 0, done.stderr
    assert "report: 20 rows in 4 tables" in done.stdout
    assert "fetch_slow: task 'fetch_slow' timed out after 0.5 s" in done.stdout
    assert "most database connections at once: 2" in done.stdout
    assert done.stderr.count("retrying task fetch_") == 4


@pytest.mark.timeout(60)
def test_dask_example_runs_cpu_tasks_on_the_cluster():
    pytest.importorskip("distributed")
    done = run_script("examples/dask_cluster.py", timeout=50)
    assert done.returncode == 0, done.stderr
    assert "ran 9 tasks in" in done.stdout
    assert "(0 failed)" in done.stdout


@pytest.mark.bench
@pytest.mark.timeout(120)
def test_policies_benchmark_smoke_run():
    done = run_script("benchmarks/bench_policies.py", "--quick", timeout=100)
    assert done.returncode == 0, done.stderr
    assert "| benchmark" in done.stdout or "|" in done.stdout


@pytest.mark.bench
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "script",
    [
        "bench_core.py",
        "bench_parallel.py",
        "bench_checkpoint.py",
        "bench_data.py",
        "bench_expand.py",
        "bench_first_run.py",
    ],
)
def test_benchmark_smoke_run_prints_its_goals(script):
    path = ROOT / "benchmarks" / script
    if not path.exists():
        pytest.fail(f"{path} is missing")
    done = run_script(str(path), "--quick", timeout=100)
    assert done.returncode == 0, done.stderr
    goals = [line for line in done.stdout.splitlines() if line.rstrip().endswith(("OK", "MISS"))]
    assert goals, done.stdout
    assert "| benchmark" in done.stdout or "|" in done.stdout
