"""The pure Scheduler: least-loaded choice, round robin among equals, updates and the depth bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit._scheduler import Scheduler


def test_empty_scheduler_picks_nothing() -> None:
    """With no worker recorded there is nothing to pick."""
    sched: Scheduler[str] = Scheduler(2)
    assert sched.pick() is None
    assert len(sched) == 0
    assert sched.depth == 2


def test_depth_must_be_positive() -> None:
    """A depth below 1 is refused."""
    with pytest.raises(ValueError, match="depth"):
        Scheduler[str](0)


def test_picks_the_least_loaded_worker() -> None:
    """pick() returns the available worker with the fewest calls in flight."""
    sched: Scheduler[str] = Scheduler(4)
    sched.update("busy", 3)
    sched.update("half", 2)
    sched.update("light", 1)
    assert sched.pick() == "light"
    sched.update("light", 3)
    assert sched.pick() == "half"
    sched.update("idle", 0)
    assert sched.pick() == "idle"
    assert sched.loads() == {"busy": 3, "half": 2, "light": 3, "idle": 0}


def test_round_robin_among_idle_workers() -> None:
    """Among equally loaded workers the one waiting longest wins, so successive dispatches (each
    followed by a load update, as the pool does) spread over all idle workers in turn."""
    sched: Scheduler[str] = Scheduler(2)
    for name in ("a", "b", "c"):
        sched.update(name, 0)
    order = []
    for _ in range(3):
        worker = sched.pick()
        assert worker is not None
        order.append(worker)
        sched.update(worker, 1)
    assert order == ["a", "b", "c"]
    # "a" finishes first and goes to the back of the idle bucket: "b" and "c" are still loaded,
    # so "a" is picked; once "b" is idle too, "a" (idle longer) still comes first.
    sched.update("a", 0)
    sched.update("b", 0)
    assert sched.pick() == "a"
    sched.update("a", 1)
    assert sched.pick() == "b"


def test_update_moves_a_worker_between_loads() -> None:
    """update() replaces the worker's previous load; it is recorded once."""
    sched: Scheduler[str] = Scheduler(3)
    sched.update("w", 0)
    sched.update("w", 2)
    sched.update("x", 1)
    assert sched.pick() == "x"
    assert len(sched) == 2
    assert sched.loads() == {"w": 2, "x": 1}
    sched.update("w", 0)
    assert sched.pick() == "w"
    assert len(sched) == 2


def test_depth_bounds_the_load_of_a_picked_worker() -> None:
    """A worker with ``depth`` calls in flight is full: it is never picked until its load drops."""
    sched: Scheduler[str] = Scheduler(2)
    sched.update("w", 2)
    assert sched.pick() is None
    assert "w" not in sched
    assert len(sched) == 0
    sched.update("w", 1)
    assert sched.pick() == "w"
    assert "w" in sched


def test_unavailable_and_removed_workers_are_not_picked() -> None:
    """available=False and remove() take a worker out of rotation; removing twice is harmless."""
    sched: Scheduler[str] = Scheduler(2)
    sched.update("a", 0)
    sched.update("b", 1)
    sched.update("a", 0, available=False)
    assert sched.pick() == "b"
    sched.remove("b")
    sched.remove("b")
    sched.remove("never-seen")
    assert sched.pick() is None
    assert sched.loads() == {}


@settings(max_examples=300, deadline=None)
@given(
    depth=st.integers(1, 6),
    ops=st.lists(
        st.tuples(st.sampled_from(["update", "remove", "pick"]), st.integers(0, 4), st.integers(0, 7)),
        max_size=60,
    ),
)
def test_picks_match_a_full_scan_whatever_the_order_of_updates(
    depth: int, ops: list[tuple[str, int, int]]
) -> None:
    """The scheduler remembers the lowest bucket that may hold a worker instead of scanning
    every bucket per pick; whatever the updates, its picks equal a full scan's: least loaded
    first, and within a load the worker that got there first."""
    sched: Scheduler[int] = Scheduler(depth)
    model: dict[int, tuple[int, int]] = {}  # worker -> (load, when it entered that load)
    clock = 0
    for op, worker, load in ops:
        if op == "update":
            clock += 1
            available = load < depth
            sched.update(worker, load)
            model.pop(worker, None)
            if available:
                model[worker] = (load, clock)
        elif op == "remove":
            sched.remove(worker)
            model.pop(worker, None)
        else:
            expected = min(model, key=model.__getitem__) if model else None
            assert sched.pick() == expected
            others = {w: v for w, v in model.items() if w != worker}
            assert sched.pick_other(worker) == (min(others, key=others.__getitem__) if others else None)
            lowest_other = min((w_load for w_load, _ in others.values()), default=depth)
            assert sched.level_of_others(worker) == lowest_other
        assert len(sched) == len(model)


def test_level_of_others_is_how_far_the_least_loaded_worker_leads() -> None:
    """The pool gives the picked worker calls until its load reaches the level of the next
    worker (a dispatch run): the lowest load among the others, or the depth if none has room."""
    sched: Scheduler[str] = Scheduler(8)
    sched.update("a", 1)
    assert sched.level_of_others("a") == 8  # alone: up to the depth
    sched.update("b", 5)
    assert sched.level_of_others("a") == 5
    assert sched.level_of_others("b") == 1
    sched.update("c", 1)
    assert sched.level_of_others("a") == 1  # a tie: one call, then round robin
    sched.update("c", 3, available=False)
    assert sched.level_of_others("a") == 5  # a worker without room does not count
