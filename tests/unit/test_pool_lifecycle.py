"""Pool lifecycle over in-memory fake workers: startup failure, drain, close, and failure at run
time. After every close, no fake worker may be left running."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import pytest

from _util import scaled, wait_until
from poolkit import (
    Event,
    Phase,
    Pool,
    PoolClosed,
    PoolConfig,
    PoolFailed,
    PoolState,
    PoolStateChanged,
    WorkerCrashed,
    WorkerStartupError,
    WorkerState,
)
from poolkit._transport import Connection
from poolkit.testing import MockScript
from poolkit.testing._bridge import BridgeLauncher, _FakeWorker, _MemoryConnection
from unit._targets import RUNS, TARGET, Outcome, add, crash_segv, new_gate, record, wait_for

pytestmark = pytest.mark.anyio


def all_exited(launcher: BridgeLauncher) -> bool:
    return all(conn.returncode is not None for conn in launcher.connections)


class HeldLauncher(BridgeLauncher):
    """Starts the first ``free`` workers normally. Later ones are held until ``hold`` is set:
    in ``launch`` (the worker stays SPAWNING) or, with ``hold_handshake``, after the launch
    (the fake process exists but says nothing, so the worker stays STARTING)."""

    def __init__(self, *, free: int, hold_handshake: bool = False) -> None:
        super().__init__()
        self.free = free
        self.hold_handshake = hold_handshake
        self.launches = 0
        self.hold: anyio.Event | None = None

    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> Connection:
        self.launches += 1
        hold = self.hold
        if self.launches <= self.free or hold is None:
            return await super().launch(
                spec, command=command, python=python, env=env, cwd=cwd, task_group=task_group
            )
        if not self.hold_handshake:
            await hold.wait()
            return await super().launch(
                spec, command=command, python=python, env=env, cwd=cwd, task_group=task_group
            )
        conn = _MemoryConnection()
        self.connections.append(conn)

        async def start_later() -> None:
            await hold.wait()
            await _FakeWorker(conn, dict(spec), None).run()

        task_group.start_soon(start_later)
        return conn


# ---- startup failure -----------------------------------------------------------------------------
async def test_startup_failure_fails_the_pool_with_the_worker_traceback() -> None:
    """Workers that fail to start make ``async with Pool(...)`` raise PoolFailed carrying the
    worker's traceback, after exactly max_startup_failures attempts (no crash loop), and leave
    nothing running."""
    launcher = BridgeLauncher(startup_error="No module named nope")
    pool = Pool(launcher=launcher, min_workers=1, max_startup_failures=2)
    entered = False
    with anyio.fail_after(scaled(10)):
        with pytest.raises(PoolFailed) as info:
            async with pool:
                entered = True
    assert not entered
    err = info.value
    assert "No module named nope" in str(err)
    assert "Traceback in the worker" in str(err)
    assert err.failures == 2
    cause = err.cause
    assert isinstance(cause, WorkerStartupError)
    assert err.__cause__ is cause
    assert cause.remote_type == "builtins.ImportError"
    assert cause.remote_traceback is not None
    assert "ImportError: No module named nope" in cause.remote_traceback
    stats = pool.statistics()
    assert stats.startup_failures == 2
    assert stats.worker_starts == 2
    assert stats.state is PoolState.CLOSED
    assert stats.workers == ()
    assert len(launcher.connections) == 2
    assert all_exited(launcher)


@pytest.mark.parametrize(
    ("handler", "expected"),
    [("BadSetup", "RuntimeError: setup exploded"), ("Missing", "AttributeError")],
)
async def test_handler_that_cannot_start_fails_the_pool(handler: str, expected: str) -> None:
    """A handler whose setup raises, or that does not exist, is a startup failure reported with
    the worker's traceback."""
    launcher = BridgeLauncher()
    pool = Pool(
        launcher=launcher, min_workers=1, max_startup_failures=1, worker={"handler": TARGET + handler}
    )
    with anyio.fail_after(scaled(10)):
        with pytest.raises(PoolFailed, match=expected):
            async with pool:
                pass
    assert pool.statistics().startup_failures == 1
    assert all_exited(launcher)


async def test_startup_failures_at_run_time_fail_the_pool() -> None:
    """If replacement workers keep failing to start, the pool fails: waiting and new calls raise
    PoolFailed instead of hanging, and closing it still works."""
    launcher = BridgeLauncher()
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, max_startup_failures=2) as pool:
            launcher.startup_error = "No module named nope"
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
            with pytest.raises(PoolFailed, match="No module named nope"):
                await pool.call(record, "stranded")  # queued for a replacement that never comes
            await wait_until(lambda: pool.state is PoolState.FAILED, 10, "the pool to fail")
            with pytest.raises(PoolFailed):
                await pool.call(add, 1, 2)
            stats = pool.statistics()
            assert stats.startup_failures == 2
            assert stats.worker_starts == 3
    assert pool.state is PoolState.CLOSED
    assert RUNS["stranded"] == 0
    assert all_exited(launcher)


@pytest.mark.parametrize("layer", ["mock", "bridge"])
async def test_overlapping_startup_failures_report_the_limit_they_reached(layer: str) -> None:
    """min_workers above max_startup_failures: the starts overlap, and more of them fail than
    the limit allows. The pool fails once, at the failure that reaches the limit: PoolFailed
    says exactly max_startup_failures, not a count inflated by the starts still in flight, and
    no start is begun after it (at most one replacement per failure before it)."""
    if layer == "mock":
        pool = Pool(
            worker_factory=MockScript(startup_error="No module named nope").factory(),
            min_workers=5,
            max_startup_failures=3,
        )
    else:
        pool = Pool(
            launcher=BridgeLauncher(startup_error="No module named nope"),
            min_workers=5,
            max_startup_failures=3,
        )
    events: list[Event] = []
    pool.subscribe(events.append)
    with anyio.fail_after(scaled(10)):
        with pytest.raises(PoolFailed) as info:
            async with pool:
                pass
    err = info.value
    assert err.failures == 3
    assert "after 3 consecutive worker startup failures" in str(err)
    assert isinstance(err.cause, WorkerStartupError)
    failed = [e for e in events if isinstance(e, PoolStateChanged) and e.to_state is PoolState.FAILED]
    assert len(failed) == 1 and "after 3 consecutive" in failed[0].reason
    stats = pool.statistics()
    assert 3 <= stats.startup_failures <= stats.worker_starts <= 5 + (3 - 1)
    assert stats.state is PoolState.CLOSED and stats.workers == ()


async def test_overlapping_startup_failures_at_run_time_count_true_but_fail_once() -> None:
    """Scale-up starts several workers at once and they all fail to start: every failure counts
    in statistics().startup_failures, but the pool failed at the third (max_startup_failures),
    and its PoolFailed keeps saying 3 however many starts in flight then fail after it."""
    launcher = BridgeLauncher()
    pool = Pool(launcher=launcher, min_workers=1, max_workers=6, pipeline_depth=1, max_startup_failures=3)
    with anyio.fail_after(scaled(10)):
        async with pool:
            busy = pool.workers()[0].id
            launcher.startup_error = "No module named nope"
            gate = new_gate("held")
            held, queued = Outcome(), [Outcome() for _ in range(5)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(held.capture, pool.call, wait_for, "held", "done")
                await gate.entered.wait()  # the only worker is busy: more calls scale the pool up
                for i, outcome in enumerate(queued):
                    tg.start_soon(outcome.capture, pool.call, record, f"stranded-{i}")
                await wait_until(
                    lambda: pool.state is PoolState.FAILED and [w.id for w in pool.workers()] == [busy],
                    10,
                    "the pool to fail and every start in flight to end",
                )
                gate.release.set()
            stats = pool.statistics()
            assert stats.startup_failures == stats.worker_starts - 1 > 3  # each failed start counted
            assert held.value == "done"  # the call already running is not failed by it
            for outcome in queued:
                assert isinstance(outcome.error, PoolFailed) and outcome.error.failures == 3
            with pytest.raises(PoolFailed) as info:
                await pool.call(add, 1, 2)
            assert info.value.failures == 3
            assert "after 3 consecutive worker startup failures" in str(info.value)
    assert all(RUNS[f"stranded-{i}"] == 0 for i in range(5))
    assert all_exited(launcher)


# ---- drain and close -----------------------------------------------------------------------------
async def test_close_drains_calls_in_flight_and_refuses_new_ones() -> None:
    """aclose() lets a call in flight finish; calls made meanwhile or afterwards raise PoolClosed;
    the worker then exits cleanly (SHUTDOWN, exit status 0)."""
    launcher = BridgeLauncher()
    inflight, refused = Outcome(), Outcome()
    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg:
            pool = Pool(launcher=launcher, min_workers=1)
            await pool.start()
            gate = new_gate("drain")
            tg.start_soon(inflight.capture, pool.call, wait_for, "drain", "finished")
            await gate.entered.wait()

            async def while_draining() -> None:
                await wait_until(lambda: pool.state is PoolState.DRAINING, 10, "the pool to drain")
                await refused.capture(pool.call, add, 1, 2)
                assert not inflight.ended.is_set()
                assert pool.statistics().workers[0].state is WorkerState.BUSY
                gate.release.set()

            tg.start_soon(while_draining)
            await pool.aclose()
            assert pool.state is PoolState.CLOSED
        assert inflight.value == "finished", inflight.error
        assert isinstance(refused.error, PoolClosed)
        with pytest.raises(PoolClosed, match="closed"):
            await pool.call(add, 1, 2)
        await pool.aclose()  # a second close is a no-op
    assert pool.statistics().workers == ()
    assert [conn.returncode for conn in launcher.connections] == [0]


async def test_drain_timeout_fails_calls_in_flight_and_stops_workers() -> None:
    """When calls outlast drain_timeout, closing fails them with PoolClosed (the running one with
    phase RUNNING, the one sent behind it with phase SENT, which never runs) and kills the
    workers."""
    launcher = BridgeLauncher()
    running, behind = Outcome(), Outcome()
    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg:
            pool = Pool(launcher=launcher, min_workers=1, pipeline_depth=2, drain_timeout=0.05)
            await pool.start()
            gate = new_gate("forever")
            tg.start_soon(running.capture, pool.call, wait_for, "forever")
            await gate.entered.wait()
            tg.start_soon(behind.capture, pool.call, record, "behind")
            await wait_until(lambda: pool.statistics().in_flight == 2, 10, "two calls in flight")
            await pool.aclose()
    assert isinstance(running.error, PoolClosed)
    assert running.error.phase is Phase.RUNNING
    assert isinstance(behind.error, PoolClosed)
    assert behind.error.phase is Phase.SENT
    assert RUNS["behind"] == 0
    assert pool.state is PoolState.CLOSED
    assert pool.workers() == ()
    assert all_exited(launcher)
    assert launcher.connections[0].returncode == -15


async def test_error_in_the_pool_block_closes_without_draining() -> None:
    """Leaving ``async with pool`` by an exception does not wait for calls in flight: they fail
    with PoolClosed and the exception propagates."""
    launcher = BridgeLauncher()
    running = Outcome()
    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg:
            with pytest.raises(KeyError):
                async with Pool(launcher=launcher, min_workers=1, drain_timeout=scaled(60)) as pool:
                    gate = new_gate("forever")
                    tg.start_soon(running.capture, pool.call, wait_for, "forever")
                    await gate.entered.wait()
                    raise KeyError("body failed")
    assert isinstance(running.error, PoolClosed)
    assert all_exited(launcher)


async def test_pool_that_never_started_refuses_calls() -> None:
    """A pool that was never started, or closed without starting, raises PoolClosed on calls;
    the first says it is not started and how to start it."""
    pool = Pool(launcher=BridgeLauncher(), min_workers=1)
    with pytest.raises(PoolClosed, match=r"is not started .*'async with Pool\(\.\.\.\) as pool:'"):
        await pool.call(add, 1, 2)
    await pool.aclose()
    assert pool.state is PoolState.CLOSED
    with pytest.raises(PoolClosed):
        await pool.call(add, 1, 2)


async def test_a_pool_starts_once() -> None:
    """Entering or starting a pool a second time, or after it closed, says what is wrong
    (it raised IllegalTransition, "always a bug in poolkit")."""
    with anyio.fail_after(scaled(10)):
        pool = Pool(launcher=BridgeLauncher(), min_workers=1)
        async with pool:
            with pytest.raises(RuntimeError, match="already started"):
                await pool.start()
            with pytest.raises(RuntimeError, match="already started"):
                async with pool:
                    pass
            assert await pool.call(add, 1, 2) == 3
        for again in (pool.start, pool.__aenter__):
            with pytest.raises(PoolClosed, match=r"is closed .*a pool runs once: create a new Pool"):
                await again()
        assert pool.state is PoolState.CLOSED


async def test_a_call_from_another_thread_is_refused_before_it_touches_the_pool() -> None:
    """A pool belongs to the event loop that started it. A call from another thread's loop
    is refused at once (on trio it wedged a worker until its heartbeat killed it)."""

    def from_another_loop(backend: str) -> BaseException | None:
        async def call() -> None:
            await pool.call(add, 1, 2)

        try:
            anyio.run(call, backend=backend)
        except BaseException as exc:
            return exc
        return None

    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=BridgeLauncher(), min_workers=1) as pool:
            for backend in ("asyncio", "trio"):
                error = await anyio.to_thread.run_sync(from_another_loop, backend)
                assert isinstance(error, RuntimeError)
                assert "belongs to the event loop (thread) that started it" in str(error)
            assert await pool.call(add, 1, 2) == 3
            assert pool.statistics().completed == 1


async def test_cancelled_aclose_still_stops_everything_and_exits_the_task_group() -> None:
    """aclose() cut short by an outer timeout while it drains: the workers are stopped, the
    pool is CLOSED, and its task group is exited in the task that entered it (it was left
    open, and the caller's cancel scopes then failed: "Attempted to exit a cancel scope that
    isn't the current task's current cancel scope" on asyncio, TrioInternalError on trio)."""
    launcher = BridgeLauncher()
    gate = new_gate("held")
    with anyio.fail_after(scaled(10)):
        with anyio.move_on_after(scaled(0.5)) as outer:
            async with anyio.create_task_group() as tg:
                pool = Pool(launcher=launcher, min_workers=1)
                await pool.start()
                tg.start_soon(pool.call, wait_for, "held", "h")
                await gate.entered.wait()
                await pool.aclose()  # drains until the outer deadline cancels it
        assert outer.cancelled_caught
        assert pool.state is PoolState.CLOSED
        assert all_exited(launcher)
        async with Pool(launcher=BridgeLauncher(), min_workers=1) as again:  # scopes still sane
            assert await again.call(add, 1, 2) == 3


async def test_close_cut_short_while_its_workers_wind_down_ends_closed() -> None:
    """The pool's block left by an outer timeout while it drains: the close runs shielded and
    ends CLOSED, and a later aclose() returns (on trio a worker's task group could refuse the
    kill's escalation task in that window, the close raised, and the pool stayed DRAINING:
    a later aclose() waited forever)."""
    for _ in range(5):
        launcher = BridgeLauncher()
        gate = new_gate("held")
        with anyio.fail_after(scaled(10)):
            with anyio.move_on_after(scaled(0.3)):
                async with anyio.create_task_group() as tg, Pool(launcher=launcher, min_workers=1) as pool:
                    tg.start_soon(pool.call, wait_for, "held", "h")
                    await gate.entered.wait()
            await pool.aclose()
            assert pool.state is PoolState.CLOSED
            assert all_exited(launcher)


async def test_config_and_overrides_are_merged() -> None:
    """Pool(config, **overrides) validates the merged fields; the pool is named from them."""
    base = PoolConfig(min_workers=1, name="base")
    with anyio.fail_after(scaled(10)):
        async with Pool(base, name="merged", pipeline_depth=3, launcher=BridgeLauncher()) as pool:
            assert pool.config.name == "merged"
            assert pool.config.pipeline_depth == 3
            assert pool.config.min_workers == 1
            assert pool.name == "merged"
            assert pool.statistics().name == "merged"
            assert await pool.call(add, 1, 2) == 3
    assert base.name == "base"


# ---- closing while a replacement worker is starting ---------------------------------------------
def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_close_while_a_worker_is_spawning_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    """Closing the pool while a replacement worker is still being launched stops it without
    internal errors, and leaves nothing running."""
    launcher = HeldLauncher(free=1)
    launcher.hold = anyio.Event()
    hold = launcher.hold
    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg, Pool(launcher=launcher, min_workers=1) as pool:
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
            await wait_until(lambda: launcher.launches == 2, 10, "the replacement's launch")
            (worker,) = pool.workers()
            assert worker.state is WorkerState.SPAWNING

            async def release_when_closing() -> None:
                # The pool asks its workers to stop in the same step that makes it DRAINING.
                await wait_until(lambda: pool.state is PoolState.DRAINING, 10, "the pool to close")
                hold.set()

            tg.start_soon(release_when_closing)
    assert pool.workers() == ()
    assert all_exited(launcher)
    assert _errors(caplog) == []
    assert pool.statistics().startup_failures == 0  # a start cut short by closing is no failure


async def test_close_while_a_worker_is_starting_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    """Closing the pool while a replacement worker has not sent its handshake yet stops it
    without internal errors, and leaves nothing running."""
    launcher = HeldLauncher(free=1, hold_handshake=True)
    launcher.hold = anyio.Event()
    hold = launcher.hold
    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg, Pool(launcher=launcher, min_workers=1) as pool:
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
            await wait_until(
                lambda: [w.state for w in pool.workers()] == [WorkerState.STARTING],
                10,
                "the replacement to wait for its handshake",
            )

            async def release_when_closing() -> None:
                # The pool asks its workers to stop in the same step that makes it DRAINING.
                await wait_until(lambda: pool.state is PoolState.DRAINING, 10, "the pool to close")
                hold.set()

            tg.start_soon(release_when_closing)
    assert pool.workers() == ()
    assert all_exited(launcher)
    assert _errors(caplog) == []
    assert pool.statistics().startup_failures == 0  # a start cut short by closing is no failure
