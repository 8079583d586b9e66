"""A graph for the ``taskmap`` command: the file defines it, the command runs it.

    taskmap run examples/cli_pipeline.py --cache tmp/cli-cache --report tmp/run.html
    taskmap plan examples/cli_pipeline.py --cache tmp/cli-cache
    taskmap show examples/cli_pipeline.py --format mermaid
    taskmap cache ls examples/cli_pipeline.py --cache tmp/cli-cache

Set ``BROKEN=1`` to make ``clean`` fail: ``taskmap run`` then exits with status 1
and a table of failures, and ``--rerun-failed`` (with the same cache) runs only
``clean`` and what depends on it once the bug is fixed.
"""

import asyncio
import os
import statistics

import taskmap


async def extract(day: str = "2026-11-23") -> list[float]:
    await asyncio.sleep(0.1)  # an API call
    return [float(x % 17) for x in range(1_000)]


def clean(rows: list[float]) -> list[float]:
    if os.environ.get("BROKEN"):
        raise ValueError("row 3 is not a number")
    return [r for r in rows if r > 0]


def summarize(rows: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(rows), "stdev": statistics.stdev(rows)}


def histogram(rows: list[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in rows:
        counts[int(r)] = counts.get(int(r), 0) + 1
    return counts


async def publish(summary: dict[str, float], hist: dict[int, int]) -> str:
    await asyncio.sleep(0.05)  # a POST
    return f"published mean {summary['mean']:.2f} over {len(hist)} bins"


graph = taskmap.create_graph(
    {
        "extract": extract,
        "clean": clean,
        "summarize": summarize,
        "histogram": histogram,
        "publish": publish,
    },
    {
        "extract": [],
        "clean": ["extract"],
        "summarize": ["clean"],
        "histogram": ["clean"],
        "publish": ["summarize", "histogram"],
    },
    io_bound=["extract", "publish"],
    retries={"extract": 2, "publish": 2},
)
