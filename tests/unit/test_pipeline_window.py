"""The adaptive pipeline window (docs/architecture.md): beyond ``pipeline_depth``, a worker takes
more calls, up to ``max_pipeline_depth``, while the work it holds is expected to take less than
``pipeline_budget``, from each target's measured run time. A call of a target known to be slow
therefore closes the window behind it, so fast calls do not queue behind it in that worker.

The rules are checked on hand-set state (held calls, their expected work, run times), without
timing anything; the end-to-end tests only check that fast calls do open the window.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from _util import scaled
from poolkit import Pool, PoolConfig
from poolkit._call import Call, CallStatus
from poolkit._scheduler import Scheduler
from poolkit._worker import Worker
from poolkit.testing import MockScript
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import echo

pytestmark = pytest.mark.anyio


def _pool(**fields: Any) -> Pool:
    return Pool(launcher=BridgeLauncher(), **{"min_workers": 1, **fields})


def _call(target: str = "t", *, cost: float = 0.0, ran: float | None = None) -> Call:
    call = Call(target, b"", 0, timeout=None, deadline=None)
    call.cost = cost
    call.run_ns = None if ran is None else int(ran * 1e9)
    return call


@contextmanager
def _holding(worker: Worker, n: int, work: float) -> Iterator[None]:
    """Make ``worker`` look as if it held ``n`` calls expected to take ``work`` seconds."""
    saved = worker._inflight
    worker._inflight = {10_000 + i: _call() for i in range(n)}
    worker.queued_work = work
    try:
        yield
    finally:
        worker._inflight, worker.queued_work = saved, 0.0


def _room(worker: Worker) -> bool:
    return worker.has_room  # a call, so that type checkers do not narrow the property


def test_the_limit_defaults_to_32_or_the_depth_asked_for() -> None:
    """``max_pipeline_depth`` unset: 32 with the default depth, and an explicit
    ``pipeline_depth`` alone is kept as is (no adaptation); a set maximum is used."""
    assert PoolConfig().pipeline_limit == 32
    assert PoolConfig(pipeline_depth=1).pipeline_limit == 1
    assert PoolConfig(pipeline_depth=40).pipeline_limit == 40
    assert PoolConfig(pipeline_depth=1, max_pipeline_depth=8).pipeline_limit == 8
    assert PoolConfig(max_pipeline_depth=4).pipeline_limit == 4


async def test_room_beyond_the_depth_only_while_the_held_work_is_short() -> None:
    """Depth 2, limit 8, budget 1 ms: under the depth there is always room; beyond it only
    while the held calls are expected to take under 1 ms, and never past the limit or past
    the calls left before a recycle for the call count."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=2, max_pipeline_depth=8, pipeline_budget=0.001) as pool:
            (worker,) = pool.workers()
            with _holding(worker, 1, 10.0):
                assert _room(worker)  # under the depth: whatever it holds
            with _holding(worker, 2, 0.0005):
                assert _room(worker)
            with _holding(worker, 5, 0.0009):
                assert _room(worker)
            with _holding(worker, 2, 0.0015):
                assert not _room(worker)  # a slow call among them: the window is closed
            with _holding(worker, 8, 0.0):
                assert not _room(worker)  # the limit
            worker.max_calls = worker.calls_completed + 3
            with _holding(worker, 3, 0.0):
                assert not _room(worker)  # 3 calls left before its recycle
            with _holding(worker, 1, 0.0):
                assert _room(worker)  # the depth still applies, as without adaptation


async def test_no_room_beyond_the_depth_when_adaptation_is_off() -> None:
    """An explicit ``pipeline_depth`` alone (limit == depth): no room beyond it, however short."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=2) as pool:
            (worker,) = pool.workers()
            with _holding(worker, 2, 0.0):
                assert not worker.has_room


async def test_run_times_make_each_targets_estimate() -> None:
    """The first run time of a target is its estimate; later ones move it by 1/8, so one
    100 ms call of a 20 us target lifts it past a 1 ms budget at once. The estimates are the
    pool's (shared by its workers), and a reply takes its call's expected work off the total."""
    with anyio.fail_after(scaled(10)):
        async with _pool(pipeline_depth=1, max_pipeline_depth=8) as pool:
            (worker,) = pool.workers()
            worker._measure(_call("fast", ran=20e-6))
            assert pool.call_costs["fast"] == pytest.approx(20e-6)
            worker._measure(_call("fast", ran=0.1))
            assert pool.call_costs["fast"] > 0.012
            for _ in range(100):
                worker._measure(_call("fast", ran=20e-6))
            assert pool.call_costs["fast"] < 30e-6
            with _holding(worker, 2, 0.003):
                worker._measure(_call("fast", cost=0.001, ran=20e-6))
                assert worker.queued_work == pytest.approx(0.002)
            worker._measure(_call("fast", cost=0.001, ran=20e-6))
            assert worker.queued_work == 0.0  # nothing held: exactly zero, no drift


async def test_fast_calls_open_the_window_end_to_end() -> None:
    """Over the bridge layer's real frames (its workers report timings), 64 callers of a
    trivial target: the worker holds more than ``pipeline_depth`` calls at once, and the
    target's estimate is far under the budget."""
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
            assert 1 < most <= 6
            (estimate,) = pool.call_costs.values()
            assert estimate < 10.0


async def test_workers_without_timings_keep_the_depth() -> None:
    """Mock workers report no timings: their pool never sends one more than the depth."""
    script = MockScript()
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1, worker_factory=script.factory()) as pool:
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
            assert most <= pool.config.pipeline_depth
            assert pool.call_costs == {}


async def test_a_backlog_is_dispatched_as_least_loaded_picking_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """When room frees behind a backlog, the pool gives the least-loaded worker a run of calls
    at once (one scheduler update for the run, docs/performance.md item 22). Whatever the
    workers' loads and the retries in the queue (a retry avoids the worker it failed on), the
    calls go where picking the least-loaded worker for each call in turn sends them: the same
    worker for each call, in the same order, ties taken round robin."""
    depth = 4
    sent: list[tuple[str, int]] = []
    fake_ids = iter(range(1_000_000, 2_000_000))

    def submit(self: Worker, call: Call) -> None:  # record, and hold the call as sent
        self._inflight[next(fake_ids)] = call
        call.worker, call.status = self, CallStatus.SENT
        sent.append((self.id, call.seq))

    rng = random.Random(20261121)
    with anyio.fail_after(scaled(10)):
        async with _pool(min_workers=3, max_workers=3, pipeline_depth=depth) as pool:
            workers = pool.workers()
            monkeypatch.setattr(Worker, "submit", submit)
            for _ in range(300):
                loads = [rng.randrange(depth + 1) for _ in workers]
                queue = [_call() for _ in range(rng.randrange(12))]
                for call in queue:
                    if rng.random() < 0.2:
                        call.avoid = rng.choice(workers)
                # The model: a scheduler that is told of every call, one at a time.
                model: Scheduler[Worker] = Scheduler(depth)
                for worker, load in zip(workers, loads, strict=True):
                    worker._inflight = {10_000 + i: _call() for i in range(load)}
                    pool._sched.update(worker, load, _room(worker))
                    model.update(worker, load, load < depth)
                expected: list[tuple[str, int]] = []
                held = dict(zip(workers, loads, strict=True))
                for call in queue:
                    picked = model.pick()
                    if picked is None:
                        break
                    if call.avoid is not None and picked is call.avoid:
                        picked = model.pick_other(picked) or picked
                    held[picked] += 1
                    model.update(picked, held[picked], held[picked] < depth)
                    expected.append((picked.id, call.seq))
                sent.clear()
                pool._queue.extend(queue)
                pool._dispatch()
                assert sent == expected, (loads, [c.avoid.id if c.avoid else None for c in queue])
                pool._queue.clear()
            for worker in workers:  # let the pool close: it holds nothing
                worker._inflight = {}
                pool._sched.update(worker, 0, _room(worker))
