"""Regression gate: calls through a whole pool, per layer.

A round is a batch of calls run in the pool's event loop (on a second thread, see _bench.py),
so the median round time is the batch size times the per-call cost; ``extra_info`` records the
batch size. Every round gets a fresh pool, started and warmed up outside the timed region.
Workloads:

* ``x1``: one call at a time from one task (latency: every call wakes an idle worker);
* ``x64``: 64 tasks calling in a loop (throughput: the workers' pipelines stay full, calls
  queue in the pool);
* mock layer, ``queued``: 1,024 tasks against 2 or 256 scripted in-process workers, so most
  calls wait in the pool's queue and every completion dispatches the next: admission, queue,
  dispatch and settlement, without a protocol.

The bridge layer (real frames over in-memory streams, in-process fake workers) runs
everything on one CPU and shows the parent's cost; the subprocess layer (2 real workers on
one CPU, the parent pinned to the other) is what users see. 256 bridge workers check that dispatch stays flat
as the pool grows (benchmarks/scheduler_scaling.py measures the ratio).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from performance._bench import call_concurrently, call_sequentially, fresh_pools, pinned_parent
from poolkit import Pool
from poolkit.testing import Isolation, Layer

Batch = Callable[[Pool, int], Awaitable[Any]]
BACKENDS = ["asyncio", "trio"]
ROUNDS = 15


async def queued_calls(pool: Pool, n: int) -> None:
    await call_concurrently(pool, n, tasks=1024)


def _bench(
    benchmark: BenchmarkFixture,
    isolation: Isolation,
    backend: str,
    layer: Layer,
    workers: int,
    batch: Batch,
    calls: int,
) -> None:
    benchmark.extra_info["calls_per_round"] = calls
    benchmark.extra_info["workers"] = workers
    # Pinned only with worker processes: they go on the other CPU. An in-process pool is left to
    # the OS scheduler, which moves it away from a CPU another program is busy on.
    pin = pinned_parent() if layer is Layer.SUBPROCESS else contextlib.nullcontext()
    with pin, fresh_pools(backend, layer, workers=workers, tag=isolation.tag) as pools:
        benchmark.pedantic(  # type: ignore[no-untyped-call]  # pytest-benchmark leaves it unannotated
            pools.run,
            args=(batch, calls),
            setup=pools.setup,
            teardown=pools.teardown,
            rounds=ROUNDS,
            warmup_rounds=1,
        )
    assert pools.pools >= 1


@pytest.mark.benchmark(group="pool-mock")
@pytest.mark.parametrize("workers", [2, 256])
def test_mock_queued_calls(benchmark: BenchmarkFixture, poolkit_isolation: Isolation, workers: int) -> None:
    """4,096 calls from 1,024 tasks on mock workers: most wait in the queue, each completion dispatches."""
    _bench(benchmark, poolkit_isolation, "asyncio", Layer.MOCK, workers, queued_calls, 4096)


@pytest.mark.benchmark(group="pool-bridge")
@pytest.mark.parametrize("backend", BACKENDS)
def test_bridge_x1(benchmark: BenchmarkFixture, poolkit_isolation: Isolation, backend: str) -> None:
    """500 calls one at a time, 2 bridge workers."""
    _bench(benchmark, poolkit_isolation, backend, Layer.BRIDGE, 2, call_sequentially, 500)


@pytest.mark.benchmark(group="pool-bridge")
@pytest.mark.parametrize("backend", BACKENDS)
def test_bridge_x64(benchmark: BenchmarkFixture, poolkit_isolation: Isolation, backend: str) -> None:
    """2,000 calls from 64 tasks, 2 bridge workers."""
    _bench(benchmark, poolkit_isolation, backend, Layer.BRIDGE, 2, call_concurrently, 2000)


@pytest.mark.benchmark(group="pool-bridge")
def test_bridge_256_workers_x64(benchmark: BenchmarkFixture, poolkit_isolation: Isolation) -> None:
    """2,000 calls from 64 tasks, 256 bridge workers: dispatch must not grow with the pool."""
    _bench(benchmark, poolkit_isolation, "asyncio", Layer.BRIDGE, 256, call_concurrently, 2000)


@pytest.mark.benchmark(group="pool-subprocess")
@pytest.mark.parametrize("backend", BACKENDS)
def test_subprocess_x1(benchmark: BenchmarkFixture, poolkit_isolation: Isolation, backend: str) -> None:
    """500 calls one at a time, 2 worker processes."""
    _bench(benchmark, poolkit_isolation, backend, Layer.SUBPROCESS, 2, call_sequentially, 500)


@pytest.mark.benchmark(group="pool-subprocess")
@pytest.mark.parametrize("backend", BACKENDS)
def test_subprocess_x64(benchmark: BenchmarkFixture, poolkit_isolation: Isolation, backend: str) -> None:
    """2,000 calls from 64 tasks, 2 worker processes."""
    _bench(benchmark, poolkit_isolation, backend, Layer.SUBPROCESS, 2, call_concurrently, 2000)
