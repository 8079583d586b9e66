"""Ctrl-C (a real SIGINT to a driver process) stops every runner, raises
KeyboardInterrupt to the caller, and keeps what had already finished."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DRIVER = textwrap.dedent(
    """
    import asyncio, sys, time
    import taskmap

    def quick():
        return "kept"

    def block(quick):
        print("blocking", flush=True)
        time.sleep(60)

    async def wait(quick):
        print("blocking", flush=True)
        await asyncio.sleep(60)

    graph = taskmap.create_graph(
        {"quick": quick, "block": block, "wait": wait},
        {"quick": [], "block": ["quick"], "wait": ["quick"]},
        io_bound=["wait"],
    )
    async def notebook_cell():  # as in Jupyter: this thread already runs a loop
        return getattr(taskmap, sys.argv[1])(graph)

    try:
        if len(sys.argv) > 2:
            asyncio.run(notebook_cell())
        else:
            getattr(taskmap, sys.argv[1])(graph)
    except KeyboardInterrupt:
        print("KeyboardInterrupt; done:", sorted(graph.done), graph.results["quick"], flush=True)
        sys.exit(3)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inside_a_loop", [False, True], ids=["plain", "inside-a-loop"])
@pytest.mark.parametrize("runner", ["run", "run_async", "run_parallel", "run_parallel_async"])
def test_ctrl_c_raises_keyboard_interrupt_and_keeps_finished_results(
    tmp_path: Path, runner: str, inside_a_loop: bool
):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), runner, *(["loop"] if inside_a_loop else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "blocking\n"  # a task is running now
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 5, "Ctrl-C took too long"
    assert proc.returncode == 3, err
    assert "KeyboardInterrupt; done: ['quick'] kept" in out


RACE = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    import taskmap

    async def trigger():  # Ctrl-C lands between two tasks: no plain function runs yet
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(60)

    def block():
        print("block started", flush=True)
        time.sleep(60)

    graph = taskmap.create_graph(
        {"trigger": trigger, "block": block}, {"trigger": [], "block": []},
        io_bound=["trigger"],
    )
    try:
        taskmap.run_async(graph)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(3)
    """
)


@pytest.mark.timeout(60)
def test_ctrl_c_between_two_tasks_starts_no_plain_function_after_it(tmp_path: Path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10, "a plain function started after Ctrl-C"
    assert done.returncode == 3, done.stderr
    assert done.stdout == "KeyboardInterrupt\n"
