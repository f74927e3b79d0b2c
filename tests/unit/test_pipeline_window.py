"""The adaptive pipeline window: a worker serving fast calls holds more of them, up to
``max_pipeline_depth``; one slow call brings it back to ``pipeline_depth`` (docs/architecture.md).

A worker that reports timings (FLAG_TIMING) sizes the window from each call's own run time;
any other is measured from the parent, on ``time.perf_counter`` readings. The tests set both by
hand (``run_ns``; ``_read_at`` and each call's ``sent_at``), so the arithmetic is checked
without timing anything.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from _util import scaled
from poolkit import Pool, PoolConfig
from poolkit._call import Call
from poolkit._worker import Worker
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import echo

pytestmark = pytest.mark.anyio


def _pool(**fields: Any) -> Pool:
    return Pool(launcher=BridgeLauncher(), **{"min_workers": 1, **fields})


def _reply(worker: Worker, *, sent: float, read: float) -> None:
    """Feed the estimate one untimed reply of a call sent at ``sent`` and read at ``read``."""
    call = Call("t", b"", 0, timeout=None, deadline=None)
    call.sent_at = sent
    worker._read_at = read
    worker.calls_completed += 1
    worker._measure(call)


def _timed_reply(worker: Worker, run: float) -> None:
    """Feed the estimate one reply whose worker says the call ran ``run`` seconds."""
    call = Call("t", b"", 0, timeout=None, deadline=None)
    call.run_ns = int(run * 1e9)
    worker.calls_completed += 1
    worker._measure(call)


def test_the_limit_defaults_to_32_or_the_depth_asked_for() -> None:
    """``max_pipeline_depth`` unset: 32 with the default depth, and an explicit
    ``pipeline_depth`` alone is kept as is (no adaptation); a set maximum is used."""
    assert PoolConfig().pipeline_limit == 32
    assert PoolConfig(pipeline_depth=1).pipeline_limit == 1
    assert PoolConfig(pipeline_depth=40).pipeline_limit == 40
    assert PoolConfig(pipeline_depth=1, max_pipeline_depth=8).pipeline_limit == 8
    assert PoolConfig(max_pipeline_depth=4).pipeline_limit == 4


async def test_fast_replies_grow_the_window_and_one_slow_call_shrinks_it() -> None:
    """Replies 10 us apart fit 100 calls in a 1 ms budget: the window goes to the limit (8).
    A call that took 100 ms puts it straight back to the depth (2), and it regrows only after
    enough fast replies have pulled the average back down."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=2, max_pipeline_depth=8, pipeline_budget=0.001) as pool:
            (worker,) = pool.workers()
            assert worker.window == 2  # starts at the depth: nothing measured yet
            t = 1000.0
            for _ in range(60):
                _reply(worker, sent=t - 1e-5, read=t)
                t += 1e-5
            assert worker.window == 8
            _reply(worker, sent=t, read=t + 0.1)  # one call of 100 ms
            t += 0.1
            assert worker.window == 2
            _reply(worker, sent=t, read=t + 1e-5)  # one fast reply is not enough to trust again
            t += 1e-5
            assert worker.window == 2
            for _ in range(200):
                _reply(worker, sent=t - 1e-5, read=t)
                t += 1e-5
            assert worker.window == 8


async def test_the_window_is_the_budget_over_the_time_per_call() -> None:
    """Calls of 250 us with a 1 ms budget: about 4 fit, between the depth (1) and the limit (32)."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=1, max_pipeline_depth=32, pipeline_budget=0.001) as pool:
            (worker,) = pool.workers()
            t = 1000.0
            for _ in range(200):
                _reply(worker, sent=t - 1, read=t)  # sent long ago: the previous reply bounds it
                t += 250e-6
            assert worker.window in (3, 4)


async def test_replies_read_together_share_the_read_time() -> None:
    """Ten replies in one read after 100 us: 10 us per call on average, not 100 us for the
    first and nothing for the rest (the window reaches the limit either way when fast)."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=1, max_pipeline_depth=1024, pipeline_budget=0.001) as pool:
            (worker,) = pool.workers()
            t = 1000.0
            for _ in range(40):
                t += 1e-4
                for _ in range(10):
                    _reply(worker, sent=t - 1e-4, read=t)
            assert 70 <= worker.window <= 130  # 1 ms / 10 us, give or take the average's lag


async def test_the_window_never_holds_calls_past_the_recycle_limit() -> None:
    """A worker 3 calls from its ``max_calls`` recycle takes no more than 3 however fast."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=1, max_pipeline_depth=16) as pool:
            (worker,) = pool.workers()
            worker.max_calls = worker.calls_completed + 20
            t = 1000.0
            for _ in range(17):
                _reply(worker, sent=t - 1e-5, read=t)
                t += 1e-5
            assert worker.window == 3


async def test_fast_calls_fill_the_window_end_to_end() -> None:
    """Over the bridge layer's real frames, 64 callers of a trivial target grow the window to
    the limit, and the worker then holds more than ``pipeline_depth`` calls at once."""
    with anyio.fail_after(scaled(30)):
        async with _pool(pipeline_depth=1, max_pipeline_depth=6, pipeline_budget=10.0) as pool:
            (worker,) = pool.workers()
            most = 0

            async def caller() -> None:
                nonlocal most
                for i in range(30):
                    await pool.call(echo, i)
                    most = max(most, worker.load)

            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(caller)
            assert worker.window == 6
            assert most > 1


async def test_the_window_stays_at_the_depth_when_turned_off() -> None:
    """``max_pipeline_depth == pipeline_depth``: no estimate, the window never moves."""
    with anyio.fail_after(scaled(30)):
        async with _pool(pipeline_depth=2, max_pipeline_depth=2, pipeline_budget=10.0) as pool:
            (worker,) = pool.workers()
            most = 0

            async def caller() -> None:
                nonlocal most
                for i in range(20):
                    await pool.call(echo, i)
                    most = max(most, worker.load)

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(caller)
            assert worker.window == 2
            assert most <= 2


async def test_worker_timings_size_the_window_whatever_the_gaps_between_replies() -> None:
    """Timed replies: 20 us calls fill the window even when their replies are read far apart
    (a busy machine delays reads, not the calls); one 50 ms call shrinks it at once."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=2, max_pipeline_depth=16, pipeline_budget=0.001) as pool:
            (worker,) = pool.workers()
            worker._read_at = 1000.0
            for _ in range(60):
                _timed_reply(worker, 20e-6)
                worker._read_at += 0.01  # 10 ms between reads: ignored when timed
            assert worker.window == 16
            _timed_reply(worker, 0.05)
            assert worker.window == 2


async def test_the_estimate_runs_only_when_the_window_is_adaptive() -> None:
    """With an adaptive window a real reply moves the estimate (no telemetry configured);
    turned off (limit == depth), nothing is measured."""
    with anyio.fail_after(scaled(10)):
        for limit, timed in ((8, True), (2, False)):
            async with _pool(pipeline_depth=2, max_pipeline_depth=limit) as pool:
                (worker,) = pool.workers()
                await pool.call(echo, 1)
                assert (worker._per_call != pool.config.pipeline_budget) is timed
