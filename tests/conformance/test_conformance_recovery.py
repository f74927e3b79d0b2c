"""Recovery, health, sessions and recycling, written once and proven on every layer.

The same tests as a downstream project would write them: the public harness
(``poolkit_pool_factory``), layer-agnostic targets and :class:`~poolkit.testing.FaultInjector`.
Each test runs on the mock, bridge and subprocess layers (and on asyncio and trio).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import anyio
import pytest

from poolkit import (
    CallCompleted,
    CallDispatched,
    CallRetried,
    CircuitOpen,
    Event,
    FailureKind,
    Phase,
    Pool,
    SessionLost,
    SessionRebound,
    WorkerCrashed,
    WorkerExited,
    WorkerRecycled,
    WorkerUnresponsive,
)
from poolkit.testing import FaultInjector, PoolFactory, ensure_pool_ready, scaled, targets, wait_until

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Event)

#: Real workers import the targets module at startup when heartbeats are fast: importing the
#: harness in a first call runs C code that holds the GIL for stretches, which on a loaded
#: machine can outlast a sub-second heartbeat bound (the other layers ignore ``preload``).
WARM = {"preload": ("poolkit.testing.targets",)}


class _Events:
    """Everything a pool emits, in order."""

    def __init__(self, pool: Pool) -> None:
        self.all: list[Event] = []
        pool.subscribe(self.all.append)

    def of(self, kind: type[E], where: Callable[[E], bool] = lambda e: True) -> list[E]:
        return [e for e in self.all if isinstance(e, kind) and where(e)]


def _ids(pool: Pool) -> set[str]:
    return {w.id for w in pool.workers()}


# ---- retries -----------------------------------------------------------------------------------------
async def test_idempotent_call_is_retried_on_other_workers_after_crashes(
    poolkit_pool_factory: PoolFactory,
) -> None:
    """An idempotent call whose worker dies running it is retried on another worker
    (CallRetried, kind crashed) until retry.max_attempts; a target that always crashes then
    fails with WorkerCrashed after three attempts on three different workers."""
    async with poolkit_pool_factory(
        min_workers=2, retry={"max_attempts": 3, "backoff_initial": 0.01}
    ) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(30)):
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(targets.crash, idempotent=True)
            assert info.value.signal == 9 and info.value.cause == "killed"
            retried = events.of(CallRetried)
            assert [(e.attempt, e.kind) for e in retried] == [
                (2, FailureKind.CRASHED),
                (3, FailureKind.CRASHED),
            ]
            tried = [e.worker_id for e in events.of(CallDispatched)]
            assert len(tried) == 3 and len(set(tried)) == 3
            assert [e.worker_id for e in retried] == tried[:2]
            stats = pool.statistics()
            assert (stats.retries, stats.failed, stats.worker_crashes) == (2, 1, 3)
            await ensure_pool_ready(pool)
            assert await pool.call(targets.echo, "after") == "after"


async def test_idempotent_call_survives_its_worker_crashing(poolkit_pool_factory: PoolFactory) -> None:
    """An idempotent call whose worker is killed while it runs succeeds on another worker:
    the caller sees only the value; CallRetried names the dead worker."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        events = _Events(pool)
        result: list[float] = []

        async def caller() -> None:
            result.append(await pool.call(targets.sleep, 0.3, idempotent=True))

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool, describe="call running")
                (victim,) = [w for w in pool.workers() if w.load]
                await FaultInjector(pool).crash(victim)
        assert result == [0.3]
        (retried,) = events.of(CallRetried)
        assert retried.worker_id == victim.id and retried.kind is FailureKind.CRASHED
        (done,) = events.of(CallCompleted)
        assert done.worker_id not in (None, victim.id)
        assert pool.statistics().failed == 0


async def test_call_that_may_have_run_is_not_retried_unless_idempotent(
    poolkit_pool_factory: PoolFactory,
) -> None:
    """A crash while the call runs fails a call not marked idempotent at once (WorkerCrashed,
    RUNNING): it may have had effects, so it is not run again."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(30)):
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(targets.crash)
            assert info.value.phase is Phase.RUNNING and not info.value.retry_safe
            assert not events.of(CallRetried) and len(events.of(CallDispatched)) == 1
            stats = pool.statistics()
            assert (stats.retries, stats.failed, stats.worker_crashes) == (0, 1, 1)
            await ensure_pool_ready(pool)


# ---- health ------------------------------------------------------------------------------------------
async def test_frozen_worker_is_found_unresponsive_and_replaced(poolkit_pool_factory: PoolFactory) -> None:
    """A worker that freezes while running a call (SIGSTOP, or a fake worker that stops
    answering) answers no heartbeat: the pool kills it, the call fails with
    WorkerUnresponsive (RUNNING), and a replacement serves."""
    async with poolkit_pool_factory(
        min_workers=1, heartbeat_interval=0.2, heartbeat_misses=2, kill_grace=0.2, worker=WARM
    ) as pool:
        events = _Events(pool)
        (first,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            with pytest.raises(WorkerUnresponsive) as info:
                await pool.call(targets.freeze)
            err = info.value
            assert err.phase is Phase.RUNNING and err.worker_id == first.id
            assert err.interval == 0.2 and err.silent_for > 0.4
            await wait_until(lambda: first.id not in _ids(pool), pool=pool, describe="frozen worker gone")
            await ensure_pool_ready(pool)
            (exited,) = events.of(WorkerExited, lambda e: e.worker_id == first.id)
            assert exited.failure is FailureKind.UNRESPONSIVE
            assert pool.statistics().unresponsive == 1
            assert await pool.call(targets.echo, "after") == "after"


# ---- sessions ----------------------------------------------------------------------------------------
async def test_session_state_persists_between_calls(poolkit_pool_factory: PoolFactory) -> None:
    """A session's calls run on one worker, which keeps the session's state between them;
    each session has its own state."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        with anyio.fail_after(scaled(20)):
            async with pool.session("a") as a, pool.session("b") as b:
                assert await a.call(targets.remember, 1) == [1]
                assert await b.call(targets.remember, "x") == ["x"]
                bound = a.worker_id
                assert await a.call(targets.remember, 2) == [1, 2]
                assert await pool.call(targets.echo, 0) == 0
                assert await a.call(targets.remember, 3) == [1, 2, 3]
                assert await a.call(targets.session_calls) == 4
                assert await b.call(targets.session_calls) == 2
                assert a.worker_id == bound and a.rebinds == 0


async def test_hint_session_rebinds_after_its_worker_crashes(poolkit_pool_factory: PoolFactory) -> None:
    """hint: once the session's worker is gone, the next call moves the session to a live
    worker (SessionRebound, worker_gone; rebinds == 1) and its state starts fresh."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        events = _Events(pool)
        s = pool.session("h", mode="hint")
        with anyio.fail_after(scaled(20)):
            assert await s.call(targets.remember, 1) == [1]
            old = s.worker_id
            assert old is not None
            await FaultInjector(pool).crash(old)
            assert await s.call(targets.remember, 2) == [2]
            assert s.rebinds == 1 and s.worker_id not in (None, old)
            (moved,) = events.of(SessionRebound)
            assert moved.reason == "worker_gone" and moved.worker_id == s.worker_id
            assert await s.call(targets.remember, 3) == [2, 3]
            await s.aclose()


@pytest.mark.parametrize("mode", ["strict_queue", "strict_fail_fast"])
async def test_strict_session_is_lost_after_its_worker_crashes(
    poolkit_pool_factory: PoolFactory, mode: Literal["hint", "strict_queue", "strict_fail_fast"]
) -> None:
    """strict modes: once the session's worker is gone, every call of the session raises
    SessionLost (reason crashed) rather than run without its state; ending the session lets
    the key start a new, empty one."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        s = pool.session("q", mode=mode)
        with anyio.fail_after(scaled(20)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            await FaultInjector(pool).crash(s.worker_id)
            for value in (2, 3):
                with pytest.raises(SessionLost) as info:
                    await s.call(targets.remember, value)
                assert info.value.reason == "crashed" and info.value.key == "q"
                assert info.value.phase is Phase.QUEUED
            assert s.lost == "crashed"
            await s.aclose()
            assert await pool.call(targets.remember, 4, session="q") == [4]


# ---- recycling ---------------------------------------------------------------------------------------
async def test_max_calls_recycles_the_worker_without_failing_calls(poolkit_pool_factory: PoolFactory) -> None:
    """recycle.max_calls=3 (no jitter): every three calls the worker is retired and a new one
    serves the next; no call fails."""
    async with poolkit_pool_factory(min_workers=1, recycle={"max_calls": 3, "jitter": 0}) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(30)):
            for n in range(7):
                assert await pool.call(targets.echo, n) == n
        served = [e.worker_id for e in events.of(CallCompleted)]
        assert served[0] == served[1] == served[2] != served[3] == served[4] == served[5] != served[6]
        assert len(set(served)) == 3
        recycled = events.of(WorkerRecycled)
        assert [(e.worker_id, e.reason) for e in recycled] == [(served[0], "calls"), (served[3], "calls")]
        stats = pool.statistics()
        assert stats.failed == 0 and stats.recycled == 2 and stats.worker_crashes == 0


async def test_recycle_all_replaces_every_worker_without_failing_calls(
    poolkit_pool_factory: PoolFactory,
) -> None:
    """recycle_all() with calls in flight: the running calls finish on their (retiring)
    workers, every worker is replaced by one of the next generation, and no call fails."""
    async with poolkit_pool_factory(min_workers=2, pipeline_depth=2) as pool:
        events = _Events(pool)
        old = _ids(pool)
        results: list[float] = []

        async def caller() -> None:
            results.append(await pool.call(targets.sleep, 0.3))

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().in_flight == 4, pool=pool, describe="4 calls sent")
                assert pool.recycle_all() == 1
                tg.start_soon(caller)  # sent after: waits for a new worker
            assert results == [0.3] * 5
            await wait_until(lambda: not _ids(pool) & old, pool=pool, describe="every old worker gone")
            await ensure_pool_ready(pool)
            assert await pool.call(targets.echo, "new") == "new"
        served = {e.call: e.worker_id for e in events.of(CallCompleted)}
        first = [e.call for e in events.of(CallDispatched)][:4]  # the four sent before recycle_all()
        assert {served[call] for call in first} == old
        assert sum(worker not in old for worker in served.values()) == 2  # the fifth call, and "new"
        assert sorted(e.reason for e in events.of(WorkerRecycled)) == ["generation", "generation"]
        stats = pool.statistics()
        assert stats.failed == 0 and stats.generation == 1 and stats.recycled == 2


# ---- circuit breaker ---------------------------------------------------------------------------------
async def test_target_breaker_opens_after_repeated_crashes(poolkit_pool_factory: PoolFactory) -> None:
    """breaker.failure_threshold=3: after three crashes of one target (a good call between
    each, so the pool's own breaker stays closed), that target's calls fail fast with
    CircuitOpen (QUEUED: no worker is harmed) while other targets are served."""
    name = "poolkit.testing.targets:crash"
    async with poolkit_pool_factory(
        min_workers=2, retry={"max_attempts": 1}, breaker={"failure_threshold": 3, "reset_timeout": 600}
    ) as pool:
        with anyio.fail_after(scaled(30)):
            for _ in range(3):
                with pytest.raises(WorkerCrashed):
                    await pool.call(targets.crash)
                assert await pool.call(targets.echo, "ok") == "ok"
            for _ in range(2):
                with pytest.raises(CircuitOpen) as info:
                    await pool.call(targets.crash)
                err = info.value
                assert err.scope == name and err.failures == 3 and err.phase is Phase.QUEUED
                assert 0 < err.retry_after <= 600
            stats = pool.statistics()
            assert stats.open_breakers == (name,) and stats.breaker == "closed"
            assert stats.worker_crashes == 3
            assert await pool.call(targets.echo, "still served") == "still served"
