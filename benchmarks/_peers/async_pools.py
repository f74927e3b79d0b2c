"""Adapters for the async systems: poolkit, aiomultiprocess, anyio.to_process (asyncio backend).

Each is an async context manager whose ``call(fn, *args)`` awaits one call; ``map`` runs a
batch through the system's own map where it has one; ``call_timed`` gives a call a timeout
(the stuck workload; ``give_up`` says how, for the tables). aiomultiprocess runs coroutine
functions only: its adapter swaps each target for its ``work.ASYNC_TWIN``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
from anyio import to_process
from benchmarks._peers.work import ASYNC_TWIN


class AsyncPool:
    library = ""
    recreate: str | None = None
    give_up = "`anyio.fail_after(timeout)` around the awaited call"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    async def call_timed(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """One call that the caller gives up on after ``timeout`` seconds (TimeoutError)."""
        with anyio.fail_after(timeout):
            return await self.call(fn, *args)

    async def aclose(self) -> None:
        """Close the pool the library's usual way, from inside the ``async with`` block."""
        return None

    def live_workers(self) -> int | None:
        """Workers able to take a call, as the system itself counts them (None: it does not say)."""
        return None

    def worker_states(self) -> dict[str, int] | None:
        """How many workers are in each state, as the system itself says (None: it does not)."""
        return None

    def watch_resends(self) -> None:
        """Start counting calls the system sends again after their worker died (recovery)."""

    def resent(self) -> int | None:
        """Calls sent again since watch_resends() (None: the system never re-sends)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {}


class Poolkit(AsyncPool):
    """poolkit.Pool(min_workers=N), defaults otherwise (pipeline depth 2); ``pool.call`` from
    many tasks, or ``pool.map`` (its default concurrency)."""

    library = "poolkit"
    give_up = (
        "`pool.call(fn, timeout=)`: CallTimeout; poolkit kills the worker (SIGTERM, SIGKILL after kill_grace)"
    )

    async def __aenter__(self) -> Self:
        from poolkit import Pool, PoolConfig

        self.pool = Pool(PoolConfig(name="peers", min_workers=self.workers))
        await self.pool.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.pool.__aexit__(exc_type, exc, tb)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.pool.call(fn, *args)

    async def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return [r async for r in self.pool.map(fn, items)]

    async def call_timed(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        return await self.pool.call(fn, *args, timeout=timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()

    def live_workers(self) -> int | None:
        """READY or BUSY: not the worker being killed (STOPPING), nor one still starting."""
        return sum(1 for w in self.pool.statistics().workers if w.state.accepts_calls)

    def worker_states(self) -> dict[str, int] | None:
        states: dict[str, int] = {}
        for w in self.pool.statistics().workers:
            states[w.state.value] = states.get(w.state.value, 0) + 1
        return states

    def watch_resends(self) -> None:
        from poolkit import CallRequeued, CallRetried

        self.resends = 0

        def count(event: object) -> None:
            self.resends += 1

        # Call events are built only while someone listens: the recovery scenario alone pays.
        self.pool.subscribe(count, types=(CallRequeued, CallRetried))

    def resent(self) -> int | None:
        """Requeued (the worker died before the call started) plus retried calls."""
        return self.resends

    def describe(self) -> dict[str, Any]:
        return {
            "start_method": "python -m poolkit.worker (fresh interpreter)",
            "pipeline_depth": self.pool.config.pipeline_depth,
        }


class PoolkitPerCallMap(Poolkit):
    """poolkit's ``pool.map(fn, xs, chunksize=1)``: a call per input, the per-call map."""

    async def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return [r async for r in self.pool.map(fn, items, chunksize=1)]


class PoolkitChunked(Poolkit):
    """poolkit's ``pool.map(fn, xs, chunksize=256)``: inputs 256 to a call."""

    async def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return [r async for r in self.pool.map(fn, items, chunksize=256)]


class PoolkitZygote(Poolkit):
    """poolkit with ``WorkerSpec(start_method="zygote")``: workers forked from a warm template
    process (docs/architecture.md, "Start methods"); defaults otherwise."""

    async def __aenter__(self) -> Self:
        from poolkit import Pool, PoolConfig, WorkerSpec

        config = PoolConfig(name="peers", min_workers=self.workers, worker=WorkerSpec(start_method="zygote"))
        self.pool = Pool(config)
        await self.pool.__aenter__()
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "start_method": "fork of a warm zygote (start_method='zygote')"}


class Aiomp(AsyncPool):
    """aiomultiprocess.Pool(processes=N), defaults otherwise (spawn, 16 coroutines per child,
    one shared queue): ``apply`` per call, or ``map``."""

    library = "aiomp"
    give_up = "`anyio.fail_after(timeout)` around `await pool.apply(...)`: nothing stops the call"

    async def __aenter__(self) -> Self:
        self.pool = importlib.import_module("aiomultiprocess").Pool(processes=self.workers)
        await self.pool.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.pool.__aexit__(exc_type, exc, tb)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.pool.apply(ASYNC_TWIN[fn], args)

    async def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return list(await self.pool.map(ASYNC_TWIN[fn], items))

    async def aclose(self) -> None:
        self.pool.terminate()  # what its __aexit__ does
        await self.pool.join()

    def describe(self) -> dict[str, Any]:
        return {
            "start_method": "spawn (aiomultiprocess default)",
            "childconcurrency": self.pool.childconcurrency,
            "version": importlib.metadata.version("aiomultiprocess"),
        }


class AnyioProcess(AsyncPool):
    """anyio.to_process.run_sync(fn, *args, limiter=CapacityLimiter(N)): anyio's own worker
    processes, started on demand (at most N at once under the limiter) and kept idle for reuse."""

    library = "anyio"
    give_up = "`anyio.fail_after(timeout)`, `run_sync(cancellable=True)`: anyio kills the worker process"

    async def __aenter__(self) -> Self:
        self.limiter = anyio.CapacityLimiter(self.workers)
        return self

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await to_process.run_sync(fn, *args, limiter=self.limiter)

    async def call_timed(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        """``cancellable=True``: without it a running call is shielded from cancellation, and
        fail_after would fire only once the call returned."""
        with anyio.fail_after(timeout):
            return await to_process.run_sync(fn, *args, limiter=self.limiter, cancellable=True)

    def describe(self) -> dict[str, Any]:
        return {"start_method": "python -u -c ... (fresh interpreter, on demand)"}


class RawAsync(AsyncPool):
    """The raw pipe's children (rawchild.py) driven from asyncio: about the least an awaited
    call can cost. A call writes its frame straight to the least busy child and awaits a
    bare future; the loop's read callback (``add_reader``) splits the replies and resolves the
    futures. No queue, no task of its own, no timeouts, no recovery. A yardstick, not a
    pool: it answers "how much of an async row's figure is asyncio and the harness".

    The request pipes are non-blocking: a frame the pipe does not take at once waits in the
    child's buffer, and the loop's write callback (``add_writer``) sends it when the pipe has
    room, as an asyncio transport does. (A blocking write would deadlock 20,000 calls at
    once: the parent blocked on a full request pipe while the child blocks on a full reply
    pipe the parent is not reading.) Latency calls always find the pipe empty and write at
    once, as before.
    """

    library = "raw.async"

    async def __aenter__(self) -> Self:
        import asyncio

        from benchmarks._peers import rawpipe

        self.loop = asyncio.get_running_loop()
        self.children = [rawpipe.Child() for _ in range(self.workers)]
        rawpipe.wait_ready(self.children)
        self.ids = 0
        self.waiting: dict[int, dict[int, Any]] = {c.pid: {} for c in self.children}
        self.pending: dict[int, bytearray] = {c.pid: bytearray() for c in self.children}
        for c in self.children:
            os.set_blocking(c.w, False)
            self.loop.add_reader(c.r, self._readable, c)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for c in self.children:
            self.loop.remove_reader(c.r)
            self.loop.remove_writer(c.w)
            c.close()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        import pickle

        from benchmarks._peers.rawchild import HEADER

        body = pickle.dumps((fn, args), 5)
        child = min(self.children, key=lambda c: len(self.waiting[c.pid]))
        self.ids += 1
        future = self.loop.create_future()
        self.waiting[child.pid][self.ids] = future
        frame = HEADER.pack(len(body), self.ids) + body
        pending = self.pending[child.pid]
        if pending:  # earlier frames wait for room: keep the order
            pending += frame
        else:
            try:
                sent = os.write(child.w, frame)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                pending += frame[sent:]
                self.loop.add_writer(child.w, self._writable, child)
        ok, value = pickle.loads(await future)
        if not ok:
            raise value
        return value

    def _writable(self, child: Any) -> None:
        pending = self.pending[child.pid]
        try:
            sent = os.write(child.w, pending)
        except BlockingIOError:
            return
        del pending[:sent]
        if not pending:
            self.loop.remove_writer(child.w)

    def _readable(self, child: Any) -> None:
        chunk = os.read(child.r, 1 << 16)
        waiting = self.waiting[child.pid]
        if not chunk:
            self.loop.remove_reader(child.r)
            for future in waiting.values():
                future.set_exception(EOFError(f"raw child {child.pid} exited"))
            waiting.clear()
            return
        for call_id, body in child.frames(chunk):
            if call_id:
                waiting.pop(call_id).set_result(body)

    def describe(self) -> dict[str, Any]:
        return {"client": "asyncio add_reader + one future per call, over the raw pipe's child"}


ASYNC_POOLS: dict[str, type[AsyncPool]] = {
    "raw.async": RawAsync,
    "poolkit": Poolkit,
    "poolkit.zygote": PoolkitZygote,
    "poolkit.chunked": PoolkitChunked,
    "poolkit.percall": PoolkitPerCallMap,
    "aiomp": Aiomp,
    "anyio": AnyioProcess,
}
