"""A real Jupyter kernel: a cell awaits a graph at top level on the kernel's loop."""

from __future__ import annotations

import queue
import textwrap
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent

CELL = textwrap.dedent(
    """
    import asyncio, functools, os, sys, warnings
    sys.path.insert(0, {root!r})
    import taskmap

    def square(x):
        return x * x, os.getpid()

    async def fetch():
        await asyncio.sleep(0.05)
        return 7

    graph = taskmap.create_graph(
        {{"fetch": fetch, "square": square}}, {{"fetch": [], "square": ["fetch"]}},
        io_bound=["fetch"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # awaiting warns of nothing
        graph = await taskmap.arun_parallel_async(graph, ncores=1, progress=False)
    value, pid = graph.results["square"]
    print("square", value, "in a worker:", pid != os.getpid())
    print("html", "<td>2 done</td>" in graph._repr_html_())
    """
)


def run_cell(client: object, code: str, timeout: float) -> tuple[str, list[str]]:
    """Execute ``code``; return its stdout and its errors' tracebacks."""
    msg_id = client.execute(code)  # type: ignore[attr-defined]
    out, errors = [], []
    while True:
        try:
            msg = client.get_iopub_msg(timeout=timeout)  # type: ignore[attr-defined]
        except queue.Empty:
            raise AssertionError(f"the kernel went quiet; output so far: {''.join(out)}") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content["name"] == "stdout":
            out.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), errors


@pytest.mark.timeout(120)
def test_a_notebook_cell_awaits_a_graph_at_top_level_on_the_kernel_s_loop():
    manager, client = jupyter_client.manager.start_new_kernel(kernel_name="python3")
    try:
        out, errors = run_cell(client, CELL.format(root=str(ROOT)), timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert errors == []
    assert "square 49 in a worker: True" in out
    assert "html True" in out
