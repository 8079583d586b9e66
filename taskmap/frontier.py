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
Rule 5: with limits, a task runs only while each of its channels has a free slot.
        A popped task whose channel is full is *held* (still READY) in that
        channel's queue; each slot a finishing task frees wakes one held task back
        to the front of the ready queues.  Priorities order the ready queues, after
        Rule 2.

States (one byte per task, ``state[tid]``)::

    OUT ─────────────────────── not part of this run (done before, or not a target's ancestor)
    WAITING ─► READY ─► RUNNING ─► DONE
       │         │         ├────► FAILED ──► descendants WAITING ─► SKIPPED
       └─────────┴─────────┴────► STOPPED   (fail_fast: not started, or cancelled)

Fields: ``waiting[tid]`` counts the dependency edges of ``tid`` not yet finished;
``ready_io`` / ``ready_cpu`` are FIFO queues of READY ids (heaps ``_heap_io`` /
``_heap`` replace them when tasks have priorities); ``_channels[tid]`` are the
ids of the limited channels of a task, ``_free[c]`` the free slots of channel
``c`` and ``_held[c]`` the READY tasks waiting for one; ``unfinished`` counts
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
        "_channels",
        "_children",
        "_free",
        "_heap",
        "_heap_io",
        "_held",
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
        channels: Sequence[Sequence[int]] | None = None,
        limits: Sequence[int] = (),
    ) -> None:
        """Start a run.

        Args:
            plan: the compiled graph.
            io: ids of io-bound tasks.
            done: ids finished before this run (their results are available).
            failed: ids among ``done`` whose outcome is an error: their
                descendants in this run are skipped, not run.
            targets: run only these and their ancestors (None: every task).
            priority: a number per task; among READY tasks (io-bound ones still
                first) the highest goes first (ties: lowest id).  None: first
                ready, first out.
            channels: per task, the ids of its limited channels (None: no limits).
            limits: per channel id, how many of its tasks may run at once.
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
        self._heap_io: list[tuple[int, int]] | None = None if priority is None else []
        self._channels = channels
        self._free = list(limits)
        self._held: list[deque[int]] = [deque() for _ in limits]
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
        """Whether a task is READY to be handed out (held tasks wait for a slot)."""
        return bool(self.ready_io or self.ready_cpu or self._heap_io or self._heap)

    def has_ready_io(self) -> bool:
        """Whether an io-bound task is READY to be handed out."""
        return bool(self.ready_io or self._heap_io)

    def ready(self) -> list[int]:
        """The READY ids, io-bound first, in the order they will be handed out; then
        the tasks held for a channel slot."""
        heap_io, heap = sorted(self._heap_io or ()), sorted(self._heap or ())
        return [
            *self.ready_io,
            *(tid for _, tid in heap_io),
            *self.ready_cpu,
            *(tid for _, tid in heap),
            *(tid for held in self._held for tid in held),
        ]

    # -- transitions --------------------------------------------------------

    def pop_ready(self) -> int:
        """Hand out the next READY task (io-bound first) and mark it RUNNING; -1 if none."""
        # pop_ready_io then pop_ready_cpu, inlined: this is `run`'s per-task hot path.
        while True:
            if self.ready_io:
                tid = self.ready_io.popleft()
            elif self.ready_cpu:
                tid = self.ready_cpu.popleft()
            elif self._heap_io:
                tid = heappop(self._heap_io)[1]
            elif self._heap:
                tid = heappop(self._heap)[1]
            else:
                return -1
            if self._channels is None or self._admit(tid):
                break
        self.state[tid] = _RUNNING
        self.running += 1
        return tid

    def pop_ready_cpu(self) -> int:
        """Hand out the next READY CPU-bound task and mark it RUNNING; -1 if none."""
        return self._pop(self.ready_cpu, self._heap)

    def pop_ready_io(self) -> int:
        """Hand out the next READY io-bound task and mark it RUNNING; -1 if none."""
        return self._pop(self.ready_io, self._heap_io)

    def _pop(self, queue: deque[int], heap: list[tuple[int, int]] | None) -> int:
        """Hand out the next task of one kind: its FIFO queue, or its priority heap."""
        while True:
            if queue:
                tid = queue.popleft()
            elif heap:
                tid = heappop(heap)[1]
            else:
                return -1
            if self._channels is None or self._admit(tid):
                break
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
        if self._channels is not None:
            self._release(tid)
        waiting = self.waiting
        newly = []
        for child in self._children[tid]:
            waiting[child] -= 1
            if not waiting[child] and state[child] == _WAITING:
                newly.append(child)
                state[child] = _READY
                if self._heap is not None:
                    self._push(child)
                elif self._io[child]:
                    self.ready_io.append(child)
                else:
                    self.ready_cpu.append(child)
        return newly

    def fail(self, tid: int) -> list[int]:
        """Record that a RUNNING task failed; SKIP its descendants and return their ids."""
        if self.state[tid] != _RUNNING:
            self._illegal(tid, "fail")
        self.state[tid] = _FAILED
        self.running -= 1
        self.unfinished -= 1
        if self._channels is not None:
            self._release(tid)
        return self._skip_from([tid], _FAILED)

    def cancel(self, tid: int) -> None:
        """Record that a RUNNING task was cancelled because the run stopped (STOPPED)."""
        if self.state[tid] != _RUNNING:
            self._illegal(tid, "cancel")
        self.state[tid] = _STOPPED
        self.running -= 1
        self.unfinished -= 1
        if self._channels is not None:
            self._release(tid)

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
        for queue in (self._heap, self._heap_io, *self._held):
            if queue:
                queue.clear()
        self.unfinished -= len(stopped)
        return stopped

    # -- internals ----------------------------------------------------------

    def _make_ready(self, tid: int) -> None:
        self.state[tid] = _READY
        if self._heap is not None:
            self._push(tid)
        elif self._io[tid]:
            self.ready_io.append(tid)
        else:
            self.ready_cpu.append(tid)

    def _push(self, tid: int) -> None:
        assert self._heap is not None
        assert self._heap_io is not None
        assert self._priority is not None
        heappush(self._heap_io if self._io[tid] else self._heap, (-self._priority[tid], tid))

    def _admit(self, tid: int) -> bool:
        """Take a slot of each of the task's channels, or hold it (Rule 5)."""
        assert self._channels is not None
        channels, free = self._channels[tid], self._free
        if not channels:
            return True
        for c in channels:
            if free[c] <= 0:
                self._held[c].append(tid)
                # The slots of its other channels it did not take may serve tasks
                # held there.  Each such wake moves a task to a full channel's
                # queue, so this ends.
                for other in channels:
                    if free[other] > 0:
                        self._wake(other)
                return False
        for c in channels:
            free[c] -= 1
        return True

    def _release(self, tid: int) -> None:
        assert self._channels is not None
        free, held = self._free, self._held
        for c in self._channels[tid]:
            free[c] += 1
            if held[c]:
                self._wake(c)

    def _wake(self, c: int) -> None:
        """Put the first task held for channel ``c`` back in front of the ready queues."""
        if self._held[c]:
            tid = self._held[c].popleft()
            if self._heap is not None:
                self._push(tid)
            elif self._io[tid]:
                self.ready_io.appendleft(tid)
            else:
                self.ready_cpu.appendleft(tid)

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
