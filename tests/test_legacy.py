"""taskmap 0.0.6's own test suite, run against this taskmap.

The suite ships inside the 0.0.6 wheel on PyPI (``taskmap/taskmap_test.py``); it is
downloaded, not copied here.  The tests it holds that this taskmap deliberately
fails are the deviations the README lists under "Coming from taskmap 0.0.6".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: test -> the README's reason
DEVIATIONS = {
    # a failed task's descendants get an UpstreamFailedError, not a message string
    "test_sync_error_handling": "UpstreamFailedError",
    "test_async_error_handling": "UpstreamFailedError",
    # a library's loggers keep the application's level unless logging_config sets one
    "test_default_logging_severity_level": "levels",
}


@pytest.fixture(scope="module")
def legacy_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("taskmap-0.0.6")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary", ":all:", "--dest", str(where), "taskmap==0.0.6"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        done = None
    wheels = list(where.glob("taskmap-0.0.6-*.whl"))
    if done is None or done.returncode != 0 or not wheels:
        why = "could not download taskmap 0.0.6 from the package index"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: {done.stderr if done else 'timed out'}")
        pytest.skip(why)
    with zipfile.ZipFile(wheels[0]) as wheel:
        suite = where / "test_taskmap_006.py"
        suite.write_bytes(wheel.read("taskmap/taskmap_test.py"))
    (where / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    return suite


def run_legacy(suite: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the suite in a fresh pytest against this taskmap."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60"]
    return subprocess.run(
        [*command, suite.name, *args],
        cwd=suite.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


#: 0.0.6's wall-clock assertions (two 0.4 s tasks in under 0.8 s, pool start
#: included): on a shared 2-core machine another process can cost them the margin
TIMED = (
    "test_async_speed",
    "test_parallel_speed",
    "test_async_parallel_speed",
    "test_async_parallel_demo",
)


@pytest.mark.timeout(300)
def test_taskmap_0_0_6_suite_passes_but_for_the_documented_deviations(legacy_suite: Path) -> None:
    deselect = [f"--deselect={legacy_suite.name}::{test}" for test in DEVIATIONS]
    done = run_legacy(legacy_suite, *deselect)
    failed = set(re.findall(rf"FAILED {re.escape(legacy_suite.name)}::(\w+)", done.stdout))
    for _ in range(2):  # a timing miss gets two more tries (the whole suite: its fork
        if not failed or not failed <= set(TIMED):  # server warm, as the first time)
            break
        done = run_legacy(legacy_suite, *deselect)
        failed = set(re.findall(rf"FAILED {re.escape(legacy_suite.name)}::(\w+)", done.stdout))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    assert "failed" not in done.stdout


@pytest.mark.timeout(300)
def test_the_documented_deviations_are_still_deviations(legacy_suite: Path) -> None:
    # a deviation that starts passing is no longer one: take it off the README's list
    done = run_legacy(legacy_suite, "-k", " or ".join(DEVIATIONS))
    assert f"{len(DEVIATIONS)} failed" in done.stdout, done.stdout
