"""The open-loop load generator and the pool monitor against real worker processes."""

from __future__ import annotations

import anyio
import pytest

from poolkit import FailureKind, WorkerState
from poolkit.testing import (
    Isolation,
    Layer,
    LoadProfile,
    Operation,
    PoolMonitor,
    ensure_pool_ready,
    plan_load,
    pool_for,
    run_load,
    scaled,
    targets,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]


async def test_load_at_200_per_second_on_two_worker_processes(poolkit_isolation: Isolation) -> None:
    """200 calls/s for 1 s on two real workers, one call in ten failing on purpose: every
    offered call ends (none lost), failures are the injected application errors, and the
    monitor's counts and gauges agree with the pool's statistics."""
    ops = [Operation(targets.echo, ("x" * 100,), weight=9), Operation(targets.fail, ("injected",), weight=1)]
    profile = LoadProfile.constant(200, 1)
    injected = sum(p.operation is ops[1] for p in plan_load(profile, ops, seed=11))
    pool = pool_for(Layer.SUBPROCESS, min_workers=2, tag=poolkit_isolation.tag)
    with anyio.fail_after(scaled(60)):
        async with pool:
            await ensure_pool_ready(pool)
            with PoolMonitor(pool) as monitor:
                report = await run_load(pool, profile, ops, seed=11)
            stats = pool.statistics()
    assert (report.offered, report.sent, report.lost) == (200, 200, 0)
    assert report.failed == {FailureKind.APPLICATION: injected}
    assert report.completed == 200 - injected == stats.completed
    assert report.throughput > 100
    assert report.latency.count == 200
    assert report.latency.max >= report.latency.p99 >= report.latency.p50 > 0
    assert monitor.failures(FailureKind.APPLICATION) == stats.failed == injected
    assert (monitor.queued, monitor.in_flight) == (stats.queued, stats.in_flight) == (0, 0)
    assert monitor.workers_in(WorkerState.READY) == stats.workers_in(WorkerState.READY) == 2
