"""Regression gate: the scheduler's decision (poolkit._scheduler.Scheduler), at 2 and 256 workers.

One round is 1,000 cycles of the scheduler's work per call in a steady state (``SchedulerLoop``:
a ``pick`` and an ``update`` for the dispatch, an ``update`` for the completion). Issue 6 wants
the per-dispatch cost flat as the pool grows (at most 1.5x at 256 workers what it is at 2);
these benchmarks do not assert that ratio (a timed assertion in a test is noise-prone): the
gate holds each against its own baseline, and benchmarks/scheduler_scaling.py measures the
ratio in interleaved rounds.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from performance._bench import SchedulerLoop

pytestmark = pytest.mark.benchmark(group="scheduler")

CYCLES = 1000


@pytest.mark.parametrize("workers", [2, 256])
def test_scheduler_dispatch_and_complete(benchmark: BenchmarkFixture, workers: int) -> None:
    """1,000 dispatch + completion decisions with ``workers`` workers, half the capacity in flight."""
    loop = SchedulerLoop(workers)
    benchmark.extra_info["cycles_per_round"] = CYCLES
    benchmark(loop.cycles, CYCLES)
    # The steady state held: every worker still has a call in flight on average, none is over.
    assert sum(loop.load.values()) == workers
    assert max(loop.load.values()) <= loop.scheduler.depth
