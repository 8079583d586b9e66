"""Pictures of a graph: Mermaid and Graphviz source, and SVG when Graphviz is installed.

Run it:  python examples/draw_graph.py

It draws the graph before a run (every task white), runs it with one task failing,
and draws it again: green done, red failed, grey skipped; io-bound tasks are
parallelograms.  Paste the Mermaid text into a Markdown ``mermaid`` block, or the DOT
text into ``dot -Tsvg``.
"""

import asyncio

import taskmap


async def fetch() -> list[int]:
    await asyncio.sleep(0.01)
    return [3, 1, 2]


def sort(rows: list[int]) -> list[int]:
    return sorted(rows)


def check(rows: list[int]) -> None:
    raise ValueError(f"expected 4 rows, got {len(rows)}")


def publish(rows: list[int]) -> str:
    return f"published {rows}"


graph = taskmap.create_graph(
    {"fetch": fetch, "sort": sort, "check": check, "publish": publish},
    {"fetch": [], "sort": ["fetch"], "check": ["fetch"], "publish": ["sort", "check"]},
    io_bound=["fetch"],
)

if __name__ == "__main__":
    print(taskmap.to_mermaid(graph))
    graph = taskmap.run(graph)
    print(taskmap.to_dot(graph))
    try:
        svg = taskmap.to_svg(graph)
    except FileNotFoundError as exc:  # Graphviz is not installed
        print(exc)
    else:
        print(f"SVG: {len(svg):,} characters")
