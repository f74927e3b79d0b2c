"""``Pool.map(..., chunksize=N)``: inputs travel N to a call, results come back one by one in
input order, and a failing item raises its own error after the results before it. The default,
``chunksize="auto"``, sizes chunks from the run times workers report: tiny items travel many
to a call, slow or large ones one to a call, and workers without the feature get no chunks."""

from __future__ import annotations

import math
import time
import types
from typing import Any

import anyio
import pytest

from _util import scaled
from poolkit import CallCompleted, Pool, RemoteError
from poolkit.testing import MockScript
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import add, echo

pytestmark = pytest.mark.anyio


def _pool(**fields: Any) -> Pool:
    return Pool(launcher=BridgeLauncher(), **{"min_workers": 2, **fields})


def reciprocal(x: int) -> float:
    return 1 / x


def spin(x: int) -> int:
    """About 1 ms of work (busy, as a computation is): an item too slow to be worth batching."""
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


async def async_double(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x


async def test_chunked_map_gives_every_result_in_order_from_fewer_calls() -> None:
    """50 inputs in chunks of 7: the same results as an unchunked map, in input order, from
    ceil(50 / 7) = 8 calls."""
    with anyio.fail_after(scaled(10)):
        async with _pool() as pool:
            chunked = [r async for r in pool.map(echo, range(50), chunksize=7)]
            assert chunked == list(range(50))
            assert pool.statistics().completed == 8
            assert [r async for r in pool.map(add, range(5), range(5), chunksize=2)] == [0, 2, 4, 6, 8]


async def test_chunked_starmap_and_string_targets() -> None:
    """starmap takes the chunksize too, and a "pkg.mod:func" target resolves in the worker."""
    with anyio.fail_after(scaled(10)):
        async with _pool() as pool:
            assert [r async for r in pool.starmap(add, [(1, 2), (3, 4), (5, 6)], chunksize=2)] == [3, 7, 11]
            got = [r async for r in pool.map("math:factorial", range(6), chunksize=4)]
            assert got == [math.factorial(i) for i in range(6)]


async def test_chunks_are_named_after_their_target() -> None:
    """Events (and errors, breakers, run-time estimates) name a chunk after its map's target:
    two maps' chunks never share a breaker, nor a chunk a single call's run-time estimate."""
    with anyio.fail_after(scaled(10)):
        async with _pool() as pool:
            events: list[Any] = []
            pool.subscribe(events.append)
            assert [r async for r in pool.map(echo, range(10), chunksize=5)] == list(range(10))
            names = [e.target for e in events if isinstance(e, CallCompleted)]
            assert names == ["unit._targets:echo (map chunk)"] * 2


async def test_a_failing_item_raises_its_error_after_the_results_before_it() -> None:
    """Items 3, 2, 1, 0, -1 in one chunk: 1/3, 1/2 and 1 come out, then the item 0's
    ZeroDivisionError is raised as RemoteError, and the iteration is over."""
    with anyio.fail_after(scaled(10)):
        async with _pool() as pool:
            got: list[float] = []
            results = pool.map(reciprocal, [3, 2, 1, 0, -1], chunksize=5)
            with pytest.raises(RemoteError) as info:
                async for r in results:
                    got.append(r)
            assert got == [1 / 3, 1 / 2, 1.0]
            assert info.value.remote_type == "builtins.ZeroDivisionError"
            assert "reciprocal" in info.value.remote_traceback
            with pytest.raises(StopAsyncIteration):
                await results.__anext__()


async def test_leaving_a_chunked_map_early_withdraws_the_rest() -> None:
    """break after the first result: the pool settles (nothing left queued or in flight)."""
    with anyio.fail_after(scaled(10)):
        async with _pool() as pool:
            async with pool.map(echo, range(1000), chunksize=10) as results:
                async for r in results:
                    assert r == 0
                    break
            assert pool.statistics().queued == 0


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True, "big", None])
async def test_chunksize_must_be_auto_or_a_positive_int(chunksize: Any) -> None:
    async with _pool(min_workers=1) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(echo, range(3), chunksize=chunksize)


async def test_auto_map_sends_tiny_items_many_to_a_call() -> None:
    """The default map of 3,000 trivial items: every result in order, from far fewer calls than
    items, once the first replies showed how little an item costs."""
    with anyio.fail_after(scaled(20)):
        async with _pool() as pool:
            results = pool.map(echo, range(3000))
            assert [r async for r in results] == list(range(3000))
            assert results.chunksize > 1
            assert pool.statistics().completed < 3000 // 4


async def test_auto_map_chunks_coroutine_targets_on_the_bridge() -> None:
    """A coroutine function in an adaptive chunk is awaited as in a real worker."""
    with anyio.fail_after(scaled(20)):
        async with _pool() as pool:
            results = pool.map(async_double, range(500), concurrency=2)
            assert [r async for r in results] == [2 * i for i in range(500)]
            assert pool.statistics().completed < 500


async def test_auto_map_keeps_slow_items_one_to_a_call() -> None:
    """Items of ~1 ms each are above the 0.5 ms at which chunks start to pay: each is its own
    call, so load balance and per-item results are kept."""
    with anyio.fail_after(scaled(20)):
        async with _pool() as pool:
            results = pool.map(spin, range(12), concurrency=2)
            assert [r async for r in results] == list(range(12))
            assert results.chunksize == 1
            assert pool.statistics().completed == 12


async def test_auto_map_keeps_large_items_one_to_a_call() -> None:
    """Fast items of 40 kB each way: a chunk of 4 would pass 256 KiB, so none is sent."""
    with anyio.fail_after(scaled(20)):
        async with _pool() as pool:
            results = pool.map(echo, ["x" * 40_000] * 30, concurrency=2)
            assert [len(r) async for r in results] == [40_000] * 30
            assert results.chunksize == 1
            assert pool.statistics().completed == 30


async def test_auto_map_sends_no_chunks_to_workers_without_the_feature() -> None:
    """Mock workers announce no features (a worker that is not poolkit's runtime): the map
    stays a call per item, however small the items."""
    with anyio.fail_after(scaled(20)):
        async with Pool(min_workers=2, worker_factory=MockScript().factory()) as pool:
            results = pool.map(echo, range(300), concurrency=4)
            assert [r async for r in results] == list(range(300))
            assert results.chunksize == 1
            assert pool.statistics().completed == 300


def _reply(run_us: float, nbytes: int, features: tuple[str, ...] = ("timings", "map_chunks")) -> Any:
    """What the sizing reads of a finished call: its worker's features, run time and sizes."""
    worker = types.SimpleNamespace(handshake={"features": list(features)})
    return types.SimpleNamespace(worker=worker, run_ns=int(run_us * 1000), payload=b"p" * nbytes, result=b"")


@pytest.mark.parametrize(
    ("timeout", "items", "run_us", "nbytes", "expected"),
    [
        (None, 100, 100, 1000, 2000),  # 1 us an item: 2 ms of work
        (0.016, 100, 100, 1000, 1000),  # a chunk's work stays within 1/16 of its deadline
        (None, 100, 10, 1000, 4096),  # 0.1 us an item: capped at 4,096 items
        (None, 100, 100, 200_000, 131),  # 2 kB an item: 256 KiB of request and reply
        (None, 1, 400, 10, 5),  # 0.4 ms an item: chunks of 5
        (None, 1, 600, 10, 1),  # 0.6 ms: fewer than 4 would fit, so a call per item
        (None, 0, 20, 10, 100),  # a plain call (items 0) counts as one item
    ],
)
async def test_adaptive_chunk_size_follows_time_bytes_and_deadline(
    timeout: float | None, items: int, run_us: float, nbytes: int, expected: int
) -> None:
    """The sizing rule on its own: about 2 ms of work per chunk (less under a short
    deadline), at most 4,096 items and 256 KiB, and none below 4 items."""
    async with _pool(min_workers=1) as pool:
        results = pool.map(echo, [], timeout=timeout)
        results._learn(_reply(run_us, nbytes), items)
        assert results.chunksize == expected


async def test_adaptive_sizing_learns_nothing_from_a_worker_without_the_feature() -> None:
    async with _pool(min_workers=1) as pool:
        results = pool.map(echo, [])
        results._learn(_reply(1, 10, features=("timings",)), 100)
        assert results.chunksize == 1
