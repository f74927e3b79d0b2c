"""Real fault injection into a running pool: crash, hang, partition, slow, corrupt, byzantine, memory.

:class:`FaultInjector` works on a started pool of any layer (it finds the layer from the pool's
worker handles) and does the real thing on each, never a simulation of the pool's reaction:

* real processes get real signals (``os.kill`` with SIGKILL, SIGSEGV, SIGSTOP/SIGCONT) and
  real calls (``os._exit`` inside the worker, memory really allocated and touched);
* stream faults alter the real bytes on the wire, on the parent's side of the worker's
  stream: a :class:`~poolkit._worker.WireTap` on the worker handle sees each chunk between the
  connection and the frame decoder / writer, and drops, delays, flips, truncates or rewrites
  it. That is the same code path for the bridge layer's memory streams and a real pipe;
* in-process layers get their own honest equivalent (a fake process ends with the
  returncode a signal would give) or, where a fault means nothing there, a
  :class:`FaultNotSupported` error naming the layer.

Calls the injector sends itself (``crash(how="exit")`` and ``grow_memory`` on a real process,
``hang``) are routed to one chosen worker, not through the pool's queue: they do not appear
in the pool's call events or call counters, only in its workers' load. Their targets live in
modules a worker imports without the pool machinery: ``_worker_faults`` (``exit_if_pid``) and
``targets`` (``hang``, ``grow_memory``).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio

from .. import _protocol as proto
from .._call import Call, CallStatus
from .._errors import WorkerCrashed
from .._pool import Pool, WorkerInfo
from .._transport import _AsyncioConnection, _ProcessConnection
from .._worker import Worker
from .._zygote import _ZygoteConnection
from ._bridge import _MemoryConnection
from ._layers import Layer
from ._mock import MockWorker
from ._wait import scaled, wait_until

__all__ = [
    "ByzantineMode",
    "CorruptMode",
    "CrashMode",
    "CrashReport",
    "FaultError",
    "FaultHandle",
    "FaultInjector",
    "FaultNotSupported",
    "WireRecord",
]

CrashMode = Literal["sigkill", "segfault", "exit"]
CorruptMode = Literal["flip", "truncate"]
ByzantineMode = Literal["wrong_call_id", "duplicate", "out_of_order"]
WorkerRef = str | Worker | WorkerInfo | None

_MiB = 1024 * 1024
_LENGTH_FIELD = range(14, 18)  # the header's body length (see _protocol): never flipped
_Pick = Literal["busy", "idle", "next"]
_REPLIES = frozenset({proto.FrameKind.RESULT, proto.FrameKind.ERROR, proto.FrameKind.CANCELLED})
_CRASH_SIGNALS = {"sigkill": signal.SIGKILL, "segfault": signal.SIGSEGV}

# Targets of the calls the injector routes to a worker. Each lives in a module a worker process
# imports cheaply (standard library only, never this module: it would load the pool machinery
# into the worker for that one call). tests/integration/test_faults.py checks them.
_EXIT_TARGET = "poolkit.testing._worker_faults:exit_if_pid"
_HANG_TARGET = "poolkit.testing.targets:hang"
_GROW_MEMORY_TARGET = "poolkit.testing.targets:grow_memory"


class FaultError(Exception):
    """A fault could not be injected (no such worker, it died first, the effect did not show)."""


class FaultNotSupported(FaultError):
    """The fault means nothing on this layer (for example memory growth in-process)."""

    def __init__(self, fault: str, layer: Layer, why: str) -> None:
        super().__init__(f"fault {fault!r} is not supported on the {layer.value} layer: {why}")
        self.fault = fault
        self.layer = layer


@dataclasses.dataclass(frozen=True, slots=True)
class WireRecord:
    """What a stream fault did to one chunk (partition, slow) or one frame (corrupt, byzantine).

    ``direction``: "received" (from the worker) or "sent" (to it). ``original``: the bytes as
    they were on the wire; ``delivered``: what the pool's side got instead (b"": dropped);
    ``delay``: seconds they were held.
    """

    direction: Literal["received", "sent"]
    original: bytes
    delivered: bytes
    delay: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class CrashReport:
    """A crashed worker: who it was and the returncode the pool saw (negative: the signal)."""

    worker_id: str
    pid: int | None
    how: CrashMode
    returncode: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class FaultHandle:
    """What a fault context manager yields: its worker and, for stream faults, the records."""

    fault: str
    layer: Layer
    worker_id: str
    pid: int | None
    records: list[WireRecord] = dataclasses.field(default_factory=list)


class FaultInjector:
    """Injects real faults into ``pool``'s workers. See the module docstring and docs/testing.md.

    ``worker`` arguments take a worker id, a handle from ``pool.workers()``, or a
    :class:`~poolkit.WorkerInfo`; None picks one: for ``crash`` a busy worker if any (its
    running call is what a crash hits), else a ready one; for ``hang`` and ``grow_memory`` an
    idle one; for the stream faults and ``partition`` the worker the pool will route its next
    call to (its scheduler's pick), so that a call made inside the block goes through the
    fault, or a busy one when no worker has room.
    ``timeout`` arguments bound the injector's own waits (scaled by ``POOLKIT_TIMEOUT_FACTOR``).

    A stream fault that injected nothing by the end of its block (no byte or frame of its
    worker passed while it was active) raises :class:`FaultError` on exit: a fault that
    silently does nothing would let a test pass without testing anything.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # ---- layers and workers ----------------------------------------------------------------
    @property
    def layer(self) -> Layer:
        """The pool's layer, read from a live worker handle."""
        workers = self.pool.workers()
        if not workers:
            raise FaultError(f"pool {self.pool.name!r} has no workers (is it started?)")
        return _layer_of(workers[0])

    def _worker(self, worker: WorkerRef, *, pick: _Pick = "busy") -> Worker:
        live = [w for w in self.pool.workers() if w.state.accepts_calls]
        if worker is None:
            busy = [w for w in live if w.load]
            idle = [w for w in live if not w.load]
            order = idle + busy if pick == "idle" else busy + idle
            if pick == "next":
                # The worker the pool's next call goes to (least loaded with room, round-robin
                # among equals), the same pick the pool's dispatch makes.
                routed = self.pool._sched.pick()
                if routed is not None and routed in live:
                    order.insert(0, routed)
            if not order:
                raise FaultError(f"pool {self.pool.name!r} has no ready or busy worker")
            return order[0]
        wanted = worker if isinstance(worker, str) else worker.id
        for w in live:
            if w.id == wanted:
                return w
        raise FaultError(f"no ready or busy worker {wanted!r} in pool {self.pool.name!r}")

    def _stream_worker(self, fault: str, worker: WorkerRef) -> tuple[Worker, Layer]:
        w = self._worker(worker, pick="next")
        layer = _layer_of(w)
        if layer is Layer.MOCK:
            raise FaultNotSupported(fault, layer, "mock workers have no byte stream to act on")
        return w, layer

    # ---- crash -------------------------------------------------------------------------------
    async def crash(
        self,
        worker: WorkerRef = None,
        *,
        how: CrashMode = "sigkill",
        exit_code: int = 1,
        timeout: float = 30.0,
    ) -> CrashReport:
        """Kill a worker and wait until the pool has seen it exit.

        Real process: ``sigkill``/``segfault`` send SIGKILL/SIGSEGV to its pid; ``exit`` routes
        a call to that worker that runs ``os._exit(exit_code)`` (after the calls already sent
        to it). Bridge: the fake process ends with returncode -9, -11 or ``exit_code``. Mock:
        the same through the mock worker's exit path.
        """
        if how not in ("sigkill", "segfault", "exit"):
            raise ValueError(f"how must be 'sigkill', 'segfault' or 'exit', got {how!r}")
        w = self._worker(worker, pick="idle" if how == "exit" else "busy")
        pid = w.pid
        returncode = exit_code if how == "exit" else -_CRASH_SIGNALS[how]
        layer = _layer_of(w)
        if layer is Layer.MOCK:
            assert isinstance(w, MockWorker)
            w._exit(returncode)
        elif layer is Layer.BRIDGE:
            assert isinstance(w._conn, _MemoryConnection)
            w._conn.exit(returncode)
        elif how == "exit":
            assert pid is not None
            call = await self._route(w, _EXIT_TARGET, (pid, exit_code), timeout=timeout)
            if not isinstance(call.error, WorkerCrashed):
                raise FaultError(f"worker {w.id} did not exit: {call.error or 'the exit call returned'}")
        else:
            assert pid is not None
            os.kill(pid, _CRASH_SIGNALS[how])
        await wait_until(
            lambda: w.state.is_terminal,
            timeout=timeout,
            pool=self.pool,
            describe=f"worker {w.id} to exit after {how}",
        )
        return CrashReport(w.id, pid, how, w.returncode)

    # ---- hang --------------------------------------------------------------------------------
    @asynccontextmanager
    async def hang(self, worker: WorkerRef = None, *, timeout: float = 30.0) -> AsyncIterator[FaultHandle]:
        """Inside the block, a worker runs a call that never returns (``targets.hang``).

        The block starts once the call has been written to the worker. The worker stays busy
        and takes no more than its pipeline depth; other workers serve. Leaving the block
        abandons the call, which kills the worker (running code cannot be stopped otherwise)
        and the pool replaces it, as after a timeout (``ensure_pool_ready`` after the block
        waits until it has left). Works on every layer: the target is Python
        (``targets.hang``), so a worker that does not run Python targets fails the call and
        this raises FaultError.
        """
        w = self._worker(worker, pick="idle")
        call = self._submit(w, _HANG_TARGET, ())
        try:
            # Running, and its CALL frame has left the pool's write buffer (so a stream fault
            # installed on this worker inside the block cannot drop or delay it). No event
            # announces the buffer draining: poll quickly, it takes one turn of the loop.
            await wait_until(
                lambda: (w.head() is call and not w._outbox) or call.ended,
                timeout=timeout,
                pool=self.pool,
                poll=0.002,
                describe=f"the hanging call to start on worker {w.id}",
            )
            if call.ended:
                raise FaultError(f"worker {w.id} ended the hanging call: {call.error!r}")
            yield FaultHandle("hang", _layer_of(w), w.id, w.pid)
        finally:
            if not call.ended:
                self.pool._abandon(call, stop_running=True)

    # ---- partition ---------------------------------------------------------------------------
    @asynccontextmanager
    async def partition(
        self, worker: WorkerRef = None, *, timeout: float = 10.0
    ) -> AsyncIterator[FaultHandle]:
        """Cut a worker off from the pool for the block.

        Bridge: every byte either way is dropped (recorded in the handle); FaultError on exit if
        no byte passed. Real process: SIGSTOP (the process is really stopped, state ``T``),
        SIGCONT when the block ends if the pool has not killed it meanwhile. Either way the
        pool does not know at once: it keeps routing calls to the worker until the heartbeat
        finds it unresponsive (about ``heartbeat_misses`` intervals) or a call times out.
        Mock: not supported.
        """
        w, layer = self._stream_worker("partition", worker)
        handle = FaultHandle("partition", layer, w.id, w.pid)
        if layer is Layer.BRIDGE:
            async with _installed(w, _PartitionTap(handle.records)):
                yield handle
            _require_records(handle, w, "no byte passed either way")
            return
        pid = w.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_until(
                lambda: proc_state(pid) in ("T", "t", None),
                timeout=timeout,
                poll=0.002,
                describe=f"worker {w.id} (pid {pid}) to stop",
            )
            if proc_state(pid) is None:
                raise FaultError(f"worker {w.id} (pid {pid}) exited before it could be stopped")
            yield handle
        finally:
            if w.returncode is None:  # not reaped yet: the pid is still this worker's
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    # ---- slow --------------------------------------------------------------------------------
    @asynccontextmanager
    async def slow(
        self,
        worker: WorkerRef = None,
        *,
        latency: float = 0.05,
        jitter: float = 0.02,
        seed: int | None = 1,
    ) -> AsyncIterator[FaultHandle]:
        """Hold every chunk either way for ``latency`` +- ``jitter`` seconds (uniform, seeded).

        Bytes are not changed and keep their order (a chunk waits for the one before it).
        FaultError on exit if no byte passed. Bridge and real processes; mock: not supported.
        """
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter must be >= 0")
        w, layer = self._stream_worker("slow", worker)
        handle = FaultHandle("slow", layer, w.id, w.pid)
        async with _installed(w, _SlowTap(handle.records, latency, jitter, random.Random(seed))):
            yield handle
        _require_records(handle, w, "no byte passed either way")

    # ---- corrupt -----------------------------------------------------------------------------
    @asynccontextmanager
    async def corrupt(
        self,
        worker: WorkerRef = None,
        *,
        mode: CorruptMode = "flip",
        frames: int = 1,
        seed: int | None = 1,
    ) -> AsyncIterator[FaultHandle]:
        """Damage the next ``frames`` frames coming from the worker, on the wire.

        ``flip``: one random bit of the frame (never in its length field, so the frame still
        ends where it did and the checksum catches it at once). ``truncate``: the frame loses
        a random tail of its body and its length field is rewritten to match, the checksum
        left as the worker computed it (frames without a body are passed on and not
        counted): the frame is complete, so the decoder reads it at once and the checksum
        fails. Either way the pool fails the running call with ProtocolError at once and
        replaces the worker. FaultError on exit if no frame was damaged. Bridge and real
        processes.
        """
        if mode not in ("flip", "truncate"):
            raise ValueError(f"mode must be 'flip' or 'truncate', got {mode!r}")
        w, layer = self._stream_worker("corrupt", worker)
        handle = FaultHandle(f"corrupt:{mode}", layer, w.id, w.pid)
        async with _installed(w, _CorruptTap(handle.records, mode, frames, random.Random(seed))):
            yield handle
        what = "frame" if mode == "flip" else "frame with a body"
        _require_records(handle, w, f"no {what} came from it")

    # ---- byzantine -----------------------------------------------------------------------------
    @asynccontextmanager
    async def byzantine(
        self, worker: WorkerRef = None, *, mode: ByzantineMode = "wrong_call_id"
    ) -> AsyncIterator[FaultHandle]:
        """Rewrite the worker's next reply (RESULT, ERROR or CANCELLED) into valid frames that
        lie: ``wrong_call_id`` (another call's id), ``duplicate`` (delivered twice),
        ``out_of_order`` (held back and delivered after the reply that follows it). Every
        rewritten frame has a correct checksum: only the protocol's ordering rules catch it.
        FaultError on exit if no reply was rewritten (``out_of_order`` needs two). Bridge and
        real processes.
        """
        if mode not in ("wrong_call_id", "duplicate", "out_of_order"):
            raise ValueError(f"unknown byzantine mode {mode!r}")
        w, layer = self._stream_worker("byzantine", worker)
        handle = FaultHandle(f"byzantine:{mode}", layer, w.id, w.pid)
        async with _installed(w, _ByzantineTap(handle.records, mode)):
            yield handle
        need = "two replies" if mode == "out_of_order" else "a reply"
        _require_records(handle, w, f"{need} (RESULT, ERROR or CANCELLED) did not come from it")

    # ---- memory ------------------------------------------------------------------------------
    async def grow_memory(self, megabytes: int, worker: WorkerRef = None, *, timeout: float = 60.0) -> int:
        """Make a worker process allocate and touch ``megabytes`` MiB (``targets.grow_memory``).

        Returns how much its VmRSS (``/proc/<pid>/status``) grew, in bytes; raises FaultError if
        that is under 80% of the request. Real processes only (in-process, the memory would be
        the test process's own).
        """
        w = self._worker(worker, pick="idle")
        layer = _layer_of(w)
        if layer is not Layer.SUBPROCESS:
            raise FaultNotSupported("grow_memory", layer, "workers run in the test process; use subprocess")
        pid = w.pid
        assert pid is not None
        before = vm_rss(pid)
        if before is None:
            raise FaultNotSupported("grow_memory", layer, f"no /proc/{pid}/status VmRSS on this system")
        call = await self._route(w, _GROW_MEMORY_TARGET, (megabytes,), timeout=timeout)
        if call.error is not None or call.worker is not w:
            raise FaultError(f"grow_memory did not run on worker {w.id}: {call.error!r}")
        after = vm_rss(pid)
        grew = (after or 0) - before
        if grew < 0.8 * megabytes * _MiB:
            raise FaultError(f"worker {w.id} VmRSS grew by {grew} bytes, asked for {megabytes} MiB")
        return grew

    # ---- routing a call to one worker ----------------------------------------------------------
    def _submit(self, w: Worker, target: str, args: tuple[Any, ...]) -> Call:
        if not w.has_room:
            raise FaultError(f"worker {w.id} has no room for a call ({w.state.value}, {w.load} in flight)")
        call = self.pool._make_call(target, args, {}, None)
        w.submit(call)
        self.pool._sched.update(w, w.load, w.has_room)
        return call

    async def _route(self, w: Worker, target: str, args: tuple[Any, ...], *, timeout: float) -> Call:
        """Send ``target(*args)`` to worker ``w`` itself and wait for the call to end."""
        await wait_until(
            lambda: w.has_room or w.state.is_terminal,
            timeout=timeout,
            pool=self.pool,
            describe=f"room on worker {w.id}",
        )
        call = self._submit(w, target, args)
        try:
            with anyio.move_on_after(scaled(timeout)):
                await call.wait()
        finally:
            if not call.ended:
                self.pool._abandon(call, stop_running=True)
        if call.status is not CallStatus.DONE:
            raise FaultError(f"{target} on worker {w.id} did not end within {scaled(timeout):g}s")
        return call


def _require_records(handle: FaultHandle, worker: Worker, nothing: str) -> None:
    """After a stream fault's block: raise FaultError if it injected nothing."""
    if handle.records:
        return
    why = f"{nothing} while the fault was active"
    if worker.state.is_terminal:
        why += f" (the worker exited: {worker.state.value}, returncode {worker.returncode})"
    else:
        why += (
            "; were the block's calls routed to other workers? Pass worker= the one your calls "
            "use, or make a call inside the block that it serves"
        )
    raise FaultError(f"{handle.fault} on worker {worker.id} injected nothing: {why}")


def _layer_of(worker: Worker) -> Layer:
    if isinstance(worker, MockWorker):
        return Layer.MOCK
    conn = worker._conn
    if isinstance(conn, _MemoryConnection):
        return Layer.BRIDGE
    if isinstance(conn, (_ProcessConnection, _AsyncioConnection, _ZygoteConnection)):
        return Layer.SUBPROCESS
    raise FaultError(f"worker {worker.id} has no known connection ({type(conn).__name__})")


def proc_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, T, Z, ...), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def vm_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS`` of ``/proc/<pid>/status``), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---- taps (poolkit._worker.WireTap implementations) -------------------------------------------
class _Tap:
    """Passes everything on. ``idle``: nothing held back, so it can be removed without loss."""

    def __init__(self, records: list[WireRecord]) -> None:
        self.records = records
        self.active = True
        self.worker: Worker | None = None

    @property
    def idle(self) -> bool:
        return True

    async def received(self, data: bytes) -> bytes:
        return data

    async def sending(self, data: bytes) -> bytes:
        return data

    def close(self) -> None:
        """Stop injecting; leave the worker as soon as nothing is held back."""
        self.active = False
        self._maybe_remove()

    def _maybe_remove(self) -> None:
        if not self.active and self.idle and self.worker is not None and self.worker.tap is self:
            self.worker.tap = None


@asynccontextmanager
async def _installed(worker: Worker, tap: _Tap) -> AsyncIterator[None]:
    if worker.tap is not None:
        raise FaultError(f"worker {worker.id} already has a stream fault on it")
    tap.worker = worker
    worker.tap = tap
    try:
        yield
    finally:
        tap.close()


class _PartitionTap(_Tap):
    async def received(self, data: bytes) -> bytes:
        if not self.active:
            return data
        self.records.append(WireRecord("received", data, b""))
        return b""

    async def sending(self, data: bytes) -> bytes:
        if not self.active:
            return data
        self.records.append(WireRecord("sent", data, b""))
        return b""


class _SlowTap(_Tap):
    def __init__(self, records: list[WireRecord], latency: float, jitter: float, rng: random.Random) -> None:
        super().__init__(records)
        self._latency = latency
        self._jitter = jitter
        self._rng = rng

    async def _hold(self, direction: Literal["received", "sent"], data: bytes) -> bytes:
        if not self.active:
            return data
        delay = max(0.0, self._latency + self._rng.uniform(-self._jitter, self._jitter))
        await anyio.sleep(delay)
        self.records.append(WireRecord(direction, data, data, delay))
        return data

    async def received(self, data: bytes) -> bytes:
        return await self._hold("received", data)

    async def sending(self, data: bytes) -> bytes:
        return await self._hold("sent", data)


class _FrameTap(_Tap):
    """Reassembles the worker's frames (exact raw bytes) so that one frame can be rewritten.

    A partial frame is held until it is complete. If the worker itself sends garbage, the tap
    passes the stream on untouched from there (the pool's decoder must see it as it is).
    """

    def __init__(self, records: list[WireRecord]) -> None:
        super().__init__(records)
        self._decoder = proto.FrameDecoder(2**32 - 1)
        self._pending = bytearray()
        self._passthrough = False

    @property
    def idle(self) -> bool:
        return not self._pending

    async def received(self, data: bytes) -> bytes:
        if self._passthrough:
            return data
        self._pending += data
        try:
            frames = self._decoder.feed(data)
        except proto.ProtocolViolation:
            self._passthrough = True
            out = bytes(self._pending)
            self._pending.clear()
            return out
        parts = [self.release()]
        offset = 0
        for frame in frames:
            size = proto.HEADER_SIZE + len(frame.payload)
            raw = bytes(self._pending[offset : offset + size])
            offset += size
            parts.append(self.frame(frame, raw) if self.active else raw)
        del self._pending[:offset]
        self._maybe_remove()
        return b"".join(parts)

    def frame(self, frame: proto.Frame, raw: bytes) -> bytes:
        """The bytes to deliver for one complete frame from the worker."""
        return raw

    def release(self) -> bytes:
        """Bytes held back from earlier chunks that must now go out, before this chunk's frames."""
        return b""


class _CorruptTap(_FrameTap):
    def __init__(self, records: list[WireRecord], mode: CorruptMode, frames: int, rng: random.Random) -> None:
        super().__init__(records)
        self._mode = mode
        self._left = frames
        self._rng = rng

    def frame(self, frame: proto.Frame, raw: bytes) -> bytes:
        if self._left <= 0:
            return raw
        rng = self._rng
        if self._mode == "flip":
            pos = rng.randrange(len(raw) - len(_LENGTH_FIELD))
            if pos >= _LENGTH_FIELD.start:
                pos += len(_LENGTH_FIELD)
            damaged = bytearray(raw)
            damaged[pos] ^= 1 << rng.randrange(8)
            delivered = bytes(damaged)
        else:
            if not frame.payload:
                return raw
            # Cut the payload's tail and make the length field say so, keeping the checksum the
            # worker computed over the whole payload. Why not just cut: the decoder would wait
            # for the missing bytes, and the call would hang (or fail much later, misread, once
            # unrelated bytes such as a PONG filled the gap) instead of failing as a damaged
            # frame. Why not cut and close the stream: that is a worker dying mid-write, a crash
            # (WorkerCrashed), which crash() covers. This models the fault checksums exist for:
            # a frame that arrives whole by its framing but without all its bytes. The
            # decoder reads it at once and the checksum fails: ProtocolError, worker replaced.
            body = raw[proto.HEADER_SIZE :]
            kept = rng.randrange(len(body))  # 0 .. len - 1 bytes of the body survive
            header = bytearray(raw[: proto.HEADER_SIZE])
            header[_LENGTH_FIELD.start : _LENGTH_FIELD.stop] = kept.to_bytes(len(_LENGTH_FIELD), "big")
            delivered = bytes(header) + body[:kept]
        self._left -= 1
        self.records.append(WireRecord("received", raw, delivered))
        return delivered


class _ByzantineTap(_FrameTap):
    def __init__(self, records: list[WireRecord], mode: ByzantineMode) -> None:
        super().__init__(records)
        self._mode = mode
        self._done = False
        self._held: bytes | None = None

    @property
    def idle(self) -> bool:
        return super().idle and self._held is None

    def frame(self, frame: proto.Frame, raw: bytes) -> bytes:
        if self._done or frame.kind not in _REPLIES:
            return raw
        if self._mode == "wrong_call_id":
            delivered = proto.encode_frame(frame.kind, frame.call_id + 1_000_000, frame.payload, frame.codec)
        elif self._mode == "duplicate":
            delivered = raw + raw
        elif self._held is None:
            self._held = raw
            return b""
        else:
            held, self._held = self._held, None
            delivered = raw + held
            raw = held + raw
        self._done = True
        self.records.append(WireRecord("received", raw, delivered))
        return delivered

    def release(self) -> bytes:
        if self.active or self._held is None:
            return b""
        held, self._held = self._held, None  # the block ended before a reply followed: late, in order
        return held
