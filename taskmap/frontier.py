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
Rule 6: a graph may grow while it runs.  An expanded task (``create_graph(expand=)``)
        keeps its id as a *gather node*; when the dependency at the root of its
        expand chain finishes with ``count`` items, `grow` appends ``count``
        *instances* per task of the chain, in O(items): new ids at the end of every
        per-task list, nothing rebuilt.  Instance i of a task expanded over an
        expanded task depends on instance i of it (no barrier between the
        stages); every instance inherits its task's other dependencies, io flag,
        priority and channels.  The gather node waits for its own dependencies
        and for each of its instances however it ends: a failed or skipped
        instance skips only its own paired instances (Rule 3 stops at the gather
        node), and the driver decides what the gather node does with failures.

States (one byte per task, ``state[tid]``)::

    OUT ─────────────────────── not part of this run (done before, or not a target's ancestor)
    WAITING ─► READY ─► RUNNING ─► DONE
       │         │         ├────► FAILED ──► descendants WAITING ─► SKIPPED
       └─────────┴─────────┴────► STOPPED   (fail_fast: not started, or cancelled)

Fields: ``parents[tid]`` / ``children[tid]`` are the run's edges (the plan's, then
the instances'); ``origin[tid]`` is the expanded task of an instance (itself for
a task; None without expansion), ``instances[task]`` the range of its instance
ids; ``waiting[tid]`` counts the dependency edges of ``tid`` not yet finished;
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
        "_chains",
        "_channels",
        "_children",
        "_expand",
        "_free",
        "_heap",
        "_heap_io",
        "_held",
        "_io",
        "_priority",
        "_template",
        "carried",
        "instances",
        "nstatic",
        "origin",
        "parents",
        "pending",
        "ready_cpu",
        "ready_io",
        "running",
        "skipped_at_start",
        "state",
        "unfinished",
        "waiting",
        "woken",
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
        n = self.nstatic = len(plan.names)
        self._children: list[Sequence[int]] | tuple[tuple[int, ...], ...] = plan.children
        self.parents: list[Sequence[int]] | tuple[tuple[int, ...], ...] = plan.parents
        self._io = bytearray(n)
        for tid in io:
            self._io[tid] = 1
        self.ready_io: deque[int] = deque()
        self.ready_cpu: deque[int] = deque()
        self._priority = priority
        self._heap: list[tuple[int, int]] | None = None if priority is None else []
        self._heap_io: list[tuple[int, int]] | None = None if priority is None else []
        self._channels = channels
        #: gather nodes made READY by a failure (`fail` returns what it skipped)
        self.woken: list[int] = []
        #: (failed instance done before, ids it skips), from `grow`
        self.carried: list[tuple[int, list[int]]] = []
        self._expand = plan.expand
        self.origin: list[int] | None = None
        self.instances: dict[int, range] = {}
        #: root dependency -> the tasks expanded over it, directly or along a chain
        self._chains: dict[int, list[int]] = {}
        #: expanded task -> what its instances inherit: io flag, priority, channels
        self._template: dict[int, tuple[int, int, Sequence[int]]] = {}
        #: roots done before the run whose chains still grow (`grow` at the start)
        self.pending: list[int] = []
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
        later = self._prepare_expansion(plan) if plan.expand else ()
        for tid, w in enumerate(waiting):
            if not w and state[tid] == _WAITING and tid not in later:
                self._make_ready(tid)

    def _prepare_expansion(self, plan: Plan) -> set[int]:
        """Make the lists growable, note each chain and what its instances inherit, and
        return the gather nodes that wait for a `grow` at the start of the run."""
        n = self.nstatic
        self._children = list(self._children)
        self.parents = list(self.parents)
        self.origin = list(range(n))
        if self._priority is not None:
            self._priority = list(self._priority)
        if self._channels is not None:
            self._channels = list(self._channels)
        expand, later = self._expand, set()
        for tid in plan.order:  # parents first: a chain's tasks in the order they grow
            if tid not in expand:
                continue
            root = tid
            while root in expand:
                root = expand[root]
            self._chains.setdefault(root, []).append(tid)
            self._template[tid] = (
                self._io[tid],
                0 if self._priority is None else self._priority[tid],
                () if self._channels is None else self._channels[tid],
            )
            self._io[tid] = 1  # a gather node is handed out at once, never to a backend
            if self._channels is not None:
                self._channels[tid] = ()
            if self.state[root] == _OUT and self.state[tid] == _WAITING:
                later.add(tid)
                if root not in self.pending:
                    self.pending.append(root)
        return later

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

    def expanded_over(self, source: int) -> list[int]:
        """The tasks that grow instances when ``source`` finishes (Rule 6), in order."""
        return self._chains.get(source, [])

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

    def grow(
        self, source: int, count: int, done: dict[int, dict[int, bool]] | None = None
    ) -> list[int]:
        """Append the instances of the tasks expanded over ``source``: ``count`` each (Rule 6).

        Call when ``source`` succeeds, before `finish` (its instances then become
        READY), or at the start of the run for a ``source`` done before.  ``done``:
        per expanded task, the instances done before (item -> failed): they are
        not run, and a failed one skips its paired instances (see ``carried``).
        Returns the ids made READY now.  O(count x tasks of the chain).
        """
        members = self._chains.get(source, ())
        state, waiting, parents, children = self.state, self.waiting, self.parents, self._children
        origin = self.origin
        assert origin is not None
        assert isinstance(parents, list)
        assert isinstance(children, list)
        if not any(state[t] == _WAITING for t in members):
            return []
        newly: list[int] = []
        carried: list[int] = []
        for task in members:
            start = len(state)
            ids = self.instances[task] = range(start, start + count)
            over = self._expand[task]
            pairs = self.instances.get(over) if over != source else None
            live = state[task] == _WAITING
            before = (done or {}).get(task, {})
            static = parents[task]
            if live and not before:  # the common case, in bulk
                self._grow_fresh(task, ids, static, over, pairs)
                self._inherit(task, count)
                continue
            extra: dict[int, list[int]] = {}  # task dependencies -> instances waiting for them
            for i, tid in enumerate(ids):
                ps = tuple([pairs[i] if p == over else p for p in static]) if pairs else static
                parents.append(ps)
                origin.append(task)
                children.append([])
                w = 0
                if live and i not in before:
                    for p in ps:
                        if p >= self.nstatic:  # its paired instance
                            children[p].append(tid)  # type: ignore[attr-defined]
                            w += state[p] != _OUT
                        elif state[p] not in (_DONE, _OUT):
                            extra.setdefault(p, []).append(tid)
                            w += 1
                    children[tid].append(task)  # type: ignore[attr-defined]
                    waiting[task] += 1
                waiting.append(w)
                state.append(_WAITING if live and i not in before else _OUT)
                if before.get(i):
                    carried.append(tid)
            self._inherit(task, count)
            for p, kids in extra.items():
                children[p] = (*children[p], *kids)
            if live:
                self.unfinished += count - sum(1 for i in before if i < count)
        for tid in carried:  # failed before: its paired instances do not run
            self.carried.append((tid, self._skip_from([tid], _OUT)))
        for tid in range(len(state) - count * len(members), len(state)):
            if state[tid] == _WAITING and not waiting[tid]:
                self._make_ready(tid)
                newly.append(tid)
        for task in members:
            if state[task] == _WAITING and not waiting[task]:
                self._make_ready(task)
                newly.append(task)
        return newly

    def _grow_fresh(
        self, task: int, ids: range, static: Sequence[int], over: int, pairs: range | None
    ) -> None:
        """Append the instances ``ids`` of a task in this run, none done before: the
        per-id lists in bulk (`grow` for the general case)."""
        state, waiting, parents, children = self.state, self.waiting, self.parents, self._children
        assert self.origin is not None
        assert isinstance(parents, list)
        assert isinstance(children, list)
        count = len(ids)
        # the task's dependencies not finished (its source too, when it is the root),
        # once per edge: every instance waits for them
        waits = [
            p for p in static if state[p] not in (_DONE, _OUT) and (pairs is None or p != over)
        ]
        if pairs is None:
            parents.extend([static] * count)
            waiting.extend([len(waits)] * count)
        else:
            edges = static.count(over)
            if static == (over,):
                parents.extend([(p,) for p in pairs])
            else:
                parents.extend([tuple([q if p == over else p for p in static]) for q in pairs])
            waiting.extend([len(waits) + edges * (state[q] != _OUT) for q in pairs])
            for q, tid in zip(pairs, ids, strict=True):
                for _ in range(edges):
                    children[q].append(tid)  # type: ignore[attr-defined]
        for p in waits:
            children[p] = (*children[p], *ids)
        self.origin.extend([task] * count)
        children.extend([[task] for _ in ids])
        waiting[task] += count
        state.extend(bytes([_WAITING]) * count)
        self.unfinished += count

    def _inherit(self, task: int, count: int) -> None:
        """Give ``count`` new instances their task's io flag, priority and channels."""
        io, priority, channels = self._template[task]
        self._io.extend(bytes([io]) * count)
        if self._priority is not None:
            self._priority.extend([priority] * count)  # type: ignore[attr-defined]
        if self._channels is not None:
            self._channels.extend([channels] * count)  # type: ignore[attr-defined]

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
        """Skip every WAITING descendant of ``roots``, stopping at gather nodes (Rule
        6: an instance's end counts for its gather node, which may become READY and
        is then listed in ``woken``). O(descendants' edges)."""
        state, children, origin = self.state, self._children, self.origin
        skipped = []
        stack = [tid for tid in roots if state[tid] == expected]
        while stack:
            tid = stack.pop()
            for child in children[tid]:
                if state[child] == _WAITING:
                    if origin is not None and origin[tid] == child and tid != child:
                        self.waiting[child] -= 1
                        if not self.waiting[child]:
                            self._make_ready(child)
                            self.woken.append(child)
                        continue
                    state[child] = _SKIPPED
                    skipped.append(child)
                    stack.append(child)
        self.unfinished -= len(skipped)
        return skipped

    def _illegal(self, tid: int, action: str) -> None:
        raise RuntimeError(f"cannot {action} task {tid}: it is {TaskState(self.state[tid]).name}")
