"""``Pool.map``'s iterator: inputs admitted under a concurrency limit, results in input order,
and the chunking that makes small calls cheap.

Why chunks: however little a call does, it costs the parent some 15-20 us of event-loop CPU
(encode, dispatch, a frame each way, wake the caller) and the worker a frame to decode and
one to write, so a map of tiny calls tops out near 50k items/s. Sent as one call of the
worker runtime's ``run_chunk``, N items share those costs: over a million small items/s
(docs/performance.md).

Why adaptive (``chunksize="auto"``, the default): a fixed chunk size is right for one
workload only. Chunks of slow items lose what per-item calls give: load balance across
workers, results as each item finishes, and a crash, timeout or early exit costing one
item rather than a chunk. So the iterator starts as a plain map, one item per call, and
learns the target's cost per item from the run times workers report with each reply
(``FLAG_TIMING``, docs/protocol.md). Once an item is known to take well under
``_CHUNK_SECONDS``, later calls carry as many items as fit in about that much work
(bounded by ``_CHUNK_MAX`` items and by ``_CHUNK_BYTES`` of request and reply); items that
take longer than ``_CHUNK_SECONDS / _CHUNK_MIN`` stay one to a call. A worker that does not
announce the ``map_chunks`` and ``timings`` features (a runtime other than poolkit's) is
never sent chunks. ``chunksize=N`` fixes the size (1: every item its own call).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Self

from . import _protocol as proto
from ._call import Call, describe_target
from ._errors import Phase, PoolError, RemoteError

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["RUN_CHUNK", "MapIterator"]

#: Each chunk is one call of this worker-runtime function (the ``map_chunks`` feature).
RUN_CHUNK = "poolkit.worker._runtime:run_chunk"
_CHUNK_SECONDS = 0.002  # work per adaptive chunk: the granularity a crash or an early exit loses
_CHUNK_MIN = 4  # fewer items than this per chunk saves too little to give up per-item calls
_CHUNK_MAX = 4096  # items per chunk: bounds the parent's memory for results not yet yielded
_CHUNK_BYTES = 1 << 18  # request + reply bytes per chunk (also at most max_frame_size / 8)
_WEIGHT = 0.5  # of the newest measurement in the running per-item estimates


class MapIterator:
    """Async iterator of :meth:`Pool.map` results, in input order. Also an async context manager."""

    def __init__(
        self,
        pool: Pool,
        target: Any,
        source: Iterator[tuple[Any, ...]],
        concurrency: int | None,
        timeout: float | None,
        chunksize: int | Literal["auto"] = "auto",
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        auto = isinstance(chunksize, str) and chunksize == "auto"
        if not auto and (type(chunksize) is not int or chunksize < 1):
            raise ValueError(f'chunksize must be "auto" or an int >= 1, got {chunksize!r}')
        config = pool.config
        self._pool = pool
        self._target = target
        self._source: Iterator[tuple[Any, ...]] | None = source
        self._auto = auto
        self._chunksize = 1 if auto else int(chunksize)
        # Calls in flight: enough that calls are already queued in the pool when a reply
        # frees a worker; chunks need fewer, each holding several items' work.
        self._concurrency = concurrency or 2 * config.worker_limit * config.pipeline_limit
        self._chunk_concurrency = concurrency or 4 * config.worker_limit
        self._timeout = timeout
        # A chunk's own name: its breaker, run-time estimate and telemetry are its target's
        # chunks', not shared by every map's chunks (nor mixed with its single calls' timings).
        self._chunk_name = f"{describe_target(target)} (map chunk)"
        limit = timeout if timeout is not None else config.default_timeout
        # A chunk shares one call's deadline: keep its work a small part of it.
        self._budget = _CHUNK_SECONDS if limit is None else min(_CHUNK_SECONDS, limit / 16)
        self._byte_limit = min(_CHUNK_BYTES, config.max_frame_size // 8)
        self._item_seconds: float | None = None  # running estimate of one item's run time
        self._item_bytes = 0.0  # ... and of its request + reply bytes
        # (call, items): items is 0 for a plain call of the target, else the chunk's length.
        self._pending: collections.deque[tuple[Call, int]] = collections.deque()
        self._ready: collections.deque[Any] = collections.deque()  # results of a chunk, to yield
        self._failure: PoolError | None = None  # a chunk's failing item, raised after _ready

    @property
    def chunksize(self) -> int:
        """Items the next call will carry: fixed, or what the adaptive sizing chose so far."""
        return self._chunksize

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _next_call(self) -> tuple[Call, int] | None:
        """The call for the next input (or chunk of inputs); None when the inputs are done."""
        assert self._source is not None
        pool = self._pool
        if self._chunksize == 1:
            args = next(self._source, None)
            if args is None:
                return None
            call = pool._make_call(self._target, args, {}, self._timeout)
            items = 0
        else:
            chunk = [list(args) for args in itertools.islice(self._source, self._chunksize)]
            if not chunk:
                return None
            call = pool._make_call(RUN_CHUNK, (self._target, chunk), {}, self._timeout, name=self._chunk_name)
            items = len(chunk)
        if self._auto:
            # The run time the sizing learns from. Wall time only: when the pool's call events
            # are observed, the pool asks for the CPU time too as it queues the call.
            call.ext = proto.FLAG_TIMING | proto.FLAG_WALL_ONLY
        return call, items

    def _learn(self, call: Call, items: int) -> None:
        """Size the next chunks from what ``call`` cost its worker (module docstring)."""
        worker, run_ns = call.worker, call.run_ns
        if run_ns is None or worker is None or "map_chunks" not in worker.handshake.get("features", ()):
            return
        n = items or 1
        seconds = run_ns * 1e-9 / n
        size = (len(call.payload) + len(call.result or b"")) / n
        if self._item_seconds is None:
            self._item_seconds, self._item_bytes = seconds, size
        else:
            self._item_seconds += (seconds - self._item_seconds) * _WEIGHT
            self._item_bytes += (size - self._item_bytes) * _WEIGHT
        fit = min(
            self._budget / max(self._item_seconds, 1e-9),
            self._byte_limit / max(self._item_bytes, 1.0),
            _CHUNK_MAX,
        )
        self._chunksize = int(fit) if fit >= _CHUNK_MIN else 1

    def _unpack(self, call: Call, value: Any) -> None:
        """A chunk's reply: its results to yield, then its failing item's error, if any."""
        results, error = value
        self._ready.extend(results)
        if error is not None:
            worker = call.worker
            self._failure = RemoteError(
                str(error.get("type", "Exception")),
                str(error.get("message", "")),
                str(error.get("traceback", "")),
                phase=Phase.RUNNING,
                worker_id=worker.id if worker else None,
                pid=worker.pid if worker else None,
                target=describe_target(self._target),
            )

    def _take_failure(self) -> PoolError | None:
        failure, self._failure = self._failure, None
        return failure

    async def __anext__(self) -> Any:
        if self._ready:
            return self._ready.popleft()
        pool = self._pool
        try:
            failure = self._take_failure()
            if failure is not None:
                raise failure
            while True:
                while self._source is not None and len(self._pending) < (
                    self._concurrency if self._chunksize == 1 else self._chunk_concurrency
                ):
                    entry = self._next_call()
                    if entry is None:
                        self._source = None
                        break
                    pool._admit(entry[0])
                    self._pending.append(entry)
                if not self._pending:
                    raise StopAsyncIteration
                call, items = self._pending[0]
                try:
                    value = await pool._result(call)
                except RemoteError as exc:
                    if items:
                        _explain_chunk_failure(exc, call, items)
                    raise
                self._pending.popleft()
                if self._auto:
                    self._learn(call, items)
                if not items:
                    return value
                self._unpack(call, value)
                if self._ready:
                    return self._ready.popleft()
                failure = self._take_failure()
                if failure is not None:
                    raise failure
        except StopAsyncIteration:
            raise
        except BaseException:
            if self._pending and self._pending[0][0].ended:
                self._pending.popleft()
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Withdraw what has not run; let running calls finish unobserved."""
        self._close()

    def _close(self) -> None:
        self._source = None
        self._ready.clear()
        self._failure = None
        while self._pending:
            self._pool._withdraw(self._pending.popleft()[0])

    def __del__(self) -> None:
        """A plain ``async for ... in pool.map(...)`` left by ``break`` (or an exception in its
        body) never calls :meth:`aclose`: Python has no hook for that. But the loop held the
        only reference, so CPython finalizes the iterator right there, in the event loop's
        thread, and its calls are withdrawn as ``async with`` would. Without this, up to
        ``concurrency`` calls stayed queued and ran for nobody, and the next call waited
        behind them. Elsewhere (a collector run in another thread) the pool's state is not
        ours to touch: the calls then run to their end unobserved."""
        try:
            if self._pending and threading.get_ident() == self._pool._thread:
                self._close()
        except Exception:  # a finalizer must not raise (say, at interpreter shutdown)
            pass


def _explain_chunk_failure(exc: RemoteError, call: Call, items: int) -> None:
    """A fixed ``chunksize`` sends chunks to every worker, and a worker that is not poolkit's
    runtime (no ``map_chunks`` feature: a ``command=`` worker, the JSON example) fails them
    with "unknown target ...run_chunk", which does not say what to change. Say it."""
    worker = call.worker
    features = worker.handshake.get("features", ()) if worker is not None else ()
    if "map_chunks" not in features and "run_chunk" in str(exc):
        exc.add_note(
            f"this map sent {items} items per call (chunksize) to {RUN_CHUNK!r}, which this "
            "worker does not run (its READY does not announce the 'map_chunks' feature): "
            "use chunksize=1, or chunksize='auto', which only chunks for workers that can"
        )
