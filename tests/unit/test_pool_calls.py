"""Pool calls over in-memory fake workers: call, map, starmap, statistics, repr and SyncPool."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Generator
from typing import Any, Literal

import anyio
import pytest

from _util import scaled, wait_until
from poolkit import Pool, PoolState, PoolStatistics, RemoteError, SyncPool, WorkerInfo, WorkerState
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import (
    GATES,
    RUNS,
    TARGET,
    Counter,
    add,
    boom,
    echo,
    kwargs_echo,
    new_gate,
    record_or_fail,
    wait_for,
)

pytestmark = pytest.mark.anyio


def make_pool(**overrides: Any) -> Pool:
    """A small pool over fake workers (one worker unless told otherwise)."""
    fields: dict[str, Any] = {"min_workers": 1, **overrides}
    return Pool(launcher=BridgeLauncher(), **fields)


# ---- call ----------------------------------------------------------------------------------------
async def test_call_returns_the_value_of_a_callable_target() -> None:
    """A module-level callable is sent by reference, run in the worker, and its result returned."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call(add, 2, 3) == 5
            assert await pool.call(echo, {"a": [1, 2]}) == {"a": [1, 2]}
            assert await pool.call(len, [1, 2, 3]) == 3


async def test_call_resolves_string_targets() -> None:
    """String targets "pkg.mod:func" are imported in the worker ("math:factorial", a test module)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call("math:factorial", 10) == math.factorial(10)
            assert await pool.call(TARGET + "add", "a", "b") == "ab"


async def test_call_passes_keyword_arguments() -> None:
    """Keyword arguments reach the target; a kwarg named timeout goes through functools.partial."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call(kwargs_echo, 1, x=2, y="z") == ((1,), {"x": 2, "y": "z"})
            wrapped = functools.partial(kwargs_echo, timeout=5)
            assert await pool.call(wrapped, timeout=scaled(10)) == ((), {"timeout": 5})


async def test_call_rejects_bad_target_and_timeout_before_sending() -> None:
    """A target that is neither a string nor a callable, or a timeout <= 0, fails in the caller."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(TypeError, match="target must be a string or a callable"):
                await pool.call(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout must be > 0"):
                await pool.call(add, 1, 2, timeout=0)
            stats = pool.statistics()
            assert stats.workers[0].calls_completed == 0
            assert stats.completed == 0


async def test_remote_exception_becomes_remote_error_and_worker_survives() -> None:
    """A target raising fails that call with RemoteError (type, message, traceback); the worker
    keeps serving (it is not restarted)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call(boom, "bad input")
            err = info.value
            assert err.remote_type == "builtins.ValueError"
            assert err.remote_message == "bad input"
            assert "ValueError: bad input" in err.remote_traceback
            assert "Traceback in the worker" in str(err)
            assert err.phase.value == "running"
            assert not err.retry_safe
            assert await pool.call(add, 1, 1) == 2
            stats = pool.statistics()
            assert stats.worker_starts == 1
            assert stats.failed == 1
            assert stats.completed == 1


async def test_handler_methods_keep_state_and_teardown_runs_on_close() -> None:
    """A handler is set up once per worker, its methods are plain-name targets sharing its state,
    and a clean close runs its teardown."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(worker={"handler": TARGET + "Counter"}) as pool:
            assert await pool.call("incr") == 1
            assert await pool.call("incr", by=2) == 3
            assert len(Counter.instances) == 1
            assert Counter.torn_down == []
        assert Counter.torn_down == [3]


# ---- map / starmap -------------------------------------------------------------------------------
async def test_map_returns_results_in_input_order() -> None:
    """map() yields results in input order, even when later inputs finish first."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=2) as pool:
            assert [x async for x in pool.map(add, [1, 2, 3, 4], [10, 20, 30, 40])] == [11, 22, 33, 44]

            first, second = new_gate("first"), new_gate("second")
            seen: list[Any] = []

            async def consume() -> None:
                async for value in pool.map(wait_for, ["first", "second"], ["A", "B"]):
                    seen.append(value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await first.entered.wait()
                await second.entered.wait()  # both run at once, one per worker
                second.release.set()
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "the second call to end")
                assert seen == []  # its result waits for the first one
                first.release.set()
            assert seen == ["A", "B"]


async def test_map_bounds_the_calls_in_flight_to_its_concurrency() -> None:
    """map(concurrency=2) never has more than 2 calls admitted, although the pool has room for 4
    (2 workers x pipeline depth 2); it keeps exactly 2 going while inputs remain. (chunksize=1:
    a call per input, so that calls and inputs are the same thing here; the gated calls are
    quick enough that the default would start sending them in chunks, test_map_chunks.py.)"""
    n = 6
    keys = [f"k{i}" for i in range(n)]
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=2, pipeline_depth=2) as pool:
            gates = [new_gate(k) for k in keys]
            results: list[Any] = []

            async def consume() -> None:
                async for value in pool.map(wait_for, keys, range(n), concurrency=2, chunksize=1):
                    results.append(value)

            def admitted() -> int:
                s = pool.statistics()
                return s.in_flight + s.queued

            def admitted_at_least(n: int) -> bool:
                return admitted() >= n

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                for i, gate in enumerate(gates):
                    await gate.entered.wait()
                    expected = min(2, n - i)

                    await wait_until(
                        functools.partial(admitted_at_least, expected), 10, f"{expected} admitted"
                    )
                    assert admitted() <= 2, pool.statistics()
                    assert all(g.runs == 0 for g in gates[i + expected :])  # never admitted yet
                    gate.release.set()
            assert results == list(range(n))
            assert pool.statistics().in_flight == 0


async def test_map_early_break_withdraws_queued_calls() -> None:
    """Leaving ``async with pool.map(...)`` early withdraws the calls still queued (they never run);
    the one already running finishes with its result discarded, and the pool keeps serving."""
    keys = ["m0", "m1", "m2", "m3"]
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            for key in keys:
                new_gate(key)

            async def release_first() -> None:
                await GATES["m0"].entered.wait()
                stats = pool.statistics()
                assert (stats.in_flight, stats.queued) == (1, 3)
                GATES["m0"].release.set()

            got: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(release_first)
                async with pool.map(wait_for, keys, keys, concurrency=4) as results:
                    async for value in results:
                        got.append(value)
                        break
            assert got == ["m0"]
            assert pool.statistics().queued == 0
            # m1 had been sent when m0 returned: it runs to the end, nobody waits for it.
            await GATES["m1"].entered.wait()
            GATES["m1"].release.set()
            await wait_until(lambda: pool.statistics().in_flight == 0, 10, "m1 to finish")
            assert await pool.call(add, 1, 2) == 3
            assert GATES["m2"].runs == 0
            assert GATES["m3"].runs == 0
            assert pool.statistics().completed == 2  # m0 and the add; m1's result was dropped


async def test_map_stops_at_the_first_failure_and_withdraws_the_rest() -> None:
    """The first failing call of a map raises its error; the calls still queued are withdrawn."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            got: list[Any] = []
            with pytest.raises(RemoteError, match="fail-b"):
                async for value in pool.map(record_or_fail, ["a", "fail-b", "c", "d"], concurrency=4):
                    got.append(value)
            assert got == ["a"]
            assert pool.statistics().queued == 0
            assert await pool.call(add, 2, 2) == 4  # runs after anything already sent
            assert RUNS["d"] == 0


async def test_starmap_unpacks_argument_tuples() -> None:
    """starmap() calls target(*args) for each tuple, results in input order."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            pairs = [(1, 2), (3, 4), (5, 6)]
            assert [x async for x in pool.starmap(add, pairs)] == [3, 7, 11]
            assert [x async for x in pool.starmap(add, [])] == []


async def test_map_rejects_a_concurrency_below_one() -> None:
    """map(concurrency=0) is a ValueError, raised at once."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(ValueError, match="concurrency"):
                pool.map(add, [1], [2], concurrency=0)


# ---- statistics and repr -------------------------------------------------------------------------
async def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns a frozen dataclass that does not change after later calls."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            before = pool.statistics()
            assert isinstance(before, PoolStatistics)
            assert dataclasses.is_dataclass(before)
            with pytest.raises(dataclasses.FrozenInstanceError):
                before.completed = 99  # type: ignore[misc]
            assert isinstance(before.workers[0], WorkerInfo)
            with pytest.raises(dataclasses.FrozenInstanceError):
                before.workers[0].in_flight = 5  # type: ignore[misc]

            assert await pool.call(add, 1, 2) == 3
            after = pool.statistics()
            assert before.completed == 0
            assert before.workers[0].calls_completed == 0
            assert after.completed == 1
            assert after.workers[0].calls_completed == 1
            assert after.state is PoolState.RUNNING
            assert after.workers_in(WorkerState.READY) == 1
            assert after.worker_starts == 1


async def test_repr_shows_state_and_counts() -> None:
    """repr(pool) shows its name, state, call counts and workers by state."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(name="reprpool") as pool:
            await pool.call(add, 1, 2)
            with pytest.raises(RemoteError):
                await pool.call(boom)
            text = repr(pool)
            assert "'reprpool'" in text
            assert "running" in text
            assert "1 ready" in text
            assert "1 ok" in text
            assert "1 failed" in text
        assert "closed" in repr(pool)


# ---- SyncPool (not async: it runs its own loop in a thread) --------------------------------------
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_pool_call_and_map(backend: Literal["asyncio", "trio"]) -> None:
    """SyncPool runs the pool in a private loop thread: call() and map() block and return results."""
    with SyncPool(min_workers=1, backend=backend, launcher=BridgeLauncher()) as pool:
        assert pool.call(add, 20, 22) == 42
        assert pool.call("math:factorial", 5) == 120
        assert pool.call(kwargs_echo, 1, k="v") == ((1,), {"k": "v"})
        assert list(pool.map(add, [1, 2, 3], [1, 1, 1])) == [2, 3, 4]
        with pytest.raises(RemoteError):
            pool.call(boom)
        assert pool.statistics().completed == 6  # 3 calls + 3 mapped
        assert "<SyncPool" in repr(pool)
        assert pool.statistics().state is PoolState.RUNNING
    assert pool.statistics().state is PoolState.CLOSED


def test_sync_pool_outside_with_refuses_calls() -> None:
    """A SyncPool that is not entered raises RuntimeError instead of hanging."""
    pool = SyncPool(min_workers=1, launcher=BridgeLauncher())
    with pytest.raises(RuntimeError, match="not running"):
        pool.call(add, 1, 2)


def test_sync_pool_map_closed_after_the_pool_is_harmless() -> None:
    """A SyncPool.map generator left unfinished inside the ``with`` block can be closed (or garbage
    collected) after the pool has closed without raising."""
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        results = pool.map(add, [1, 2, 3], [1, 1, 1])
        assert isinstance(results, Generator)  # typed as Iterator, which has no close()
        assert next(results) == 2
    results.close()
