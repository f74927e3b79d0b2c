"""The pool's everyday behaviour against real worker processes: the sync facade, scaling from
min_workers to max_workers under load, handler targets, and statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anyio
import pytest

from _util import pid_alive, scaled, wait_until
from integration import _faults, _targets
from poolkit import Pool, PoolConfig, SyncPool, WorkerSpec, WorkerState


@pytest.mark.integration
@pytest.mark.xdist_group("processes")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_pool_calls_and_maps_from_plain_code(backend: Literal["asyncio", "trio"]) -> None:
    """SyncPool serves blocking callers (call, map and starmap in order) from a private event
    loop and leaves no worker behind when its block ends."""
    with SyncPool(PoolConfig(min_workers=2), backend=backend) as pool:
        assert pool.call(_faults.echo, "hi") == "hi"
        assert list(pool.map(pow, [2, 3, 4], [5, 2, 1])) == [32, 9, 4]
        assert list(pool.starmap(pow, [(2, 5), (3, 2)])) == [32, 9]
        pids = [w.pid for w in pool.statistics().workers]
        assert "running" in repr(pool)
    assert pids and not any(p is not None and pid_alive(p) for p in pids)


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.xdist_group("processes")
async def test_pool_grows_to_max_workers_when_calls_queue(tmp_path: Path) -> None:
    """With min_workers=1 and max_workers=2, calls waiting in the queue make the pool start a
    second worker, which serves them; the pool never exceeds max_workers."""
    async with Pool(min_workers=1, max_workers=2, pipeline_depth=1) as pool:
        assert len(pool.statistics().workers) == 1
        go = tmp_path / "go"
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(pool.call, _faults.wait_for_file, str(go))
                await wait_until(
                    lambda: pool.statistics().workers_in(WorkerState.BUSY) == 2,
                    20,
                    f"second worker busy: {pool!r}",
                )
                assert len(pool.statistics().workers) == 2
                go.touch()
        assert pool.statistics().completed == 4


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.xdist_group("processes")
async def test_handler_class_targets_with_setup_and_session_state() -> None:
    """A 'pkg.mod:Class' handler is built once per worker (setup ran) and calls by method name
    reach it; the handler state persists across calls on the same worker."""
    spec = WorkerSpec(handler="integration._faults:Tally")
    async with Pool(min_workers=1, worker=spec) as pool:
        assert await pool.call("add", 2) == 2
        assert await pool.call("add", 3) == 5
        assert await pool.call("setup_calls") == 1


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.xdist_group("processes")
async def test_chunked_map_runs_callables_handler_methods_and_coroutines() -> None:
    """map(chunksize=N) on real workers: a callable, a handler method by name (the chunk runs
    on the worker's handler), and a coroutine function (run on the worker's event loop)."""
    with anyio.fail_after(scaled(60)):
        async with Pool(min_workers=2) as pool:
            assert [r async for r in pool.map(_targets.add, range(100), range(100), chunksize=16)] == [
                2 * i for i in range(100)
            ]
            assert [r async for r in pool.map(_targets.async_add, range(10), range(10), chunksize=4)] == [
                2 * i for i in range(10)
            ]
        async with Pool(min_workers=1, worker=WorkerSpec(handler="integration._faults:Tally")) as pool:
            assert [r async for r in pool.map("add", [1, 2, 3], chunksize=3)] == [1, 3, 6]


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.xdist_group("processes")
async def test_default_map_sends_small_items_in_chunks_to_real_workers() -> None:
    """The default map on real workers learns from their reported run times: 5,000 trivial
    items (a callable, then a coroutine function) come back in order from far fewer calls;
    a handler method by name too."""
    with anyio.fail_after(scaled(60)):
        async with Pool(min_workers=2) as pool:
            results = pool.map(_targets.add, range(5000), range(5000))
            assert [r async for r in results] == [2 * i for i in range(5000)]
            assert results.chunksize > 1
            assert pool.statistics().completed < 5000 // 4
            results = pool.map(_targets.async_add, range(2000), range(2000), concurrency=4)
            assert [r async for r in results] == [2 * i for i in range(2000)]
            assert results.chunksize > 1
        async with Pool(min_workers=1, worker=WorkerSpec(handler="integration._faults:Tally")) as pool:
            results = pool.map("add", [1] * 1000, concurrency=2)
            assert [r async for r in results] == list(range(1, 1001))
            assert results.chunksize > 1


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.xdist_group("processes")
async def test_frames_many_pipe_reads_long_arrive_whole_both_ways() -> None:
    """Arguments and results of 1 MiB (each end reads a pipe 64 KiB at a time), several in
    flight on one worker beside small calls, come back intact, each to its own caller."""
    big = [bytes([65 + i]) * (1 << 20) + b"%d" % i for i in range(4)]
    results: dict[int, object] = {}
    async with Pool(min_workers=1, pipeline_depth=8) as pool:

        async def one(key: int, value: object) -> None:
            results[key] = await pool.call(_faults.echo, value)

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                for i, value in enumerate(big):
                    tg.start_soon(one, i, value)
                    tg.start_soon(one, 10 + i, i)
    assert [results[i] for i in range(4)] == big
    assert [results[10 + i] for i in range(4)] == [0, 1, 2, 3]
