"""``Pool.map(..., chunksize=N)``: inputs travel N to a call, results come back one by one in
input order, and a failing item raises its own error after the results before it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

from _util import scaled
from poolkit import Pool, RemoteError
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import add, echo

pytestmark = pytest.mark.anyio


def _pool(**fields: Any) -> Pool:
    return Pool(launcher=BridgeLauncher(), **{"min_workers": 2, **fields})


def reciprocal(x: int) -> float:
    return 1 / x


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


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True])
async def test_chunksize_must_be_a_positive_int(chunksize: Any) -> None:
    async with _pool(min_workers=1) as pool:
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(echo, range(3), chunksize=chunksize)
