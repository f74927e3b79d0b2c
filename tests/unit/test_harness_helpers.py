"""The harness's deterministic helpers: Sequencer, ManualClock, wait_until, ensure_pool_ready,
timeout_factor, unique names, LeakCheck."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from poolkit import Pool, PoolState
from poolkit.testing import (
    TAG_ENV,
    BridgeLauncher,
    FaultInjector,
    Layer,
    LeakCheck,
    ManualClock,
    MockScript,
    PoolNotReady,
    Sequencer,
    WaitTimeout,
    ensure_pool_ready,
    kill_tagged,
    pool_for,
    tagged_processes,
    timeout_factor,
    unique_name,
    wait_until,
)


@pytest.mark.anyio
async def test_sequencer_orders_concurrent_steps() -> None:
    """Steps run in their number's order whatever order the tasks start in."""
    seq = Sequencer()
    order: list[str] = []

    async def a() -> None:
        async with seq(1):
            order.append("a1")
        async with seq(3):
            order.append("a3")

    async def b() -> None:
        async with seq(0):
            order.append("b0")
        async with seq(2):
            order.append("b2")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a)
            tg.start_soon(b)
    assert order == ["b0", "a1", "b2", "a3"]


def test_manual_clock_moves_only_forward_when_told() -> None:
    """ManualClock reads its own time, advances on request, and refuses to go back."""
    clock = ManualClock(10.0)
    assert clock() == 10.0
    clock.advance(2.5)
    assert clock() == 12.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


@pytest.mark.anyio
async def test_wait_until_wakes_on_pool_events_and_reports_the_pool_on_timeout() -> None:
    """wait_until returns as soon as the pool does the thing, and on timeout fails with what it
    waited for and the pool's state."""
    async with Pool(min_workers=1, launcher=BridgeLauncher()) as pool:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.call, "poolkit.testing.targets:echo", 1)
            await wait_until(lambda: pool.statistics().completed == 1, pool=pool, describe="one call done")
        with pytest.raises(WaitTimeout) as info:
            await wait_until(lambda: False, timeout=0.1, describe="the impossible", pool=pool, poll=0.02)
    message = str(info.value)
    assert "the impossible" in message and "statistics" in message and "running" in message


def test_unique_names_differ_and_carry_the_xdist_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names never repeat in a run and include the xdist worker id when there is one."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    names = {unique_name("t") for _ in range(50)}
    assert len(names) == 50 and all("-gw3-" in n for n in names)


def test_leak_check_finds_tagged_processes_and_kill_tagged_spares_the_rest() -> None:
    """A process carrying the tag is reported as a leak and killed by kill_tagged; an untagged
    process (the test runner's own kind) is left alone."""
    tag = unique_name("leak")
    check = LeakCheck(tag)
    check.start()
    code = "import time; time.sleep(60)"  # sleep-ok: dummy processes to find and kill, not a wait
    with (
        subprocess.Popen([sys.executable, "-c", code], env={**os.environ, TAG_ENV: tag}) as tagged,
        subprocess.Popen([sys.executable, "-c", code]) as other,
    ):
        try:
            assert _wait_for(lambda: tagged.pid in tagged_processes(tag))
            assert any(str(tagged.pid) in leak for leak in check.leaks())
            assert kill_tagged(tag) == [tagged.pid]
            assert tagged.wait(timeout=10) == -9
            assert other.poll() is None
        finally:
            other.kill()
            tagged.kill()


def _wait_for(predicate: object) -> bool:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.anyio
async def test_wait_until_refuses_an_async_predicate() -> None:
    """An async predicate would make wait_until return at once (a coroutine is truthy): it is a
    TypeError, whether the predicate is a coroutine function or returns an awaitable."""

    async def ready() -> bool:
        return False

    with pytest.raises(TypeError, match="synchronous predicate"):
        await wait_until(ready)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="synchronous predicate"):
        await wait_until(lambda: ready())  # type: ignore[arg-type,return-value]


@pytest.mark.anyio
async def test_ensure_pool_ready_fails_fast_on_a_pool_that_cannot_be_ready() -> None:
    """A pool never started, or already closed, cannot become ready: ensure_pool_ready says so
    at once (PoolNotReady naming the reason) instead of waiting out its timeout."""
    pool = Pool(min_workers=1, launcher=BridgeLauncher())
    with anyio.fail_after(5), pytest.raises(PoolNotReady, match="never started") as info:
        await ensure_pool_ready(pool, timeout=60)
    assert info.value.state is PoolState.CREATED
    async with pool:
        await ensure_pool_ready(pool)
    with anyio.fail_after(5), pytest.raises(PoolNotReady, match="closed"):
        await ensure_pool_ready(pool, timeout=60)


@pytest.mark.anyio
async def test_ensure_pool_ready_fails_fast_when_the_pool_fails() -> None:
    """A worker crashes and its replacements cannot start, so the pool fails while
    ensure_pool_ready waits for the replacement: it reports the failure at once."""
    script = MockScript()
    with anyio.fail_after(10):
        async with pool_for(Layer.MOCK, min_workers=1, script=script) as pool:
            await ensure_pool_ready(pool)
            script.startup_error = "no such module"  # read by each new mock worker
            await FaultInjector(pool).crash()
            with pytest.raises(PoolNotReady, match="failed") as info:
                await ensure_pool_ready(pool, timeout=60)
            assert info.value.state is PoolState.FAILED


def test_timeout_factor_names_the_variable_when_it_is_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed POOLKIT_TIMEOUT_FACTOR fails with a message naming the variable."""
    monkeypatch.setenv("POOLKIT_TIMEOUT_FACTOR", "abc")
    with pytest.raises(ValueError, match="POOLKIT_TIMEOUT_FACTOR must be a number, got 'abc'"):
        timeout_factor()
    monkeypatch.setenv("POOLKIT_TIMEOUT_FACTOR", "2.5")
    assert timeout_factor() == 2.5
