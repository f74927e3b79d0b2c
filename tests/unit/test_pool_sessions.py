"""Session affinity through a real Pool, on the mock layer and on the bridge layer (the real
SESSION_END frames and per-session state of the fake worker runtime): state kept between calls,
one call at a time in order, spreading, the three affinity modes when the session's worker is
busy or gone, TTL expiry on a manual clock, ending sessions, the limits and key types, and the
session events."""

from __future__ import annotations

import collections
import random
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from _util import scaled
from poolkit import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallRetried,
    Event,
    FailureKind,
    Phase,
    Pool,
    PoolClosed,
    PoolSession,
    SessionBound,
    SessionEnded,
    SessionExpired,
    SessionLost,
    SessionRebound,
    SessionStateLost,
    SessionUnavailable,
    WorkerCrashed,
)
from poolkit.testing import BridgeLauncher, FaultInjector, ManualClock, MockScript, wait_until
from poolkit.testing import targets as T
from unit._session_targets import gated_remember
from unit._targets import Gate, Outcome, new_gate, wait_for

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Event)


@pytest.fixture(params=["mock", "bridge"])
def layer(request: pytest.FixtureRequest) -> str:
    """The in-process layers that implement sessions: scripted mock workers, and bridge workers
    speaking the real protocol."""
    value: str = request.param
    return value


def make_pool(layer: str, *, clock: ManualClock | None = None, **fields: Any) -> Pool:
    """Two workers on ``layer``, a manual clock, a seeded rng, retries without backoff."""
    fields.setdefault("min_workers", 2)
    fields.setdefault("retry", {"backoff_initial": 0.0})
    common: dict[str, Any] = {"clock": clock or ManualClock(), "rng": random.Random(0)}
    if layer == "mock":
        return Pool(worker_factory=MockScript().factory(), **common, **fields)
    return Pool(launcher=BridgeLauncher(), **common, **fields)


class Recorder:
    """Every event the pool emits, in order."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[Event] = []
        pool.subscribe(self.events.append)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


async def tick(pool: Pool, clock: ManualClock, seconds: float) -> None:
    """Advance the pool's clock and wait until its housekeeper has done that round and sleeps
    again (until a time still to come)."""
    clock.advance(seconds)
    with anyio.fail_after(scaled(5)):
        while True:
            sleep = pool._sleep
            if sleep is not None and sleep[1] > clock.now():
                return
            await anyio.lowlevel.checkpoint()


def where(s: PoolSession) -> tuple[str | None, int, str | None]:
    """(worker_id, rebinds, lost) of a session handle, read afresh."""
    return s.worker_id, s.rebinds, s.lost


def other_worker(pool: Pool, worker_id: str | None) -> str:
    (other,) = [w.id for w in pool.workers() if w.id != worker_id]
    return other


async def occupy(pool: Pool, tg: anyio.abc.TaskGroup, worker_id: str | None) -> Gate:
    """Make worker ``worker_id`` busy (pipeline_depth=1) with a non-session call held on a
    gate, leaving the other workers free; returns the gate that releases it."""
    extra: list[Gate] = []
    for i in range(len(pool.workers())):
        key = f"occupy-{i}"
        gate = new_gate(key)
        before = {w.id for w in pool.workers() if w.load}
        tg.start_soon(Outcome().capture, pool.call, wait_for, key)  # its outcome is not the point
        await gate.entered.wait()
        (holder,) = {w.id for w in pool.workers() if w.load} - before
        if holder == worker_id:
            for g in extra:
                g.release.set()
            await wait_until(
                lambda: all(not w.load for w in pool.workers() if w.id != worker_id),
                pool=pool,
                describe="the other workers free again",
            )
            return gate
        extra.append(gate)
    raise AssertionError(f"could not make {worker_id} busy")


# ---- state and ordering --------------------------------------------------------------------------
async def test_session_state_persists_across_calls(layer: str) -> None:
    """Calls of one session go to one worker, whose state for it survives between calls (by
    handle or by key); another session has its own state. SessionBound once per session."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            s = pool.session("a")
            assert where(s) == (None, 0, None)
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            assert bound is not None
            assert await s.call(T.remember, 2) == [1, 2]
            assert await pool.call(T.remember, 3, session="a") == [1, 2, 3]
            assert await s.call(T.session_calls) == 4
            assert await pool.call(T.remember, "x", session="b") == ["x"]
            assert s.worker_id == bound and s.rebinds == 0 and s.lost is None
            assert pool.statistics().sessions == 2
            first, second = rec.of(SessionBound)
            assert (first.key, first.worker_id) == ("a", bound)
            assert second.key == "b"


async def test_calls_of_a_session_run_in_order_one_at_a_time(layer: str) -> None:
    """Concurrent calls of one session wait behind the one in hand (counted as queued) and run
    one at a time in the order they were made, on the session's worker, even though the worker
    could take more (pipeline_depth=2) and another worker is free."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=2) as pool:
            in_hand: set[int] = set()
            peak = 0

            def track(event: Event) -> None:
                nonlocal peak
                if isinstance(event, CallDispatched):
                    in_hand.add(event.call)
                    peak = max(peak, len(in_hand))
                elif isinstance(event, CallCompleted | CallFailed):
                    in_hand.discard(event.call)

            pool.subscribe(track)
            s = pool.session(7)
            gate = new_gate("first")
            outcomes = [Outcome() for _ in range(5)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(outcomes[0].capture, s.call, gated_remember, "first", 0)
                await gate.entered.wait()
                for i in range(1, 5):
                    tg.start_soon(outcomes[i].capture, s.call, T.remember, i)
                    await wait_until(lambda i=i: pool.statistics().queued == i, pool=pool)  # type: ignore[misc]
                stats = pool.statistics()
                assert (stats.in_flight, stats.queued) == (1, 4)
                gate.release.set()
            assert [o.value for o in outcomes] == [list(range(i + 1)) for i in range(5)]
            assert peak == 1
            assert s.rebinds == 0


async def test_distinct_sessions_spread_over_workers(layer: str) -> None:
    """New sessions are bound to the least loaded worker: four sessions started while the
    earlier ones hold their workers end up two per worker."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=2) as pool:
            sessions = [pool.session(f"s{i}") for i in range(4)]
            gates = [new_gate(f"g{i}") for i in range(4)]
            async with anyio.create_task_group() as tg:
                for i, s in enumerate(sessions):
                    tg.start_soon(s.call, gated_remember, f"g{i}", i)
                    await wait_until(lambda i=i: pool.statistics().in_flight == i + 1, pool=pool)  # type: ignore[misc]
                for gate in gates:
                    gate.release.set()
            placement = collections.Counter(s.worker_id for s in sessions)
            assert sorted(placement.values()) == [2, 2]
            assert set(placement) == {w.id for w in pool.workers()}


# ---- the bound worker is busy --------------------------------------------------------------------
async def test_hint_session_moves_when_its_worker_is_busy(layer: str) -> None:
    """hint: the session's worker is full and another has room, so the call goes there: the
    session is rebound (rebinds + 1, SessionRebound reason "busy"), its state starts afresh and
    the old worker is told to drop it."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=1) as pool:
            rec = Recorder(pool)
            s = pool.session("h", mode="hint")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            async with anyio.create_task_group() as tg:
                held = await occupy(pool, tg, bound)
                assert await s.call(T.remember, 2) == [2]
                held.release.set()
            second = other_worker(pool, bound)
            assert s.rebinds == 1 and s.worker_id == second
            (moved,) = rec.of(SessionRebound)
            assert (moved.key, moved.from_worker, moved.worker_id, moved.reason) == (
                "h",
                bound,
                second,
                "busy",
            )
            assert await s.call(T.remember, 3) == [2, 3]
            # Moving back finds fresh state: the first worker dropped the session when it moved.
            async with anyio.create_task_group() as tg:
                held = await occupy(pool, tg, second)
                assert await s.call(T.remember, 4) == [4]
                held.release.set()
            assert (s.worker_id, s.rebinds) == (bound, 2)


async def test_strict_queue_session_waits_for_its_busy_worker(layer: str) -> None:
    """strict_queue: while the session's worker is full the call waits (queued), even with
    another worker free; it then runs there, with the session's state."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=1) as pool:
            s = pool.session("q", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            waiting = Outcome()
            async with anyio.create_task_group() as tg:
                held = await occupy(pool, tg, bound)
                tg.start_soon(waiting.capture, s.call, T.remember, 2)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="the call parked")
                await anyio.wait_all_tasks_blocked()
                assert not waiting.ended.is_set()
                assert all(not w.load for w in pool.workers() if w.id != bound)
                held.release.set()
            assert waiting.value == [1, 2]
            assert (s.worker_id, s.rebinds) == (bound, 0)


async def test_strict_fail_fast_session_is_unavailable_while_busy(layer: str) -> None:
    """strict_fail_fast: a call finding the session's worker full raises SessionUnavailable
    (reason "busy", phase QUEUED), as does a call made while the session has one in hand;
    neither waits. Later calls run on the same worker with the state intact."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=1) as pool:
            s = pool.session("f", mode="strict_fail_fast")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            async with anyio.create_task_group() as tg:
                held = await occupy(pool, tg, bound)
                with pytest.raises(SessionUnavailable) as info:
                    await s.call(T.remember, 2, idempotent=True)
                held.release.set()
            err = info.value
            assert (err.reason, err.key, err.phase, err.kind) == (
                "busy",
                "f",
                Phase.QUEUED,
                FailureKind.SESSION_UNAVAILABLE,
            )
            gate = new_gate("in-hand")
            first = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.capture, s.call, gated_remember, "in-hand", 3)
                await gate.entered.wait()
                with pytest.raises(SessionUnavailable) as info:
                    await s.call(T.remember, 4)
                assert info.value.reason == "busy"
                gate.release.set()
            assert first.value == [1, 3]
            assert (s.worker_id, s.rebinds) == (bound, 0)


# ---- the bound worker is gone --------------------------------------------------------------------
async def test_hint_session_rebinds_with_fresh_state_when_its_worker_crashes(layer: str) -> None:
    """hint: the session's worker crashed (SessionStateLost reason "crashed"); the next call is
    served by another worker with fresh state (rebinds + 1, SessionRebound reason
    "worker_gone")."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            s = pool.session("h")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            await FaultInjector(pool).crash(bound)
            (lost,) = rec.of(SessionStateLost)
            assert (lost.key, lost.worker_id, lost.reason) == ("h", bound, "crashed")
            assert where(s) == (None, 0, "crashed")
            assert await s.call(T.remember, 2) == [2]
            assert s.worker_id not in (None, bound)
            assert where(s) == (s.worker_id, 1, None)
            (moved,) = rec.of(SessionRebound)
            assert moved.reason == "worker_gone" and moved.worker_id == s.worker_id
            assert moved.from_worker in (None, bound)


async def test_hint_session_calls_waiting_behind_a_crash_move_to_another_worker(layer: str) -> None:
    """hint: when the session's worker dies under its running call (not idempotent: that call
    fails with WorkerCrashed), the call waiting behind it runs on another worker, with fresh
    state."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            s = pool.session("w", mode="hint")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            gate = new_gate("running")
            running, waiting = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(running.capture, s.call, gated_remember, "running", 2)
                await gate.entered.wait()
                tg.start_soon(waiting.capture, s.call, T.remember, 3)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool)
                await FaultInjector(pool).crash(bound)
            assert isinstance(running.error, WorkerCrashed)
            assert waiting.value == [3], waiting.error
            assert s.worker_id not in (None, bound)
            assert where(s)[1:] == (1, None)


async def test_hint_session_call_is_retried_with_the_session_moved(layer: str) -> None:
    """hint: an idempotent session call whose worker crashes under it is retried on another
    worker, the session moving with it (fresh state there)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            s = pool.session("r")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            gate = new_gate("crash-me")
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: result.capture(s.call, gated_remember, "crash-me", 2, idempotent=True))
                await gate.entered.wait()
                await FaultInjector(pool).crash(bound)
                gate.release.set()
            assert result.value == [2], result.error
            (retried,) = rec.of(CallRetried)
            assert (retried.kind, retried.worker_id) == (FailureKind.CRASHED, bound)
            assert s.rebinds == 1 and s.worker_id != bound


@pytest.mark.parametrize("mode", ["strict_queue", "strict_fail_fast"])
async def test_strict_session_is_lost_when_its_worker_crashes(layer: str, mode: str) -> None:
    """Strict modes: when the session's worker crashes, the running call fails with its own
    error (WorkerCrashed, not retried even if idempotent), the calls waiting behind it and
    every later call raise SessionLost (reason "crashed"), until the session is ended; a new
    session with the key then starts afresh."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            s = pool.session("k", mode=mode)  # type: ignore[arg-type]
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            gate = new_gate("running")
            running, waiting = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: running.capture(s.call, gated_remember, "running", 2, idempotent=True))
                await gate.entered.wait()
                if mode == "strict_queue":
                    tg.start_soon(waiting.capture, s.call, T.remember, 3)
                    await wait_until(lambda: pool.statistics().queued == 1, pool=pool)
                await FaultInjector(pool).crash(bound)
            assert isinstance(running.error, WorkerCrashed), running.error
            assert rec.of(CallRetried) == []
            if mode == "strict_queue":
                assert isinstance(waiting.error, SessionLost)
                assert waiting.error.reason == "crashed"
            assert where(s)[2] == "crashed"
            for attempt in (s.call(T.remember, 4), pool.call(T.remember, 4, session="k")):
                with pytest.raises(SessionLost) as info:
                    await attempt
                assert (info.value.reason, info.value.key) == ("crashed", "k")
                assert info.value.kind is FailureKind.SESSION_LOST and info.value.phase is Phase.QUEUED
            pool.end_session("k")
            assert await s.call(T.remember, 5) == [5]
            assert where(s)[1:] == (0, None)


async def test_strict_queue_call_parked_for_a_worker_that_dies_is_lost(layer: str) -> None:
    """strict_queue: a call waiting for its session's busy worker fails with SessionLost
    (reason "crashed") when that worker dies, instead of waiting forever or running elsewhere."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=1) as pool:
            s = pool.session("p", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            parked = Outcome()
            async with anyio.create_task_group() as tg:
                await occupy(pool, tg, bound)
                tg.start_soon(parked.capture, s.call, T.remember, 2)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="the call parked")
                await FaultInjector(pool).crash(bound)
            assert isinstance(parked.error, SessionLost), parked.error
            assert parked.error.reason == "crashed"
            assert pool.statistics().queued == 0


async def test_strict_session_lost_to_a_stopped_worker_says_what_happened_and_what_to_do(
    layer: str,
) -> None:
    """A strict session's running call is cancelled, so the pool stops its worker (reason
    "stopped"): the waiting call and the next one raise SessionLost whose message says why the
    worker went and what to do (end the session, start a new one with empty state); ending the
    session does start it afresh."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            s = pool.session("k", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            gate = new_gate("running")
            running, waiting = Outcome(), Outcome()
            scope = anyio.CancelScope()

            async def cancelled_caller() -> None:
                with scope:
                    await running.capture(s.call, gated_remember, "running", 2)

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled_caller)
                await gate.entered.wait()
                tg.start_soon(waiting.capture, s.call, T.remember, 3)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool)
                scope.cancel()  # the call is running: its worker is killed to stop it
            assert scope.cancelled_caught
            assert where(s)[2] == "stopped"
            with pytest.raises(SessionLost) as info:
                await s.call(T.remember, 4)
            for err in (waiting.error, info.value):
                assert isinstance(err, SessionLost), err
                assert (err.reason, err.key) == ("stopped", "k")
                message = str(err)
                assert "session 'k': its worker" in message and "(stopped), and its state with it" in message
                stopped = "The pool stopped the worker to end a call on it that timed out or was cancelled."
                assert stopped in message
                assert "calls raise SessionLost until it is ended" in message
                assert "end it with pool.end_session('k') (or close its handle)" in message
                assert "start a new session, which starts with empty state" in message
            pool.end_session("k")
            assert await s.call(T.remember, 5) == [5]


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("crashed", "The worker process died"),
        ("unresponsive", "stopped answering heartbeats"),
        ("protocol", "sent invalid frames"),
        ("resource_exhausted", "recycle.memory_limit"),
        ("recycled", "recycle.session_drain_timeout passed"),
        ("stopped", "timed out or was cancelled"),
        ("expired", "This handle stays lost: open a new session with pool.session('k')"),
    ],
)
async def test_every_session_lost_reason_says_what_happened_and_what_to_do(reason: str, says: str) -> None:
    """Each documented SessionLost.reason has its own explanation, and every message ends with
    what the caller can do about it."""
    message = str(SessionLost("its state is gone", key="k", reason=reason))
    assert says in message
    if reason == "expired":
        assert message.endswith("which starts with empty state")
    else:
        assert message.endswith(
            "end it with pool.end_session('k') (or close its handle) and start a new session, "
            "which starts with empty state"
        )


async def test_cancelled_session_call_leaves_the_others_in_order(layer: str) -> None:
    """Cancelling a session call that waits behind the one in hand removes it (it never runs);
    the calls behind it still run, in order, on the session's worker."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            s = pool.session("c")
            gate = new_gate("head")
            head, last = Outcome(), Outcome()
            scope = anyio.CancelScope()

            async def cancelled_caller() -> None:
                with scope:
                    await s.call(T.remember, "never")

            async with anyio.create_task_group() as tg:
                tg.start_soon(head.capture, s.call, gated_remember, "head", "head")
                await gate.entered.wait()
                tg.start_soon(cancelled_caller)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool)
                tg.start_soon(last.capture, s.call, T.remember, "last")
                await wait_until(lambda: pool.statistics().queued == 2, pool=pool)
                scope.cancel()
                await wait_until(
                    lambda: pool.statistics().queued == 1, pool=pool, describe="the call withdrawn"
                )
                gate.release.set()
            assert scope.cancelled_caught
            assert (head.value, last.value) == (["head"], ["head", "last"])
            assert await s.call(T.remember, "after") == ["head", "last", "after"]


async def test_cancelled_parked_strict_queue_call_is_withdrawn(layer: str) -> None:
    """strict_queue: cancelling a call parked for its session's busy worker withdraws it (it
    never runs); the session's next call runs on that worker with the state intact."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=1) as pool:
            s = pool.session("p", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            scope = anyio.CancelScope()

            async def parked_caller() -> None:
                with scope:
                    await s.call(T.remember, "never")

            async with anyio.create_task_group() as tg:
                held = await occupy(pool, tg, bound)
                tg.start_soon(parked_caller)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="the call parked")
                scope.cancel()
                await wait_until(
                    lambda: pool.statistics().queued == 0, pool=pool, describe="the call withdrawn"
                )
                held.release.set()
            assert scope.cancelled_caught
            assert await s.call(T.remember, 3) == [1, 3]
            assert where(s) == (bound, 0, None)


async def test_session_call_timing_out_behind_another_lets_the_next_go(layer: str) -> None:
    """A session call whose deadline passes while it waits behind the one in hand raises
    QueueTimeout and never runs; the session carries on with its next call."""
    from poolkit import QueueTimeout

    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            s = pool.session("t")
            gate = new_gate("head")
            head = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(head.capture, s.call, gated_remember, "head", 1)
                await gate.entered.wait()
                with pytest.raises(QueueTimeout):
                    await s.call(T.remember, "late", timeout=0.02)
                assert pool.statistics().queued == 0
                gate.release.set()
            assert head.value == [1]
            assert await s.call(T.remember, 2) == [1, 2]


async def test_session_refused_for_max_per_worker_is_not_kept(layer: str) -> None:
    """A session refused because every worker holds max_per_worker sessions leaves no live
    session behind: it is not counted, and it does not use up max_sessions (a later refusal
    still names max_per_worker, the real limit)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, min_workers=1, sessions={"max_per_worker": 1, "max_sessions": 2}) as pool:
            assert await pool.call(T.remember, 1, session="a") == [1]
            for key in ("b", "c"):
                with pytest.raises(SessionUnavailable) as info:
                    await pool.call(T.remember, 1, session=key)
                assert info.value.reason == "limit"
                assert "max_per_worker" in str(info.value), str(info.value)
                assert pool.statistics().sessions == 1


# ---- TTL -----------------------------------------------------------------------------------------
async def test_idle_session_expires_after_ttl_on_the_clock(layer: str) -> None:
    """A session idle for sessions.ttl (on the pool's clock) expires: SessionExpired (with how
    long it sat idle), the worker drops its state, and a strict handle on it then raises SessionLost
    reason "expired"."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, clock=clock, min_workers=1, sessions={"ttl": 30.0}) as pool:
            rec = Recorder(pool)
            s = pool.session("t", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            bound = s.worker_id
            await tick(pool, clock, 29.0)
            assert pool.statistics().sessions == 1 and rec.of(SessionExpired) == []
            assert await s.call(T.remember, 2) == [1, 2]  # used again: the TTL starts over
            await tick(pool, clock, 29.0)
            assert pool.statistics().sessions == 1
            await tick(pool, clock, 1.0)
            await wait_until(
                lambda: pool.statistics().sessions == 0, pool=pool, describe="the session expired"
            )
            (ended,) = rec.of(SessionExpired)
            assert (ended.key, ended.worker_id, ended.idle) == ("t", bound, 30.0)
            assert rec.of(SessionEnded) == []  # one record per step: expiry is not also an "end"
            assert s.lost == "expired"
            with pytest.raises(SessionLost) as info:
                await s.call(T.remember, 3)
            assert info.value.reason == "expired"
            # The worker dropped the state: the key starts a new, empty session (on the same,
            # only, worker).
            assert await pool.call(T.remember, 4, session="t") == [4]


async def test_hint_handle_of_an_expired_session_starts_a_new_one(layer: str) -> None:
    """A hint handle whose session expired carries on with a new session (rebinds + 1, state
    fresh) instead of failing."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, clock=clock, min_workers=1, sessions={"ttl": 5.0}) as pool:
            s = pool.session("t", mode="hint")
            assert await s.call(T.remember, 1) == [1]
            await tick(pool, clock, 5.0)
            await wait_until(
                lambda: pool.statistics().sessions == 0, pool=pool, describe="the session expired"
            )
            assert await s.call(T.remember, 2) == [2]
            assert s.rebinds == 1 and s.lost is None
            assert pool.statistics().sessions == 1


async def test_session_ttl_none_never_expires(layer: str) -> None:
    """sessions.ttl=None: sessions live until ended, however long they are idle."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, clock=clock, min_workers=1, sessions={"ttl": None}) as pool:
            s = pool.session("forever")
            assert await s.call(T.remember, 1) == [1]
            await tick(pool, clock, 10_000.0)
            assert await s.call(T.remember, 2) == [1, 2]


async def test_strict_handle_of_an_expired_session_stays_lost_when_the_key_is_reused(layer: str) -> None:
    """A strict handle whose session expired raises SessionLost(reason "expired") even after
    another caller started a new session with the same key: its own state is gone either way."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, clock=clock, min_workers=1, sessions={"ttl": 5.0}) as pool:
            s = pool.session("t", mode="strict_queue")
            assert await s.call(T.remember, 1) == [1]
            await tick(pool, clock, 5.0)
            await wait_until(
                lambda: pool.statistics().sessions == 0, pool=pool, describe="the session expired"
            )
            assert await pool.call(T.remember, 9, session="t") == [9]  # someone else reuses the key
            with pytest.raises(SessionLost):
                await s.call(T.remember, 2)


# ---- ending sessions -----------------------------------------------------------------------------
async def test_closing_the_handle_ends_the_session(layer: str) -> None:
    """Leaving ``async with pool.session(...)`` ends the session (SessionEnded reason
    "closed"): the worker drops its state at once, the handle refuses further calls, and the
    key starts a new, empty session."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, min_workers=1) as pool:
            rec = Recorder(pool)
            async with pool.session("c") as s:
                assert await s.call(T.remember, 1) == [1]
                bound = s.worker_id
            (ended,) = rec.of(SessionEnded)
            assert (ended.key, ended.worker_id, ended.reason) == ("c", bound, "closed")
            assert pool.statistics().sessions == 0
            with pytest.raises(RuntimeError, match="closed"):
                await s.call(T.remember, 2)
            await s.aclose()  # twice is fine
            assert await pool.call(T.remember, 3, session="c") == [3]
            assert await pool.call(T.session_calls, session="c") == 2


async def test_end_session_waits_for_the_calls_in_hand(layer: str) -> None:
    """pool.end_session(key) while a call of the session runs ends it after that call; an
    unknown key is ignored."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, min_workers=1) as pool:
            rec = Recorder(pool)
            gate = new_gate("in-hand")
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: result.capture(pool.call, gated_remember, "in-hand", 1, session="e"))
                await gate.entered.wait()
                pool.end_session("e")
                pool.end_session("no-such-session")
                assert pool.statistics().sessions == 1 and rec.of(SessionEnded) == []
                gate.release.set()
            assert result.value == [1]
            (ended,) = rec.of(SessionEnded)
            assert (ended.key, ended.reason) == ("e", "closed")
            assert pool.statistics().sessions == 0
            assert await pool.call(T.remember, 2, session="e") == [2]


async def test_closing_the_pool_leaves_no_session_counted(layer: str) -> None:
    """Closing the pool ends every session with its workers: statistics().sessions reads 0
    afterwards (it counted a live and a lost session before), and a handle's call raises
    PoolClosed."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            live = pool.session("live")
            assert await live.call(T.remember, 1) == [1]
            lost = pool.session("lost", mode="strict_queue")
            assert await lost.call(T.remember, 1) == [1]
            assert lost.worker_id != live.worker_id  # sessions spread over the two workers
            await FaultInjector(pool).crash(lost.worker_id)
            await wait_until(lambda: lost.lost == "crashed", pool=pool, describe="the session lost")
            assert pool.statistics().sessions == 2
        assert pool.statistics().sessions == 0
        with pytest.raises(PoolClosed):
            await live.call(T.remember, 2)
        await live.aclose()  # ending a session of a closed pool is harmless


# ---- limits and keys -----------------------------------------------------------------------------
async def test_max_sessions_refuses_another_session(layer: str) -> None:
    """Past sessions.max_sessions live sessions, a call opening another raises
    SessionUnavailable reason "limit" at once; ending one makes room."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, sessions={"max_sessions": 2}) as pool:
            assert await pool.call(T.remember, 1, session="a") == [1]
            assert await pool.call(T.remember, 1, session="b") == [1]
            with pytest.raises(SessionUnavailable) as info:
                await pool.call(T.remember, 1, session="c")
            assert (info.value.reason, info.value.key, info.value.phase) == ("limit", "c", Phase.QUEUED)
            assert await pool.call(T.remember, 2, session="a") == [1, 2]  # existing ones go on
            pool.end_session("a")
            assert await pool.call(T.remember, 1, session="c") == [1]


async def test_max_per_worker_spreads_sessions_then_refuses(layer: str) -> None:
    """sessions.max_per_worker: a new session skips a worker that holds its share even if that
    worker is the least loaded; when every worker (up to max_workers) is full, the call raises
    SessionUnavailable reason "limit"."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer, pipeline_depth=2, sessions={"max_per_worker": 1}) as pool:
            a = pool.session("a")
            assert await a.call(T.remember, 1) == [1]
            first = a.worker_id
            second = other_worker(pool, first)
            gate = new_gate("load")
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.call, wait_for, "load")
                await gate.entered.wait()
                loads = {w.id: w.load for w in pool.workers()}
                assert loads == {first: 0, second: 1}, "the held call must load the other worker"
                b = pool.session("b")
                b_result = Outcome()
                tg.start_soon(b_result.capture, b.call, T.remember, 1)
                await wait_until(lambda: b.worker_id is not None, pool=pool, describe="b bound")
                assert b.worker_id == second  # the busier worker, but it has room for a session
                with pytest.raises(SessionUnavailable) as info:
                    await pool.call(T.remember, 1, session="c")
                assert info.value.reason == "limit"
                gate.release.set()
            assert b_result.value == [1]
            pool.end_session("a")
            c = pool.session("c")
            assert await c.call(T.remember, 1) == [1]
            assert c.worker_id == first


@pytest.mark.parametrize("bad", [1.5, b"key", None, True, ("a",), ["a"]], ids=repr)
async def test_session_keys_must_be_str_or_int(bad: Any) -> None:
    """Session keys travel in frames, so only str and int are accepted (bool too is refused):
    anything else raises TypeError in the caller, from pool.session and pool.call alike."""
    with anyio.fail_after(scaled(10)):
        async with make_pool("mock", min_workers=1) as pool:
            if bad is not None:
                with pytest.raises(TypeError, match="str or an int"):
                    await pool.call(T.remember, 1, session=bad)
            with pytest.raises(TypeError, match="str or an int"):
                pool.session(bad)
            assert pool.statistics().sessions == 0
            assert await pool.call(T.remember, 1, session=0) == [1]
            assert await pool.call(T.remember, 1, session="") == [1]


async def test_session_mode_and_handle_are_checked() -> None:
    """An unknown affinity mode is a ValueError; a handle of another pool is refused."""
    with anyio.fail_after(scaled(10)):
        async with make_pool("mock", min_workers=1) as pool, make_pool("mock", min_workers=1) as other:
            with pytest.raises(ValueError, match="mode"):
                pool.session("k", mode="sticky")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="another pool"):
                await pool.call(T.remember, 1, session=other.session("k"))
