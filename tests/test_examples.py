"""The README's main example and the benchmarks run end to end (no timing asserted)."""

from __future__ import annotations

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
def test_etl_example_fetches_parses_and_loads():
    done = run_script("examples/etl_pipeline.py", timeout=100)
    assert done.returncode == 0, done.stderr
    assert "ran 26 tasks in" in done.stdout
    assert "(0 failed)" in done.stdout
    assert "loaded 156 terms into" in done.stdout
    assert "(156 rows)" in done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", ["bench_core.py", "bench_parallel.py", "bench_checkpoint.py"])
def test_benchmark_smoke_run_prints_its_goals(script):
    path = ROOT / "benchmarks" / script
    if not path.exists():
        pytest.fail(f"{path} is missing")
    done = run_script(str(path), "--quick", timeout=100)
    assert done.returncode == 0, done.stderr
    goals = [line for line in done.stdout.splitlines() if line.rstrip().endswith(("OK", "MISS"))]
    assert goals, done.stdout
    assert "| benchmark" in done.stdout or "|" in done.stdout
