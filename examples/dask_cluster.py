"""CPU tasks on a Dask cluster, IO on the driver: ``python examples/dask_cluster.py``.

Needs ``pip install 'taskmap[dask]'``.  The fetches are io-bound coroutines on this
process's event loop; parsing and aggregating run on the cluster's workers (the
functions, defined in ``__main__``, travel by value).  Here the cluster is a local
one of two worker processes.  On a SLURM or PBS machine, swap it for dask-jobqueue
(``pip install dask-jobqueue``; not run here)::

    from dask_jobqueue import SLURMCluster  # or PBSCluster

    # per batch job: 8 cores as 8 single-threaded worker processes (Python CPU
    # tasks hold the GIL), 16 GB between them, for at most an hour
    cluster = SLURMCluster(cores=8, processes=8, memory="16GB", walltime="01:00:00")
    cluster.scale(jobs=4)  # 4 jobs: 32 workers once the queue starts them
    client = Client(cluster)

and the rest stays the same: this script, the driver, runs where it can reach the
workers (a login or head node) and keeps the IO; the batch jobs do the CPU work.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import time

from distributed import Client, LocalCluster

import taskmap

SOURCES = ["alpha", "beta", "gamma", "delta"]


async def fetch(source: str) -> str:
    """io-bound: stands in for an HTTP or database call (runs on the driver)."""
    await asyncio.sleep(0.2)
    return " ".join(f"{source}-{i % 7}" for i in range(20_000))


def parse(text: str) -> tuple[collections.Counter[str], int]:
    """CPU-bound: count the words (runs on a Dask worker)."""
    return collections.Counter(text.split()), os.getpid()


def aggregate(*parsed: tuple[collections.Counter[str], int]) -> dict[str, object]:
    total: collections.Counter[str] = collections.Counter()
    for counts, _ in parsed:
        total.update(counts)
    return {"words": sum(total.values()), "distinct": len(total), "pid": os.getpid()}


def build_graph() -> taskmap.Graph:
    funcs: dict[str, object] = {"aggregate": aggregate}
    dependencies: dict[str, list[str]] = {"aggregate": [f"parse {s}" for s in SOURCES]}
    for source in SOURCES:
        funcs[f"fetch {source}"] = functools.partial(fetch, source)
        funcs[f"parse {source}"] = parse
        dependencies[f"fetch {source}"] = []
        dependencies[f"parse {source}"] = [f"fetch {source}"]
    io_bound = [f"fetch {s}" for s in SOURCES]
    return taskmap.create_graph(funcs, dependencies, io_bound=io_bound)


if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        started = time.perf_counter()
        graph = taskmap.run_parallel_async(build_graph(), executor=client.get_executor())
        elapsed = time.perf_counter() - started
        workers = set(client.run(os.getpid).values())
    for source in SOURCES:
        counts, pid = graph.results[f"parse {source}"]
        print(f"parse {source}: {len(counts)} distinct words, on worker pid {pid}")
    total = graph.results["aggregate"]
    print(f"aggregate: {total['words']} words, {total['distinct']} distinct, on pid {total['pid']}")
    print(f"driver pid {os.getpid()}, Dask worker pids {sorted(workers)}")
    print(f"ran {len(graph.done)} tasks in {elapsed:.2f} s ({len(graph.failed)} failed)")
