"""Failure handling with real worker processes: crash isolation, timeout kill, cancellation,
startup failure, oversize payloads, and output that must never corrupt the protocol."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

import poolkit
from _util import pid_alive, scaled, wait_until
from integration import _faults
from poolkit import CallTimeout, Phase, Pool, PoolFailed, WorkerCrashed, WorkerState

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]


def _ready(pool: Pool) -> int:
    return pool.statistics().workers_in(WorkerState.READY)


async def test_crash_fails_only_the_running_call_and_the_pool_refills() -> None:
    """Two workers; one is SIGKILLed mid-call. Only that call fails (WorkerCrashed with the
    signal, worker id, pid and RUNNING phase); calls running on the other worker and calls
    sent afterwards succeed, and the pool is back to two ready workers."""
    async with Pool(min_workers=2, pipeline_depth=1) as pool:
        results: dict[str, object] = {}

        async def slow() -> None:
            results["slow"] = await pool.call(_faults.sleep, 0.3)

        async def crash() -> None:
            try:
                await pool.call(_faults.kill_self)
            except WorkerCrashed as exc:
                results["crash"] = exc

        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "slow call dispatched")
                tg.start_soon(crash)
        err = results["crash"]
        assert isinstance(err, WorkerCrashed)
        assert err.signal == signal.SIGKILL and err.exit_code is None
        assert err.phase is Phase.RUNNING and not err.retry_safe
        assert err.worker_id is not None and err.pid is not None
        assert results["slow"] == 0.3
        await wait_until(lambda: _ready(pool) == 2, 20, f"two ready workers: {pool!r}")
        stats = pool.statistics()
        assert stats.worker_crashes == 1 and stats.worker_starts == 3
        assert await pool.call(_faults.echo, 1) == 1


async def test_calls_pipelined_behind_a_crash_are_rerun_elsewhere(tmp_path: Path) -> None:
    """With one worker and pipeline depth 3, a crashing call fails alone; the two calls sent
    behind it had not started, so they are resent to the replacement and succeed."""
    go = tmp_path / "go"
    async with Pool(min_workers=1, pipeline_depth=3) as pool:
        outcomes: list[object] = []

        async def call(target: object, *args: object) -> None:
            try:
                outcomes.append(await pool.call(target, *args))  # type: ignore[arg-type]
            except poolkit.PoolError as exc:
                outcomes.append(type(exc))

        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, _faults.kill_self_when, str(go))
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "crash call sent")
                tg.start_soon(call, _faults.echo, "a")
                tg.start_soon(call, _faults.echo, "b")
                await wait_until(
                    lambda: pool.statistics().in_flight == 3, 10, "two calls pipelined behind it"
                )
                go.touch()
        assert sorted(map(str, outcomes)) == sorted(map(str, [WorkerCrashed, "a", "b"]))


async def test_timeout_kills_a_worker_stuck_in_c_code_ignoring_sigterm() -> None:
    """A call stuck in C code with SIGTERM ignored times out at its deadline with CallTimeout
    (a TimeoutError, RUNNING phase); its worker is escalated to SIGKILL and replaced."""
    async with Pool(min_workers=1, kill_grace=0.2) as pool:
        old_pid = pool.statistics().workers[0].pid
        assert old_pid is not None
        start = anyio.current_time()
        with anyio.fail_after(scaled(20)), pytest.raises(CallTimeout) as info:
            await pool.call(_faults.stuck_ignoring_sigterm, 60, timeout=0.5)
        elapsed = anyio.current_time() - start
        assert isinstance(info.value, TimeoutError)
        assert info.value.phase is Phase.RUNNING and info.value.pid == old_pid
        assert 0.5 <= elapsed < 0.5 + scaled(1.0)
        await wait_until(lambda: not pid_alive(old_pid), 10, f"stuck worker {old_pid} killed")
        await wait_until(lambda: _ready(pool) == 1, 20, "replacement ready")
        # The replacement starts as soon as the kill is decided, not once the process is gone.
        await wait_until(
            lambda: (
                [w.pid for w in pool.statistics().workers] != [old_pid]
                and len(pool.statistics().workers) == 1
            ),
            10,
            "only the replacement left",
        )
        assert await pool.call(_faults.echo, "ok") == "ok"


async def test_cancelling_a_running_call_stops_it_and_the_pool_keeps_serving() -> None:
    """Cancelling the caller of a running call kills that worker (the only way to stop running
    Python code), re-raises the cancellation unchanged, and the pool replaces the worker."""
    async with Pool(min_workers=1) as pool:
        old_pid = pool.statistics().workers[0].pid
        assert old_pid is not None
        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await pool.call(_faults.sleep, 60)

                tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "call running")
                scope.cancel()
        assert scope.cancelled_caught
        await wait_until(lambda: not pid_alive(old_pid), 10, "cancelled call's worker killed")
        assert await pool.call(_faults.echo, "after") == "after"
        assert pool.statistics().cancelled == 1


async def test_target_that_fails_to_import_fails_startup_with_the_child_traceback() -> None:
    """A handler that cannot be imported makes the pool fail to start with PoolFailed carrying
    the worker's own traceback; restarts are bounded (no crash loop) and no process remains."""
    spec = poolkit.WorkerSpec(handler="no_such_module_anywhere:Handler")
    pool = Pool(min_workers=1, worker=spec, max_startup_failures=2)
    with anyio.fail_after(scaled(30)), pytest.raises(PoolFailed) as info:
        async with pool:
            pass
    err = info.value
    assert isinstance(err.cause, poolkit.WorkerStartupError)
    assert "ModuleNotFoundError" in str(err) and "no_such_module_anywhere" in str(err)
    assert err.cause.remote_traceback and "Traceback" in err.cause.remote_traceback
    stats = pool.statistics()
    assert stats.startup_failures == 2 and stats.worker_starts == 2
    assert stats.state is poolkit.PoolState.CLOSED and not stats.workers


async def test_payload_over_the_frame_limit_is_refused_before_sending() -> None:
    """An argument larger than max_frame_size fails with PayloadTooLarge naming the limit,
    nothing is sent, and a result over the limit fails in the worker with the same error."""
    async with Pool(min_workers=1, max_frame_size=4096) as pool:
        with pytest.raises(poolkit.PayloadTooLarge, match="max_frame_size=4096") as info:
            await pool.call(_faults.echo, b"x" * 10_000)
        assert info.value.phase is Phase.QUEUED
        with anyio.fail_after(scaled(20)), pytest.raises(poolkit.PayloadTooLarge):
            await pool.call("builtins:bytes", 10_000)
        assert await pool.call(_faults.echo, "small") == "small"


async def test_worker_output_never_corrupts_the_protocol(caplog: pytest.LogCaptureFixture) -> None:
    """A target printing to stdout/stderr, and writing raw bytes (even frame-like ones) to fds
    1 and 2, still returns its value; the lines reach the parent's log tagged with the worker."""
    caplog.set_level("INFO", logger="poolkit.worker")
    async with Pool(min_workers=1) as pool:
        with anyio.fail_after(scaled(20)):
            assert await pool.call(_faults.chatty, 3) == 3
            assert await pool.call(_faults.echo, "clean") == "clean"
            await wait_until(
                lambda: any("raw fd2 bytes" in str(r.__dict__.get("line")) for r in caplog.records),
                10,
                "stderr lines logged",
            )
    lines = [r.__dict__.get("line") for r in caplog.records if r.name == "poolkit.worker"]
    assert "stdout line 0" in lines and "stderr line 2" in lines
    assert all(r.__dict__.get("worker_id") for r in caplog.records if r.name == "poolkit.worker")
