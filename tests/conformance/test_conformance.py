"""The pool's behaviours, written once and proven on every layer: mock, bridge, subprocess.

Uses only the public harness (``poolkit_pool_factory``, ``poolkit_layer``) and layer-agnostic
targets, exactly as a downstream project would. Each test runs once per layer.
"""

from __future__ import annotations

import anyio
import pytest

from poolkit import (
    CallTimeout,
    Phase,
    PoolClosed,
    RemoteError,
    SerializationError,
    WorkerCrashed,
    WorkerSpec,
    WorkerState,
)
from poolkit.testing import Layer, PoolFactory, ensure_pool_ready, scaled, targets, wait_until

pytestmark = pytest.mark.anyio


async def test_call_returns_the_value(poolkit_pool_factory: PoolFactory) -> None:
    """A call returns its target's value, by reference and by name."""
    async with poolkit_pool_factory() as pool:
        with anyio.fail_after(scaled(10)):
            assert await pool.call(targets.add, 1, 2, 3) == 6
            assert await pool.call("poolkit.testing.targets:echo", {"k": [1, 2]}) == {"k": [1, 2]}


async def test_application_errors_carry_the_remote_type(poolkit_pool_factory: PoolFactory) -> None:
    """A target that raises fails its call with RemoteError naming the remote type; the pool serves on."""
    async with poolkit_pool_factory() as pool:
        with anyio.fail_after(scaled(10)):
            with pytest.raises(RemoteError) as info:
                await pool.call(targets.fail, "nope", "KeyError")
            assert info.value.remote_type == "builtins.KeyError"
            assert await pool.call(targets.echo, 1) == 1


async def test_map_streams_results_in_input_order(poolkit_pool_factory: PoolFactory) -> None:
    """map() yields results in input order even when later items finish first."""
    async with poolkit_pool_factory() as pool:
        with anyio.fail_after(scaled(20)):
            delays = [0.2, 0.0, 0.1, 0.0]
            assert [v async for v in pool.map(targets.sleep, delays)] == delays
            assert [v async for v in pool.map(targets.add, range(20), range(20))] == [
                2 * i for i in range(20)
            ]


async def test_timeout_fails_the_call_and_replaces_the_worker(poolkit_pool_factory: PoolFactory) -> None:
    """A call past its deadline fails with CallTimeout (RUNNING); its worker is killed and replaced."""
    async with poolkit_pool_factory(min_workers=1, kill_grace=0.2) as pool:
        first = pool.workers()[0].id
        with anyio.fail_after(scaled(20)):
            with pytest.raises(CallTimeout) as info:
                await pool.call(targets.hang, timeout=0.2)
            assert info.value.phase is Phase.RUNNING
            await wait_until(
                lambda: [w.id for w in pool.workers() if w.state is WorkerState.READY] not in ([], [first]),
                pool=pool,
                describe="a replacement worker",
            )
            assert await pool.call(targets.echo, "after") == "after"


async def test_crash_fails_only_its_call(poolkit_pool_factory: PoolFactory) -> None:
    """A worker dying mid-call fails that call with WorkerCrashed (signal 9); a concurrent call on
    another worker succeeds, and the pool refills."""
    async with poolkit_pool_factory(min_workers=2, pipeline_depth=1) as pool:
        outcome: dict[str, object] = {}

        async def slow() -> None:
            outcome["slow"] = await pool.call(targets.sleep, 0.3)

        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await wait_until(
                    lambda: pool.statistics().in_flight == 1, pool=pool, describe="slow call running"
                )
                with pytest.raises(WorkerCrashed) as info:
                    await pool.call(targets.crash)
            assert info.value.signal == 9
            assert outcome["slow"] == 0.3
            await ensure_pool_ready(pool)
            assert pool.statistics().worker_crashes == 1


async def test_cancelling_a_caller_stops_its_call(poolkit_pool_factory: PoolFactory) -> None:
    """Cancelling the caller of a running call re-raises the cancellation and kills the worker;
    the pool keeps serving."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with anyio.fail_after(scaled(20)):
            with anyio.move_on_after(0.2) as scope:
                await pool.call(targets.hang)
            assert scope.cancelled_caught
            assert pool.statistics().cancelled == 1
            assert await pool.call(targets.echo, "next") == "next"


async def test_closing_drains_calls_in_flight(poolkit_pool_factory: PoolFactory) -> None:
    """Closing the pool lets calls in flight finish; a call after close raises PoolClosed."""
    results: list[float] = []
    async with poolkit_pool_factory(min_workers=2) as pool:
        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    results.append(await pool.call(targets.sleep, 0.2))

                for _ in range(3):
                    tg.start_soon(run)
                await wait_until(lambda: pool.statistics().in_flight == 3, pool=pool, describe="3 calls sent")
                await pool.aclose()
    assert results == [0.2, 0.2, 0.2]
    with pytest.raises(PoolClosed):
        await pool.call(targets.echo, 1)


@pytest.mark.poolkit_layers("subprocess")
async def test_the_marker_narrows_layers(poolkit_layer: Layer) -> None:
    """poolkit_layers(...) on a test runs it only on the layers named."""
    assert poolkit_layer is Layer.SUBPROCESS


async def test_handler_class_methods_are_targets_by_name(poolkit_pool_factory: PoolFactory) -> None:
    """A configured handler class is built once per worker (setup ran once) and its methods are
    called by name, keeping state between calls on the same worker."""
    spec = WorkerSpec(handler="poolkit.testing.targets:Tally")
    async with poolkit_pool_factory(min_workers=1, worker=spec) as pool:
        with anyio.fail_after(scaled(10)):
            assert await pool.call("add", 2) == 2
            assert await pool.call("add", 5) == 7
            assert await pool.call("setup_count") == 1


async def test_a_result_that_cannot_be_encoded_is_a_worker_side_serialization_error(
    poolkit_pool_factory: PoolFactory,
) -> None:
    """A result the worker cannot pickle fails the call with SerializationError(side="worker",
    phase RETURNING); the worker keeps serving."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with anyio.fail_after(scaled(10)):
            with pytest.raises(SerializationError) as info:
                await pool.call(targets.unencodable)
            assert info.value.side == "worker" and info.value.phase is Phase.RETURNING
            assert await pool.call(targets.echo, "ok") == "ok"
