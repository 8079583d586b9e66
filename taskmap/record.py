"""What a run did, as data: `RunStats`, kept on the graph as ``graph.stats``.

It sits below `graph` in the layers so that a graph can carry its last run's
record; it holds data only, and is filled by the driver.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from .checkpoint import CacheStats, Explanation

__all__ = ["RunStats"]


@dataclass(slots=True)
class RunStats:
    """The last run of a graph.

    Attributes:
        cache: hits, misses, entries and bytes written and read; None when the
            graph has no cache.
        why: for each task the run decided about, why it ran or was served from
            the cache (an `Explanation`); empty without a cache.
    """

    cache: CacheStats | None = None
    why: dict[Hashable, Explanation] = field(default_factory=dict)
