"""A small but real ETL pipeline: fetch pages over HTTP, parse them in worker
processes, aggregate, and load the result into SQLite.

    python examples/etl_pipeline.py              # runs every task
    python examples/etl_pipeline.py              # again: everything comes from the cache
    ETL_DB_DOWN=1 python examples/etl_pipeline.py --clear   # fresh start, the load fails
    python examples/etl_pipeline.py              # the database is back: only 'load' runs

It starts its own HTTP server on 127.0.0.1 (a thread serving generated pages), so
it needs no network.  The pipeline first lists the pages (``/pages``), then
fetches and parses each one: ``fetch`` and ``parse`` are *expanded* over the
listing (``create_graph(expand=...)``), so the graph grows one instance per page
while it runs, each page is parsed as soon as it is fetched, and each is cached
by its own page number.  The fetches are io-bound coroutines on the driver's
event loop, the parsing is CPU work in worker processes, the load is an io-bound
plain function in a thread.  If a task fails, only its descendants are not run: the run
says which, and the exit status is 1.  Finished values are kept in a cache
directory (``--cache``, default ``<tmp>/taskmap-etl-example``), next to the
SQLite database the pipeline loads into.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import http.server
import itertools
import logging
import os
import random
import re
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import taskmap

PAGES = 12
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Serves /page/N: a generated text page, slowly, like a real remote service."""

    def do_GET(self) -> None:
        if self.path == "/pages":  # the listing: one page number a line
            self._send("\n".join(map(str, range(PAGES))).encode())
            return
        match = re.fullmatch(r"/page/(\d+)", self.path)
        if match is None:
            self.send_error(404)
            return
        time.sleep(0.3)  # network and server latency
        rng = random.Random(int(match.group(1)))
        self._send(" ".join(rng.choice(WORDS) for _ in range(20_000)).encode())

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def start_server() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- the tasks ---------------------------------------------------------------


async def get(port: int, path: str) -> str:
    """GET a path with a raw HTTP/1.0 request (io-bound, on the event loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {head.splitlines()[0].decode()}")
    return body.decode()


async def list_pages(port: int) -> list[int]:
    """List what there is to fetch: known only when this runs."""
    return [int(line) for line in (await get(port, "/pages")).split()]


async def fetch(port: int, page: int) -> str:
    """Extract: one page (expanded: one instance per page of the listing)."""
    return await get(port, f"/page/{page}")


def parse(text: str) -> dict[str, int]:
    """Transform: count words and bigrams (CPU-bound, in a worker process)."""
    words = text.split()
    counts = collections.Counter(words)
    counts.update(f"{a}+{b}" for a, b in itertools.pairwise(words))
    return dict(counts)


def aggregate(pages: list[dict[str, int]]) -> list[tuple[str, int]]:
    """Merge every page's counts (CPU-bound, in a worker process): it gathers the
    parse instances, so it receives the list of their results in page order."""
    total: collections.Counter[str] = collections.Counter()
    for counts in pages:
        total.update(counts)
    return total.most_common()


def load(database: str, rows: list[tuple[str, int]]) -> int:
    """Load: write the totals into SQLite (io-bound plain function, in a thread)."""
    if os.environ.get("ETL_DB_DOWN"):
        raise ConnectionError(f"database {database} is down (ETL_DB_DOWN is set)")
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE IF NOT EXISTS counts (term TEXT PRIMARY KEY, n INTEGER)")
        db.executemany("INSERT OR REPLACE INTO counts VALUES (?, ?)", rows)
    return len(rows)


def build_graph(port: int, database: str, cache: Path) -> taskmap.Graph:
    funcs = {
        "pages": functools.partial(list_pages, port),
        "fetch": functools.partial(fetch, port),  # the page number comes last
        "parse": parse,
        "aggregate": aggregate,
        "load": functools.partial(load, database),
    }
    dependencies = {
        "pages": [],
        "fetch": ["pages"],
        "parse": ["fetch"],
        "aggregate": ["parse"],
        "load": ["aggregate"],
    }
    return taskmap.create_graph(
        funcs,
        dependencies,
        io_bound=["pages", "fetch", "load"],
        # one fetch per page of the listing, one parse per fetch (page i with page i)
        expand={"fetch": "pages", "parse": "fetch"},
        name="etl",
        cache=cache,
        # The port changes from run to run: give the tasks that hold it a version
        # instead of letting the port, a partial argument, count as a change of code.
        versions={"pages": 1, "fetch": 1},
        # a flaky network: try a fetch again, after 0.2 s then 0.4 s (each page alone)
        retries={"fetch": taskmap.Retry(2, delay=0.2, on=OSError)},
        timeouts={"fetch": 10},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    default = Path(tempfile.gettempdir()) / "taskmap-etl-example"
    parser.add_argument("--cache", type=Path, default=default, help="cache directory")
    parser.add_argument("--clear", action="store_true", help="clear the cache first")
    parser.add_argument("--report", type=Path, help="timeline (default: CACHE/report.html)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = start_server()
    database = str(options.cache / "counts.sqlite")
    graph = build_graph(server.server_address[1], database, options.cache)
    if options.clear:
        taskmap.clear_cache(graph)

    started = time.perf_counter()
    report = options.report or options.cache / "report.html"
    # a progress bar on a terminal; at most 4 page requests at once
    graph = taskmap.run_parallel_async(graph, ncores=2, limits={"io": 4}, report=report)
    elapsed = time.perf_counter() - started
    server.shutdown()

    assert graph.stats.cache is not None  # the graph has a cache
    # the tasks and instances that ran or were loaded ('fetch' and 'parse' themselves
    # only gather their instances' results)
    tasks = [name for name in graph.done if name not in graph.expand]
    failed, cached = [t for t in graph.failed if t in tasks], graph.stats.cache.hits
    ran = len(tasks) - cached - len(failed)
    print(
        f"ran {len(tasks)} tasks in {elapsed:.2f} s: {cached} from the cache, "
        f"{ran} run ({len(failed)} failed; {len(graph.results['fetch'])} pages)"
    )
    for why in graph.stats.why.values():
        if why.runs and not isinstance(why.task, tuple):  # not each page's instance
            print(f"  {why}")
    for name in failed:
        print(f"  {name}: {graph.results[name]}")
    print(f"timeline of the run: {report}")
    if failed:
        return 1
    with sqlite3.connect(database) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM counts").fetchone()
        top = db.execute("SELECT term, n FROM counts ORDER BY n DESC LIMIT 3").fetchall()
    print(f"loaded {graph.results['load']} terms into {database} ({rows} rows)")
    print("most common:", ", ".join(f"{term} ({n})" for term, n in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
