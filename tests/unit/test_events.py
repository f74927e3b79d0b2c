"""The pool's event stream: one typed, frozen event per lifecycle step, delivered to subscribers."""

from __future__ import annotations

import dataclasses

import anyio
import pytest

import poolkit
from _util import scaled
from poolkit import CallCompleted, CallFailed, CallQueued, Event, Pool, WorkerStateChanged
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import add, boom, crash_segv, hang

pytestmark = pytest.mark.anyio


async def test_every_queued_call_ends_with_exactly_one_terminal_event() -> None:
    """Each call gets CallQueued, then exactly one CallCompleted or CallFailed with the right kind:
    success, application error, crash and timeout alike."""
    events: list[Event] = []
    async with Pool(min_workers=1, launcher=BridgeLauncher()) as pool:
        pool.subscribe(events.append)
        with anyio.fail_after(scaled(10)):
            assert await pool.call(add, 1, 2) == 3
            with pytest.raises(poolkit.RemoteError):
                await pool.call(boom)
            with pytest.raises(poolkit.WorkerCrashed):
                await pool.call(crash_segv)
            with pytest.raises(poolkit.CallTimeout):
                await pool.call(hang, timeout=0.05)
    queued = [e.call for e in events if isinstance(e, CallQueued)]
    ends = [e for e in events if isinstance(e, CallCompleted | CallFailed)]
    assert len(queued) == 4
    assert sorted(e.call for e in ends) == sorted(queued)
    kinds = [e.kind if isinstance(e, CallFailed) else "ok" for e in ends]
    assert kinds == [
        "ok",
        poolkit.FailureKind.APPLICATION,
        poolkit.FailureKind.CRASHED,
        poolkit.FailureKind.TIMEOUT,
    ]


async def test_worker_state_changes_are_emitted_and_events_are_frozen() -> None:
    """Worker lifecycle transitions arrive as WorkerStateChanged records, which cannot be mutated."""
    events: list[Event] = []
    pool = Pool(min_workers=1, launcher=BridgeLauncher())
    pool.subscribe(events.append)
    async with pool:
        await pool.call(add, 1, 1)
    changes = [(e.from_state, e.to_state) for e in events if isinstance(e, WorkerStateChanged)]
    W = poolkit.WorkerState
    assert (W.SPAWNING, W.STARTING) in changes and (W.STARTING, W.READY) in changes
    assert (W.READY, W.BUSY) in changes and changes[-1][1] is W.STOPPED
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].pool = "other"  # type: ignore[misc]


async def test_a_workers_history_keeps_its_lifecycle_through_many_calls() -> None:
    """READY <-> BUSY happens on every call, so it is not recorded in a worker's 32-entry
    history (nobody observing call events): after 100 calls it still shows how the worker
    started, not the last 16 calls."""
    async with Pool(min_workers=1, max_workers=1, launcher=BridgeLauncher()) as pool:
        with anyio.fail_after(scaled(10)):
            for i in range(100):
                assert await pool.call(add, i, 1) == i + 1
        (worker,) = pool._workers.values()
        W = poolkit.WorkerState
        steps = [(t.from_state, t.to_state) for t in worker.fsm.history]
        assert steps == [(W.SPAWNING, W.STARTING), (W.STARTING, W.READY)]
        assert worker.state is W.READY


async def test_unsubscribe_stops_delivery_and_a_failing_listener_does_not_break_the_pool() -> None:
    """A listener that raises is logged and ignored; after unsubscribe a listener gets nothing."""
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    async with Pool(min_workers=1, launcher=BridgeLauncher()) as pool:
        pool.subscribe(broken)
        unsubscribe = pool.subscribe(seen.append)
        assert await pool.call(add, 2, 2) == 4
        count = len(seen)
        assert count > 0
        unsubscribe()
        assert await pool.call(add, 3, 3) == 6
        assert len(seen) == count
