"""A run's report: an HTML timeline and a Chrome trace of a small mixed graph.

Run it:  python examples/report_demo.py [DIRECTORY]

Three downloads overlap on the event loop, their parsing runs on two worker
processes, one parse fails (its summary is skipped), and a flaky upload is retried.
It writes DIRECTORY/run.html (open it in a browser: hover a bar) and
DIRECTORY/run.json (open it at ui.perfetto.dev), DIRECTORY defaulting to the
system's temporary directory.
"""

import asyncio
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import taskmap

attempts = {"upload": 0}


async def download(seconds: float) -> bytes:
    await asyncio.sleep(seconds)
    return b"x" * 1000


def parse(seconds: float, data: bytes) -> int:
    end = time.perf_counter() + seconds  # CPU work
    while time.perf_counter() < end:
        pass
    if seconds > 0.25:
        raise ValueError("row 7 has 3 columns, expected 4")
    return len(data)


async def upload(*sizes: int) -> int:
    attempts["upload"] += 1
    await asyncio.sleep(0.05)
    if attempts["upload"] == 1:
        raise ConnectionError("the server closed the connection")
    return sum(sizes)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir())
    funcs = {
        "download a": partial(download, 0.2),
        "download b": partial(download, 0.1),
        "download c": partial(download, 0.15),
        "parse a": partial(parse, 0.2),
        "parse b": partial(parse, 0.1),
        "parse c": partial(parse, 0.3),  # fails
        "summary c": len,  # skipped: its parent failed
        "upload": upload,
    }
    dependencies = {
        "download a": [],
        "download b": [],
        "download c": [],
        "parse a": ["download a"],
        "parse b": ["download b"],
        "parse c": ["download c"],
        "summary c": ["parse c"],
        "upload": ["parse a", "parse b"],
    }
    graph = taskmap.create_graph(
        funcs,
        dependencies,
        io_bound=["download a", "download b", "download c", "upload"],
        retries={"upload": taskmap.Retry(2, delay=0.05)},
    )
    graph = taskmap.run_parallel_async(graph, ncores=2)
    for suffix in ("html", "json"):
        print(f"wrote {taskmap.write_report(graph, out / f'run.{suffix}')}")
    stats = graph.stats
    print(f"makespan {stats.makespan:.2f} s, {len(graph.failed)} failed or skipped")


if __name__ == "__main__":
    main()
