"""The frontier state machine, without an event loop (as h11's test_state.py).

Each test builds a small plan, applies one transition and asserts the whole state:
every task's `TaskState`, both ready queues, ``unfinished`` and ``running``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import pytest

from taskmap import TaskState, create_graph
from taskmap.frontier import Frontier
from taskmap.graph import Plan

OUT, WAITING, READY, RUNNING = TaskState.OUT, TaskState.WAITING, TaskState.READY, TaskState.RUNNING
DONE, FAILED, SKIPPED, STOPPED = (
    TaskState.DONE,
    TaskState.FAILED,
    TaskState.SKIPPED,
    TaskState.STOPPED,
)


def noop(*args: object) -> None:
    return None


def plan_of(dependencies: Mapping[Any, Iterable[Any]]) -> Plan:
    return create_graph(dict.fromkeys(dependencies, noop), dependencies).plan


def frontier_of(
    dependencies: Mapping[Any, Iterable[Any]],
    *,
    io: Iterable[Hashable] = (),
    done: Iterable[Hashable] = (),
    failed: Iterable[Hashable] = (),
    targets: Iterable[Hashable] | None = None,
) -> tuple[Frontier, dict[Hashable, int]]:
    """A frontier over the dependencies, given task names; returns it and the name -> id map."""
    plan = plan_of(dependencies)
    ids = plan.index

    def to_ids(names: Iterable[Hashable]) -> list[int]:
        return [ids[n] for n in names]

    frontier = Frontier(
        plan,
        io=to_ids(io),
        done=to_ids(done),
        failed=to_ids(failed),
        targets=None if targets is None else to_ids(targets),
    )
    return frontier, ids


def whole_state(frontier: Frontier, ids: dict[Hashable, int]) -> dict[str, Any]:
    """Everything a transition may change, with task names instead of ids."""
    names = {tid: name for name, tid in ids.items()}
    return {
        "state": {names[tid]: TaskState(s) for tid, s in enumerate(frontier.state)},
        "ready_io": [names[tid] for tid in frontier.ready_io],
        "ready_cpu": [names[tid] for tid in frontier.ready_cpu],
        "unfinished": frontier.unfinished,
        "running": frontier.running,
    }


def expect(
    state: dict[Hashable, TaskState],
    *,
    ready_io: list[Hashable] | None = None,
    ready_cpu: list[Hashable] | None = None,
    unfinished: int,
    running: int = 0,
) -> dict[str, Any]:
    return {
        "state": state,
        "ready_io": ready_io or [],
        "ready_cpu": ready_cpu or [],
        "unfinished": unfinished,
        "running": running,
    }


CHAIN = {"a": [], "b": ["a"], "c": ["b"]}
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


# -- the initial state --------------------------------------------------------------


def test_roots_start_ready_in_task_order() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"], "c": [], "d": ["c"]})
    assert whole_state(frontier, ids) == expect(
        {"a": READY, "b": WAITING, "c": READY, "d": WAITING}, ready_cpu=["a", "c"], unfinished=4
    )
    assert frontier.skipped_at_start == []


def test_io_bound_roots_go_to_the_io_queue() -> None:
    frontier, ids = frontier_of({"a": [], "b": [], "c": []}, io=["c", "a"])
    assert whole_state(frontier, ids) == expect(
        {"a": READY, "b": READY, "c": READY}, ready_io=["a", "c"], ready_cpu=["b"], unfinished=3
    )
    assert frontier.ready() == [ids["a"], ids["c"], ids["b"]]
    assert frontier.is_io(ids["a"])
    assert not frontier.is_io(ids["b"])


def test_an_empty_plan_is_finished_at_once() -> None:
    frontier, ids = frontier_of({})
    assert whole_state(frontier, ids) == expect({}, unfinished=0)
    assert frontier.pop_ready() == -1


def test_done_tasks_are_out_and_their_children_ready() -> None:
    frontier, ids = frontier_of(CHAIN, done=["a"])
    assert whole_state(frontier, ids) == expect(
        {"a": OUT, "b": READY, "c": WAITING}, ready_cpu=["b"], unfinished=2
    )


def test_failed_done_tasks_skip_their_descendants_at_start() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d", "b"]}
    frontier, ids = frontier_of(deps, done=["a"], failed=["a"])
    assert whole_state(frontier, ids) == expect(
        {"a": OUT, "b": SKIPPED, "c": SKIPPED, "d": READY, "e": SKIPPED},
        ready_cpu=["d"],
        unfinished=1,
    )
    [(failed, skipped)] = frontier.skipped_at_start
    assert failed == ids["a"]
    assert sorted(skipped) == [ids["b"], ids["c"], ids["e"]]


def test_targets_restrict_the_run_to_their_ancestors() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["a", "d"]}
    frontier, ids = frontier_of(deps, targets=["b"])
    assert whole_state(frontier, ids) == expect(
        {"a": READY, "b": WAITING, "c": OUT, "d": OUT, "e": OUT}, ready_cpu=["a"], unfinished=2
    )


def test_targets_and_done_combine() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": []}
    frontier, ids = frontier_of(deps, targets=["c", "d"], done=["a", "d"])
    assert whole_state(frontier, ids) == expect(
        {"a": OUT, "b": READY, "c": WAITING, "d": OUT}, ready_cpu=["b"], unfinished=2
    )


# -- popping ----------------------------------------------------------------------


def test_pop_ready_hands_out_io_bound_tasks_first() -> None:
    frontier, ids = frontier_of({"a": [], "b": [], "c": []}, io=["b"])
    assert frontier.pop_ready() == ids["b"]
    assert whole_state(frontier, ids) == expect(
        {"a": READY, "b": RUNNING, "c": READY}, ready_cpu=["a", "c"], unfinished=3, running=1
    )
    assert frontier.pop_ready() == ids["a"]
    assert frontier.pop_ready() == ids["c"]
    assert frontier.pop_ready() == -1
    assert whole_state(frontier, ids) == expect(
        {"a": RUNNING, "b": RUNNING, "c": RUNNING}, unfinished=3, running=3
    )


def test_pop_ready_io_leaves_cpu_tasks_queued() -> None:
    frontier, ids = frontier_of({"a": [], "b": []}, io=["b"])
    assert frontier.pop_ready_io() == ids["b"]
    assert frontier.pop_ready_io() == -1
    assert whole_state(frontier, ids) == expect(
        {"a": READY, "b": RUNNING}, ready_cpu=["a"], unfinished=2, running=1
    )
    assert frontier.has_ready()


def test_popping_with_nothing_ready_changes_nothing() -> None:
    frontier, ids = frontier_of(CHAIN)
    frontier.pop_ready()
    before = whole_state(frontier, ids)
    assert frontier.pop_ready() == -1
    assert frontier.pop_ready_io() == -1
    assert not frontier.has_ready()
    assert whole_state(frontier, ids) == before


# -- finish -----------------------------------------------------------------------


def test_finish_returns_the_tasks_it_made_ready() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"], "c": ["a"], "d": ["a", "b"]}, io=["c"])
    frontier.pop_ready()
    assert frontier.finish(ids["a"]) == [ids["b"], ids["c"]]
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": READY, "c": READY, "d": WAITING},
        ready_io=["c"],
        ready_cpu=["b"],
        unfinished=3,
    )


def test_a_task_is_ready_only_when_its_last_dependency_finishes() -> None:
    frontier, ids = frontier_of(DIAMOND)
    frontier.finish(frontier.pop_ready())
    frontier.pop_ready(), frontier.pop_ready()
    assert frontier.finish(ids["c"]) == []
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": RUNNING, "c": DONE, "d": WAITING}, unfinished=2, running=1
    )
    assert frontier.finish(ids["b"]) == [ids["d"]]
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": DONE, "c": DONE, "d": READY}, ready_cpu=["d"], unfinished=1
    )


def test_a_dependency_listed_twice_makes_its_child_ready_once() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a", "a"]})
    assert frontier.finish(frontier.pop_ready()) == [ids["b"]]
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": READY}, ready_cpu=["b"], unfinished=1
    )


def test_finishing_every_task_ends_the_run() -> None:
    frontier, ids = frontier_of(DIAMOND)
    while (tid := frontier.pop_ready()) >= 0:
        frontier.finish(tid)
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": DONE, "c": DONE, "d": DONE}, unfinished=0
    )


def test_finish_does_not_make_a_task_outside_the_targets_ready() -> None:
    frontier, ids = frontier_of(CHAIN, targets=["a"])
    assert frontier.finish(frontier.pop_ready()) == []
    assert whole_state(frontier, ids) == expect({"a": DONE, "b": OUT, "c": OUT}, unfinished=0)


# -- fail -------------------------------------------------------------------------


def test_fail_skips_exactly_the_descendants() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d"], "f": ["c", "e"]}
    frontier, ids = frontier_of(deps)
    frontier.pop_ready()
    skipped = frontier.fail(ids["a"])
    assert sorted(skipped) == [ids["b"], ids["c"], ids["f"]]
    assert whole_state(frontier, ids) == expect(
        {"a": FAILED, "b": SKIPPED, "c": SKIPPED, "d": READY, "e": WAITING, "f": SKIPPED},
        ready_cpu=["d"],
        unfinished=2,
    )


def test_fail_skips_each_task_of_a_diamond_once() -> None:
    frontier, ids = frontier_of(DIAMOND)
    frontier.pop_ready()
    skipped = frontier.fail(ids["a"])
    assert sorted(skipped) == [ids["b"], ids["c"], ids["d"]]
    assert whole_state(frontier, ids) == expect(
        {"a": FAILED, "b": SKIPPED, "c": SKIPPED, "d": SKIPPED}, unfinished=0
    )


def test_a_task_below_two_failures_is_skipped_once() -> None:
    deps = {"a": [], "b": [], "c": ["a", "b"], "d": ["c"]}
    frontier, ids = frontier_of(deps)
    frontier.pop_ready(), frontier.pop_ready()
    assert sorted(frontier.fail(ids["a"])) == [ids["c"], ids["d"]]
    assert frontier.fail(ids["b"]) == []
    assert whole_state(frontier, ids) == expect(
        {"a": FAILED, "b": FAILED, "c": SKIPPED, "d": SKIPPED}, unfinished=0
    )


def test_fail_leaves_ready_and_running_siblings_alone() -> None:
    deps = {"a": [], "b": [], "c": [], "d": ["a", "c"]}
    frontier, ids = frontier_of(deps, io=["c"])
    assert frontier.pop_ready() == ids["c"]
    assert frontier.pop_ready() == ids["a"]
    assert frontier.fail(ids["a"]) == [ids["d"]]
    assert whole_state(frontier, ids) == expect(
        {"a": FAILED, "b": READY, "c": RUNNING, "d": SKIPPED},
        ready_cpu=["b"],
        unfinished=2,
        running=1,
    )
    assert frontier.finish(ids["c"]) == []


# -- stop and cancel ---------------------------------------------------------------


def test_stop_stops_every_waiting_and_ready_task_and_leaves_running_ones() -> None:
    deps = {"a": [], "b": [], "c": ["a"], "d": []}
    frontier, ids = frontier_of(deps, io=["d"])
    assert frontier.pop_ready() == ids["d"]
    stopped = frontier.stop()
    assert sorted(stopped) == [ids["a"], ids["b"], ids["c"]]
    assert whole_state(frontier, ids) == expect(
        {"a": STOPPED, "b": STOPPED, "c": STOPPED, "d": RUNNING}, unfinished=1, running=1
    )


def test_cancel_stops_a_running_task() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"]})
    frontier.pop_ready()
    frontier.stop()
    frontier.cancel(ids["a"])
    assert whole_state(frontier, ids) == expect({"a": STOPPED, "b": STOPPED}, unfinished=0)


def test_a_running_task_may_still_finish_after_stop_without_readying_children() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"]})
    frontier.pop_ready()
    frontier.stop()
    assert frontier.finish(ids["a"]) == []
    assert whole_state(frontier, ids) == expect({"a": DONE, "b": STOPPED}, unfinished=0)


def test_a_running_task_may_still_fail_after_stop_and_skips_nothing() -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"]})
    frontier.pop_ready()
    frontier.stop()
    assert frontier.fail(ids["a"]) == []
    assert whole_state(frontier, ids) == expect({"a": FAILED, "b": STOPPED}, unfinished=0)


def test_stop_after_everything_started_stops_nothing() -> None:
    frontier, ids = frontier_of({"a": []})
    frontier.pop_ready()
    assert frontier.stop() == []
    assert whole_state(frontier, ids) == expect({"a": RUNNING}, unfinished=1, running=1)


# -- illegal transitions ----------------------------------------------------------


def _finish(f: Frontier, tid: int) -> None:
    f.finish(tid)


def _fail(f: Frontier, tid: int) -> None:
    f.fail(tid)


def _cancel(f: Frontier, tid: int) -> None:
    f.cancel(tid)


TRANSITIONS: list[tuple[str, Callable[[Frontier, int], None]]] = [
    ("finish", _finish),
    ("fail", _fail),
    ("cancel", _cancel),
]


def _after_one_finished(f: Frontier, ids: dict[Hashable, int]) -> None:
    f.finish(f.pop_ready())  # a DONE, b READY


def _after_one_failed(f: Frontier, ids: dict[Hashable, int]) -> None:
    f.fail(f.pop_ready())  # a FAILED, b SKIPPED


def _after_stop(f: Frontier, ids: dict[Hashable, int]) -> None:
    f.stop()  # a, b STOPPED


SETUPS: list[tuple[str, Callable[[Frontier, dict[Hashable, int]], None], Hashable]] = [
    ("READY", lambda f, ids: None, "a"),
    ("WAITING", lambda f, ids: None, "b"),
    ("DONE", _after_one_finished, "a"),
    ("FAILED", _after_one_failed, "a"),
    ("SKIPPED", _after_one_failed, "b"),
    ("STOPPED", _after_stop, "a"),
    ("OUT", lambda f, ids: None, "c"),
]


@pytest.mark.parametrize(("action", "transition"), TRANSITIONS, ids=[t[0] for t in TRANSITIONS])
@pytest.mark.parametrize(("state", "setup", "task"), SETUPS, ids=[s[0] for s in SETUPS])
def test_an_illegal_transition_raises_and_changes_nothing(
    action: str,
    transition: Callable[[Frontier, int], None],
    state: str,
    setup: Callable[[Frontier, dict[Hashable, int]], None],
    task: Hashable,
) -> None:
    frontier, ids = frontier_of({"a": [], "b": ["a"], "c": []}, targets=["b"])
    setup(frontier, ids)
    before = whole_state(frontier, ids)
    assert before["state"][task] == TaskState[state]
    with pytest.raises(RuntimeError, match=f"^cannot {action} task {ids[task]}: it is {state}$"):
        transition(frontier, ids[task])
    assert whole_state(frontier, ids) == before


# -- priority -----------------------------------------------------------------------


def test_with_priorities_the_highest_ready_cpu_task_goes_first() -> None:
    deps = {"a": [], "b": [], "c": [], "d": [], "e": ["a"]}
    plan = plan_of(deps)
    ids = plan.index
    frontier = Frontier(plan, io=[ids["d"]], priority=[1, 3, 1, 0, 2])
    assert frontier.ready() == [ids["d"], ids["b"], ids["a"], ids["c"]]
    assert frontier.pop_ready_cpu() == ids["b"]
    assert frontier.pop_ready() == ids["d"]
    assert frontier.pop_ready() == ids["a"]  # ties: lowest id first
    assert frontier.finish(ids["a"]) == [ids["e"]]
    assert frontier.pop_ready() == ids["e"]  # priority 2 beats c's 1
    assert frontier.pop_ready() == ids["c"]
    assert frontier.pop_ready_cpu() == -1
    assert whole_state(frontier, ids) == expect(
        {"a": DONE, "b": RUNNING, "c": RUNNING, "d": RUNNING, "e": RUNNING},
        unfinished=4,
        running=4,
    )


def test_stop_empties_the_priority_queue() -> None:
    plan = plan_of({"a": [], "b": []})
    frontier = Frontier(plan, priority=[1, 2])
    assert sorted(frontier.stop()) == [0, 1]
    assert not frontier.has_ready()
    assert frontier.pop_ready() == -1


# -- limits (Rule 5) ----------------------------------------------------------------


def limited(
    dependencies: dict[Hashable, list[Hashable]],
    channels: dict[Hashable, list[int]],
    limits: list[int],
    priority: list[int] | None = None,
) -> tuple[Frontier, dict[Hashable, int]]:
    plan = plan_of(dependencies)
    ids = plan.index
    per_task = [tuple(channels.get(name, ())) for name in plan.names]
    frontier = Frontier(plan, channels=per_task, limits=limits, priority=priority)
    return frontier, ids


def test_a_full_channel_holds_its_ready_tasks_until_a_slot_frees() -> None:
    deps = {"a": [], "b": [], "c": [], "free": []}
    frontier, ids = limited(deps, {"a": [0], "b": [0], "c": [0]}, [1])
    assert frontier.pop_ready() == ids["a"]
    assert frontier.pop_ready() == ids["free"]  # b and c are held, not lost
    assert frontier.pop_ready() == -1
    assert not frontier.has_ready()
    assert frontier.ready() == [ids["b"], ids["c"]]
    assert whole_state(frontier, ids) == expect(
        {"a": RUNNING, "b": READY, "c": READY, "free": RUNNING}, unfinished=4, running=2
    )
    frontier.finish(ids["a"])  # its slot wakes the first held task
    assert frontier.pop_ready() == ids["b"]
    assert frontier.pop_ready() == -1
    frontier.fail(ids["b"])  # a failure frees its slot too
    assert frontier.pop_ready() == ids["c"]


def test_a_limit_of_two_hands_out_two() -> None:
    frontier, ids = limited({n: [] for n in "abcd"}, {key: [0] for key in "abcd"}, [2])
    assert [frontier.pop_ready() for _ in range(3)] == [ids["a"], ids["b"], -1]
    frontier.cancel(ids["a"])
    assert [frontier.pop_ready() for _ in range(2)] == [ids["c"], -1]


def test_a_task_in_two_channels_needs_a_slot_in_each_and_nothing_deadlocks() -> None:
    # x1 holds x, y1 holds y; 'both' needs x and y; x2 needs x only.
    deps = {"x1": [], "y1": [], "both": [], "x2": []}
    channels = {"x1": [0], "y1": [1], "both": [0, 1], "x2": [0]}
    frontier, ids = limited(deps, channels, [1, 1])
    assert [frontier.pop_ready() for _ in range(3)] == [ids["x1"], ids["y1"], -1]
    frontier.finish(ids["x1"])  # x is free: 'both' is woken but y is full: x2 goes
    assert frontier.pop_ready() == ids["x2"]
    assert frontier.pop_ready() == -1
    frontier.finish(ids["y1"])
    frontier.finish(ids["x2"])
    assert frontier.pop_ready() == ids["both"]
    frontier.finish(ids["both"])
    assert frontier.unfinished == 0


def test_held_tasks_wake_in_priority_order() -> None:
    frontier, ids = limited(
        {n: [] for n in "abc"}, {key: [0] for key in "abc"}, [1], priority=[1, 2, 3]
    )
    assert frontier.pop_ready() == ids["c"]
    assert frontier.pop_ready() == -1
    frontier.finish(ids["c"])
    assert frontier.pop_ready() == ids["b"]


def test_stop_stops_held_tasks_too() -> None:
    frontier, ids = limited({n: [] for n in "abc"}, {key: [0] for key in "abc"}, [1])
    assert [frontier.pop_ready(), frontier.pop_ready()] == [ids["a"], -1]
    assert sorted(frontier.stop()) == [ids["b"], ids["c"]]
    assert frontier.ready() == []
    frontier.finish(ids["a"])  # wakes nothing: the held queue was emptied
    assert frontier.pop_ready() == -1
    assert frontier.unfinished == 0


# -- growing: expanded tasks (Rule 6) --------------------------------------------------

GROW = {"list": [], "fetch": ["list"], "parse": ["fetch"], "total": ["parse"]}


def growing(
    done: Iterable[Hashable] = (), io: Iterable[Hashable] = ()
) -> tuple[Frontier, dict[Hashable, int]]:
    """The GROW chain with fetch expanded over list and parse over fetch."""
    graph = create_graph(
        dict.fromkeys(GROW, noop), GROW, expand={"fetch": "list", "parse": "fetch"}
    )
    ids = dict(graph.plan.index)
    frontier = Frontier(graph.plan, io=[ids[n] for n in io], done=[ids[n] for n in done])
    return frontier, ids


def name_instances(frontier: Frontier, ids: dict[Hashable, int]) -> dict[Hashable, int]:
    """``ids`` plus the instances, named ``(task, i)``."""
    named = dict(ids)
    for task, tid in ids.items():
        for i, instance in enumerate(frontier.instances.get(tid, ())):
            named[(task, i)] = instance
    return named


def test_grow_appends_paired_instances_that_the_source_makes_ready() -> None:
    frontier, ids = growing()
    assert frontier.pop_ready() == ids["list"]
    assert frontier.grow(ids["list"], 2) == []  # the list is still running
    named = name_instances(frontier, ids)
    assert frontier.parents[named[("fetch", 1)]] == (ids["list"],)
    assert frontier.parents[named[("parse", 1)]] == (named[("fetch", 1)],)
    assert [frontier.origin[named[("parse", i)]] for i in (0, 1)] == [ids["parse"]] * 2
    assert frontier.finish(ids["list"]) == [named[("fetch", 0)], named[("fetch", 1)]]
    assert whole_state(frontier, named) == expect(
        {
            "list": DONE,
            "fetch": WAITING,  # a gather node: it waits for its instances
            "parse": WAITING,
            "total": WAITING,
            ("fetch", 0): READY,
            ("fetch", 1): READY,
            ("parse", 0): WAITING,
            ("parse", 1): WAITING,
        },
        ready_cpu=[("fetch", 0), ("fetch", 1)],
        unfinished=7,
    )


def test_instance_i_is_ready_when_its_own_input_is_no_barrier() -> None:
    frontier, ids = growing()
    frontier.pop_ready()
    frontier.grow(ids["list"], 2)
    frontier.finish(ids["list"])
    named = name_instances(frontier, ids)
    assert frontier.pop_ready() == named[("fetch", 0)]
    assert frontier.finish(named[("fetch", 0)]) == [named[("parse", 0)]]
    assert frontier.state[named[("fetch", 1)]] == READY  # parse 0 did not wait for it


def test_a_gather_node_is_ready_when_every_instance_ended_however() -> None:
    frontier, ids = growing()
    frontier.pop_ready()
    frontier.grow(ids["list"], 2)
    frontier.finish(ids["list"])
    named = name_instances(frontier, ids)
    fetch0, fetch1 = frontier.pop_ready(), frontier.pop_ready()
    assert frontier.fail(fetch0) == [named[("parse", 0)]]  # only its paired instance
    assert frontier.woken == []
    assert frontier.finish(fetch1) == [ids["fetch"], named[("parse", 1)]]
    assert frontier.pop_ready() == ids["fetch"]  # a gather node is io-bound: first
    assert frontier.finish(ids["fetch"]) == []
    assert frontier.pop_ready() == named[("parse", 1)]
    # parse 0 was skipped: it counted for its gather node already
    assert frontier.finish(named[("parse", 1)]) == [ids["parse"]]
    assert frontier.state[ids["total"]] == WAITING
    assert frontier.unfinished == 2  # the parse gather node and total


def test_a_failure_that_ends_the_last_instance_wakes_the_gather_node() -> None:
    frontier, ids = growing()
    frontier.pop_ready()
    frontier.grow(ids["list"], 1)
    frontier.finish(ids["list"])
    fetch0 = frontier.pop_ready()
    frontier.fail(fetch0)
    assert frontier.woken == [ids["fetch"]]  # parse's gather node waits for fetch's too
    assert frontier.state[ids["fetch"]] == READY
    assert frontier.pop_ready() == ids["fetch"]
    assert frontier.finish(ids["fetch"]) == [ids["parse"]]


def test_growing_nothing_makes_the_gather_node_ready_with_the_source() -> None:
    frontier, ids = growing()
    frontier.pop_ready()
    assert frontier.grow(ids["list"], 0) == []
    assert frontier.finish(ids["list"]) == [ids["fetch"]]
    assert frontier.unfinished == 3


def test_a_source_done_before_the_run_grows_at_the_start() -> None:
    frontier, ids = growing(done=["list"])
    assert frontier.pending == [ids["list"]]
    assert frontier.ready() == []  # the gather nodes wait for the growth
    ready = frontier.grow(ids["list"], 2, {ids["fetch"]: {0: False, 1: True}})
    named = name_instances(frontier, ids)
    # fetch 0 is done before; fetch 1 failed before: parse 1 is skipped
    assert frontier.carried == [(named[("fetch", 1)], [named[("parse", 1)]])]
    assert ready == [named[("parse", 0)], ids["fetch"]]
    assert frontier.state[named[("fetch", 0)]] == OUT


def test_instances_inherit_the_io_flag_and_the_gather_node_goes_first() -> None:
    frontier, ids = growing(io=["fetch"])
    frontier.pop_ready()
    frontier.grow(ids["list"], 2)
    frontier.finish(ids["list"])
    named = name_instances(frontier, ids)
    assert frontier.is_io(named[("fetch", 1)])
    assert not frontier.is_io(named[("parse", 1)])
    assert frontier.is_io(ids["parse"])  # never handed to a backend
