"""downstream_demo's worker code, tested through a real pool on every poolkit layer.

A test that uses ``poolkit_pool_factory`` (or ``poolkit_layer``) runs once per layer: mock
(scripted workers), bridge (the real protocol to an in-process worker) and subprocess (real
worker processes), each on asyncio and on trio. Narrow it with
``@pytest.mark.poolkit_layers(...)`` or ``pytest --poolkit-layers=mock,bridge``.
"""

from __future__ import annotations

import anyio
import pytest
from poolkit import RemoteError, WorkerCrashed
from poolkit.testing import MockScript, PoolFactory, crashes, raises, returns, scaled

from downstream_demo import tasks

pytestmark = pytest.mark.anyio

INDEXER = {"handler": "downstream_demo.tasks:Indexer"}


async def test_word_count_in_a_worker(poolkit_pool_factory: PoolFactory) -> None:
    """A worker runs word_count, by reference and by "module:function" name, with the same result."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with anyio.fail_after(scaled(10)):
            assert await pool.call(tasks.word_count, "b a b") == {"b": 2, "a": 1}
            assert await pool.call("downstream_demo.tasks:word_count", "") == {}


async def test_checksums_stream_in_input_order(poolkit_pool_factory: PoolFactory) -> None:
    """pool.map over checksum yields one digest per input, in input order."""
    blobs = [bytes([i]) * (i + 1) for i in range(8)]
    async with poolkit_pool_factory(min_workers=2) as pool:
        with anyio.fail_after(scaled(10)):
            digests = [d async for d in pool.map(tasks.checksum, blobs)]
    assert digests == [tasks.checksum(b) for b in blobs]


async def test_bad_input_fails_only_that_call(poolkit_pool_factory: PoolFactory) -> None:
    """word_count(None) raises in the worker: the caller gets RemoteError; the worker serves on."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with anyio.fail_after(scaled(10)):
            with pytest.raises(RemoteError) as info:
                await pool.call(tasks.word_count, None)
            assert info.value.remote_type == "builtins.AttributeError"
            assert await pool.call(tasks.word_count, "ok") == {"ok": 1}


async def test_handler_is_set_up_once_and_keeps_state(poolkit_pool_factory: PoolFactory) -> None:
    """The Indexer handler is set up once per worker (stop words loaded) and keeps state across calls."""
    async with poolkit_pool_factory(min_workers=1, worker=INDEXER) as pool:
        with anyio.fail_after(scaled(10)):
            assert await pool.call("keywords", "the map of the maps and a map") == ["map", "maps"]
            await pool.call("keywords", "again")
            assert await pool.call("calls_served") == 2


# --- code that *uses* the pool, tested against scripted workers (mock layer only) --------------


@pytest.mark.poolkit_layers("mock")
async def test_count_corpus_skips_documents_that_fail(poolkit_pool_factory: PoolFactory) -> None:
    """count_corpus adds up successful counts and reports, not raises, a target's error."""
    script = MockScript()
    script.on(tasks.word_count).respond(
        returns({"a": 1}), raises(ValueError("unreadable")), returns({"a": 2, "b": 1})
    )
    async with poolkit_pool_factory(min_workers=1, script=script) as pool:
        with anyio.fail_after(scaled(10)):
            totals, errors = await tasks.count_corpus(pool, ["doc1", "doc2", "doc3"])
    assert totals == {"a": 3, "b": 1}
    assert errors == ["builtins.ValueError: unreadable"]
    assert [call.args for call in script.calls] == [("doc1",), ("doc2",), ("doc3",)]


@pytest.mark.poolkit_layers("mock")
async def test_count_corpus_lets_a_crash_propagate(poolkit_pool_factory: PoolFactory) -> None:
    """A worker crash is not a document error: count_corpus raises WorkerCrashed."""
    script = MockScript()
    script.on("downstream_demo.tasks:word_count").respond(crashes())
    async with poolkit_pool_factory(min_workers=1, script=script) as pool:
        with anyio.fail_after(scaled(10)), pytest.raises(WorkerCrashed):
            await tasks.count_corpus(pool, ["doc"])
