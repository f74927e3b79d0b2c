"""Recovery, health, recycling and sessions against real worker processes.

Every fault here really happens to a process: it dies by a signal or exits, stops (SIGSTOP),
holds the GIL in C code, or really allocates memory, and the pool judges it from the
outside (exit status, heartbeats, the RSS the worker reports). Pools are built with
``pool_for("subprocess", tag=...)`` under ``poolkit_isolation``, so teardown kills and
reports any worker process a test leaves behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import pytest

from _util import pid_alive
from integration import _faults
from poolkit import (
    BreakerStateChanged,
    CallCompleted,
    CallRequeued,
    CallRetried,
    CallTimeout,
    CircuitOpen,
    Event,
    FailureKind,
    Phase,
    Pool,
    PoolError,
    PoolFailed,
    PoolSession,
    PoolState,
    SessionExpired,
    SessionLost,
    SessionRebound,
    SessionStateLost,
    SessionUnavailable,
    WorkerCrashed,
    WorkerExited,
    WorkerMemoryExceeded,
    WorkerRecycled,
    WorkerState,
    WorkerStateChanged,
    WorkerUnresponsive,
)
from poolkit._worker import Worker
from poolkit.testing import (
    FaultInjector,
    Isolation,
    Layer,
    ManualClock,
    ensure_pool_ready,
    pool_for,
    scaled,
    tagged_processes,
    targets,
    wait_until,
)
from poolkit.testing._faults import vm_rss

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]

MiB = 1024 * 1024
E = TypeVar("E", bound=Event)

#: Heartbeats for the tests that judge health: small enough to be quick, large enough that a
#: healthy worker on a loaded 2-core machine always answers in time.
INTERVAL = 0.25
MISSES = 2
#: How late the pool may notice, beyond its own bound, on a loaded machine: the parent's event
#: loop and the housekeeper must get scheduled, and the kill must be sent.
SLACK = 0.6
#: Modules these tests call into, imported at worker startup when heartbeats are fast. A worker
#: keeps answering heartbeats while a call imports its target, but importing the harness
#: (poolkit.testing.targets pulls in anyio, pydantic and the pool) runs C code that holds the
#: GIL for stretches: on a loaded 2-core machine, long enough to miss a sub-second heartbeat
#: bound. Tests about detection must not depend on that.
WARM_MODULES = ("poolkit.testing.targets", "integration._faults")


# ---- helpers --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _pool(
    isolation: Isolation, *, clock: ManualClock | None = None, **fields: Any
) -> AsyncIterator[Pool]:
    """A started pool of real worker processes tagged with this test's isolation tag."""
    fields.setdefault("min_workers", 2)
    interval = fields.get("heartbeat_interval", 5.0)
    if interval is not None and interval < 1:
        fields.setdefault("worker", {"preload": WARM_MODULES})
    pool = pool_for(Layer.SUBPROCESS, tag=isolation.tag, **fields)
    if clock is not None:
        pool.clock = clock  # before starting: every timer of the pool reads it
    async with pool:
        await ensure_pool_ready(pool)
        yield pool


class _Events:
    """Everything a pool emits, kept in order."""

    def __init__(self, pool: Pool) -> None:
        self.all: list[Event] = []
        pool.subscribe(self.all.append)

    def of(self, kind: type[E], where: Callable[[E], bool] = lambda e: True) -> list[E]:
        return [e for e in self.all if isinstance(e, kind) and where(e)]


def _worker(pool: Pool, worker_id: str) -> Worker:
    (found,) = [w for w in pool.workers() if w.id == worker_id]
    return found


def _busy(pool: Pool) -> Worker:
    """The one worker that holds a call."""
    (busy,) = [w for w in pool.workers() if w.load]
    return busy


def _pids(pool: Pool) -> set[int]:
    return {w.pid for w in pool.workers() if w.pid is not None}


async def _gone(pool: Pool, worker: Worker) -> None:
    """Wait until ``worker`` left the pool and its process is gone; the pool is full again."""
    pid = worker.pid
    assert pid is not None
    await wait_until(
        lambda: worker.id not in [w.id for w in pool.workers()] and not pid_alive(pid),
        pool=pool,
        timeout=20,
        describe=f"worker {worker.id} (pid {pid}) gone",
    )
    await ensure_pool_ready(pool)


# ---- crashes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "arg", "cause"),
    [
        pytest.param(targets.crash, signal.SIGSEGV, "segfault", id="sigsegv"),
        pytest.param(targets.crash, signal.SIGABRT, "abort", id="sigabrt"),
        pytest.param(targets.crash, signal.SIGKILL, "killed", id="sigkill"),
        pytest.param(targets.exit_now, 3, "exit", id="exit3"),
    ],
)
async def test_crash_cause_is_named_from_the_real_exit(
    poolkit_isolation: Isolation, target: Callable[[int], Any], arg: int, cause: str
) -> None:
    """A worker process that dies by SIGSEGV, SIGABRT, SIGKILL or exits with status 3 fails
    its call with WorkerCrashed naming the cause (segfault, abort, killed, exit) and carrying
    the signal or exit status; WorkerExited says the same; the process is gone and replaced."""
    async with _pool(poolkit_isolation, min_workers=1) as pool:
        events = _Events(pool)
        (victim,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(target, arg)
            err = info.value
            assert err.cause == cause
            if target is targets.exit_now:
                assert (err.exit_code, err.signal) == (3, None)
            else:
                assert (err.exit_code, err.signal) == (None, arg)
            assert err.phase is Phase.RUNNING and err.worker_id == victim.id and err.pid == victim.pid
            await _gone(pool, victim)
            (exited,) = events.of(WorkerExited, lambda e: e.worker_id == victim.id)
            assert exited.cause == cause and exited.failure is FailureKind.CRASHED and not exited.expected
            assert await pool.call(targets.echo, "after") == "after"
            assert pool.statistics().worker_crashes == 1


async def test_sigkilled_idempotent_call_is_retried_on_another_worker(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """An idempotent call whose worker is SIGKILLed while running it is retried (CallRetried,
    kind crashed) on a different worker and returns its value; nothing fails."""
    gate = tmp_path / "go"
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        events = _Events(pool)
        result: list[str] = []

        async def caller() -> None:
            result.append(await pool.call(_faults.wait_for_file, str(gate), idempotent=True))

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool, describe="call running")
                victim = _busy(pool)
                pid = victim.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await wait_until(lambda: bool(events.of(CallRetried)), pool=pool, describe="the retry")
                gate.touch()
        assert result == [str(gate)]
        (retried,) = events.of(CallRetried)
        assert retried.worker_id == victim.id and retried.attempt == 2 and retried.kind is FailureKind.CRASHED
        (done,) = events.of(CallCompleted)
        assert done.worker_id is not None and done.worker_id != victim.id
        stats = pool.statistics()
        assert (stats.retries, stats.failed, stats.completed, stats.worker_crashes) == (1, 0, 1, 1)
        assert pid is not None and not pid_alive(pid)


async def test_sigkilled_call_that_is_not_idempotent_fails_and_calls_behind_it_do_not(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """One worker, pipeline depth 3: the running call (not idempotent) dies with its SIGKILLed
    worker (WorkerCrashed, RUNNING, not retried); the two calls pipelined behind it had not
    started, so they are requeued (CallRequeued, not CallRetried) and succeed on the replacement."""
    go = tmp_path / "go"
    async with _pool(poolkit_isolation, min_workers=1, pipeline_depth=3) as pool:
        events = _Events(pool)
        outcomes: dict[str, object] = {}

        async def call(name: str, target: Callable[..., Any], *args: Any) -> None:
            try:
                outcomes[name] = await pool.call(target, *args)
            except WorkerCrashed as exc:
                outcomes[name] = exc

        (victim,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "crash", _faults.kill_self_when, str(go))
                await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool, describe="crash sent")
                tg.start_soon(call, "a", targets.echo, "a")
                tg.start_soon(call, "b", targets.echo, "b")
                await wait_until(lambda: victim.load == 3, pool=pool, describe="two calls pipelined behind")
                go.touch()
        err = outcomes["crash"]
        assert isinstance(err, WorkerCrashed)
        assert err.phase is Phase.RUNNING and err.cause == "killed" and err.worker_id == victim.id
        assert (outcomes["a"], outcomes["b"]) == ("a", "b")
        assert len(events.of(CallRequeued, lambda e: e.worker_id == victim.id)) == 2
        assert not events.of(CallRetried)
        stats = pool.statistics()
        assert (stats.retries, stats.failed, stats.completed) == (0, 1, 2)


# ---- unresponsive workers ------------------------------------------------------------------------------
def _kill_time(events: _Events, worker_id: str) -> float:
    """When the pool decided to kill ``worker_id`` (its move to STOPPING)."""
    (kill,) = events.of(
        WorkerStateChanged, lambda e: e.worker_id == worker_id and e.to_state is WorkerState.STOPPING
    )
    return kill.at


@pytest.mark.parametrize(
    ("target", "args"),
    [
        pytest.param(targets.freeze, (), id="sigstop"),
        pytest.param(targets.stuck_in_c, (60,), id="stuck_in_c"),
    ],
)
async def test_frozen_worker_is_found_unresponsive_within_the_heartbeat_bound(
    poolkit_isolation: Isolation, target: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    """A worker that stops itself (SIGSTOP) or holds the GIL in C code answers no heartbeat:
    the pool kills it within (heartbeat_misses + 1) * heartbeat_interval of the call starting,
    fails the call with WorkerUnresponsive (RUNNING), and replaces the process."""
    async with _pool(
        poolkit_isolation, min_workers=1, heartbeat_interval=INTERVAL, heartbeat_misses=MISSES, kill_grace=0.2
    ) as pool:
        events = _Events(pool)
        (victim,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            start = anyio.current_time()
            with pytest.raises(WorkerUnresponsive) as info:
                await pool.call(target, *args)
            detected = _kill_time(events, victim.id) - start
            assert detected <= (MISSES + 1) * INTERVAL + scaled(SLACK), detected
            err = info.value
            assert err.phase is Phase.RUNNING and err.worker_id == victim.id and err.pid == victim.pid
            assert err.interval == INTERVAL and err.silent_for > MISSES * INTERVAL
            await _gone(pool, victim)
            (exited,) = events.of(WorkerExited, lambda e: e.worker_id == victim.id)
            assert exited.failure is FailureKind.UNRESPONSIVE
            assert pool.statistics().unresponsive == 1
            assert await pool.call(targets.echo, "after") == "after"


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
async def test_worker_stopped_from_outside_is_found_unresponsive(
    poolkit_isolation: Isolation, idempotent: bool
) -> None:
    """A worker SIGSTOPped from outside (FaultInjector.partition) with a call sent to it is
    killed within the heartbeat bound; the call succeeds on the replacement when idempotent,
    else fails with WorkerUnresponsive."""
    async with _pool(
        poolkit_isolation, min_workers=1, heartbeat_interval=INTERVAL, heartbeat_misses=MISSES, kill_grace=0.2
    ) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(30)):
            async with FaultInjector(pool).partition() as cut:
                stopped = anyio.current_time()
                if idempotent:
                    assert await pool.call(targets.echo, "x", idempotent=True) == "x"
                    (retried,) = events.of(CallRetried)
                    assert retried.kind is FailureKind.UNRESPONSIVE and retried.worker_id == cut.worker_id
                else:
                    with pytest.raises(WorkerUnresponsive) as info:
                        await pool.call(targets.echo, "x")
                    assert info.value.worker_id == cut.worker_id
            detected = _kill_time(events, cut.worker_id) - stopped
            assert detected <= (MISSES + 1) * INTERVAL + scaled(SLACK), detected
            pid = cut.pid
            assert pid is not None
            await wait_until(lambda: not pid_alive(pid), pool=pool, describe="stopped worker killed")
            await ensure_pool_ready(pool)
            assert pid not in _pids(pool)
            assert pool.statistics().unresponsive == 1


class _SlowToUnpickle:
    """An argument whose unpickling in the worker takes ``seconds`` (it becomes None there), as
    a large payload, or a target whose module is slow to import, does."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Callable[[float], None], tuple[float]]:
        return (time.sleep, (self.seconds,))


async def test_worker_busy_decoding_a_call_is_not_mistaken_for_a_hang(poolkit_isolation: Isolation) -> None:
    """A call whose arguments take 1.5 s to unpickle in the worker (more than
    (heartbeat_misses + 1) heartbeat intervals) is healthy work, not a hang: the worker keeps
    answering heartbeats, is not killed, and the call returns."""
    async with _pool(poolkit_isolation, min_workers=1, heartbeat_interval=0.2, heartbeat_misses=2) as pool:
        (worker,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            assert await pool.call(targets.echo, _SlowToUnpickle(1.5)) is None
        assert pool.statistics().unresponsive == 0
        assert [w.pid for w in pool.workers()] == [worker.pid]


async def test_long_healthy_call_keeps_answering_heartbeats(poolkit_isolation: Isolation) -> None:
    """A call running for many heartbeat intervals is not mistaken for a hang: the worker
    answers heartbeats while it runs (last_heard moves on during the call), and the call
    returns on the same process. Needs the runtime's heartbeat thread."""
    async with _pool(poolkit_isolation, min_workers=1, heartbeat_interval=0.2, heartbeat_misses=2) as pool:
        (worker,) = pool.workers()
        result: list[float] = []

        async def caller() -> None:
            result.append(await pool.call(targets.sleep, 1.5))

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: worker.load == 1, pool=pool, describe="call sent")
                began = anyio.current_time()
                await wait_until(
                    lambda: worker.last_heard > began + 4 * 0.2 or bool(result),
                    pool=pool,
                    describe="a heartbeat reply in the middle of the call",
                )
                assert not result, "the call ended before any mid-call heartbeat reply was seen"
        assert result == [1.5]
        stats = pool.statistics()
        assert stats.unresponsive == 0 and stats.worker_starts == 1
        assert [w.pid for w in pool.workers()] == [worker.pid]


# ---- memory ---------------------------------------------------------------------------------------------
#: Memory is checked on each heartbeat reply. Growing the worker by a few hundred MiB in one
#: allocation holds its GIL while the pages are zeroed (over a second on a loaded machine), so
#: these tests tolerate more missed replies: the worker must not be found unresponsive first.
MEMORY_HEARTBEATS: dict[str, Any] = {"heartbeat_interval": 0.5, "heartbeat_misses": 8}


def _memory_limit() -> tuple[int, int]:
    """A limit above this (parent) process's RSS, and how many MiB a worker must grow to pass it."""
    parent = vm_rss(os.getpid())
    assert parent is not None
    limit = max(parent, 64 * MiB) + 64 * MiB
    return limit, math.ceil(limit / MiB) + 32


async def _reported_rss(pool: Pool, worker: Worker) -> int:
    await wait_until(lambda: worker.rss is not None, pool=pool, describe="a heartbeat reply with the RSS")
    assert worker.rss is not None
    return worker.rss


async def test_memory_limit_kills_the_worker_with_the_childs_rss(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """recycle.memory_limit: the worker reports its own RSS; once the process itself holds
    more than the limit, the pool kills it and the call it was running fails with
    WorkerMemoryExceeded carrying the worker's RSS (above the limit, which is above the
    parent's own RSS: the parent's memory cannot have triggered it). The replacement serves."""
    limit, grow = _memory_limit()
    go = tmp_path / "go"
    async with _pool(
        poolkit_isolation,
        min_workers=1,
        pipeline_depth=2,
        **MEMORY_HEARTBEATS,
        recycle={"memory_limit": limit},
    ) as pool:
        (victim,) = pool.workers()
        assert victim.pid is not None
        child = vm_rss(victim.pid)
        reported = await _reported_rss(pool, victim)
        assert child is not None and abs(reported - child) < 16 * MiB, (reported, child)
        outcomes: list[object] = []

        async def call(target: Callable[..., Any], *args: Any) -> None:
            try:
                outcomes.append(await pool.call(target, *args))
            except WorkerMemoryExceeded as exc:
                outcomes.append(exc)

        with anyio.fail_after(scaled(60)):
            async with anyio.create_task_group() as tg:
                # The growth stays after the first call; the second keeps the worker busy, so
                # the next heartbeat finds a call to fail (whichever of the two is running).
                tg.start_soon(call, targets.grow_memory, grow)
                await wait_until(lambda: victim.load == 1, pool=pool, describe="grow sent")
                tg.start_soon(call, _faults.wait_for_file, str(go))
                await wait_until(
                    lambda: any(isinstance(o, WorkerMemoryExceeded) for o in outcomes),
                    pool=pool,
                    timeout=30,
                    describe="the memory limit to kill the worker",
                )
                go.touch()
        (err,) = [o for o in outcomes if isinstance(o, WorkerMemoryExceeded)]
        assert err.limit == limit and err.rss > limit
        assert err.pid == victim.pid and err.worker_id == victim.id and err.phase is Phase.RUNNING
        parent = vm_rss(os.getpid())
        assert parent is not None and parent < limit
        assert len(outcomes) == 2  # the other call succeeded (on the worker or its replacement)
        await _gone(pool, victim)
        assert pool.statistics().failed == 1


async def test_max_memory_recycles_the_worker_gracefully(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """recycle.max_memory: a worker whose own RSS passes the bound is retired, not killed:
    it finishes the call it holds, then exits; a replacement takes over and no call fails."""
    limit, grow = _memory_limit()
    go = tmp_path / "go"
    async with _pool(
        poolkit_isolation,
        min_workers=1,
        pipeline_depth=2,
        **MEMORY_HEARTBEATS,
        recycle={"max_memory": limit},
    ) as pool:
        events = _Events(pool)
        (old,) = pool.workers()
        assert old.pid is not None
        results: list[object] = []

        async def call(target: Callable[..., Any], *args: Any) -> None:
            results.append(await pool.call(target, *args))

        with anyio.fail_after(scaled(60)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, targets.grow_memory, grow)
                await wait_until(lambda: old.load == 1, pool=pool, describe="grow sent")
                tg.start_soon(call, _faults.wait_for_file, str(go))
                await wait_until(
                    lambda: bool(events.of(WorkerRecycled)),
                    pool=pool,
                    timeout=30,
                    describe="memory recycling",
                )
                assert old.state is WorkerState.RETIRING and pid_alive(old.pid)
                go.touch()
            assert sorted(map(str, results)) == sorted([str(grow), str(go)])
            (recycled,) = events.of(WorkerRecycled)
            assert recycled.worker_id == old.id and recycled.reason == "memory"
            assert [e.worker_id for e in events.of(CallCompleted)] == [old.id, old.id]
            await _gone(pool, old)
        stats = pool.statistics()
        assert stats.failed == 0 and stats.recycled == 1 and stats.worker_crashes == 0
        (exited,) = events.of(WorkerExited, lambda e: e.worker_id == old.id)
        assert exited.expected and exited.failure is None


# ---- recycling ------------------------------------------------------------------------------------------
async def test_max_calls_replaces_the_process_every_n_calls(poolkit_isolation: Isolation) -> None:
    """recycle.max_calls=3 (no jitter): each process serves exactly three calls, then is
    replaced by a new one; no call fails and the old processes are gone."""
    async with _pool(poolkit_isolation, min_workers=1, recycle={"max_calls": 3, "jitter": 0}) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(60)):
            pids = [await pool.call(targets.getpid) for _ in range(7)]
            assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
            assert len(set(pids)) == 3
            await wait_until(
                lambda: not pid_alive(pids[0]) and not pid_alive(pids[3]),
                pool=pool,
                describe="recycled processes gone",
            )
        assert [e.reason for e in events.of(WorkerRecycled)] == ["calls", "calls"]
        stats = pool.statistics()
        assert stats.failed == 0 and stats.recycled == 2 and stats.completed == 7


async def test_recycle_all_under_load_replaces_every_process_without_failing_a_call(
    poolkit_isolation: Isolation,
) -> None:
    """recycle_all() while four callers keep two workers busy: every original process is
    replaced by a new one of the next generation, and not a single call fails."""
    async with _pool(poolkit_isolation, min_workers=2, pipeline_depth=2) as pool:
        old = {w.id: w.pid for w in pool.workers()}
        stop = anyio.Event()

        async def caller() -> None:
            while not stop.is_set():
                assert await pool.call(targets.sleep, 0.005) == 0.005

        with anyio.fail_after(scaled(60)):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(caller)
                await wait_until(
                    lambda: pool.statistics().completed >= 20, pool=pool, describe="load running"
                )
                assert pool.recycle_all() == 1
                await wait_until(
                    lambda: not set(old) & {w.id for w in pool.workers()},
                    pool=pool,
                    describe="originals gone",
                )
                done = pool.statistics().completed
                await wait_until(
                    lambda: pool.statistics().completed >= done + 20,
                    pool=pool,
                    describe="new workers serving",
                )
                stop.set()
        stats = pool.statistics()
        assert stats.failed == 0 and stats.timed_out == 0 and stats.worker_crashes == 0
        assert stats.generation == 1 and stats.recycled == 2
        assert not any(pid is not None and pid_alive(pid) for pid in old.values())
        assert _pids(pool).isdisjoint(old.values()) and len(_pids(pool)) == 2


# ---- restart budget and breakers ------------------------------------------------------------------------
async def test_restart_budget_fails_the_pool_and_leaves_no_process(poolkit_isolation: Isolation) -> None:
    """A target that always crashes, with restart.max_restarts=2, no retries and no breaker:
    the third crash spends the budget, the pool FAILs, later calls raise PoolFailed naming
    the limit, and once closed no worker process of the pool is left."""
    async with _pool(
        poolkit_isolation,
        min_workers=2,
        restart={"max_restarts": 2, "window": 600, "backoff_initial": 0.01, "backoff_max": 0.05},
        retry={"max_attempts": 1},
        breaker={"enabled": False},
    ) as pool:
        seen = _pids(pool)
        with anyio.fail_after(scaled(60)):
            for _ in range(3):
                with pytest.raises(WorkerCrashed):
                    await pool.call(targets.crash)
                seen |= _pids(pool)
            with pytest.raises(PoolFailed) as info:
                await pool.call(targets.echo, 1)
        assert "restart.max_restarts=2" in str(info.value)
        assert isinstance(info.value.cause, WorkerCrashed) and info.value.cause.cause == "killed"
        stats = pool.statistics()
        assert stats.state is PoolState.FAILED and stats.worker_crashes == 3
    with anyio.fail_after(scaled(10)):
        await wait_until(
            lambda: not any(pid_alive(p) for p in seen), describe=f"every worker of the pool gone: {seen}"
        )
    assert tagged_processes(poolkit_isolation.tag) == []


async def test_target_breaker_opens_on_real_crashes_and_fails_fast(poolkit_isolation: Isolation) -> None:
    """failure_threshold=3: three real crashes of one target (a good call in between each,
    so the pool's own breaker stays closed) open that target's breaker. Its calls then fail
    fast with CircuitOpen (QUEUED, no process harmed) while other targets run; after
    reset_timeout on the pool's clock one trial goes through, and crashing re-opens the
    breaker for twice as long."""
    clock = ManualClock()
    name = "poolkit.testing.targets:crash"
    async with _pool(
        poolkit_isolation,
        clock=clock,
        min_workers=2,
        heartbeat_interval=None,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 3, "reset_timeout": 10.0},
    ) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(60)):
            for _ in range(3):
                with pytest.raises(WorkerCrashed):
                    await pool.call(targets.crash)
                assert await pool.call(targets.echo, "ok") == "ok"
            with pytest.raises(CircuitOpen) as info:
                await pool.call(targets.crash)
            err = info.value
            assert err.scope == name and err.failures == 3 and err.phase is Phase.QUEUED
            assert err.retry_after == pytest.approx(10.0)
            stats = pool.statistics()
            assert stats.open_breakers == (name,) and stats.breaker == "closed" and stats.worker_crashes == 3
            assert await pool.call(targets.echo, "still served") == "still served"

            clock.advance(10.0)
            with pytest.raises(WorkerCrashed):  # the half-open trial really runs, and crashes
                await pool.call(targets.crash)
            with pytest.raises(CircuitOpen) as info:
                await pool.call(targets.crash)
            assert info.value.retry_after == pytest.approx(20.0)
            await ensure_pool_ready(pool)
        moves = [
            (e.from_state, e.to_state) for e in events.of(BreakerStateChanged, lambda e: e.scope == name)
        ]
        assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]
        assert pool.statistics().worker_crashes == 4


async def test_pool_breaker_holds_restarts_until_its_cool_down(poolkit_isolation: Isolation) -> None:
    """Two worker deaths in a row (breaker.failure_threshold=2) open the pool's breaker: new
    calls fail fast with CircuitOpen(scope="pool") and no replacement process is started
    until reset_timeout passes on the pool's clock; then a replacement starts, the trial call
    succeeds and the breaker closes."""
    clock = ManualClock()
    async with _pool(
        poolkit_isolation,
        clock=clock,
        min_workers=1,
        heartbeat_interval=None,
        retry={"max_attempts": 1},
        breaker={"failure_threshold": 2, "reset_timeout": 10.0},
    ) as pool:
        events = _Events(pool)
        with anyio.fail_after(scaled(60)):
            with pytest.raises(WorkerCrashed):
                await pool.call(targets.crash)
            await ensure_pool_ready(pool)  # the first replacement is immediate
            with pytest.raises(WorkerCrashed):
                await pool.call(targets.crash)
            with pytest.raises(CircuitOpen) as info:
                await pool.call(targets.echo, 1)
            assert info.value.scope == "pool" and info.value.retry_after == pytest.approx(10.0)
            assert pool.statistics().breaker == "open" and not pool.workers()
            assert pool.statistics().worker_starts == 2
            clock.advance(10.0)
            await ensure_pool_ready(pool)
            assert await pool.call(targets.echo, "trial") == "trial"
        moves = [
            (e.from_state, e.to_state) for e in events.of(BreakerStateChanged, lambda e: e.scope == "pool")
        ]
        assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        stats = pool.statistics()
        assert stats.breaker == "closed" and stats.worker_starts == 3 and stats.worker_crashes == 2


# ---- sessions -------------------------------------------------------------------------------------------
async def test_session_state_lives_in_its_worker_process(poolkit_isolation: Isolation) -> None:
    """A session's calls all run on one real worker, which keeps the session's state between
    them; another session's state is separate, and plain calls in between do not disturb it."""
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        with anyio.fail_after(scaled(30)):
            async with pool.session("a") as a, pool.session("b") as b:
                assert await a.call(targets.remember, 1) == [1]
                assert await b.call(targets.remember, "x") == ["x"]
                bound = a.worker_id
                for n in range(2, 6):
                    assert await pool.call(targets.echo, n) == n
                    assert await a.call(targets.remember, n) == list(range(1, n + 1))
                assert await a.call(targets.session_calls) == 6
                assert await b.call(targets.remember, "y") == ["x", "y"]
                assert a.worker_id == bound and a.rebinds == 0 and b.rebinds == 0
            assert pool.statistics().sessions == 0


async def test_ended_session_state_is_dropped_in_the_worker(poolkit_isolation: Isolation) -> None:
    """Ending a session tells its worker to drop the state (SESSION_END): a new session with
    the same key on the same (only) worker starts empty. Needs the runtime's SESSION_END."""
    async with _pool(poolkit_isolation, min_workers=1) as pool:
        with anyio.fail_after(scaled(30)):
            async with pool.session("k") as s:
                assert await s.call(targets.remember, 1) == [1]
                assert await s.call(targets.remember, 2) == [1, 2]
            assert await pool.call(targets.remember, 3, session="k") == [3]


async def _bind_and_occupy(
    pool: Pool, session: PoolSession, tmp_path: Path, tg: anyio.abc.TaskGroup, into: list[object]
) -> tuple[Path, Path, Worker, Worker]:
    """Bind ``session`` (its state: [1]), then make both workers (pipeline depth 1) busy with a
    plain call each (started in ``tg``, outcomes into ``into``), waiting for a file. Returns
    (gate of the bound worker, gate of the other worker, bound worker, other worker)."""
    assert await session.call(targets.remember, 1) == [1]
    assert session.worker_id is not None
    bound = _worker(pool, session.worker_id)
    gates: dict[str, Path] = {}

    async def occupy(gate: Path) -> None:
        busy = len(gates) + 1
        tg.start_soon(_plain, pool, gate, into)
        await wait_until(lambda: pool.statistics().in_flight == busy, pool=pool, describe=f"{busy} busy")
        (worker,) = [w for w in pool.workers() if w.load and w.id not in gates]
        gates[worker.id] = gate

    await occupy(tmp_path / "gate0")
    await occupy(tmp_path / "gate1")
    (other,) = [w for w in pool.workers() if w.id != bound.id]
    return gates[bound.id], gates[other.id], bound, other


async def _plain(pool: Pool, gate: Path, into: list[object]) -> None:
    try:
        into.append(await pool.call(_faults.wait_for_file, str(gate)))
    except PoolError as exc:
        into.append(exc)


async def _call_later(session: PoolSession, value: object, into: list[object]) -> None:
    try:
        into.append(await session.call(targets.remember, value))
    except (SessionLost, SessionUnavailable, WorkerCrashed) as exc:
        into.append(exc)


async def test_strict_queue_session_waits_for_its_busy_worker(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """strict_queue: while the session's worker is busy its call waits, even when the other
    worker is free; once its worker is free it runs there, with the session's state."""
    async with _pool(poolkit_isolation, min_workers=2, pipeline_depth=1) as pool:
        s = pool.session("q", mode="strict_queue")
        plain: list[object] = []
        out: list[object] = []
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                mine, theirs, bound, other = await _bind_and_occupy(pool, s, tmp_path, tg, plain)
                tg.start_soon(_call_later, s, 2, out)
                await wait_until(
                    lambda: pool.statistics().queued == 1, pool=pool, describe="session call waits"
                )
                theirs.touch()
                await wait_until(lambda: other.state is WorkerState.READY, pool=pool, describe="other idle")
                assert pool.statistics().queued == 1 and not out  # still waiting for its own worker
                mine.touch()
            assert out == [[1, 2]] and sorted(map(str, plain)) == sorted([str(mine), str(theirs)])
            assert s.worker_id == bound.id and s.rebinds == 0
            await s.aclose()


async def test_hint_session_moves_to_a_free_worker_with_fresh_state(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """hint: when the session's worker is busy and another has room, the call moves there
    (SessionRebound, reason busy; rebinds == 1) and the session starts over with fresh state."""
    async with _pool(poolkit_isolation, min_workers=2, pipeline_depth=1) as pool:
        events = _Events(pool)
        s = pool.session("h", mode="hint")
        plain: list[object] = []
        out: list[object] = []
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                mine, theirs, bound, other = await _bind_and_occupy(pool, s, tmp_path, tg, plain)
                tg.start_soon(_call_later, s, 2, out)
                await wait_until(
                    lambda: pool.statistics().queued == 1, pool=pool, describe="session call waits"
                )
                theirs.touch()
                await wait_until(lambda: bool(out), pool=pool, describe="session call ran elsewhere")
                mine.touch()
            assert out == [[2]] and len(plain) == 2
            assert s.worker_id == other.id and s.rebinds == 1
            (moved,) = events.of(SessionRebound)
            assert (moved.from_worker, moved.worker_id, moved.reason) == (bound.id, other.id, "busy")
            assert await s.call(targets.remember, 3) == [2, 3]
            await s.aclose()


async def test_strict_fail_fast_session_refuses_while_its_worker_is_busy(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """strict_fail_fast: a call while the session's worker is busy fails at once with
    SessionUnavailable (reason busy, QUEUED); once the worker is free the session's state is
    intact."""
    async with _pool(poolkit_isolation, min_workers=2, pipeline_depth=1) as pool:
        s = pool.session("f", mode="strict_fail_fast")
        plain: list[object] = []
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                mine, theirs, bound, _ = await _bind_and_occupy(pool, s, tmp_path, tg, plain)
                with pytest.raises(SessionUnavailable) as info:
                    await s.call(targets.remember, 2)
                err = info.value
                assert err.reason == "busy" and err.phase is Phase.QUEUED and err.key == "f"
                theirs.touch()
                mine.touch()
            await wait_until(
                lambda: bound.state is WorkerState.READY, pool=pool, describe="bound worker free"
            )
            assert await s.call(targets.remember, 3) == [1, 3]
            assert s.worker_id == bound.id and len(plain) == 2
            await s.aclose()


async def test_hint_session_rebinds_after_its_worker_is_sigkilled(poolkit_isolation: Isolation) -> None:
    """hint: after the session's worker process is SIGKILLed, the next call rebinds to a live
    worker (reason worker_gone, rebinds == 1) and the state starts fresh."""
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        events = _Events(pool)
        s = pool.session("h", mode="hint")
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            victim = _worker(pool, s.worker_id)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            await _gone(pool, victim)
            lost_before = s.lost
            assert await s.call(targets.remember, 2) == [2]
            assert lost_before == "crashed" and s.lost is None
            assert s.rebinds == 1 and s.worker_id not in (None, victim.id)
            (moved,) = events.of(SessionRebound)
            assert moved.reason == "worker_gone" and moved.worker_id == s.worker_id
            await s.aclose()


async def test_strict_session_is_lost_with_its_sigkilled_worker(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """strict_queue: the session's worker is SIGKILLed while busy and a session call waits for
    it. The running (plain) call fails with WorkerCrashed, the waiting session call and every
    later one with SessionLost (reason crashed), until the session is ended: then the key
    starts a new, empty session."""
    async with _pool(poolkit_isolation, min_workers=2, pipeline_depth=1) as pool:
        s = pool.session("q", mode="strict_queue")
        plain: list[object] = []
        out: list[object] = []
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                _, theirs, bound, _ = await _bind_and_occupy(pool, s, tmp_path, tg, plain)
                tg.start_soon(_call_later, s, 2, out)
                await wait_until(
                    lambda: pool.statistics().queued == 1, pool=pool, describe="session call waits"
                )
                assert bound.pid is not None
                os.kill(bound.pid, signal.SIGKILL)
                await wait_until(lambda: bool(out) and bool(plain), pool=pool, describe="both calls to end")
                theirs.touch()
            (lost,) = out
            assert isinstance(lost, SessionLost) and lost.reason == "crashed" and lost.key == "q"
            crashed = [p for p in plain if isinstance(p, WorkerCrashed)]
            assert len(crashed) == 1 and crashed[0].worker_id == bound.id
            assert str(theirs) in plain
            with pytest.raises(SessionLost) as info:
                await s.call(targets.remember, 3)
            assert info.value.reason == "crashed" and s.lost == "crashed"
            await _gone(pool, bound)
            await s.aclose()
            assert await pool.call(targets.remember, 4, session="q") == [4]
            assert pool.statistics().worker_crashes == 1


class _ArrivesWhen:
    """An argument that, unpickled in the worker, waits until ``path`` exists and then is the
    path: it keeps any call (a session target's too) busy in its worker until the test says so."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_faults.wait_for_file, (self.path,))


async def test_strict_session_call_running_when_its_worker_dies_fails_with_the_crash(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """strict_queue: the session's worker is SIGKILLed while it runs a call of the session and
    another waits behind it. The running call fails with its own error (WorkerCrashed,
    RUNNING, not retried), the waiting one and later ones with SessionLost (crashed)."""
    gate = tmp_path / "go"
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        s = pool.session("q", mode="strict_queue")
        running: list[object] = []
        waiting: list[object] = []
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            bound = _worker(pool, s.worker_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_call_later, s, _ArrivesWhen(gate), running)
                await wait_until(lambda: bound.load == 1, pool=pool, describe="session call running")
                tg.start_soon(_call_later, s, 3, waiting)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="one behind it")
                assert bound.pid is not None
                os.kill(bound.pid, signal.SIGKILL)
            (crashed,) = running
            assert isinstance(crashed, WorkerCrashed) and crashed.phase is Phase.RUNNING
            assert crashed.worker_id == bound.id and crashed.cause == "killed"
            (lost,) = waiting
            assert isinstance(lost, SessionLost) and lost.reason == "crashed"
            with pytest.raises(SessionLost):
                await s.call(targets.remember, 4)
            assert pool.statistics().retries == 0
            await s.aclose()


async def test_strict_fail_fast_refuses_a_second_call_while_one_is_in_hand(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """strict_fail_fast: while a call of the session is in hand, another call of the same
    session fails at once with SessionUnavailable (busy); the first one is unaffected."""
    gate = tmp_path / "go"
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        s = pool.session("f", mode="strict_fail_fast")
        first: list[object] = []
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            bound = _worker(pool, s.worker_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_call_later, s, _ArrivesWhen(gate), first)
                await wait_until(lambda: bound.load == 1, pool=pool, describe="session call running")
                with pytest.raises(SessionUnavailable) as info:
                    await s.call(targets.remember, 2)
                assert info.value.reason == "busy" and info.value.phase is Phase.QUEUED
                gate.touch()
            assert first == [[1, str(gate)]]
            assert await s.call(targets.remember, 3) == [1, str(gate), 3]
            await s.aclose()


async def test_idempotent_hint_session_call_is_retried_on_a_new_worker_with_fresh_state(
    poolkit_isolation: Isolation, tmp_path: Path
) -> None:
    """hint: an idempotent session call whose worker is SIGKILLed mid-call is retried; the
    session moves to a live worker (worker_gone, rebinds == 1) and the retry sees fresh state."""
    gate = tmp_path / "go"
    async with _pool(poolkit_isolation, min_workers=2) as pool:
        events = _Events(pool)
        s = pool.session("h", mode="hint")
        result: list[object] = []
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            bound = _worker(pool, s.worker_id)

            async def caller() -> None:
                result.append(await s.call(targets.remember, _ArrivesWhen(gate), idempotent=True))

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await wait_until(lambda: bound.load == 1, pool=pool, describe="session call running")
                assert bound.pid is not None
                os.kill(bound.pid, signal.SIGKILL)
                await wait_until(lambda: bool(events.of(CallRetried)), pool=pool, describe="the retry")
                gate.touch()
            assert result == [[str(gate)]]
            assert s.rebinds == 1 and s.worker_id not in (None, bound.id)
            (moved,) = events.of(SessionRebound)
            assert moved.reason == "worker_gone"
            await s.aclose()


@pytest.mark.parametrize("mode", ["hint", "strict_queue"])
async def test_session_call_timeout_kills_the_worker_and_its_session_state(
    poolkit_isolation: Isolation, tmp_path: Path, mode: Literal["hint", "strict_queue", "strict_fail_fast"]
) -> None:
    """A session call that times out kills its worker, and the session's state goes with it
    (SessionStateLost, reason stopped): the very next call, made while that worker may still
    be exiting, raises SessionLost (strict) or runs on another worker with fresh state (hint)."""
    gate = tmp_path / "never"
    async with _pool(poolkit_isolation, min_workers=2, kill_grace=0.2) as pool:
        events = _Events(pool)
        s = pool.session("t", mode=mode)
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            assert s.worker_id is not None
            bound = _worker(pool, s.worker_id)
            with pytest.raises(CallTimeout):
                await s.call(targets.remember, _ArrivesWhen(gate), timeout=0.3)
            if mode == "hint":
                assert await s.call(targets.remember, 2) == [2]
                assert s.rebinds == 1 and s.worker_id != bound.id
            else:
                with pytest.raises(SessionLost) as info:
                    await s.call(targets.remember, 2)
                assert info.value.reason == "stopped"
            await _gone(pool, bound)
            (lost,) = events.of(SessionStateLost)
            assert (lost.key, lost.worker_id, lost.reason) == ("t", bound.id, "stopped")
            await s.aclose()


async def test_retiring_worker_serves_its_session_until_the_session_ends(
    poolkit_isolation: Isolation,
) -> None:
    """recycle_all() with a session bound: the old process keeps serving that session's calls
    (its state intact) while a new one serves everything else; when the session ends the old
    process exits. No call fails."""
    async with _pool(poolkit_isolation, min_workers=1) as pool:
        events = _Events(pool)
        s = pool.session("r", mode="strict_queue")
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            (old,) = pool.workers()
            assert old.pid is not None
            pool.recycle_all()
            await wait_until(lambda: len(pool.workers()) == 2, pool=pool, describe="replacement started")
            await ensure_pool_ready(pool)
            assert old.state is WorkerState.RETIRING
            assert await s.call(targets.remember, 2) == [1, 2]
            assert s.worker_id == old.id
            assert await pool.call(targets.getpid) != old.pid
            await s.aclose()
            await _gone(pool, old)
        (exited,) = events.of(WorkerExited, lambda e: e.worker_id == old.id)
        assert exited.expected and exited.failure is None
        assert pool.statistics().failed == 0


@pytest.mark.parametrize("mode", ["hint", "strict_queue"])
async def test_retiring_worker_drops_its_session_after_the_drain_timeout(
    poolkit_isolation: Isolation, mode: Literal["hint", "strict_queue", "strict_fail_fast"]
) -> None:
    """recycle.session_drain_timeout: a retiring worker holding an idle session exits once
    the bound passes; the session's state is lost with it (reason recycled): a strict session
    raises SessionLost, a hint session moves on with fresh state."""
    async with _pool(poolkit_isolation, min_workers=1, recycle={"session_drain_timeout": 0.5}) as pool:
        s = pool.session("d", mode=mode)
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            (old,) = pool.workers()
            pool.recycle_all()
            await _gone(pool, old)
            assert s.lost == "recycled"
            if mode == "hint":
                assert await s.call(targets.remember, 2) == [2]
                assert s.rebinds == 1
            else:
                with pytest.raises(SessionLost) as info:
                    await s.call(targets.remember, 2)
                assert info.value.reason == "recycled"
            await s.aclose()
        assert pool.statistics().worker_crashes == 0


async def test_max_lifetime_recycles_a_real_worker_on_the_pool_clock(poolkit_isolation: Isolation) -> None:
    """recycle.max_lifetime on a manual clock: nothing happens until the clock passes the
    lifetime; then the process is retired (WorkerRecycled, lifetime) and a new one serves."""
    clock = ManualClock()
    async with _pool(
        poolkit_isolation,
        clock=clock,
        min_workers=1,
        heartbeat_interval=None,
        recycle={"max_lifetime": 100.0, "jitter": 0},
    ) as pool:
        events = _Events(pool)
        (old,) = pool.workers()
        with anyio.fail_after(scaled(30)):
            assert await pool.call(targets.getpid) == old.pid
            clock.advance(99.0)
            assert await pool.call(targets.getpid) == old.pid
            assert not events.of(WorkerRecycled)
            clock.advance(1.0)
            await _gone(pool, old)
            assert await pool.call(targets.getpid) not in (None, old.pid)
        (recycled,) = events.of(WorkerRecycled)
        assert recycled.worker_id == old.id and recycled.reason == "lifetime"
        assert pool.statistics().failed == 0


@pytest.mark.parametrize("mode", ["hint", "strict_queue"])
async def test_session_ttl_expiry_drops_the_state_in_the_worker(
    poolkit_isolation: Isolation, mode: Literal["hint", "strict_queue", "strict_fail_fast"]
) -> None:
    """An idle session expires after sessions.ttl on the pool's (manual) clock: SessionExpired,
    and the worker really drops its state (one worker: a new session with
    the key starts empty). The expired handle rebinds (hint) or raises SessionLost (strict)."""
    clock = ManualClock()
    async with _pool(
        poolkit_isolation, clock=clock, min_workers=1, heartbeat_interval=None, sessions={"ttl": 10.0}
    ) as pool:
        events = _Events(pool)
        s = pool.session("t", mode=mode)
        with anyio.fail_after(scaled(30)):
            assert await s.call(targets.remember, 1) == [1]
            clock.advance(5.0)
            assert await s.call(targets.remember, 2) == [1, 2]  # used at t=5: expires at t=15
            clock.advance(9.0)
            assert await s.call(targets.remember, 3) == [1, 2, 3]  # within the ttl of its last use
            clock.advance(10.5)
            await wait_until(lambda: bool(events.of(SessionExpired)), pool=pool, describe="session expiry")
            (ended,) = events.of(SessionExpired)
            assert ended.key == "t" and ended.idle >= 10.0
            assert pool.statistics().sessions == 0
            if mode == "hint":
                assert await s.call(targets.remember, 4) == [4]
                assert s.rebinds == 1
            else:
                with pytest.raises(SessionLost) as info:
                    await s.call(targets.remember, 4)
                assert info.value.reason == "expired"
                assert await pool.call(targets.remember, 5, session="t") == [5]
            await s.aclose()
