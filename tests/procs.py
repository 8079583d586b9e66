"""Processes, read from /proc: what a run (or a killed driver) leaves behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def proc_stats() -> dict[int, tuple[str, int]]:
    """pid -> (state, parent pid) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry.name)] = (fields[0], int(fields[1]))
    return found


def live_descendants(root: int) -> set[int]:
    """Live (not zombie) processes below ``root``."""
    stats = proc_stats()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (state, parent) in stats.items():
            if parent == pid and state != "Z" and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def still_alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are alive (not zombies)."""
    stats = proc_stats()
    return {pid for pid in pids if pid in stats and stats[pid][0] != "Z"}


def tagged(tag: str) -> set[int]:
    """Live processes whose environment holds ``TM_TAG=<tag>``: a driver's children
    (forkserver, workers, resource tracker) inherit it, whoever their parent is now."""
    needle = f"TM_TAG={tag}".encode()
    found = set()
    for pid, (state, _) in proc_stats().items():
        if state == "Z":
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass (a process's exit
    has no event to wait on from here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers: the forkserver and resource tracker."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    return {p for p in pids if p is not None}


def workers_left() -> set[int]:
    """Live processes below this one, except multiprocessing's idle helpers."""
    helpers = _helper_pids()
    left = live_descendants(os.getpid()) - helpers
    # a helper's children are workers: those still count
    return left | {p for h in helpers for p in live_descendants(h)}
