"""The bridge layer: in-process fake workers speaking the real protocol over in-memory streams.

:class:`BridgeLauncher` is a :class:`~poolkit._transport.Launcher` whose "processes" are
tasks in the pool's task group. They exchange real frames (``_protocol``) with the real pool
code, so unit tests exercise framing, pipelining, ordering, cancellation, timeouts and crash
handling without spawning anything. This is the seed of the harness's bridge layer.

Targets run in the event loop: a sync target runs inline (it blocks the loop, as a worker
would block its process), an async target is awaited, so tests can hang a call with
``await anyio.sleep_forever()`` and release it with an event. A target raising
:class:`FakeExit` ends the fake process with that exit status, like ``os._exit`` or a
fatal signal would.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import math
import traceback
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc

from .. import _protocol as proto
from .._transport import Connection
from ._context import FakeExit, in_process

__all__ = ["BridgeLauncher", "FakeExit"]

_fake_pids = itertools.count(900_000)


class _MemoryConnection:
    """The parent's side of one fake worker. Implements the Connection protocol."""

    def __init__(self) -> None:
        self._to_worker_tx, self.to_worker_rx = anyio.create_memory_object_stream[bytes](math.inf)
        self.to_parent_tx, self._to_parent_rx = anyio.create_memory_object_stream[bytes](math.inf)
        self.stderr_tx, self._stderr_rx = anyio.create_memory_object_stream[bytes](math.inf)
        self._pid = next(_fake_pids)
        self._returncode: int | None = None
        self._exited = anyio.Event()
        self.scope = anyio.CancelScope()
        self.ignore_sigterm = False

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
            for stream in (self.to_parent_tx, self.stderr_tx, self.to_worker_rx):
                stream.close()
            self._exited.set()

    async def send(self, data: bytes) -> None:
        try:
            self._to_worker_tx.send_nowait(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise anyio.BrokenResourceError("fake worker is gone") from exc

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
        if not self.ignore_sigterm:
            self.exit(-15)

    def kill(self) -> None:
        self.exit(-9)

    async def aclose(self) -> None:
        self._to_worker_tx.close()
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

    def _send(
        self, kind: proto.FrameKind, call_id: int, payload: bytes = b"", codec: int = proto.Codec.JSON
    ) -> None:
        try:
            self.conn.to_parent_tx.send_nowait(proto.encode_frame(kind, call_id, payload, codec))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def _send_json(self, kind: proto.FrameKind, call_id: int, obj: Any) -> None:
        self._send(kind, call_id, json.dumps(obj).encode())

    async def run(self) -> None:
        conn = self.conn
        returncode = 0
        in_process.set(True)  # targets from poolkit.testing.targets adapt (this task's context only)
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
                    proto.FrameKind.STARTUP_FAILED,
                    0,
                    {"type": _qualname(exc), "message": str(exc), "traceback": traceback.format_exc()},
                )
                return 3
        self._send_json(
            proto.FrameKind.READY,
            0,
            {
                "pid": self.conn.pid,
                "protocol": proto.PROTOCOL_VERSION,
                "worker_id": self.spec.get("worker_id"),
                "runtime": "memory",
            },
        )
        decoder = proto.FrameDecoder(int(self.spec.get("max_frame_size", proto.DEFAULT_MAX_FRAME_SIZE)))
        pending: list[proto.Frame] = []
        while True:
            try:
                data = await self.conn.to_worker_rx.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return 0
            try:
                frames = decoder.feed(data)
            except proto.ProtocolViolation:
                return 4
            pending.extend(frames)
            pending.extend(self._drain(decoder))
            # Everything that arrived together is seen before any call starts, so a CANCEL
            # behind a CALL skips it, as the real runtime's non-blocking drain does.
            while pending:
                frame = pending.pop(0)
                if frame.kind is proto.FrameKind.CALL:
                    pending.extend(self._drain(decoder))  # CANCELs sent while the last call ran
                    cancelled = any(
                        f.kind is proto.FrameKind.CANCEL and f.call_id == frame.call_id for f in pending
                    )
                    if cancelled:
                        self._send(proto.FrameKind.CANCELLED, frame.call_id)
                        pending = [
                            f
                            for f in pending
                            if not (f.kind is proto.FrameKind.CANCEL and f.call_id == frame.call_id)
                        ]
                    else:
                        await self._call(frame)
                elif frame.kind is proto.FrameKind.PING:
                    self._send(proto.FrameKind.PONG, frame.call_id)
                elif frame.kind is proto.FrameKind.SHUTDOWN:
                    for rest in pending:
                        if rest.kind is proto.FrameKind.CALL:
                            await self._call(rest)
                    if self.handler is not None and hasattr(self.handler, "teardown"):
                        self.handler.teardown()
                    return 0
                elif frame.kind is proto.FrameKind.CANCEL:
                    pass  # for a call already answered: nothing to do
                else:
                    return 4

    def _drain(self, decoder: proto.FrameDecoder) -> list[proto.Frame]:
        """Frames already sent to us, without waiting (the real runtime's select(..., 0))."""
        frames: list[proto.Frame] = []
        while True:
            try:
                frames.extend(decoder.feed(self.conn.to_worker_rx.receive_nowait()))
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return frames

    async def _call(self, frame: proto.Frame) -> None:
        codec = frame.codec
        try:
            target, args, kwargs = proto.decode_payload(frame.payload, codec)[:3]
        except Exception as exc:
            self._error(frame.call_id, exc, "decoding")
            return
        try:
            fn = self._target(target)
        except Exception as exc:
            self._error(frame.call_id, exc, "resolving")
            return
        try:
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
        limit = int(self.spec.get("max_frame_size", proto.DEFAULT_MAX_FRAME_SIZE))
        if len(payload) > limit:
            self._send_json(
                proto.FrameKind.ERROR,
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
        self._send(proto.FrameKind.RESULT, frame.call_id, payload, codec)

    def _target(self, target: Any) -> Any:
        if not isinstance(target, str):
            return target
        if ":" not in target:
            if self.handler is None:
                raise LookupError(f"target {target!r} names a handler method, but no handler is configured")
            return getattr(self.handler, target)
        fn = self.targets.get(target)
        if fn is None:
            fn = self.targets[target] = _resolve(target)
        return fn

    def _error(self, call_id: int, exc: BaseException, phase: str) -> None:
        self._send_json(
            proto.FrameKind.ERROR,
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
