"""The scheduling state machine: which task may run next, and what a failure skips.

Design note
-----------
The frontier is sans-I/O (h11's rule): it is *told* what happened — a task
started, finished, failed, was cancelled — and answers what may run next.  It
never waits, never calls a task, never reads a clock, and imports no asyncio,
threading, time or os.  Every runner drives the same frontier; a bug fixed here is
fixed for all of them.

Rule 1: a task is READY the instant its last dependency finishes.
Rule 2: io-bound ready tasks are handed out before CPU-bound ones.
Rule 3: when a task fails, every descendant still in the run is SKIPPED at once,
        and the driver records why (`UpstreamFailedError` naming the root cause).
Rule 4: an illegal transition (finishing a task that is not running...) raises
        `RuntimeError` and changes nothing.

States (one byte per task, ``state[tid]``)::

    OUT ─────────────────────── not part of this run (done before, or not a target's ancestor)
    WAITING ─► READY ─► RUNNING ─► DONE
       │         │         ├────► FAILED ──► descendants WAITING ─► SKIPPED
       └─────────┴─────────┴────► STOPPED   (fail_fast: not started, or cancelled)

Fields: ``waiting[tid]`` counts the dependency edges of ``tid`` not yet finished;
``ready_io`` / ``ready_cpu`` are FIFO queues of READY ids; ``unfinished`` counts
the tasks of this run not yet DONE, FAILED, SKIPPED or STOPPED; ``running`` counts
RUNNING tasks.  The run is over when ``unfinished == 0``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from heapq import heappop, heappush

from .graph import Plan

__all__ = ["Frontier", "TaskState"]


class TaskState(enum.IntEnum):
    """Where a task stands in a run."""

    OUT = 0
    WAITING = 1
    READY = 2
    RUNNING = 3
    DONE = 4
    FAILED = 5
    SKIPPED = 6
    STOPPED = 7


_OUT, _WAITING, _READY, _RUNNING, _DONE, _FAILED, _SKIPPED, _STOPPED = range(8)


class Frontier:
    """The state of one run over a `Plan`.

    Mutates itself only; call its methods from the driver only (it is not
    thread-safe, by design: the driver owns it).
    """

    __slots__ = (
        "_children",
        "_heap",
        "_io",
        "_priority",
        "ready_cpu",
        "ready_io",
        "running",
        "skipped_at_start",
        "state",
        "unfinished",
        "waiting",
    )

    def __init__(
        self,
        plan: Plan,
        *,
        io: Collection[int] = (),
        done: Collection[int] = (),
        failed: Collection[int] = (),
        targets: Iterable[int] | None = None,
        priority: Sequence[int] | None = None,
    ) -> None:
        """Start a run.

        Args:
            plan: the compiled graph.
            io: ids of io-bound tasks.
            done: ids finished before this run (their results are available).
            failed: ids among ``done`` whose outcome is an error: their
                descendants in this run are skipped, not run.
            targets: run only these and their ancestors (None: every task).
            priority: a number per task; among READY CPU tasks the highest goes
                first (ties: lowest id).  None: first ready, first out.
        """
        n = len(plan.names)
        self._children = plan.children
        self._io = bytearray(n)
        for tid in io:
            self._io[tid] = 1
        self.ready_io: deque[int] = deque()
        self.ready_cpu: deque[int] = deque()
        self._priority = priority
        self._heap: list[tuple[int, int]] | None = None if priority is None else []
        self.running = 0
        state = self.state = bytearray([_WAITING]) * n
        if targets is not None:
            state[:] = bytearray(n)
            for tid in plan.ancestors(targets):
                state[tid] = _WAITING
        for tid in done:
            state[tid] = _OUT
        # A target's ancestors are all in the run, so only tasks done before the
        # run are dependencies a task does not wait for.
        self.waiting = waiting = [len(ps) for ps in plan.parents]
        children = plan.children
        for tid in set(done):
            for child in children[tid]:
                waiting[child] -= 1
        self.unfinished = state.count(_WAITING)
        #: (failed id, ids it skips) for each failure carried over from an earlier run
        self.skipped_at_start = [(tid, self._skip_from([tid], _OUT)) for tid in failed]
        for tid, w in enumerate(waiting):
            if not w and state[tid] == _WAITING:
                self._make_ready(tid)

    # -- queries ------------------------------------------------------------

    def is_io(self, tid: int) -> bool:
        """Whether the task is io-bound."""
        return bool(self._io[tid])

    def has_ready(self) -> bool:
        """Whether a task is READY."""
        return bool(self.ready_io or self.ready_cpu or self._heap)

    def ready(self) -> list[int]:
        """The READY ids, io-bound first, in the order they will be handed out."""
        heap = sorted(self._heap or ())
        return [*self.ready_io, *self.ready_cpu, *(tid for _, tid in heap)]

    # -- transitions --------------------------------------------------------

    def pop_ready(self) -> int:
        """Hand out the next READY task (io-bound first) and mark it RUNNING; -1 if none."""
        # pop_ready_io and pop_ready_cpu inlined: this is `run`'s per-task hot path.
        if self.ready_io:
            tid = self.ready_io.popleft()
        elif self.ready_cpu:
            tid = self.ready_cpu.popleft()
        elif self._heap:
            tid = heappop(self._heap)[1]
        else:
            return -1
        self.state[tid] = _RUNNING
        self.running += 1
        return tid

    def pop_ready_cpu(self) -> int:
        """Hand out the next READY CPU-bound task and mark it RUNNING; -1 if none."""
        if self.ready_cpu:
            tid = self.ready_cpu.popleft()
        elif self._heap:
            tid = heappop(self._heap)[1]
        else:
            return -1
        self.state[tid] = _RUNNING
        self.running += 1
        return tid

    def pop_ready_io(self) -> int:
        """Hand out the next READY io-bound task and mark it RUNNING; -1 if none."""
        if not self.ready_io:
            return -1
        tid = self.ready_io.popleft()
        self.state[tid] = _RUNNING
        self.running += 1
        return tid

    def finish(self, tid: int) -> list[int]:
        """Record that a RUNNING task succeeded; return the ids it made READY."""
        state = self.state
        if state[tid] != _RUNNING:
            self._illegal(tid, "finish")
        state[tid] = _DONE
        self.running -= 1
        self.unfinished -= 1
        waiting = self.waiting
        newly = []
        for child in self._children[tid]:
            waiting[child] -= 1
            if not waiting[child] and state[child] == _WAITING:
                newly.append(child)
                state[child] = _READY
                if self._io[child]:
                    self.ready_io.append(child)
                elif self._heap is None:
                    self.ready_cpu.append(child)
                else:
                    self._push_cpu(child)
        return newly

    def fail(self, tid: int) -> list[int]:
        """Record that a RUNNING task failed; SKIP its descendants and return their ids."""
        if self.state[tid] != _RUNNING:
            self._illegal(tid, "fail")
        self.state[tid] = _FAILED
        self.running -= 1
        self.unfinished -= 1
        return self._skip_from([tid], _FAILED)

    def cancel(self, tid: int) -> None:
        """Record that a RUNNING task was cancelled because the run stopped (STOPPED)."""
        if self.state[tid] != _RUNNING:
            self._illegal(tid, "cancel")
        self.state[tid] = _STOPPED
        self.running -= 1
        self.unfinished -= 1

    def stop(self) -> list[int]:
        """Stop the run: every WAITING or READY task becomes STOPPED; return their ids.

        RUNNING tasks are left to the driver, which finishes, fails or cancels them.
        """
        state = self.state
        stopped = [tid for tid, s in enumerate(state) if s in (_WAITING, _READY)]
        for tid in stopped:
            state[tid] = _STOPPED
        self.ready_io.clear()
        self.ready_cpu.clear()
        if self._heap:
            self._heap.clear()
        self.unfinished -= len(stopped)
        return stopped

    # -- internals ----------------------------------------------------------

    def _make_ready(self, tid: int) -> None:
        self.state[tid] = _READY
        if self._io[tid]:
            self.ready_io.append(tid)
        elif self._heap is None:
            self.ready_cpu.append(tid)
        else:
            self._push_cpu(tid)

    def _push_cpu(self, tid: int) -> None:
        assert self._heap is not None
        assert self._priority is not None
        heappush(self._heap, (-self._priority[tid], tid))

    def _skip_from(self, roots: Iterable[int], expected: int) -> list[int]:
        """Skip every WAITING descendant of ``roots``. O(descendants' edges)."""
        state, children = self.state, self._children
        skipped = []
        stack = [tid for tid in roots if state[tid] == expected]
        while stack:
            for child in children[stack.pop()]:
                if state[child] == _WAITING:
                    state[child] = _SKIPPED
                    skipped.append(child)
                    stack.append(child)
        self.unfinished -= len(skipped)
        return skipped

    def _illegal(self, tid: int, action: str) -> None:
        raise RuntimeError(f"cannot {action} task {tid}: it is {TaskState(self.state[tid]).name}")
