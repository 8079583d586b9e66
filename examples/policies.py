"""Policies: a flaky API retried, a hung call timed out, a database used two at a time.

Run it:  python examples/policies.py

- `fetch_*` call an API that refuses the first call of each page: `retries=` calls
  them again after a short backoff, and every retry is logged.
- `fetch_slow` hangs: `timeouts=` fails it after 0.5 s, and the run goes on.
- `load_*` write to a database that takes two connections at most: they share the
  channel 'db', and `limits={'db': 2}` keeps them to two at a time.
- `report` goes first among the CPU tasks that are ready (`priorities=`).
"""

import asyncio
import logging
import time
from functools import partial

import taskmap
from taskmap import Retry

refused: set[str] = set()  # the API refuses the first call of each page
connections = {"open": 0, "most": 0}


async def fetch(page: str) -> list[int]:
    await asyncio.sleep(0.05)
    if page not in refused:
        refused.add(page)
        raise ConnectionError(f"API refused page {page!r}")
    return [len(page) * i for i in range(5)]


async def fetch_slow() -> list[int]:
    await asyncio.sleep(3600)  # hangs
    return []


async def load(table: str, rows: list[int]) -> int:
    connections["open"] += 1
    connections["most"] = max(connections["most"], connections["open"])
    try:
        await asyncio.sleep(0.1)  # the write
        return len(rows)
    finally:
        connections["open"] -= 1


def report(*counts: int) -> str:
    return f"{sum(counts)} rows in {len(counts)} tables"


def main() -> None:
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.WARNING)
    pages = ["orders", "customers", "products", "stock"]
    funcs = {f"fetch_{p}": partial(fetch, p) for p in pages}
    funcs |= {f"load_{p}": partial(load, p) for p in pages}
    funcs |= {"fetch_slow": fetch_slow, "report": report}
    deps = {f"fetch_{p}": [] for p in pages} | {f"load_{p}": [f"fetch_{p}"] for p in pages}
    deps |= {"fetch_slow": [], "report": [f"load_{p}" for p in pages]}

    graph = taskmap.create_graph(
        funcs,
        deps,
        io_bound=[t for t in deps if t != "report"],
        retries={f"fetch_{p}": Retry(3, delay=0.1, on=ConnectionError) for p in pages},
        timeouts={"fetch_slow": 0.5},
        channels={f"load_{p}": ["db"] for p in pages},
        priorities={"report": 10},
    )
    started = time.perf_counter()
    graph = taskmap.run_async(graph, limits={"db": 2})
    print(f"ran in {time.perf_counter() - started:.2f} s")
    print("report:", graph.results["report"])
    print("fetch_slow:", graph.results["fetch_slow"])
    print("most database connections at once:", connections["most"])
    for name, row in graph.stats.tasks.items():
        print(f"  {name:<16} {row.outcome.value:<7} {row.attempts} attempt(s) {row.duration:.2f} s")


if __name__ == "__main__":
    main()
