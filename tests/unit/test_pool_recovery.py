"""Every row of the recovery table, through a real Pool: scripted mock workers (and the bridge
layer where the wire protocol is the point), a manual clock for everything time-based.

For each failure kind: what the caller gets, whether the call is retried (and where), whether
the worker is replaced, and what the breakers and the restart budget make of it. Nothing here
waits for real time to pass except a few short call deadlines (``timeout=``), which are on the
event loop's clock by design (``poolkit._clock``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from _util import scaled
from poolkit import (
    BreakerStateChanged,
    CallCompleted,
    CallFailed,
    CallRequeued,
    CallRetried,
    CallTimeout,
    CircuitOpen,
    Event,
    FailureKind,
    PayloadTooLarge,
    Phase,
    Pool,
    PoolClosed,
    PoolFailed,
    PoolState,
    ProtocolError,
    QueueFull,
    QueueTimeout,
    RemoteError,
    SerializationError,
    WorkerCrashed,
    WorkerExited,
    WorkerMemoryExceeded,
    WorkerStartupError,
    WorkerState,
    WorkerUnresponsive,
)
from poolkit._worker import Worker
from poolkit.testing import (
    BridgeLauncher,
    FaultInjector,
    ManualClock,
    MockScript,
    MockWorker,
    crashes,
    freezes,
    hangs,
    runs,
    wait_until,
)
from poolkit.testing import targets as T
from unit._targets import RUNS, Outcome, big_result, new_gate, record, wait_for, wait_then_crash

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Event)
ECHO = "poolkit.testing.targets:echo"
ADD = "poolkit.testing.targets:add"
MiB = 2**20


def make_pool(
    layer: str = "mock",
    script: MockScript | None = None,
    *,
    clock: ManualClock | None = None,
    launcher: BridgeLauncher | None = None,
    **fields: Any,
) -> Pool:
    """A pool of two workers on ``layer`` (mock or bridge) driven by a manual clock, retrying
    at once (no backoff) unless told otherwise, with a seeded rng."""
    fields.setdefault("min_workers", 2)
    fields.setdefault("retry", {"backoff_initial": 0.0})
    common: dict[str, Any] = {"clock": clock or ManualClock(), "rng": random.Random(0)}
    if layer == "mock":
        return Pool(worker_factory=(script or MockScript()).factory(), **common, **fields)
    return Pool(launcher=launcher or BridgeLauncher(), **common, **fields)


class Recorder:
    """Every event the pool emits, in order."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[Event] = []
        pool.subscribe(self.events.append)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


async def tick(pool: Pool, clock: ManualClock, seconds: float) -> None:
    """Advance the pool's clock by ``seconds`` and wait until its housekeeper has done that
    round and gone back to sleep (until a time still to come)."""
    clock.advance(seconds)
    with anyio.fail_after(scaled(5)):
        while True:
            sleep = pool._sleep
            if sleep is not None and sleep[1] > clock.now():
                return
            await anyio.lowlevel.checkpoint()


def busy_worker(pool: Pool) -> Worker:
    """The one worker with a call in flight."""
    (worker,) = [w for w in pool.workers() if w.load]
    return worker


def worker_ids(pool: Pool) -> set[str]:
    return {w.id for w in pool.statistics().workers}


async def refilled(pool: Pool, starts: int) -> None:
    """Wait until the pool has started ``starts`` workers and runs min_workers READY ones and
    no other (a worker killed for a timeout is replaced before its process is gone)."""

    def done() -> bool:
        s = pool.statistics()
        full = s.workers_in(WorkerState.READY) == pool.config.min_workers == len(s.workers)
        return s.worker_starts == starts and full

    await wait_until(done, pool=pool, describe=f"{starts} worker starts and a full pool")


# ---- CRASHED -------------------------------------------------------------------------------------
async def test_crash_fails_a_non_idempotent_running_call_with_worker_crashed() -> None:
    """CRASHED, not idempotent: the call that was running fails with WorkerCrashed (phase
    RUNNING, cause from the signal), is not retried, and the worker is replaced."""
    script = MockScript()
    script.on(ECHO).respond(crashes(-11), runs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script) as pool:
            rec = Recorder(pool)
            before = worker_ids(pool)
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(T.echo, 1)
            err = info.value
            assert (err.signal, err.exit_code, err.cause) == (11, None, "segfault")
            assert err.phase is Phase.RUNNING and not err.retry_safe
            assert err.worker_id in before
            assert rec.of(CallRetried) == []
            assert len(script.calls) == 1
            (exited,) = rec.of(WorkerExited)
            assert (exited.worker_id, exited.failure, exited.cause) == (
                err.worker_id,
                FailureKind.CRASHED,
                "segfault",
            )
            assert not exited.expected
            await refilled(pool, starts=3)
            assert err.worker_id not in worker_ids(pool)
            stats = pool.statistics()
            assert (stats.failed, stats.retries, stats.worker_crashes) == (1, 0, 1)
            assert await pool.call(T.echo, 2) == 2


async def test_crashed_idempotent_call_is_retried_on_another_worker() -> None:
    """CRASHED, idempotent: the call is retried (CallRetried, attempt 2, kind CRASHED) on a
    worker other than the one that crashed, and the caller gets its result."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), runs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script) as pool:
            rec = Recorder(pool)
            assert await pool.call(T.echo, "ok", idempotent=True) == "ok"
            (retried,) = rec.of(CallRetried)
            assert (retried.attempt, retried.kind, retried.delay) == (2, FailureKind.CRASHED, 0.0)
            first, second = (c.worker_id for c in script.calls)
            assert retried.worker_id == first
            assert second != first
            (done,) = rec.of(CallCompleted)
            assert done.worker_id == second and done.call == retried.call
            assert rec.of(CallFailed) == []
            stats = pool.statistics()
            assert (stats.completed, stats.failed, stats.retries) == (1, 0, 1)


async def test_retry_backoff_waits_on_the_pool_clock() -> None:
    """The backoff before a retry is a sleep on the pool's clock: the retry goes out only once
    the clock has moved by the delay reported in CallRetried."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), runs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, retry={"backoff_initial": 1.5, "jitter": "none"}
        ) as pool:
            rec = Recorder(pool)
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: result.capture(pool.call, T.echo, "late", idempotent=True))
                await wait_until(lambda: bool(rec.of(CallRetried)), pool=pool, describe="the retry decision")
                assert rec.of(CallRetried)[0].delay == 1.5
                await tick(pool, clock, 1.4)
                await anyio.wait_all_tasks_blocked()
                assert not result.ended.is_set() and len(script.calls) == 1
                clock.advance(0.1)
            assert result.value == "late"
            assert len(script.calls) == 2


async def test_crashing_idempotent_call_fails_after_max_attempts() -> None:
    """A call that crashes every worker it runs on is tried max_attempts times in all, each
    time on another worker, then fails with the last WorkerCrashed (max_attempts - 1 retries)."""
    script = MockScript()
    script.on(ECHO).respond(crashes())
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, min_workers=3, retry={"max_attempts": 3, "backoff_initial": 0}
        ) as pool:
            rec = Recorder(pool)
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(T.echo, 1, idempotent=True)
            retried = rec.of(CallRetried)
            assert [r.attempt for r in retried] == [2, 3]
            assert all(r.kind is FailureKind.CRASHED for r in retried)
            ran_on = [c.worker_id for c in script.calls]
            assert len(ran_on) == 3 and len(set(ran_on)) == 3
            assert info.value.worker_id == ran_on[-1]
            (failed,) = rec.of(CallFailed)
            assert failed.kind is FailureKind.CRASHED
            stats = pool.statistics()
            assert (stats.retries, stats.failed, stats.worker_crashes) == (2, 1, 3)


async def test_calls_pipelined_behind_a_crash_are_requeued_not_retried() -> None:
    """Calls sent behind the crashed one never started: they go back to the queue (CallRequeued)
    and run once on the replacement; that is not a retry and needs no idempotent flag."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=1, pipeline_depth=2) as pool:
            rec = Recorder(pool)
            gate = new_gate("crash")
            crashed, behind = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(crashed.capture, pool.call, wait_then_crash, "crash")
                await gate.entered.wait()
                tg.start_soon(behind.capture, pool.call, record, "behind")
                await wait_until(
                    lambda: pool.statistics().in_flight == 2, pool=pool, describe="two in flight"
                )
                gate.release.set()
            assert isinstance(crashed.error, WorkerCrashed)
            assert behind.value == "behind" and RUNS["behind"] == 1
            assert len(rec.of(CallRequeued)) == 1
            assert rec.of(CallRetried) == []


async def test_deadline_covers_the_retry_backoff() -> None:
    """One deadline covers every attempt: a retry still in its backoff when the deadline passes
    ends with a CallTimeout (QueueTimeout: it is back in the pool's hands) and is not sent again."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), runs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, retry={"backoff_initial": 0.01, "jitter": "none"}) as pool:
            rec = Recorder(pool)
            with pytest.raises(CallTimeout) as info:  # the manual clock never lets the backoff end
                await pool.call(T.echo, 1, idempotent=True, timeout=scaled(0.2))
            assert isinstance(info.value, QueueTimeout)
            assert len(rec.of(CallRetried)) == 1 and len(script.calls) == 1
            assert [f.kind for f in rec.of(CallFailed)] == [FailureKind.QUEUE_TIMEOUT]
            stats = pool.statistics()
            assert (stats.timed_out, stats.failed, stats.retries) == (1, 0, 1)


async def test_cancelling_a_call_in_its_retry_backoff_ends_it() -> None:
    """CANCELLED between attempts: a caller that gives up while its call waits to be retried
    ends it there; it is never sent again."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), runs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, retry={"backoff_initial": 1.0, "jitter": "none"}) as pool:
            rec = Recorder(pool)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: pool.call(T.echo, 1, idempotent=True))
                    await wait_until(
                        lambda: bool(rec.of(CallRetried)), pool=pool, describe="the retry decision"
                    )
                    scope.cancel()
            assert scope.cancelled_caught
            assert [f.kind for f in rec.of(CallFailed)] == [FailureKind.CANCELLED]
            assert len(script.calls) == 1
            stats = pool.statistics()
            assert (stats.cancelled, stats.queued, stats.in_flight) == (1, 0, 0)


# ---- UNRESPONSIVE --------------------------------------------------------------------------------
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
async def test_frozen_worker_is_killed_as_unresponsive(idempotent: bool) -> None:
    """UNRESPONSIVE: a worker that freezes mid-call stops answering heartbeats and is killed
    within heartbeat_misses + 1 intervals; the running call fails with WorkerUnresponsive, or,
    if idempotent, is retried on another worker and succeeds."""
    script = MockScript()
    script.on(ECHO).respond(freezes(), runs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, clock=clock, heartbeat_interval=1.0, heartbeat_misses=2) as pool:
            rec = Recorder(pool)
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: result.capture(pool.call, T.echo, "x", idempotent=idempotent))
                await wait_until(lambda: any(getattr(w, "frozen", False) for w in pool.workers()), pool=pool)
                frozen = busy_worker(pool)
                beats = 0
                while not frozen.state.is_terminal:
                    assert beats < 3, "not detected within (misses + 1) intervals"
                    await tick(pool, clock, 1.0)
                    beats += 1
                    await anyio.wait_all_tasks_blocked()
            assert beats == 3
            (exited,) = rec.of(WorkerExited)
            assert (exited.worker_id, exited.failure) == (frozen.id, FailureKind.UNRESPONSIVE)
            stats = pool.statistics()
            assert stats.unresponsive == 1
            if idempotent:
                assert result.value == "x", result.error
                (retried,) = rec.of(CallRetried)
                assert (retried.kind, retried.worker_id) == (FailureKind.UNRESPONSIVE, frozen.id)
                assert script.calls[-1].worker_id != frozen.id
            else:
                err = result.error
                assert isinstance(err, WorkerUnresponsive), err
                assert err.phase is Phase.RUNNING and err.worker_id == frozen.id
                assert (err.silent_for, err.interval) == (3.0, 1.0)
                assert "unresponsive" in str(err)
                assert rec.of(CallRetried) == []
            await wait_until(
                lambda: frozen.id not in worker_ids(pool) and len(pool.workers()) == 2, pool=pool
            )


async def test_frozen_bridge_worker_is_killed_as_unresponsive() -> None:
    """On the wire: a bridge worker stopped as by SIGSTOP answers no PING; the pool kills it
    within (misses + 1) intervals and its call fails with WorkerUnresponsive, while the other
    worker, answering every PING, is left alone."""
    launcher = BridgeLauncher()
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            "bridge", launcher=launcher, clock=clock, heartbeat_interval=1.0, heartbeat_misses=2, kill_grace=0
        ) as pool:
            gate = new_gate("frozen")
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(result.capture, pool.call, wait_for, "frozen")
                await gate.entered.wait()
                frozen = busy_worker(pool)
                (healthy,) = [w for w in pool.workers() if w is not frozen]
                (conn,) = [c for c in launcher.connections if c.pid == frozen.pid]
                conn.freeze()
                for _ in range(3):
                    await tick(pool, clock, 1.0)
                    await wait_until(
                        lambda: healthy.last_heard == clock.now(), pool=pool, describe="a PONG", poll=0.002
                    )
                await wait_until(
                    lambda: frozen.state.is_terminal, pool=pool, describe="the frozen worker killed"
                )
            assert isinstance(result.error, WorkerUnresponsive)
            assert healthy.state is WorkerState.READY
            assert pool.statistics().unresponsive == 1


# ---- PROTOCOL ------------------------------------------------------------------------------------
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
async def test_corrupt_reply_is_a_protocol_error(idempotent: bool) -> None:
    """PROTOCOL (bridge): a reply damaged on the wire kills the worker; the running call fails
    with ProtocolError (phase RUNNING), or, if idempotent, is retried on another worker."""
    with anyio.fail_after(scaled(10)):
        async with make_pool("bridge") as pool:
            rec = Recorder(pool)
            gate = new_gate("reply")
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: result.capture(pool.call, wait_for, "reply", "value", idempotent=idempotent)
                )
                await gate.entered.wait()
                victim = busy_worker(pool)
                async with FaultInjector(pool).corrupt(victim, mode="flip") as fault:
                    gate.release.set()
                    await result.ended.wait()
                assert len(fault.records) == 1
            exited = [e for e in rec.of(WorkerExited) if e.worker_id == victim.id]
            assert [e.failure for e in exited] == [FailureKind.PROTOCOL]
            if idempotent:
                assert result.value == "value", result.error
                (retried,) = rec.of(CallRetried)
                assert (retried.kind, retried.worker_id) == (FailureKind.PROTOCOL, victim.id)
                assert gate.runs == 2
            else:
                err = result.error
                assert isinstance(err, ProtocolError), err
                assert err.phase is Phase.RUNNING and err.worker_id == victim.id
                assert rec.of(CallRetried) == []
            await refilled(pool, starts=3)


# ---- RESOURCE_EXHAUSTED --------------------------------------------------------------------------
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
async def test_worker_over_memory_limit_is_killed(idempotent: bool) -> None:
    """RESOURCE_EXHAUSTED: a heartbeat reply reporting RSS over recycle.memory_limit kills the
    worker at once; its running call fails with WorkerMemoryExceeded (rss and limit), or, if
    idempotent, is retried elsewhere and succeeds."""
    script = MockScript()
    script.on(ECHO).respond(hangs(), runs())
    clock = ManualClock()
    limit = 100 * MiB
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, heartbeat_interval=1.0, recycle={"memory_limit": limit}
        ) as pool:
            rec = Recorder(pool)
            result = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: result.capture(pool.call, T.echo, "m", idempotent=idempotent))
                await wait_until(lambda: len(script.calls) == 1, pool=pool, describe="the call running")
                hog = busy_worker(pool)
                assert isinstance(hog, MockWorker)
                hog.fake_rss = limit + 50 * MiB
                await tick(pool, clock, 1.0)
            (exited,) = rec.of(WorkerExited)
            assert (exited.worker_id, exited.failure) == (hog.id, FailureKind.RESOURCE_EXHAUSTED)
            if idempotent:
                assert result.value == "m", result.error
                (retried,) = rec.of(CallRetried)
                assert retried.kind is FailureKind.RESOURCE_EXHAUSTED
            else:
                err = result.error
                assert isinstance(err, WorkerMemoryExceeded), err
                assert (err.rss, err.limit) == (limit + 50 * MiB, limit)
                assert err.phase is Phase.RUNNING and err.worker_id == hog.id
                assert "memory_limit" in str(err)
                assert rec.of(CallRetried) == []
            await refilled(pool, starts=3)


# ---- TIMEOUT and QUEUE_TIMEOUT -------------------------------------------------------------------
async def test_timeout_of_a_running_call_is_not_retried() -> None:
    """TIMEOUT: a running call past its deadline raises CallTimeout (phase RUNNING) and is not
    retried, even if idempotent; its worker is killed on purpose (not a worker fault)."""
    script = MockScript()
    script.on(ECHO).respond(hangs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script) as pool:
            rec = Recorder(pool)
            with pytest.raises(CallTimeout) as info:
                await pool.call(T.echo, 1, timeout=0.02, idempotent=True)
            err = info.value
            assert type(err) is CallTimeout
            assert err.kind is FailureKind.TIMEOUT and err.phase is Phase.RUNNING
            assert rec.of(CallRetried) == []
            assert len(script.calls) == 1
            await refilled(pool, starts=3)
            (exited,) = rec.of(WorkerExited)
            assert exited.failure is None and exited.expected
            stats = pool.statistics()
            assert (stats.timed_out, stats.retries, stats.breaker) == (1, 0, "closed")


async def test_deadline_passing_in_the_queue_raises_queue_timeout() -> None:
    """QUEUE_TIMEOUT: a call whose deadline passes before any worker takes it raises
    QueueTimeout (a CallTimeout, phase QUEUED), never runs and is not retried."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=1, pipeline_depth=1) as pool:
            rec = Recorder(pool)
            gate = new_gate("busy")
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.call, wait_for, "busy")
                await gate.entered.wait()
                with pytest.raises(QueueTimeout) as info:
                    await pool.call(record, "late", timeout=0.02, idempotent=True)
                gate.release.set()
            err = info.value
            assert isinstance(err, CallTimeout) and isinstance(err, TimeoutError)
            assert err.kind is FailureKind.QUEUE_TIMEOUT
            assert err.phase is Phase.QUEUED and err.worker_id is None and err.retry_safe
            assert RUNS["late"] == 0
            assert rec.of(CallRetried) == []
            assert [f.kind for f in rec.of(CallFailed)] == [FailureKind.QUEUE_TIMEOUT]
            stats = pool.statistics()
            assert (stats.timed_out, stats.worker_starts) == (1, 1)


# ---- APPLICATION, SERIALIZATION, PAYLOAD_TOO_LARGE -----------------------------------------------
@pytest.mark.parametrize("layer", ["mock", "bridge"])
async def test_application_error_is_not_retried_and_keeps_the_worker(layer: str) -> None:
    """APPLICATION: the target raising gives RemoteError; never retried (it would raise again),
    even if idempotent; the worker keeps serving."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            with pytest.raises(RemoteError) as info:
                await pool.call(T.fail, "nope", idempotent=True)
            assert info.value.kind is FailureKind.APPLICATION
            assert info.value.remote_type == "builtins.ValueError"
            assert rec.of(CallRetried) == [] and rec.of(WorkerExited) == []
            assert await pool.call(T.add, 1, 2) == 3
            assert pool.statistics().worker_starts == 2


@pytest.mark.parametrize("layer", ["mock", "bridge"])
async def test_serialization_errors_are_not_retried_and_keep_the_worker(layer: str) -> None:
    """SERIALIZATION: a result the worker cannot encode (phase RETURNING) or an argument the
    parent cannot (phase QUEUED) fails the call; neither is retried; the worker keeps serving."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(layer) as pool:
            rec = Recorder(pool)
            with pytest.raises(SerializationError) as info:
                await pool.call(T.unencodable, idempotent=True)
            assert (info.value.side, info.value.phase) == ("worker", Phase.RETURNING)
            with pytest.raises(SerializationError) as info:
                await pool.call(T.echo, lambda: None, idempotent=True)
            assert (info.value.side, info.value.phase) == ("parent", Phase.QUEUED)
            assert rec.of(CallRetried) == [] and rec.of(WorkerExited) == []
            assert await pool.call(T.echo, 5) == 5
            assert pool.statistics().worker_starts == 2


async def test_payload_too_large_is_not_retried() -> None:
    """PAYLOAD_TOO_LARGE: an oversized call is refused before it is sent (phase QUEUED) and an
    oversized result is answered with an error (phase RETURNING); neither is retried."""
    with anyio.fail_after(scaled(10)):
        async with make_pool("bridge", max_frame_size=1024) as pool:
            rec = Recorder(pool)
            with pytest.raises(PayloadTooLarge) as info:
                await pool.call(T.echo, b"x" * 4096, idempotent=True)
            assert info.value.phase is Phase.QUEUED and info.value.kind is FailureKind.PAYLOAD_TOO_LARGE
            with pytest.raises(PayloadTooLarge) as info:
                await pool.call(big_result, 4096, idempotent=True)
            assert info.value.phase is Phase.RETURNING
            assert rec.of(CallRetried) == [] and rec.of(WorkerExited) == []
            assert await pool.call(T.echo, b"small") == b"small"


# ---- STARTUP -------------------------------------------------------------------------------------
async def test_replacements_failing_to_start_are_paced_then_fail_the_pool() -> None:
    """STARTUP: replacements that keep failing to start are restarted after a growing backoff
    on the pool's clock (none starts before it), and max_startup_failures in a row fail the pool
    with PoolFailed, which every later call raises."""
    script = MockScript()
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, clock=clock, min_workers=1, max_startup_failures=3) as pool:
            rec = Recorder(pool)
            script.startup_error = "No module named 'gone'"
            await FaultInjector(pool).crash()  # the replacement starts at once, and fails
            await wait_until(lambda: pool.statistics().startup_failures == 1, pool=pool)
            assert pool.statistics().worker_starts == 2
            # Second failure in a row: the next start waits uniform(0.05, 0.1) on the clock.
            await tick(pool, clock, 0.049)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().worker_starts == 2
            await tick(pool, clock, 0.051)
            await wait_until(lambda: pool.statistics().startup_failures == 2, pool=pool)
            assert pool.statistics().worker_starts == 3
            # Third in a row: uniform(0.1, 0.2).
            await tick(pool, clock, 0.099)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().worker_starts == 3
            await tick(pool, clock, 0.101)
            await wait_until(lambda: pool.state is PoolState.FAILED, pool=pool)
            assert pool.statistics().startup_failures == 3
            with pytest.raises(PoolFailed) as info:
                await pool.call(T.echo, 1)
            assert info.value.kind is FailureKind.POOL_FAILED
            assert isinstance(info.value.cause, WorkerStartupError)
            assert "3 consecutive worker startup failures" in str(info.value)
            failures = [e.failure for e in rec.of(WorkerExited)]
            assert failures == [FailureKind.CRASHED] + [FailureKind.STARTUP] * 3


async def test_pool_whose_workers_cannot_start_fails_to_start() -> None:
    """STARTUP at pool start: max_startup_failures failures in a row make start() raise
    PoolFailed carrying the last WorkerStartupError; no call is lost (none was made)."""
    script = MockScript(startup_error="No module named 'gone'")
    pool = make_pool(script=script, min_workers=1, max_startup_failures=2)
    with anyio.fail_after(scaled(10)), pytest.raises(PoolFailed) as info:
        async with pool:
            pass
    assert isinstance(info.value.cause, WorkerStartupError)
    assert "gone" in str(info.value.cause)
    assert pool.statistics().startup_failures == 2


# ---- QUEUE_FULL, POOL_CLOSED, POOL_FAILED --------------------------------------------------------
async def test_queue_full_is_not_retried() -> None:
    """QUEUE_FULL: with a full queue and queue_policy="reject" the call raises QueueFull at
    once (backpressure for the caller to handle), idempotent or not; it never runs."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=1, pipeline_depth=1, max_queue=0, queue_policy="reject") as pool:
            rec = Recorder(pool)
            gate = new_gate("busy")
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.call, wait_for, "busy")
                await gate.entered.wait()
                with pytest.raises(QueueFull) as info:
                    await pool.call(record, "rejected", idempotent=True)
                gate.release.set()
            assert info.value.kind is FailureKind.QUEUE_FULL and info.value.capacity == 0
            assert RUNS["rejected"] == 0 and rec.of(CallRetried) == []


async def test_pool_closed_fails_calls_without_retrying_them() -> None:
    """POOL_CLOSED: closing without drain fails the running and the queued call with
    PoolClosed (not retried, even if idempotent); a call after close raises PoolClosed."""
    script = MockScript()
    script.on(ECHO).respond(hangs())
    with anyio.fail_after(scaled(10)):
        pool = make_pool(script=script, min_workers=1, pipeline_depth=1)
        rec = Recorder(pool)
        running, queued = Outcome(), Outcome()
        async with anyio.create_task_group() as tg, pool:
            tg.start_soon(lambda: running.capture(pool.call, T.echo, 1, idempotent=True))
            await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool)
            tg.start_soon(lambda: queued.capture(pool.call, record, "queued", idempotent=True))
            await wait_until(lambda: pool.statistics().queued == 1, pool=pool)
            await pool.aclose(drain=False)
        assert isinstance(running.error, PoolClosed) and running.error.phase is Phase.RUNNING
        assert isinstance(queued.error, PoolClosed) and queued.error.phase is Phase.QUEUED
        assert running.error.kind is FailureKind.POOL_CLOSED
        assert RUNS["queued"] == 0 and rec.of(CallRetried) == []
        with pytest.raises(PoolClosed):
            await pool.call(T.echo, 1)


async def test_restart_budget_exhausted_fails_the_pool() -> None:
    """POOL_FAILED: more than restart.max_restarts replacements within the window fail the
    pool instead of crash-looping; the call that crashed last gets its own WorkerCrashed, every
    later call PoolFailed naming the limit."""
    script = MockScript()
    script.on(ECHO).respond(crashes())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, min_workers=3, restart={"max_restarts": 2, "window": 60.0}
        ) as pool:
            rec = Recorder(pool)
            for _ in range(3):
                with pytest.raises(WorkerCrashed):
                    await pool.call(T.echo, 1)
            await wait_until(lambda: pool.state is PoolState.FAILED, pool=pool)
            with pytest.raises(PoolFailed) as info:
                await pool.call(T.add, 1, 2)
            assert "restart.max_restarts=2" in str(info.value)
            assert isinstance(info.value.cause, BaseException)
            stats = pool.statistics()
            assert stats.worker_crashes == 3 and stats.worker_starts == 4  # one immediate, one held
            assert any(getattr(e, "to_state", None) is PoolState.FAILED for e in rec.events), (
                "PoolStateChanged to FAILED"
            )


async def test_restart_budget_counts_only_replacements_within_the_window() -> None:
    """The restart budget slides with the pool's clock: crashes spread wider than
    restart.window never fail the pool; max_restarts + 1 within one window do."""
    script = MockScript()
    script.on(ECHO).respond(crashes())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script,
            clock=clock,
            restart={"max_restarts": 2, "window": 10.0},
            breaker={"enabled": False},
        ) as pool:

            async def crash_one() -> None:
                with pytest.raises(WorkerCrashed):
                    await pool.call(T.echo, 1)
                assert await pool.call(T.add, 1, 1) == 2  # a success in between: no backoff
                await wait_until(lambda: len(ready_ids(pool)) == 2, pool=pool, describe="a full pool")

            for _ in range(3):
                await crash_one()
                await crash_one()
                assert pool.state is PoolState.RUNNING
                await tick(pool, clock, 10.0)
            await crash_one()
            await crash_one()
            with pytest.raises(WorkerCrashed):
                await pool.call(T.echo, 1)
            await wait_until(lambda: pool.state is PoolState.FAILED, pool=pool)
            assert pool.statistics().worker_crashes == 9


def ready_ids(pool: Pool) -> set[str]:
    return {w.id for w in pool.statistics().workers if w.state.accepts_calls}


# ---- CIRCUIT_OPEN --------------------------------------------------------------------------------
def breaker_changes(rec: Recorder, scope: str) -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) for e in rec.of(BreakerStateChanged) if e.scope == scope]


async def test_target_breaker_opens_then_a_trial_closes_it() -> None:
    """CIRCUIT_OPEN (target): failure_threshold crashes of one target open its breaker: its
    calls fail fast with CircuitOpen (phase QUEUED, scope the target) while other targets work;
    after reset_timeout on the pool's clock one trial passes and, succeeding, closes it."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), crashes(), crashes(), runs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, breaker={"failure_threshold": 3, "reset_timeout": 10.0}
        ) as pool:
            rec = Recorder(pool)
            for _ in range(3):
                with pytest.raises(WorkerCrashed):
                    await pool.call(T.echo, 1)
                assert await pool.call(T.add, 1, 1) == 2  # another target: the pool is fine
            assert breaker_changes(rec, ECHO) == [("closed", "open")]
            with pytest.raises(CircuitOpen) as info:
                await pool.call(T.echo, 1, idempotent=True)
            err = info.value
            assert (err.scope, err.phase, err.failures, err.kind) == (
                ECHO,
                Phase.QUEUED,
                3,
                FailureKind.CIRCUIT_OPEN,
            )
            assert err.retry_after == pytest.approx(10.0)
            assert len(script.calls) == 6  # the refused call never reached a worker
            stats = pool.statistics()
            assert (stats.open_breakers, stats.breaker) == ((ECHO,), "closed")
            assert await pool.call(T.add, 2, 2) == 4
            await tick(pool, clock, 9.0)
            with pytest.raises(CircuitOpen) as info:
                await pool.call(T.echo, 1)
            assert info.value.retry_after == pytest.approx(1.0)
            await tick(pool, clock, 1.0)
            assert await pool.call(T.echo, "trial") == "trial"
            assert breaker_changes(rec, ECHO) == [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "closed"),
            ]
            assert pool.statistics().open_breakers == ()
            assert await pool.call(T.echo, "after") == "after"


async def test_half_open_target_breaker_lets_one_trial_through_and_a_failed_trial_reopens_it() -> None:
    """Half-open, the breaker lets exactly one trial call out: a second call meanwhile fails
    fast. A failed trial re-opens it for twice reset_timeout; the next successful trial closes it."""
    script = MockScript()
    script.on("unit._targets:wait_for").respond(crashes(), crashes(), runs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, breaker={"failure_threshold": 1, "reset_timeout": 5.0}
        ) as pool:
            rec = Recorder(pool)
            scope = "unit._targets:wait_for"
            with pytest.raises(WorkerCrashed):
                await pool.call(wait_for, "g")
            await tick(pool, clock, 5.0)
            with pytest.raises(WorkerCrashed):  # the trial crashes: open again, for 10 s
                await pool.call(wait_for, "g")
            assert breaker_changes(rec, scope)[-1] == ("half_open", "open")
            await tick(pool, clock, 5.0)
            with pytest.raises(CircuitOpen) as info:
                await pool.call(wait_for, "g")
            assert info.value.retry_after == pytest.approx(5.0)
            await tick(pool, clock, 5.0)
            gate = new_gate("g")
            trial = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(trial.capture, pool.call, wait_for, "g", "ok")
                await gate.entered.wait()
                with pytest.raises(CircuitOpen):
                    await pool.call(wait_for, "g")  # the trial is out: no second one
                gate.release.set()
            assert trial.value == "ok"
            assert pool.statistics().open_breakers == ()
            assert breaker_changes(rec, scope)[-1] == ("half_open", "closed")


async def test_cancelled_trial_lets_the_next_call_be_the_trial() -> None:
    """A half-open breaker's trial call that its caller cancels gives no verdict: the breaker
    stays half-open and the next call becomes the trial (and closes it by succeeding)."""
    script = MockScript()
    script.on("unit._targets:wait_for").respond(crashes(), runs())
    clock = ManualClock()
    scope_name = "unit._targets:wait_for"
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, breaker={"failure_threshold": 1, "reset_timeout": 5.0}
        ) as pool:
            rec = Recorder(pool)
            with pytest.raises(WorkerCrashed):
                await pool.call(wait_for, "x")
            await tick(pool, clock, 5.0)
            gate = new_gate("trial")
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: pool.call(wait_for, "trial"))
                    await gate.entered.wait()
                    with pytest.raises(CircuitOpen):
                        await pool.call(wait_for, "trial")
                    scope.cancel()
            assert breaker_changes(rec, scope_name)[-1] == ("open", "half_open")
            new_gate("second").release.set()
            assert await pool.call(wait_for, "second", "closed it") == "closed it"
            assert breaker_changes(rec, scope_name)[-1] == ("half_open", "closed")


async def test_pool_breaker_opens_after_consecutive_worker_failures() -> None:
    """CIRCUIT_OPEN (pool): failure_threshold worker failures with no call served in between
    open the pool's breaker: every new call, whatever its target, fails fast with CircuitOpen
    (scope "pool") and replacements are held; after reset_timeout a trial call succeeds and
    closes it."""
    script = MockScript()
    script.on(ECHO).respond(crashes(), runs())
    script.on(ADD).respond(crashes(), runs())
    clock = ManualClock()
    with anyio.fail_after(scaled(10)):
        async with make_pool(
            script=script, clock=clock, breaker={"failure_threshold": 2, "reset_timeout": 10.0}
        ) as pool:
            rec = Recorder(pool)
            with pytest.raises(WorkerCrashed):
                await pool.call(T.echo, 1)
            with pytest.raises(WorkerCrashed):
                await pool.call(T.add, 1, 2)
            assert breaker_changes(rec, "pool") == [("closed", "open")]
            assert pool.statistics().open_breakers == ()  # one failure per target: closed
            for target, args in ((T.echo, (1,)), (T.add, (1, 2)), (T.getpid, ())):
                with pytest.raises(CircuitOpen) as info:
                    await pool.call(target, *args)
                assert info.value.scope == "pool" and info.value.phase is Phase.QUEUED
            stats = pool.statistics()
            assert stats.breaker == "open"
            assert stats.worker_starts == 3  # the second replacement waits for the breaker
            await tick(pool, clock, 10.0)
            assert await pool.call(T.echo, "trial") == "trial"
            assert breaker_changes(rec, "pool") == [
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "closed"),
            ]
            await refilled(pool, starts=4)
            assert await pool.call(T.add, 2, 3) == 5


async def test_a_call_the_worker_served_breaks_the_pool_breakers_row() -> None:
    """The pool breaker counts worker failures in a row: a call a worker served in between,
    even one whose target raised (the worker is fine: the target breaker and restart pacing
    count it as healthy), breaks the row, so crash, application error, crash does not open a
    failure_threshold=2 pool breaker."""
    script = MockScript()
    script.on(ECHO).respond(crashes())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, breaker={"failure_threshold": 2}) as pool:
            with pytest.raises(WorkerCrashed):
                await pool.call(T.echo, 1)
            with pytest.raises(RemoteError):
                await pool.call(T.fail, "the worker served this call")
            await refilled(pool, starts=3)
            with pytest.raises(WorkerCrashed):
                await pool.call(T.echo, 1)
            assert pool.statistics().breaker == "closed"
            assert await pool.call(T.add, 1, 2) == 3


# ---- CANCELLED -----------------------------------------------------------------------------------
async def test_cancelled_running_call_is_not_retried() -> None:
    """CANCELLED: a caller that gives up on its running call (idempotent or not) ends it for
    good: its worker is killed and replaced, the call is not retried and the breakers are not
    fed."""
    script = MockScript()
    script.on(ECHO).respond(hangs(), runs())
    with anyio.fail_after(scaled(10)):
        async with make_pool(script=script, breaker={"failure_threshold": 1}) as pool:
            rec = Recorder(pool)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: pool.call(T.echo, 1, idempotent=True))
                    await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool)
                    scope.cancel()
            assert scope.cancelled_caught
            await refilled(pool, starts=3)
            assert rec.of(CallRetried) == []
            assert [f.kind for f in rec.of(CallFailed)] == [FailureKind.CANCELLED]
            assert len(script.calls) == 1
            (exited,) = rec.of(WorkerExited)
            assert exited.failure is None
            stats = pool.statistics()
            assert (stats.cancelled, stats.retries, stats.breaker, stats.open_breakers) == (
                1,
                0,
                "closed",
                (),
            )
            assert await pool.call(T.echo, 2) == 2


# ---- the table, end to end -----------------------------------------------------------------------
_COVERED: dict[FailureKind, Callable[..., Any]] = {
    FailureKind.CRASHED: test_crashed_idempotent_call_is_retried_on_another_worker,
    FailureKind.UNRESPONSIVE: test_frozen_worker_is_killed_as_unresponsive,
    FailureKind.PROTOCOL: test_corrupt_reply_is_a_protocol_error,
    FailureKind.RESOURCE_EXHAUSTED: test_worker_over_memory_limit_is_killed,
    FailureKind.TIMEOUT: test_timeout_of_a_running_call_is_not_retried,
    FailureKind.QUEUE_TIMEOUT: test_deadline_passing_in_the_queue_raises_queue_timeout,
    FailureKind.APPLICATION: test_application_error_is_not_retried_and_keeps_the_worker,
    FailureKind.SERIALIZATION: test_serialization_errors_are_not_retried_and_keep_the_worker,
    FailureKind.PAYLOAD_TOO_LARGE: test_payload_too_large_is_not_retried,
    FailureKind.STARTUP: test_replacements_failing_to_start_are_paced_then_fail_the_pool,
    FailureKind.QUEUE_FULL: test_queue_full_is_not_retried,
    FailureKind.POOL_CLOSED: test_pool_closed_fails_calls_without_retrying_them,
    FailureKind.POOL_FAILED: test_restart_budget_exhausted_fails_the_pool,
    FailureKind.CIRCUIT_OPEN: test_target_breaker_opens_then_a_trial_closes_it,
    FailureKind.CANCELLED: test_cancelled_running_call_is_not_retried,
}


def test_every_pool_level_row_has_a_test_here() -> None:
    """Every failure kind has a pool-level test in this module, except the two session kinds,
    whose rows are proven in test_pool_sessions.py."""
    assert set(_COVERED) | {FailureKind.SESSION_UNAVAILABLE, FailureKind.SESSION_LOST} == set(FailureKind)
