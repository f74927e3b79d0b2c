"""The bridge layer: in-process fake workers speaking the real protocol over in-memory streams.

:class:`BridgeLauncher` is a :class:`~poolkit._transport.Launcher` whose "processes" are
tasks in the pool's task group. They exchange real frames (``_protocol``) with the real pool
code, so unit tests exercise framing, pipelining, ordering, cancellation, timeouts, heartbeats,
sessions and crash handling without spawning anything. This is the seed of the harness's
bridge layer.

Targets run in the event loop: a sync target runs inline (it blocks the loop, as a worker
would block its process), an async target is awaited, so tests can hang a call with
``await anyio.sleep_forever()`` and release it with an event. A target raising
:class:`FakeExit` ends the fake process with that exit status, like ``os._exit`` or a
fatal signal would.

Each fake worker is two tasks, as the real runtime is two threads when heartbeats are on: a
*reader* that takes in every frame as it arrives (PING is answered at once, even while an
async target awaits; CALL and SESSION_END are queued; CANCEL marks a queued call; SHUTDOWN is
noted) and a *runner* that works through the queue one entry at a time, in arrival order.
Before starting each call the runner takes in whatever the parent has sent so far, so a
CANCEL sent behind a CALL always skips it, exactly as the real runtime's non-blocking read
before each call does. Parent-to-worker bytes go through an inbox both tasks can read without
waiting (a memory object stream would hand data to a waiting reader, where the runner could
not see it).

The parent's side, :class:`_MemoryConnection`, also lets a test play with the "process":
``rss`` is what PONGs report (simulate memory growth), and ``freeze()``/``thaw()`` stop and
resume it as SIGSTOP/SIGCONT would.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from .. import _protocol as proto
from .._map import RUN_CHUNK
from .._transport import Connection
from ..worker import Session
from ..worker._runtime import FEATURES, _current_trace, _timing_block, _trace_context, handler_method
from ._context import FakeExit, freeze_hook, in_process

__all__ = ["BridgeLauncher", "FakeExit"]

_fake_pids = itertools.count(900_000)
_K = proto.FrameKind

#: What a fake worker reports as its resident set size until a test sets ``conn.rss``: about
#: what a fresh Python worker process has.
DEFAULT_FAKE_RSS = 30 * 1024 * 1024


class _MemoryConnection:
    """The parent's side of one fake worker. Implements the Connection protocol.

    Test controls: ``rss`` (bytes, reported in every PONG), ``freeze()``/``thaw()`` (SIGSTOP
    and SIGCONT: a frozen worker reads nothing and nothing it writes arrives until it is
    thawed; SIGTERM waits for the thaw too, SIGKILL does not), ``ignore_sigterm``.
    """

    def __init__(self) -> None:
        self.to_parent_tx, self._to_parent_rx = anyio.create_memory_object_stream[bytes](math.inf)
        self.stderr_tx, self._stderr_rx = anyio.create_memory_object_stream[bytes](math.inf)
        self._pid = next(_fake_pids)
        self._returncode: int | None = None
        self._exited = anyio.Event()
        self.scope = anyio.CancelScope()
        self.ignore_sigterm = False
        self.rss = DEFAULT_FAKE_RSS
        self.frozen = False
        self._held: list[bytes] = []  # frames the worker wrote while frozen, in order
        self._sigterm_pending = False
        # Parent -> worker: chunks of bytes, and whether the parent has closed its end.
        self._inbox: deque[bytes] = deque()
        self._inbox_closed = False
        self._changed: anyio.Event | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def exit(self, returncode: int) -> None:
        if self._returncode is None:
            self._returncode = returncode
            self.scope.cancel()
            for stream in (self.to_parent_tx, self.stderr_tx):
                stream.close()
            self._inbox.clear()
            self._held.clear()
            self._exited.set()

    # ---- test controls ---------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop the fake process, as SIGSTOP would: it reads no frame and answers nothing
        (not even PING) until :meth:`thaw`. An async target already awaiting keeps running in
        the event loop, but what the worker writes meanwhile is held back."""
        self.frozen = True

    def thaw(self) -> None:
        """Resume a frozen fake process (SIGCONT): held frames arrive, in order, then it reads
        what the parent sent meanwhile; a SIGTERM received while frozen takes effect now."""
        if not self.frozen:
            return
        self.frozen = False
        held, self._held = self._held, []
        for data in held:
            self._write(data)
        self._poke()
        if self._sigterm_pending:
            self._sigterm_pending = False
            self.terminate()

    # ---- the worker's side -----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        """The worker writes a frame to its stdout."""
        if self.frozen:
            self._held.append(data)
            return
        try:
            self.to_parent_tx.send_nowait(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the parent stopped reading

    def _poke(self) -> None:
        """Something the worker's tasks may wait for changed: wake them to re-check."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is re-checked after every :meth:`_poke`."""
        while not condition():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    # ---- Connection ------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self._returncode is not None or self._inbox_closed:
            raise anyio.BrokenResourceError("fake worker is gone")
        self._inbox.append(data)
        self._poke()

    async def receive(self) -> bytes:
        try:
            return await self._to_parent_rx.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""

    async def receive_stderr(self) -> bytes:
        try:
            return await self._stderr_rx.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return b""

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def terminate(self) -> None:
        if self.ignore_sigterm:
            return
        if self.frozen:
            self._sigterm_pending = True  # a stopped process gets SIGTERM when it continues
            return
        self.exit(-15)

    def kill(self) -> None:
        self.exit(-9)

    async def aclose(self) -> None:
        self._inbox_closed = True  # the worker reads EOF after what was already sent
        self._poke()
        self._to_parent_rx.close()
        self._stderr_rx.close()


class BridgeLauncher:
    """Starts fake workers as tasks. ``startup_error`` makes every worker fail its startup
    with that message (as a handler that fails to import would)."""

    def __init__(self, *, startup_error: str | None = None, ignore_sigterm: bool = False) -> None:
        self.startup_error = startup_error
        self.ignore_sigterm = ignore_sigterm
        self.connections: list[_MemoryConnection] = []

    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> Connection:
        conn = _MemoryConnection()
        conn.ignore_sigterm = self.ignore_sigterm
        self.connections.append(conn)
        task_group.start_soon(_FakeWorker(conn, dict(spec), self.startup_error).run)
        return conn


class _FakeWorker:
    def __init__(self, conn: _MemoryConnection, spec: dict[str, Any], startup_error: str | None) -> None:
        self.conn = conn
        self.spec = spec
        self.startup_error = startup_error
        self.handler: Any = None
        self.targets: dict[str, Any] = {}
        self.sessions: dict[Any, Session] = {}
        self.limit = int(spec.get("max_frame_size") or proto.DEFAULT_MAX_FRAME_SIZE)
        self.decoder = proto.FrameDecoder(self.limit)
        self.queue: deque[proto.Frame] = deque()  # CALL and SESSION_END frames, in arrival order
        self.queued_ids: set[int] = set()
        self.cancelled: set[int] = set()
        self.shutting_down = False
        self.ended: int | None = None  # input is over: 0 after EOF, 4 after a protocol violation
        self.timing: tuple[int, int] | None = None  # the running call's start (FLAG_TIMING)

    def _send_json(self, kind: proto.FrameKind, call_id: int, obj: Any) -> None:
        self._send(kind, call_id, json.dumps(obj).encode())

    def _stderr(self, text: str) -> None:
        try:
            self.conn.stderr_tx.send_nowait(text.encode("utf-8", "replace"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def run(self) -> None:
        conn = self.conn
        returncode = 0
        in_process.set(True)  # targets from poolkit.testing.targets adapt (this task's context only)
        freeze_hook.set(conn.freeze)  # targets.freeze() stops this fake process, as SIGSTOP would
        with conn.scope:
            try:
                returncode = await self._serve()
            except FakeExit as exc:
                returncode = exc.returncode
        conn.exit(returncode)

    async def _serve(self) -> int:
        await anyio.lowlevel.checkpoint()
        if self.startup_error is not None or self.spec.get("handler"):
            try:
                if self.startup_error is not None:
                    raise ImportError(self.startup_error)
                self.handler = _resolve(str(self.spec["handler"]))()
                if hasattr(self.handler, "setup"):
                    self.handler.setup()
            except Exception as exc:
                self._send_json(
                    _K.STARTUP_FAILED,
                    0,
                    {"type": _qualname(exc), "message": str(exc), "traceback": traceback.format_exc()},
                )
                return 3
        self._send_json(
            _K.READY,
            0,
            {
                "pid": self.conn.pid,
                "protocol": proto.PROTOCOL_VERSION,
                "worker_id": self.spec.get("worker_id"),
                "runtime": "memory",
                "features": list(FEATURES),
            },
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read)
            try:
                code = await self._run_queue()
            except FakeExit as exc:
                code = exc.returncode
            tg.cancel_scope.cancel()
        return code

    # ---- reading ---------------------------------------------------------------------------
    async def _read(self) -> None:
        """The reader task: take in frames as they arrive, while calls run too."""
        conn = self.conn
        while self.ended is None:
            await conn._until(lambda: not conn.frozen and bool(conn._inbox or conn._inbox_closed))
            self._take_in()

    def _take_in(self) -> None:
        """Act on everything the parent has sent so far, without waiting (nothing if frozen)."""
        conn = self.conn
        if conn.frozen or self.ended is not None:
            return
        while conn._inbox:
            try:
                self._dispatch(self.decoder.feed(conn._inbox.popleft()))
            except proto.ProtocolViolation:
                self.ended = 4
                break
        else:
            if conn._inbox_closed:
                self.ended = 0
        conn._poke()  # the runner may have work now

    def _dispatch(self, frames: list[proto.Frame]) -> None:
        for frame in frames:
            kind = frame.kind
            if kind is _K.CALL:
                self.queue.append(frame)
                self.queued_ids.add(frame.call_id)
            elif kind is _K.PING:
                self._send(_K.PONG, frame.call_id, b'{"rss":%d}' % self.conn.rss)
            elif kind is _K.CANCEL:
                if frame.call_id in self.queued_ids:  # a call already started is past cancelling
                    self.cancelled.add(frame.call_id)
            elif kind is _K.SESSION_END:
                self.queue.append(frame)  # in its place among the calls, like the runtime
            elif kind is _K.SHUTDOWN:
                self.shutting_down = True
            else:
                raise proto.ProtocolViolation(f"frame kind {kind.name} is not sent by a parent")

    # ---- running ---------------------------------------------------------------------------
    async def _run_queue(self) -> int:
        """The runner: calls one at a time in arrival order; returns the exit code."""
        conn, queue = self.conn, self.queue

        def has_work() -> bool:
            return not conn.frozen and bool(queue or self.shutting_down or self.ended is not None)

        while True:
            await conn._until(has_work)
            self._take_in()  # a CANCEL sent while the last call ran skips the next one
            if self.ended == 4:
                return 4
            if self.ended == 0 or not queue:
                if self.ended == 0 or self.shutting_down:
                    self._close()
                    return 0
                continue
            frame = queue.popleft()
            if frame.kind is _K.SESSION_END:
                self._end_session(frame.payload)
                continue
            self.queued_ids.discard(frame.call_id)
            if frame.call_id in self.cancelled:
                self.cancelled.discard(frame.call_id)
                self._send(_K.CANCELLED, frame.call_id)
                continue
            await self._call(frame)

    def _close(self) -> None:
        """A clean exit (SHUTDOWN or EOF), as the runtime's: sessions end, then teardown."""
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session._close(self._report)
        if self.handler is not None and hasattr(self.handler, "teardown"):
            self.handler.teardown()

    def _report(self, exc: BaseException) -> None:
        """An on_close callback failed: on the fake's stderr, as the runtime reports it."""
        if isinstance(exc, FakeExit):
            raise exc
        self._stderr("".join(traceback.format_exception(exc)))

    def _end_session(self, payload: bytes) -> None:
        try:
            session = self.sessions.pop(json.loads(payload)["key"], None)
        except Exception:
            self._stderr(f"fake worker: ignored a malformed SESSION_END payload {payload[:200]!r}\n")
            return
        if session is not None:
            session._close(self._report)

    async def _call(self, frame: proto.Frame) -> None:
        """One call, as the runtime runs it: FLAG_TRACE sets ``poolkit.worker.trace_context()``
        for the target, FLAG_TIMING puts the worker's timings in the reply."""
        payload = frame.payload
        self.timing = (
            (time.perf_counter_ns(), time.process_time_ns()) if frame.flags & proto.FLAG_TIMING else None
        )
        if not frame.flags & proto.FLAG_TRACE:
            await self._run_call(frame, payload)
            return
        block, payload = proto.split_trace(payload)
        token = _current_trace.set(_trace_context(block))
        try:
            await self._run_call(frame, payload)
        finally:
            _current_trace.reset(token)

    async def _run_call(self, frame: proto.Frame, payload: bytes) -> None:
        codec = frame.codec
        try:
            call = proto.decode_payload(payload, codec)
            target, args, kwargs = call[:3]
            session = None
            if len(call) > 3 and call[3] is not None:
                session = self.sessions.get(call[3])
                if session is None:
                    session = self.sessions[call[3]] = Session(call[3])
                kwargs = {**kwargs, "session": session}
        except Exception as exc:
            self._error(frame.call_id, exc, "decoding")
            return
        try:
            fn = self._target(target)
        except Exception as exc:
            self._error(frame.call_id, exc, "resolving")
            return
        try:
            if session is not None:
                session.calls += 1
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except FakeExit:
            raise
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self._error(frame.call_id, exc, "running")
            return
        try:
            payload = proto.encode_payload(result, codec)
        except Exception as exc:
            self._error(frame.call_id, exc, "encoding")
            return
        limit = self.limit
        if len(payload) > limit:
            self._send_json(
                _K.ERROR,
                frame.call_id,
                {
                    "type": "poolkit.PayloadTooLarge",
                    "message": f"result of {len(payload)} bytes exceeds max_frame_size={limit} bytes",
                    "traceback": "",
                    "phase": "encoding",
                    "size": len(payload),
                    "limit": limit,
                },
            )
            return
        self._send(_K.RESULT, frame.call_id, payload, codec)

    def _send(
        self, kind: proto.FrameKind, call_id: int, payload: bytes = b"", codec: int = proto.Codec.JSON
    ) -> None:
        if (kind is _K.RESULT or kind is _K.ERROR) and self.timing is not None:
            block, self.timing = _timing_block(self.timing), None
            self.conn._write(proto.encode_frame(kind, call_id, block + payload, codec, proto.FLAG_TIMING))
        else:
            self.conn._write(proto.encode_frame(kind, call_id, payload, codec))

    def _target(self, target: Any) -> Any:
        if not isinstance(target, str):
            return target
        if target == RUN_CHUNK:
            return self._run_chunk
        if ":" not in target:  # a handler method, refused and looked up as the runtime does
            return handler_method(self.handler, target)
        fn = self.targets.get(target)
        if fn is None:
            fn = self.targets[target] = _resolve(target)
        return fn

    async def _run_chunk(self, target: Any, items: list[Any]) -> list[Any]:
        """The worker runtime's ``run_chunk`` (a chunk of ``Pool.map``), on this event loop:
        the target resolves as a call's does (a handler method name too) and awaitable
        results are awaited, as in a real worker."""
        fn = self._target(target)
        results: list[Any] = []
        for args in items:
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    result = await result
            except (FakeExit, anyio.get_cancelled_exc_class()):
                raise
            except Exception as exc:
                body = {"type": _qualname(exc), "message": str(exc), "traceback": traceback.format_exc()}
                return [results, {**body, "phase": "running"}]
            results.append(result)
        return [results, None]

    def _error(self, call_id: int, exc: BaseException, phase: str) -> None:
        self._send_json(
            _K.ERROR,
            call_id,
            {
                "type": _qualname(exc),
                "message": str(exc),
                "traceback": traceback.format_exc(),
                "phase": phase,
            },
        )


def _resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"
