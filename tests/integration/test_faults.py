"""FaultInjector: each fault really happens (signals, stopped processes, bytes on the wire,
resident memory) and the pool answers it with the right typed error, then recovers.

Each test runs on the layers where its fault means something (``poolkit_layers`` marker).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from _util import pid_alive
from poolkit import CallTimeout, Pool, ProtocolError, WorkerCrashed, WorkerExited, WorkerState
from poolkit import _protocol as proto
from poolkit._call import Call
from poolkit._worker import Worker
from poolkit.testing import (
    ByzantineMode,
    CrashMode,
    FaultError,
    FaultHandle,
    FaultInjector,
    FaultNotSupported,
    Layer,
    PoolFactory,
    ensure_pool_ready,
    scaled,
    targets,
    wait_until,
)
from poolkit.testing._faults import WorkerRef, proc_state, vm_rss

pytestmark = pytest.mark.anyio

_SIGNALS = {"sigkill": signal.SIGKILL, "segfault": signal.SIGSEGV}


def _frames(data: bytes) -> list[proto.Frame]:
    return proto.FrameDecoder().feed(data)


async def _replaced(pool: Pool, worker_id: str) -> None:
    """Wait until ``worker_id`` has left the pool and the pool is back to full strength."""
    await wait_until(
        lambda: worker_id not in [w.id for w in pool.workers()], pool=pool, describe=f"{worker_id} gone"
    )
    await ensure_pool_ready(pool)
    assert await pool.call(targets.echo, "after") == "after"


@pytest.mark.parametrize("how", ["sigkill", "segfault"])
async def test_crash_by_signal(
    poolkit_pool_factory: PoolFactory, poolkit_layer: Layer, how: CrashMode
) -> None:
    """crash() kills the busy worker by that signal: its running call fails with WorkerCrashed
    carrying the signal, a real process is gone, and the pool refills."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        errors: list[WorkerCrashed] = []

        async def victim() -> None:
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(targets.hang)
            errors.append(info.value)

        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                await wait_until(lambda: pool.statistics().in_flight == 1, pool=pool, describe="call sent")
                report = await injector.crash(how=how)
            assert report.returncode == -_SIGNALS[how]
            assert errors[0].signal == _SIGNALS[how]
            assert errors[0].worker_id == report.worker_id
            if poolkit_layer is Layer.SUBPROCESS:
                assert report.pid is not None and not pid_alive(report.pid)
            await _replaced(pool, report.worker_id)
            assert pool.statistics().worker_crashes == 1


async def test_crash_by_exit(poolkit_pool_factory: PoolFactory, poolkit_layer: Layer) -> None:
    """crash(how="exit") ends the worker with that exit status: a real process runs os._exit in
    a call routed to it; in-process the fake process ends with the status while a call runs."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        exited: list[WorkerExited] = []
        pool.subscribe(lambda e: exited.append(e) if isinstance(e, WorkerExited) else None)
        with anyio.fail_after(scaled(30)):
            if poolkit_layer is Layer.SUBPROCESS:
                report = await injector.crash(how="exit", exit_code=3)
            else:
                errors: list[WorkerCrashed] = []

                async def victim() -> None:
                    with pytest.raises(WorkerCrashed) as info:
                        await pool.call(targets.hang)
                    errors.append(info.value)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(victim)
                    await wait_until(
                        lambda: pool.statistics().in_flight == 1, pool=pool, describe="call sent"
                    )
                    report = await injector.crash(how="exit", exit_code=3)
                assert errors[0].exit_code == 3 and errors[0].signal is None
            assert report.returncode == 3
            assert [(e.worker_id, e.returncode, e.expected) for e in exited] == [(report.worker_id, 3, False)]
            if poolkit_layer is Layer.SUBPROCESS:
                assert report.pid is not None and not pid_alive(report.pid)
            await _replaced(pool, report.worker_id)
            assert pool.statistics().worker_crashes == 1


async def test_hang_keeps_a_worker_busy(poolkit_pool_factory: PoolFactory) -> None:
    """Inside hang() one worker runs a call that never returns while the other serves; leaving
    the block kills the stuck worker and the pool replaces it."""
    async with poolkit_pool_factory(min_workers=2, pipeline_depth=1) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.hang() as stuck:
                (worker,) = [w for w in pool.workers() if w.id == stuck.worker_id]
                assert worker.state is WorkerState.BUSY and worker.load == 1
                for i in range(3):
                    assert await pool.call(targets.echo, i) == i
                assert worker.load == 1 and worker.calls_completed == 0
            await _replaced(pool, stuck.worker_id)


@pytest.mark.poolkit_layers("bridge")
async def test_partition_drops_bytes(poolkit_pool_factory: PoolFactory) -> None:
    """On the bridge, partition() drops the bytes: the CALL never reaches the worker, the call
    fails with CallTimeout, and the pool replaces the worker."""
    async with poolkit_pool_factory(min_workers=1, kill_grace=0.2) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.partition() as cut:
                with pytest.raises(CallTimeout):
                    await pool.call(targets.echo, "lost", timeout=0.5)
            sent = [r for r in cut.records if r.direction == "sent"]
            assert sent and all(r.delivered == b"" for r in cut.records)
            assert proto.FrameKind.CALL in [f.kind for r in sent for f in _frames(r.original)]
            await _replaced(pool, cut.worker_id)


@pytest.mark.poolkit_layers("subprocess")
async def test_partition_stops_the_process(poolkit_pool_factory: PoolFactory) -> None:
    """On a real worker, partition() SIGSTOPs it (state T): a call fails with CallTimeout, and
    the pool kills and replaces the stopped worker."""
    async with poolkit_pool_factory(min_workers=1, kill_grace=0.2) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.partition() as cut:
                assert cut.pid is not None and proc_state(cut.pid) == "T"
                with pytest.raises(CallTimeout):
                    await pool.call(targets.echo, "lost", timeout=0.5)
            await _replaced(pool, cut.worker_id)
            assert not pid_alive(cut.pid)


@pytest.mark.poolkit_layers("subprocess")
async def test_partition_resumes_the_process(poolkit_pool_factory: PoolFactory) -> None:
    """Leaving partition() SIGCONTs the worker: the same process answers again."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.partition() as cut:
                assert cut.pid is not None and proc_state(cut.pid) == "T"
            assert proc_state(cut.pid) != "T"
            assert await pool.call(targets.getpid) == cut.pid


@pytest.mark.poolkit_layers("bridge", "subprocess")
async def test_slow_delays_bytes_in_order(poolkit_pool_factory: PoolFactory) -> None:
    """slow() holds each chunk latency +- jitter seconds each way, unchanged and in order: the
    round trip takes at least twice the minimum delay."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.slow(latency=0.05, jitter=0.02, seed=7) as slow:
                start = anyio.current_time()
                assert await pool.call(targets.echo, "x" * 100) == "x" * 100
                elapsed = anyio.current_time() - start
            assert elapsed >= 2 * 0.03
            directions = {r.direction for r in slow.records}
            assert directions == {"sent", "received"}
            assert all(0.03 <= r.delay <= 0.07 and r.original == r.delivered for r in slow.records)
            assert await pool.call(targets.echo, 1) == 1


@pytest.mark.poolkit_layers("bridge", "subprocess")
async def test_corrupt_flip(poolkit_pool_factory: PoolFactory) -> None:
    """corrupt(mode="flip") flips exactly one bit of the worker's RESULT frame on the wire: the
    call fails with ProtocolError and the worker is replaced."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.corrupt(mode="flip", seed=3) as damage:
                with pytest.raises(ProtocolError):
                    await pool.call(targets.echo, "payload")
            (record,) = damage.records
            assert [f.kind for f in _frames(record.original)] == [proto.FrameKind.RESULT]
            assert len(record.delivered) == len(record.original)
            diff = int.from_bytes(record.original, "big") ^ int.from_bytes(record.delivered, "big")
            assert diff.bit_count() == 1
            await _replaced(pool, damage.worker_id)


@pytest.mark.poolkit_layers("bridge", "subprocess")
async def test_corrupt_truncate(poolkit_pool_factory: PoolFactory) -> None:
    """corrupt(mode="truncate") cuts the tail off the RESULT frame and makes the header's length
    say so, keeping the original checksum: the frame is complete but fails its checksum, so the
    call fails with ProtocolError at once (no later bytes needed: heartbeats are off) and the
    worker is replaced."""
    async with poolkit_pool_factory(min_workers=1, heartbeat_interval=None) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with injector.corrupt(mode="truncate", seed=5) as damage:
                with anyio.fail_after(scaled(5)), pytest.raises(ProtocolError):
                    await pool.call(targets.echo, "b" * 256)
            (record,) = damage.records
            assert [f.kind for f in _frames(record.original)] == [proto.FrameKind.RESULT]
            assert proto.HEADER_SIZE <= len(record.delivered) < len(record.original)
            original = proto.HEADER.unpack_from(record.original)
            delivered = proto.HEADER.unpack_from(record.delivered)
            length, checksum = 5, 6
            assert delivered[length] == len(record.delivered) - proto.HEADER_SIZE
            assert delivered[checksum] == original[checksum]
            assert record.original[proto.HEADER_SIZE :].startswith(record.delivered[proto.HEADER_SIZE :])
            await _replaced(pool, damage.worker_id)


@pytest.mark.poolkit_layers("bridge", "subprocess")
@pytest.mark.parametrize("mode", ["wrong_call_id", "duplicate", "out_of_order"])
async def test_byzantine_replies(poolkit_pool_factory: PoolFactory, mode: ByzantineMode) -> None:
    """byzantine() rewrites the worker's replies into valid frames that break the protocol's
    rules (wrong call id, a duplicate, two replies swapped): ProtocolError, worker replaced."""
    async with poolkit_pool_factory(min_workers=1, pipeline_depth=2) as pool:
        injector = FaultInjector(pool)
        results: list[str] = []
        with anyio.fail_after(scaled(30)):
            async with injector.byzantine(mode=mode) as liar:
                with pytest.raises(ProtocolError):
                    async for value in pool.map(targets.echo, ["a", "b"]):
                        results.append(value)
            (record,) = liar.records
            original = [(f.kind, f.call_id) for f in _frames(record.original)]
            delivered = [(f.kind, f.call_id) for f in _frames(record.delivered)]
            if mode == "wrong_call_id":
                assert results == []
                assert len(original) == len(delivered) == 1 and original[0][1] != delivered[0][1]
            elif mode == "duplicate":
                assert results == ["a"]  # the first copy is genuine; the second breaks the order
                assert delivered == original * 2
            else:
                assert results == []
                assert len(original) == 2 and delivered == original[::-1]
            await _replaced(pool, liar.worker_id)


_StreamFault = Callable[[FaultInjector, WorkerRef], contextlib.AbstractAsyncContextManager[FaultHandle]]
_STREAM_FAULTS: dict[str, _StreamFault] = {
    "corrupt:flip": lambda f, w: f.corrupt(w, mode="flip"),
    "corrupt:truncate": lambda f, w: f.corrupt(w, mode="truncate"),
    "byzantine:wrong_call_id": lambda f, w: f.byzantine(w, mode="wrong_call_id"),
    "slow": lambda f, w: f.slow(w, latency=0.01, jitter=0.0),
}


@pytest.mark.poolkit_layers("bridge", "subprocess")
@pytest.mark.parametrize("fault", sorted(_STREAM_FAULTS))
async def test_a_stream_fault_that_injects_nothing_raises(
    poolkit_pool_factory: PoolFactory, fault: str
) -> None:
    """A stream fault on a worker that sends nothing while it is active (it is stuck in a call,
    and the block's own call is served by the other worker) raises FaultError on exit naming
    the worker, instead of letting the test pass with nothing injected."""
    await _injects_nothing(poolkit_pool_factory, fault, _STREAM_FAULTS[fault])


@pytest.mark.poolkit_layers("bridge")
async def test_a_bridge_partition_that_injects_nothing_raises(poolkit_pool_factory: PoolFactory) -> None:
    """The same for partition() on the bridge layer, where it is a tap on the worker's
    streams. (On real processes it is a SIGSTOP, checked when it is sent.)"""
    await _injects_nothing(poolkit_pool_factory, "partition", lambda f, w: f.partition(w))


async def _injects_nothing(poolkit_pool_factory: PoolFactory, fault: str, inject: _StreamFault) -> None:
    async with poolkit_pool_factory(min_workers=2, heartbeat_interval=None) as pool:
        faults = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with faults.hang() as stuck:
                message = f"{fault} on worker {stuck.worker_id} injected nothing"
                with pytest.raises(FaultError, match=message):
                    async with inject(faults, stuck.worker_id) as handle:
                        assert await pool.call(targets.echo, "x") == "x"
                assert handle.records == []
            await _replaced(pool, stuck.worker_id)


@pytest.mark.poolkit_layers("bridge", "subprocess")
async def test_default_stream_fault_target_is_the_next_calls_worker(
    poolkit_pool_factory: PoolFactory,
) -> None:
    """With no worker named, a stream fault taps the worker the pool routes its next call to:
    on a two-worker pool, whichever worker round-robin reaches, a call made inside corrupt()
    fails with ProtocolError, and one made inside slow() is held."""
    async with poolkit_pool_factory(min_workers=2, heartbeat_interval=None) as pool:
        faults = FaultInjector(pool)
        with anyio.fail_after(scaled(60)):
            for i in range(3):
                # Move the round-robin on, so the next call's worker is not always the first listed.
                assert await pool.call(targets.echo, i) == i
                async with faults.corrupt() as damage:
                    with pytest.raises(ProtocolError) as info:
                        await pool.call(targets.echo, "x")
                assert info.value.worker_id == damage.worker_id
                await _replaced(pool, damage.worker_id)
                async with faults.slow(latency=0.01, jitter=0.0) as slow:
                    assert await pool.call(targets.echo, "y") == "y"
                assert {r.direction for r in slow.records} == {"sent", "received"}


@pytest.mark.poolkit_layers("subprocess")
async def test_grow_memory_raises_rss(poolkit_pool_factory: PoolFactory) -> None:
    """grow_memory() makes the worker process itself hold the memory: its VmRSS grows by at least
    80% of the request, and it keeps serving."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        (worker,) = pool.workers()
        assert worker.pid is not None
        before = vm_rss(worker.pid)
        assert before is not None
        with anyio.fail_after(scaled(60)):
            grew = await injector.grow_memory(64)
            after = vm_rss(worker.pid)
            assert after is not None
            assert grew >= 0.8 * 64 * 1024 * 1024
            assert after - before >= 0.8 * 64 * 1024 * 1024
            assert await pool.call(targets.getpid) == worker.pid


@pytest.mark.poolkit_layers("mock")
async def test_stream_faults_are_not_supported_on_mock(poolkit_pool_factory: PoolFactory) -> None:
    """Mock workers have no stream and no process: stream and memory faults say so, naming the layer."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        injector = FaultInjector(pool)
        assert injector.layer is Layer.MOCK
        for fault in (
            injector.partition(),
            injector.slow(),
            injector.corrupt(),
            injector.byzantine(),
        ):
            with pytest.raises(FaultNotSupported, match="mock layer"):
                async with fault:
                    pass
        with pytest.raises(FaultNotSupported, match="mock layer") as info:
            await injector.grow_memory(1)
        assert info.value.layer is Layer.MOCK and info.value.fault == "grow_memory"


@pytest.mark.poolkit_layers("bridge")
async def test_grow_memory_is_not_supported_in_process(poolkit_pool_factory: PoolFactory) -> None:
    """On the bridge the worker is the test process: grow_memory refuses rather than pretend."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with pytest.raises(FaultNotSupported, match="bridge layer"):
            await FaultInjector(pool).grow_memory(1)


async def test_a_hung_worker_does_not_stop_the_others(poolkit_pool_factory: PoolFactory) -> None:
    """docs/testing.md's example, verbatim: while one worker hangs, calls are served by the
    other; afterwards ensure_pool_ready waits until the hung worker has left the pool."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        faults = FaultInjector(pool)
        with anyio.fail_after(scaled(30)):
            async with faults.hang() as handle:
                assert await pool.call(targets.echo, "served") == "served"
            await ensure_pool_ready(pool)
        assert handle.worker_id not in [w.id for w in pool.workers()]


# What a worker must not load just to run a fault's call: the pool machinery and pytest.
_HEAVY = ("poolkit._pool", "anyio", "pydantic", "pytest")


@pytest.mark.poolkit_layers("subprocess")
async def test_worker_side_fault_targets_import_only_what_they_need(
    poolkit_pool_factory: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call the injector routes to a real worker (grow_memory, hang, crash(how="exit"))
    names a target the worker resolves without loading the pool machinery or pytest: resolved
    in a fresh interpreter, as a worker process does, its module loads none of them. The exit
    target is ``_worker_faults.exit_if_pid``, not a function of ``_faults`` (which imports the
    pool)."""
    sent: list[str] = []
    submit = FaultInjector._submit

    def spy(self: FaultInjector, w: Worker, target: str, args: tuple[Any, ...]) -> Call:
        sent.append(target)
        return submit(self, w, target, args)

    monkeypatch.setattr(FaultInjector, "_submit", spy)
    async with poolkit_pool_factory(min_workers=2) as pool:
        injector = FaultInjector(pool)
        with anyio.fail_after(scaled(60)):
            await injector.grow_memory(8)
            async with injector.hang():
                pass
            await ensure_pool_ready(pool)
            report = await injector.crash(how="exit", exit_code=3)
            assert report.returncode == 3
            await ensure_pool_ready(pool)
    assert len(sent) == 3, sent

    for target in sent:
        module, _, attr = target.partition(":")
        code = (
            f"import sys; from {module} import {attr}; "
            f"loaded = [m for m in {_HEAVY!r} if m in sys.modules]; assert not loaded, loaded"
        )
        with anyio.fail_after(scaled(60)):
            done = await anyio.run_process([sys.executable, "-c", code], check=False)
        assert done.returncode == 0, f"{target}: {done.stderr.decode()}"
    module, _, attr = sent[-1].partition(":")
    exit_target = getattr(importlib.import_module(module), attr)
    assert (exit_target.__module__, exit_target.__name__) == ("poolkit.testing._worker_faults", "exit_if_pid")
