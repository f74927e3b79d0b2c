"""Recycling healthy workers and watching their health, through a real Pool on the mock layer
(the bridge where the heartbeat wire protocol matters) with a manual clock: max_calls (exact
and jittered), max_lifetime, max_memory, recycle_all under load, a retiring worker serving its
sessions until the drain timeout, idle scale-down, and heartbeats that spare busy workers but
kill frozen ones. No call may fail because a worker was recycled."""

from __future__ import annotations

import collections
import random
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from _util import scaled
from poolkit import (
    CallCompleted,
    Event,
    FailureKind,
    Pool,
    PoolClosed,
    SessionLost,
    SessionRebound,
    SessionStateLost,
    WorkerExited,
    WorkerRecycled,
    WorkerState,
)
from poolkit.testing import BridgeLauncher, ManualClock, MockScript, MockWorker, freezes, hangs, wait_until
from poolkit.testing import targets as T
from unit._session_targets import gated_remember
from unit._targets import RUNS, Outcome, new_gate, record, wait_for

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Event)
ECHO = "poolkit.testing.targets:echo"
MiB = 2**20


def make_pool(
    script: MockScript | None = None,
    *,
    clock: ManualClock | None = None,
    launcher: BridgeLauncher | None = None,
    **fields: Any,
) -> Pool:
    """Mock workers (bridge workers if ``launcher``), a manual clock and a seeded rng."""
    fields.setdefault("min_workers", 2)
    common: dict[str, Any] = {"clock": clock or ManualClock(), "rng": random.Random(0)}
    if launcher is not None:
        return Pool(launcher=launcher, **common, **fields)
    return Pool(worker_factory=(script or MockScript()).factory(), **common, **fields)


class Recorder:
    """Every event the pool emits, in order."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[Event] = []
        pool.subscribe(self.events.append)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def served(self) -> collections.Counter[str | None]:
        """Calls completed per worker."""
        return collections.Counter(e.worker_id for e in self.of(CallCompleted))


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


def no_call_failed(pool: Pool) -> bool:
    s = pool.statistics()
    return (s.failed, s.timed_out, s.cancelled) == (0, 0, 0)


def ready_ids(pool: Pool) -> set[str]:
    return {w.id for w in pool.statistics().workers if w.state.accepts_calls}


async def all_replaced(pool: Pool, old: set[str], count: int) -> None:
    """Wait until ``count`` workers are ready and none of them is one of ``old``."""
    await wait_until(
        lambda: (
            len(ready_ids(pool)) == count and not (ready_ids(pool) & old) and len(pool.workers()) == count
        ),
        pool=pool,
        describe="every old worker replaced",
    )


# ---- max_calls -----------------------------------------------------------------------------------
async def test_max_calls_without_jitter_recycles_after_exactly_max_calls() -> None:
    """recycle.max_calls with jitter 0: each worker serves exactly max_calls calls, then is
    retired (WorkerRecycled reason "calls", a clean expected exit) and replaced; no call fails."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=1, recycle={"max_calls": 3, "jitter": 0.0}) as pool:
            rec = Recorder(pool)
            for i in range(7):
                assert await pool.call(T.echo, i) == i
            assert sorted(rec.served().values()) == [1, 3, 3]
            recycled = rec.of(WorkerRecycled)
            assert [r.reason for r in recycled] == ["calls", "calls"]
            await wait_until(lambda: len(rec.of(WorkerExited)) == 2, pool=pool, describe="two clean exits")
            assert all(e.expected and e.failure is None for e in rec.of(WorkerExited))
            assert {r.worker_id for r in recycled} == {e.worker_id for e in rec.of(WorkerExited)}
            stats = pool.statistics()
            assert (stats.recycled, stats.worker_starts, stats.worker_crashes) == (2, 3, 0)
            assert no_call_failed(pool)


async def test_max_calls_with_jitter_stays_within_bounds() -> None:
    """With jitter j each worker's limit is max_calls lowered by up to j of it: every retired
    worker served between round(max_calls * (1 - j)) and max_calls calls, and the limits differ."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=1, recycle={"max_calls": 10, "jitter": 0.5}) as pool:
            rec = Recorder(pool)
            for i in range(80):
                assert await pool.call(T.echo, i) == i
            retired = {r.worker_id for r in rec.of(WorkerRecycled)}
            counts = [n for w, n in rec.served().items() if w in retired]
            assert len(counts) >= 8
            assert all(5 <= n <= 10 for n in counts), counts
            assert len(set(counts)) > 1, "the jitter should spread the limits"
            assert all(5 <= w.max_calls <= 10 for w in pool.workers())
            assert no_call_failed(pool)


# ---- max_lifetime --------------------------------------------------------------------------------
@pytest.mark.parametrize(("jitter", "earliest"), [(0.0, 100.0), (0.5, 50.0)])
async def test_max_lifetime_recycles_on_the_clock(jitter: float, earliest: float) -> None:
    """recycle.max_lifetime: a worker is retired once it has been ready that long on the pool's
    clock (less up to the jitter), never before; the replacements take over."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock, heartbeat_interval=None, recycle={"max_lifetime": 100.0, "jitter": jitter}
        ) as pool:
            rec = Recorder(pool)
            old = ready_ids(pool)
            await tick(pool, clock, earliest - 0.01)
            assert rec.of(WorkerRecycled) == [] and ready_ids(pool) == old
            await tick(pool, clock, 100.0 - earliest + 0.01)
            await wait_until(lambda: len(rec.of(WorkerRecycled)) == 2, pool=pool, describe="both recycled")
            assert {r.reason for r in rec.of(WorkerRecycled)} == {"lifetime"}
            await all_replaced(pool, old, 2)
            assert await pool.call(T.echo, 1) == 1
            assert no_call_failed(pool)


# ---- max_memory ----------------------------------------------------------------------------------
async def test_max_memory_recycles_gracefully() -> None:
    """recycle.max_memory: a heartbeat reply over it retires the worker gracefully: its running
    call finishes, new calls go to the others, it exits cleanly and is replaced; no call fails."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(clock=clock, heartbeat_interval=1.0, recycle={"max_memory": 100 * MiB}) as pool:
            rec = Recorder(pool)
            gate = new_gate("running")
            running = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(running.capture, pool.call, wait_for, "running", "done")
                await gate.entered.wait()
                (fat,) = [w for w in pool.workers() if w.load]
                assert isinstance(fat, MockWorker)
                fat.fake_rss = 150 * MiB
                await tick(pool, clock, 1.0)
                (recycled,) = rec.of(WorkerRecycled)
                assert (recycled.worker_id, recycled.reason) == (fat.id, "memory")
                assert fat.state is WorkerState.RETIRING
                for i in range(4):
                    assert await pool.call(record, f"meanwhile-{i}") == f"meanwhile-{i}"
                assert fat.id not in rec.served()
                gate.release.set()
            assert running.value == "done"
            await wait_until(lambda: fat.state.is_terminal, pool=pool, describe="the fat worker gone")
            (exited,) = rec.of(WorkerExited)
            assert exited.expected and exited.failure is None
            await wait_until(lambda: len(ready_ids(pool)) == 2, pool=pool, describe="a replacement")
            assert no_call_failed(pool) and pool.statistics().recycled == 1


# ---- recycle_all ---------------------------------------------------------------------------------
async def test_recycle_all_under_load_fails_no_call() -> None:
    """recycle_all() with calls running and queued: every worker finishes what it holds and is
    replaced (WorkerRecycled reason "generation"), the queued calls run on the replacements,
    the generation goes up, and not one call fails."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            rec = Recorder(pool)
            old = ready_ids(pool)
            gates = [new_gate(f"g{i}") for i in range(4)]
            held = [Outcome() for _ in gates]
            queued = [Outcome() for _ in range(6)]
            async with anyio.create_task_group() as tg:
                for i, outcome in enumerate(held):
                    tg.start_soon(outcome.capture, pool.call, wait_for, f"g{i}", i)
                await wait_until(lambda: pool.statistics().in_flight == 4, pool=pool, describe="4 in flight")
                for i, outcome in enumerate(queued):
                    tg.start_soon(outcome.capture, pool.call, record, f"q{i}")
                await wait_until(lambda: pool.statistics().queued == 6, pool=pool, describe="6 queued")
                assert pool.recycle_all() == 1
                assert {r.reason for r in rec.of(WorkerRecycled)} == {"generation"}
                assert {r.worker_id for r in rec.of(WorkerRecycled)} == old
                for gate in gates:
                    gate.release.set()
            assert [o.value for o in held] == [0, 1, 2, 3]
            assert [o.value for o in queued] == [f"q{i}" for i in range(6)]
            assert all(RUNS[f"q{i}"] == 1 for i in range(6))
            await all_replaced(pool, old, 2)
            stats = pool.statistics()
            assert (stats.generation, stats.recycled, stats.worker_crashes) == (1, 2, 0)
            assert no_call_failed(pool)
            assert all(e.expected and e.failure is None for e in rec.of(WorkerExited))
            assert all(w.generation == 1 for w in pool.workers())


async def test_recycle_all_twice_retires_workers_still_starting() -> None:
    """A second recycle_all() while the first one's replacements are still starting retires
    them as soon as they are ready: the pool ends with workers of the newest generation only.
    A closed pool refuses recycle_all()."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert pool.recycle_all() == 1
            assert pool.recycle_all() == 2
            await wait_until(
                lambda: (
                    len(pool.workers()) == 2
                    and all(w.generation == 2 and w.state.accepts_calls for w in pool.workers())
                ),
                pool=pool,
                describe="two workers of generation 2",
            )
            assert await pool.call(T.echo, "gen2") == "gen2"
            assert pool.statistics().generation == 2 and no_call_failed(pool)
        with pytest.raises(PoolClosed):
            pool.recycle_all()


# ---- a retiring worker and its sessions ----------------------------------------------------------
@pytest.mark.parametrize("mode", ["hint", "strict_queue"])
async def test_retiring_worker_serves_its_sessions_until_the_drain_timeout(mode: str) -> None:
    """A recycled worker holding a session keeps serving that session's calls (state intact)
    while new work goes to its replacement; at recycle.session_drain_timeout on the clock it
    stops and the session is lost (SessionStateLost reason "recycled"): strict modes then raise
    SessionLost("recycled"), hint rebinds with fresh state."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock, min_workers=1, heartbeat_interval=None, recycle={"session_drain_timeout": 30.0}
        ) as pool:
            rec = Recorder(pool)
            s = pool.session("s", mode=mode)  # type: ignore[arg-type]
            assert await s.call(T.remember, 1) == [1]
            (old,) = pool.workers()
            pool.recycle_all()
            assert old.state is WorkerState.RETIRING
            assert await s.call(T.remember, 2) == [1, 2]
            assert s.worker_id == old.id
            await wait_until(lambda: len(ready_ids(pool)) == 1, pool=pool, describe="the replacement")
            assert await pool.call(record, "new-work") == "new-work"
            assert rec.served()[old.id] == 2  # only the session's calls
            await tick(pool, clock, 29.0)
            assert old.state is WorkerState.RETIRING
            assert await s.call(T.remember, 3) == [1, 2, 3]
            await tick(pool, clock, 1.0)
            await wait_until(lambda: old.state.is_terminal, pool=pool, describe="the retired worker gone")
            (lost,) = rec.of(SessionStateLost)
            assert (lost.key, lost.worker_id, lost.reason) == ("s", old.id, "recycled")
            (exited,) = rec.of(WorkerExited)
            assert exited.expected and exited.failure is None
            if mode == "hint":
                assert await s.call(T.remember, 4) == [4]
                assert s.rebinds == 1
                assert rec.of(SessionRebound)[-1].reason == "worker_gone"
            else:
                with pytest.raises(SessionLost) as info:
                    await s.call(T.remember, 4)
                assert info.value.reason == "recycled"
            assert no_call_failed(pool) or mode != "hint"


async def test_retiring_worker_whose_last_session_ends_stops_at_once() -> None:
    """A retiring worker whose sessions have all ended does not wait for the drain timeout (or
    anything else on the clock): idle and without sessions, it is asked to stop at once."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock, min_workers=1, heartbeat_interval=None, recycle={"session_drain_timeout": 30.0}
        ) as pool:
            async with pool.session("short") as s:
                assert await s.call(T.remember, 1) == [1]
                (old,) = pool.workers()
                pool.recycle_all()
                assert old.state is WorkerState.RETIRING
                assert await s.call(T.remember, 2) == [1, 2]
                await tick(pool, clock, 0.0)  # the housekeeper is asleep until the drain deadline
                await anyio.wait_all_tasks_blocked()
                assert old.state is WorkerState.RETIRING
            await anyio.wait_all_tasks_blocked()
            assert old.state in (WorkerState.STOPPING, WorkerState.STOPPED)


# ---- idle scale-down -----------------------------------------------------------------------------
async def test_burst_scales_up_then_idle_workers_retire_after_idle_timeout() -> None:
    """A burst scales the pool up to max_workers; once idle for idle_timeout on the clock the
    workers above min_workers are retired (reason "idle", not counted as recycled) and a later
    burst scales up again."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock,
            min_workers=1,
            max_workers=3,
            pipeline_depth=1,
            idle_timeout=30.0,
            heartbeat_interval=None,
        ) as pool:
            rec = Recorder(pool)

            async def burst(tag: str) -> None:
                gates = [new_gate(f"{tag}{i}") for i in range(3)]
                async with anyio.create_task_group() as tg:
                    for i in range(3):
                        tg.start_soon(pool.call, wait_for, f"{tag}{i}")
                    await wait_until(
                        lambda: pool.statistics().in_flight == 3, pool=pool, describe="3 workers busy"
                    )
                    assert len(pool.workers()) == 3
                    for gate in gates:
                        gate.release.set()

            await burst("a")
            await tick(pool, clock, 29.0)
            assert len(pool.workers()) == 3 and rec.of(WorkerRecycled) == []
            await tick(pool, clock, 1.0)
            await wait_until(
                lambda: len(pool.workers()) == 1, pool=pool, describe="scaled down to min_workers"
            )
            assert [r.reason for r in rec.of(WorkerRecycled)] == ["idle", "idle"]
            assert pool.statistics().recycled == 0
            await burst("b")
            await tick(pool, clock, 30.0)
            await wait_until(lambda: len(pool.workers()) == 1, pool=pool, describe="scaled down again")
            assert no_call_failed(pool)


async def test_busy_workers_above_min_are_not_retired_as_idle() -> None:
    """Only idle workers are retired for idleness: one still running a call stays."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock,
            min_workers=1,
            max_workers=2,
            pipeline_depth=1,
            idle_timeout=10.0,
            heartbeat_interval=None,
        ) as pool:
            gates = [new_gate("long"), new_gate("short")]
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.call, wait_for, "long")
                tg.start_soon(pool.call, wait_for, "short")
                await wait_until(lambda: pool.statistics().in_flight == 2, pool=pool, describe="2 busy")
                gates[1].release.set()
                await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool, describe="1 busy")
                await tick(pool, clock, 10.0)
                await wait_until(lambda: len(pool.workers()) == 1, pool=pool, describe="the idle one retired")
                (left,) = pool.workers()
                assert left.load == 1
                gates[0].release.set()
            assert no_call_failed(pool)


async def test_workers_kept_for_their_sessions_retire_once_the_sessions_end() -> None:
    """A worker above min_workers is kept while it holds a session; once the session ends and
    the worker has been idle for idle_timeout, it is retired like any idle worker."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock,
            min_workers=1,
            max_workers=2,
            pipeline_depth=1,
            idle_timeout=10.0,
            heartbeat_interval=None,
        ) as pool:
            gates = [new_gate("a"), new_gate("b")]
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pool.call(gated_remember, "a", 1, session="A"))
                tg.start_soon(lambda: pool.call(gated_remember, "b", 1, session="B"))
                await wait_until(lambda: pool.statistics().in_flight == 2, pool=pool, describe="2 busy")
                for gate in gates:
                    gate.release.set()
            assert sorted(len(w.sessions) for w in pool.workers()) == [1, 1]
            await tick(pool, clock, 10.0)
            assert len(ready_ids(pool)) == 2  # both hold a session: kept
            pool.end_session("A")
            pool.end_session("B")
            await tick(pool, clock, 10.0)
            await anyio.wait_all_tasks_blocked()
            assert len(ready_ids(pool)) == 1


# ---- heartbeats ----------------------------------------------------------------------------------
async def test_heartbeats_spare_a_busy_worker_that_answers() -> None:
    """A worker running a long call but answering heartbeats (mock hangs()) is not killed, however
    many intervals pass."""
    script = MockScript()
    script.on(ECHO).respond(hangs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(script, clock=clock, heartbeat_interval=1.0, heartbeat_misses=2) as pool:
            rec = Recorder(pool)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pool.call, T.echo, 1)
                    await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool)
                    for _ in range(20):
                        await tick(pool, clock, 1.0)
                    assert rec.of(WorkerExited) == []
                    assert pool.statistics().in_flight == 1 and pool.statistics().unresponsive == 0
                    scope.cancel()


async def test_heartbeats_spare_a_busy_bridge_worker() -> None:
    """On the wire: a bridge worker busy with a long call answers every PING from its reader
    task, so the pool never finds it unresponsive."""
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            launcher=BridgeLauncher(), clock=clock, min_workers=1, heartbeat_interval=1.0, heartbeat_misses=2
        ) as pool:
            gate = new_gate("long")
            (worker,) = pool.workers()
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.call, wait_for, "long")
                await gate.entered.wait()
                for _ in range(10):
                    await tick(pool, clock, 1.0)
                    await wait_until(
                        lambda: worker.last_heard == clock.now(), pool=pool, describe="a PONG", poll=0.002
                    )
                assert worker.state is WorkerState.BUSY
                gate.release.set()
            assert pool.statistics().unresponsive == 0 and no_call_failed(pool)


@pytest.mark.parametrize("misses", [2, 3, 5])
async def test_frozen_worker_is_killed_within_misses_plus_one_intervals(misses: int) -> None:
    """A frozen worker (mock freezes()) is killed as unresponsive at the heartbeat_misses + 1-th
    beat after it last answered, not before; the healthy worker beside it is untouched."""
    script = MockScript()
    script.on(ECHO).respond(freezes())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(script, clock=clock, heartbeat_interval=1.0, heartbeat_misses=misses) as pool:
            rec = Recorder(pool)
            async with anyio.create_task_group() as tg:
                tg.start_soon(Outcome().capture, pool.call, T.echo, 1)
                await wait_until(lambda: any(getattr(w, "frozen", False) for w in pool.workers()), pool=pool)
                (frozen,) = [w for w in pool.workers() if w.load]
                (healthy,) = [w for w in pool.workers() if w is not frozen]
                for _ in range(misses):
                    await tick(pool, clock, 1.0)
                    await anyio.wait_all_tasks_blocked()
                    assert not frozen.state.is_terminal
                await tick(pool, clock, 1.0)
                await wait_until(
                    lambda: frozen.state.is_terminal, pool=pool, describe="the frozen worker killed"
                )
            (exited,) = rec.of(WorkerExited)
            assert (exited.worker_id, exited.failure) == (frozen.id, FailureKind.UNRESPONSIVE)
            assert healthy.state is WorkerState.READY


async def test_clock_jump_only_pings_and_judges_at_the_next_beat() -> None:
    """When the clock jumps far past a heartbeat (the pool could not beat meanwhile) that round
    only pings: no worker is judged on silence it had no chance to break. At the next beat the
    worker that answered is kept and the frozen one is killed."""
    script = MockScript()
    script.on(ECHO).respond(freezes())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(script, clock=clock, heartbeat_interval=1.0, heartbeat_misses=2) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(Outcome().capture, pool.call, T.echo, 1)
                await wait_until(lambda: any(getattr(w, "frozen", False) for w in pool.workers()), pool=pool)
                (frozen,) = [w for w in pool.workers() if w.load]
                (healthy,) = [w for w in pool.workers() if w is not frozen]
                await tick(pool, clock, 100.0)
                await anyio.wait_all_tasks_blocked()
                assert not frozen.state.is_terminal and healthy.last_heard == 100.0
                await tick(pool, clock, 1.0)
                await wait_until(
                    lambda: frozen.state.is_terminal, pool=pool, describe="the frozen worker killed"
                )
            assert healthy.state is WorkerState.READY
            assert pool.statistics().unresponsive == 1


async def test_idle_workers_survive_heartbeats_whatever_the_clock_reads() -> None:
    """Healthy idle workers answer every heartbeat and are never judged unresponsive, also when
    the pool's clock does not start at zero and for replacements started later."""
    clock = ManualClock(5_000.0)
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            clock=clock, heartbeat_interval=1.0, recycle={"max_calls": 1, "jitter": 0.0}
        ) as pool:
            rec = Recorder(pool)
            for i in range(4):
                await tick(pool, clock, 1.0)
                assert await pool.call(T.echo, i) == i  # each call recycles its worker
            for _ in range(5):
                await tick(pool, clock, 1.0)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().unresponsive == 0
            assert all(e.failure is None for e in rec.of(WorkerExited))
            assert len(ready_ids(pool)) == 2
