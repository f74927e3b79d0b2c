"""The protocol is language-neutral: the pool drives examples/json_worker.py, a worker that
never imports poolkit (its own framing, JSON only), with no change to the pool's code."""

from __future__ import annotations

import sys

import anyio
import pytest

from _util import TESTS_DIR, scaled
from poolkit import Pool, PoolConfig, RemoteError, SerializationError, WorkerSpec

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]

JSON_WORKER = TESTS_DIR.parent / "examples" / "json_worker.py"


def _config(**kw: object) -> PoolConfig:
    spec = WorkerSpec(command=(sys.executable, str(JSON_WORKER)), codec="json")
    return PoolConfig.model_validate({"min_workers": 2, **kw, "worker": spec})


async def test_standalone_worker_serves_calls_through_the_pool() -> None:
    """Calls, map and errors work against the standalone worker exactly as against poolkit's."""
    async with Pool(_config()) as pool:
        assert {w.handshake.get("runtime") for w in pool.workers()} == {"python-standalone"}
        with anyio.fail_after(scaled(20)):
            assert await pool.call("math:add", 1, 2, 3) == 6
            assert await pool.call("text:upper", "poolkit") == "POOLKIT"
            pids = {await pool.call("sys:getpid") for _ in range(4)}
            assert pids <= {w.pid for w in pool.statistics().workers}
            assert [v async for v in pool.map("math:mul", [2, 3, 4], [5, 6, 7])] == [10, 18, 28]
            with pytest.raises(RemoteError) as info:
                await pool.call("fail:raise")
            assert info.value.worker_id is not None


async def test_fixed_chunks_to_a_worker_without_map_chunks_say_what_to_change() -> None:
    """``chunksize=N`` sends poolkit's chunk target to every worker; this one does not run it
    (no ``map_chunks`` feature), and the error says to use chunksize=1 or "auto" (which never
    chunks for such workers, so the default map works)."""
    async with Pool(_config(min_workers=1)) as pool:
        with anyio.fail_after(scaled(20)):
            with pytest.raises(RemoteError) as info:
                async for _ in pool.map("math:mul", [2, 3, 4], [5, 6, 7], chunksize=2):
                    pass
            assert any("'map_chunks' feature" in note for note in info.value.__notes__)
            assert [v async for v in pool.map("math:mul", [2, 3], [5, 6])] == [10, 18]


async def test_json_codec_refuses_callables_before_sending() -> None:
    """With the JSON codec, a callable target cannot be named on the wire: SerializationError."""
    async with Pool(_config(min_workers=1)) as pool:
        with pytest.raises(SerializationError, match="json codec"):
            await pool.call(len, "abc")
        assert await pool.call("math:add", 2, 2) == 4
