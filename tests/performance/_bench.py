"""Helpers for the pytest-benchmark regression gate (tests/performance/test_bench_*.py).

pytest-benchmark times synchronous functions, and a pool lives in an event loop. Each
end-to-end benchmark therefore runs its pools in an event loop on a second thread (an anyio
blocking portal) and times ``portal.call(batch, pool, n)``: one round is a batch of ``n``
calls, so the portal's thread hop (tens of microseconds) is a small, constant share of a
round and the round time is ``n`` times the per-call cost. Every round gets a fresh pool
(:class:`FreshPools`), started and warmed up outside the timed region.

CPU pinning, as in benchmarks/telemetry.py: on a 2-core machine an unpinned parent sometimes
shares a core with a worker and sometimes not, and identical runs come out at two speeds.
:func:`pinned_parent` puts this process's threads on the first CPU for the duration of a
benchmark; :func:`pin_workers` puts a pool's worker processes on the others.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from poolkit import Pool
from poolkit._scheduler import Scheduler
from poolkit.testing import Layer, ensure_pool_ready, pool_for

__all__ = [
    "TARGET",
    "FreshPools",
    "SchedulerLoop",
    "call_concurrently",
    "call_sequentially",
    "fresh_pools",
    "pin_workers",
    "pinned_parent",
]

# The trivial target, a C function sent by reference: workers never import a test module for
# it, and its own cost is nil, so a round measures the pool.
TARGET: Callable[[int], int] = operator.neg


def _cpus() -> list[int]:
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned_parent() -> Iterator[int | None]:
    """Pin the calling thread (and the threads it starts meanwhile: a portal's loop thread, and
    through it the worker processes it spawns) to the first CPU; restore the mask after.
    Yields the CPU, or None with fewer than two CPUs (nothing to separate)."""
    cpus = _cpus()
    if len(cpus) < 2:
        yield None
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield cpus[0]
    finally:
        os.sched_setaffinity(0, before)


def pin_workers(pool: Pool) -> None:
    """Put each worker process on a CPU other than the first (the parent's), round robin."""
    cpus = _cpus()[1:]
    if not cpus:
        return
    for i, worker in enumerate(pool.statistics().workers):
        if worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(worker.pid, {cpus[i % len(cpus)]})


class FreshPools:
    """A fresh pool for every round, in one event loop on another thread (house style: no
    round inherits another's state, and CPU placement and heap layout are sampled anew each
    round instead of frozen for the whole benchmark, which on 2 cores makes a median land at
    one of two speeds from run to run).

    :meth:`setup` (untimed, before each round) starts a pool, waits for its workers, pins
    them off the parent's CPU, warms it up and collects garbage; :meth:`run` is the timed
    batch; :meth:`teardown` (untimed) closes the pool.
    """

    def __init__(
        self, portal: BlockingPortal, layer: Layer, workers: int, tag: str, config: dict[str, Any]
    ) -> None:
        self.portal = portal
        self.layer = layer
        self.workers = workers
        self.tag = tag
        self.config = config
        self.pools = 0
        self._pool: Pool | None = None
        self._entered: contextlib.AbstractContextManager[Pool] | None = None

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "setup() first"
        return self._pool

    def setup(self) -> None:
        self.teardown()
        # Built in the loop's thread: a Pool creates anyio primitives, which need a running loop.
        pool = self.portal.call(
            lambda: pool_for(self.layer, min_workers=self.workers, tag=self.tag, **self.config)
        )
        self._entered = self.portal.wrap_async_context_manager(pool)
        self._entered.__enter__()
        self._pool = pool
        self.pools += 1
        self.portal.call(_ready, pool)
        if self.layer is Layer.SUBPROCESS:
            pin_workers(pool)
        self.run(call_concurrently, 4 * self.workers * pool.config.pipeline_depth)
        gc.collect()

    def run(self, batch: Callable[[Pool, int], Awaitable[Any]], n: int) -> Any:
        return self.portal.call(batch, self.pool, n)

    def teardown(self, *_: object) -> None:
        entered, self._entered, self._pool = self._entered, None, None
        if entered is not None:
            entered.__exit__(None, None, None)


@contextlib.contextmanager
def fresh_pools(backend: str, layer: Layer, *, workers: int, tag: str, **config: Any) -> Iterator[FreshPools]:
    """:class:`FreshPools` on a portal running ``backend``; the last pool is closed on exit
    (pytest-benchmark skips ``teardown`` when benchmarks are disabled)."""
    with start_blocking_portal(backend) as portal:
        pools = FreshPools(portal, layer, workers, tag, config)
        try:
            yield pools
        finally:
            pools.teardown()


async def _ready(pool: Pool) -> None:
    await ensure_pool_ready(pool, timeout=60)


async def call_sequentially(pool: Pool, n: int) -> None:
    """``n`` calls one after the other from one task: one call in flight, workers idle between."""
    for i in range(n):
        await pool.call(TARGET, i)


async def call_concurrently(pool: Pool, n: int, tasks: int = 64) -> None:
    """``n`` calls from ``tasks`` tasks calling in a loop: the pool stays saturated, calls queue."""

    async def caller(count: int) -> None:
        for i in range(count):
            await pool.call(TARGET, i)

    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(caller, n // tasks + (1 if k < n % tasks else 0))


class _Handle:
    """A stand-in worker for the scheduler: hashable by identity, like a real Worker."""

    __slots__ = ()


class SchedulerLoop:
    """The scheduler's work per call, as the pool does it, in a steady state.

    ``workers`` workers at pipeline depth ``depth``, ``workers`` calls in flight (half the
    capacity at depth 2). One cycle = one dispatch (``pick``, then ``update`` with the worker's
    new load) and one completion (``update`` of the worker whose call ended first). The loads
    and the in-flight order are kept here, as the pool keeps them on its Worker objects.
    """

    def __init__(self, workers: int, depth: int = 2) -> None:
        self.scheduler: Scheduler[_Handle] = Scheduler(depth)
        self.load: dict[_Handle, int] = {}
        for _ in range(workers):
            handle = _Handle()
            self.load[handle] = 0
            self.scheduler.update(handle, 0)
        self.in_flight: list[_Handle] = [self._dispatch() for _ in range(workers)]
        self.head = 0

    def _dispatch(self) -> _Handle:
        worker = self.scheduler.pick()
        assert worker is not None, "the steady state keeps room: half the capacity in flight"
        load = self.load[worker] = self.load[worker] + 1
        self.scheduler.update(worker, load)
        return worker

    def cycles(self, n: int) -> None:
        sched, loads, ring = self.scheduler, self.load, self.in_flight
        size = len(ring)
        head = self.head
        for _ in range(n):
            worker = sched.pick()
            assert worker is not None
            load = loads[worker] = loads[worker] + 1
            sched.update(worker, load)
            done = ring[head]  # the oldest call in flight ends; this one takes its place
            ring[head] = worker
            head = (head + 1) % size
            load = loads[done] = loads[done] - 1
            sched.update(done, load)
        self.head = head
