"""One worker handle: a process, its state machine, and the calls it holds.

The handle runs one supervising task per worker (:meth:`Worker.run`) with three loops under
it: the reader (frames from the worker; it also notices the end of the process), the writer
(batches every frame queued since its last write into one ``send``: several calls per
write when callers are many), and the stderr reader (free-form text, logged and kept as a
tail for crash reports). Everything the pool asks of a worker (:meth:`submit`,
:meth:`cancel`, :meth:`kill`, :meth:`shutdown`) is synchronous, so no caller ever has to
await a worker, and cancellation of a caller can never leave a half-done write behind.

Calls are answered in order, so the first call in ``_inflight`` is the one running; the
rest were sent but have not started. When the process ends, only that first call can have
run: it fails with a typed error, the others go back to the pool to be sent elsewhere.

A :class:`WireTap` set on :attr:`Worker.tap` sees every chunk of raw bytes between the
connection and the frame decoder (``received``) and between the writer and the connection
(``sending``), and may delay, alter or withhold it. It exists for fault injection
(``poolkit.testing.FaultInjector``); unset, it costs one ``is None`` test per chunk.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from . import _native
from . import _protocol as proto
from ._call import Call, CallStatus
from ._clock import Clock, SystemClock
from ._errors import (
    CallError,
    FailureKind,
    PayloadTooLarge,
    Phase,
    PoolError,
    ProtocolError,
    RemoteError,
    SerializationError,
    WorkerCrashed,
    WorkerStartupError,
)
from ._log import get_logger
from ._state import Transition, WorkerEvent, WorkerState, WorkerStateMachine

if TYPE_CHECKING:
    from ._config import PoolConfig
    from ._transport import Connection, Launcher

__all__ = ["WireTap", "Worker", "WorkerOwner"]

_STDERR_TAIL = 20
# Read once per reply: a module global is one lookup, ``proto.FrameKind.RESULT`` three.
_RESULT, _ERROR, _FLAG_TIMING = proto.FrameKind.RESULT, proto.FrameKind.ERROR, proto.FLAG_TIMING
_SENT = CallStatus.SENT
_timing, _TIMING_SIZE, _CODEC_MASK = proto.TIMING.unpack_from, proto.TIMING.size, 0x000F
# Weight of the newest run time in a target's running estimate (the adaptive pipeline window).
# 1/8 forgets a burst of slow calls within ~40 fast ones, and one slow call alone lifts the
# estimate at once (100 ms makes it >= 12 ms): the window closes on the first sign of slow calls.
_EWMA_WEIGHT = 0.125
_MAX_TARGETS = 1024  # estimates kept per pool; past that they start over (targets made on the fly)
_ERROR_PHASES = {
    "decoding": Phase.SENT,
    "resolving": Phase.SENT,
    "running": Phase.RUNNING,
    "encoding": Phase.RETURNING,
}


class WorkerOwner(Protocol):
    """What a worker reports to its pool. All callbacks are synchronous."""

    @property
    def clock(self) -> Clock: ...

    @property
    def observes_calls(self) -> bool:
        """Does it want every READY <-> BUSY change reported (it builds call events)?"""

    def worker_pong(self, worker: Worker) -> None:
        """A heartbeat reply arrived (``worker.rss`` may have changed)."""

    def worker_ready(self, worker: Worker) -> None: ...

    def worker_state_changed(
        self, worker: Worker, transition: Transition[WorkerState, WorkerEvent]
    ) -> None: ...

    def worker_capacity(self, worker: Worker) -> None:
        """The worker's in-flight count changed (a call ended)."""

    def worker_output(self, worker: Worker, stream: str, line: str, call: int | None) -> None:
        """The worker wrote a line (LOG frame or its stderr pipe); ``call``: the call's seq."""

    def worker_exited(
        self, worker: Worker, requeue: list[Call], startup_error: WorkerStartupError | None
    ) -> None:
        """The worker is gone. ``requeue``: calls sent to it that certainly never started."""


class WireTap(Protocol):
    """Sees the raw bytes of one worker's frame streams, chunk by chunk (not frame by frame).

    ``received(data)``: bytes read from the worker, before the frame decoder;
    ``sending(data)``: bytes about to be written to the worker. Each returns the bytes to pass
    on in place of ``data`` (it may sleep first, to delay them); ``b""`` withholds the chunk.
    The end of the stream is never shown to the tap. The handshake is read without the tap.
    """

    async def received(self, data: bytes) -> bytes: ...

    async def sending(self, data: bytes) -> bytes: ...


class Worker:
    """See the module docstring. Created by the pool, which runs :meth:`run` in its task group."""

    def __init__(
        self,
        owner: WorkerOwner,
        config: PoolConfig,
        launcher: Launcher,
        worker_id: str,
        *,
        generation: int = 0,
    ) -> None:
        self.id = worker_id
        self.generation = generation
        self.fsm = WorkerStateMachine(self.id)
        self.fsm.on_change = lambda transition: owner.worker_state_changed(self, transition)
        self.pid: int | None = None
        self.returncode: int | None = None
        self.calls_completed = 0
        self.handshake: dict[str, Any] = {}
        self.extensions = 0  # header extensions its runtime announced (FLAG_TRACE, FLAG_TIMING)
        self.spawn_reason = "start"  # why the pool started it (WorkerSpawned.reason)
        self.kill_reason = ""  # why the pool killed it, if it did (WorkerExited.reason)
        self.spawned_at = 0.0  # when the pool asked for it (anyio clock)
        self._owner = owner
        self._config = config
        self._launcher = launcher
        # The adaptive window (docs/architecture.md): beyond pipeline_depth, a worker takes
        # more calls (up to pipeline_limit) while the work it holds is expected to take less
        # than pipeline_budget, from each target's measured run time (``costs``, shared by the
        # pool's workers). Only workers that report timings (FLAG_TIMING) adapt.
        self._base = config.pipeline_depth
        self._limit = config.pipeline_limit
        self._budget = config.pipeline_budget
        # Its own need is the run time only (FLAG_WALL_ONLY); a call that is observed asks
        # for the CPU time too (call.ext, set by the pool).
        self._timed = proto.FLAG_TIMING | proto.FLAG_WALL_ONLY if self._limit > self._base else 0
        self._adaptive = False  # set once the handshake says the worker reports timings
        costs = getattr(owner, "call_costs", None)
        self._costs: dict[str, float] = costs if isinstance(costs, dict) else {}
        self.queued_work = 0.0  # expected seconds of work in the calls it holds
        self._max_frame = config.max_frame_size
        self._conn: Connection | None = None
        self._inflight: dict[int, Call] = {}
        self._next_id = itertools.count(1).__next__
        # Frames waiting for the writer task: a list and a wake-up event rather than a memory
        # object stream, so a frame costs a list append, and frames queued while the writer
        # is busy go out together in its next write.
        self._event, _ = _native.current()
        self._outbox: list[bytes] = []
        self._write_now: Callable[[bytes], bool] | None = None  # the connection's write_nowait
        self._decoder = proto.FrameDecoder(config.max_frame_size)  # _deliver's (the reader's)
        self._out_wake: _native.Event | None = None
        self._out_closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._fault: Callable[[Call], PoolError] | None = None  # how to fail the running call
        self._kill_requested = False
        self._scope = anyio.CancelScope()  # cancelled only by abort(): a launch that never returns
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        self._log = get_logger("poolkit.worker", worker_id=self.id)
        self.tap: WireTap | None = None  # fault injection only (module docstring)
        # Health and recycling, read and written by the pool (times are on its clock).
        self._now = (getattr(owner, "clock", None) or SystemClock()).now
        self.last_heard = 0.0  # when a frame last arrived from the worker
        self.rss: int | None = None  # resident set size the worker last reported, bytes
        self.ready_at = 0.0
        self.idle_since = 0.0
        self.max_calls = sys.maxsize  # recycle after this many calls (jittered by the pool)
        self.max_lifetime = math.inf  # recycle this long after ready (jittered by the pool)
        self.retire_reason: str | None = None
        self.retire_deadline = 0.0
        self.stop_deadline = math.inf  # a retired worker asked to exit is killed after this
        self.failure: FailureKind | None = None  # why it died or was killed, if it was a fault
        self.sessions: set[Any] = set()  # keys of the sessions bound to this worker
        self.parked: collections.deque[Any] = collections.deque()  # session calls waiting for it
        self._pings = itertools.count(1).__next__

    # ---- what the pool reads -------------------------------------------------------------
    @property
    def state(self) -> WorkerState:
        return self.fsm.state

    @property
    def load(self) -> int:
        return len(self._inflight)

    @property
    def in_flight(self) -> int:
        """Calls sent to it whose callers still wait (``load`` also counts those whose caller
        gave up: a timed-out call stays on its killed worker until the process is gone)."""
        return sum(1 for call in self._inflight.values() if call.status is CallStatus.SENT)

    @property
    def has_room(self) -> bool:
        if not self.fsm.state.accepts_calls:
            return False
        n = len(self._inflight)
        if n < self._base:
            return True
        # The adaptive window: more while the held work is expected to be short, never more
        # than the calls left before a recycle for its call count.
        return (
            self._adaptive
            and n < self._limit
            and self.queued_work < self._budget
            and n < self.max_calls - self.calls_completed
        )

    def head(self) -> Call | None:
        """The call the worker is running now (the oldest one sent), if any."""
        for call in self._inflight.values():
            return call
        return None

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def __repr__(self) -> str:
        return f"<Worker {self.id} pid={self.pid} {self.fsm.state.name} in_flight={len(self._inflight)}>"

    # ---- what the pool asks (all synchronous) ------------------------------------------
    def submit(self, call: Call) -> None:
        """Send ``call`` to this worker. The pool checked :attr:`has_room` first."""
        fsm = self.fsm
        state = fsm.state
        if state is WorkerState.READY:  # the per-call flip (StateMachine.flip)
            fsm.flip(WorkerEvent.DISPATCH, report=self._owner.observes_calls)
        elif state is not WorkerState.BUSY:  # BUSY + DISPATCH stays BUSY: skip the table
            fsm.fire(WorkerEvent.DISPATCH)  # first: an illegal dispatch must not strand the call
        call_id = self._next_id()
        call.call_id = call_id
        call.worker = self
        call.status = CallStatus.SENT
        self._inflight[call_id] = call
        if self._adaptive:
            cost = call.cost = self._costs.get(call.target_name, self._budget)
            self.queued_work += cost
        ext = (call.ext or self._timed) & self.extensions  # (call.ext, if any, has FLAG_TIMING)
        if not ext:
            self._put(
                proto.encode_frame(proto.FrameKind.CALL, call_id, call.payload, call.codec),
                now=len(self._inflight) == 1,
            )
            return
        body, blocks = call.payload, b""
        if ext & proto.FLAG_TRACE:
            assert call.trace is not None
            if len(body) + len(call.trace) <= self._max_frame:
                blocks = call.trace
            else:  # the trace block would push it over the limit: send it untraced
                ext &= ~proto.FLAG_TRACE
        self._put(
            proto.encode_frame(proto.FrameKind.CALL, call_id, body, call.codec, ext, blocks),
            now=len(self._inflight) == 1,
        )

    def cancel(self, call: Call) -> None:
        """The caller of ``call`` gave up. Stop the call without harming the others.

        If it is running, the only way to stop it is to kill the process (Python code
        cannot be interrupted safely from outside). If it was sent but has not started, a
        CANCEL frame asks the worker to skip it; if the worker started it anyway (a race),
        its reply is dropped.
        """
        if call.worker is not self or call.call_id not in self._inflight:
            return
        if self.head() is call:
            self.kill("running call was cancelled or timed out", fault=None)
        else:
            self._send(proto.FrameKind.CANCEL, call.call_id)

    def kill(
        self,
        reason: str,
        *,
        fault: Callable[[Call], PoolError] | None = None,
        failure: FailureKind | None = None,
    ) -> None:
        """Stop the process now: SIGTERM, then SIGKILL after ``kill_grace`` seconds.

        ``fault`` builds the error for the running call (None: the running call's caller
        has already gone, or the default crash error applies). ``failure`` says the worker
        itself is at fault (unresponsive, protocol, memory): the pool counts it against the
        restart budget and the breakers, and paces the replacement.
        """
        if self._kill_requested or self.fsm.state.is_terminal:
            return
        self._kill_requested = True
        self.kill_reason = reason
        if failure is not None and self.failure is None:
            self.failure = failure
        if fault is not None:
            self._fault = fault
        if self.fsm.can(WorkerEvent.KILL):
            self.fsm.fire(WorkerEvent.KILL, reason)
            self._owner.worker_capacity(self)  # out of the scheduler's rotation at once
        self._log.debug("killing worker", reason=reason, pid=self.pid)
        if self._conn is not None:
            self._conn.terminate()
            if self._tg is not None:
                self._tg.start_soon(self._escalate)

    def ping(self) -> None:
        """Send a heartbeat request; the reply (any frame, in fact) refreshes ``last_heard``."""
        self._send(proto.FrameKind.PING, self._pings())

    def end_session(self, key: Any) -> None:
        """Tell the worker to drop the state of session ``key`` (SESSION_END)."""
        self.sessions.discard(key)
        if self._conn is None or self.fsm.state.is_terminal:
            return
        if "session_end" not in self.handshake.get("features", ()):
            return  # a worker that does not announce SESSION_END (docs/protocol.md 4.1) may reject it
        # The JSON codec's compact UTF-8, as for every other JSON body (docs/protocol.md 4.10).
        payload = proto.encode_payload({"key": key}, proto.Codec.JSON)
        self._put(proto.encode_frame(proto.FrameKind.SESSION_END, 0, payload))

    def drain(self) -> None:
        """Take no new calls; finish the ones in flight."""
        if self.fsm.can(WorkerEvent.DRAIN):
            self.fsm.fire(WorkerEvent.DRAIN)

    def shutdown(self) -> None:
        """Ask the worker to finish what it was sent and exit cleanly."""
        if self.fsm.state is WorkerState.SPAWNING:
            # No process yet and no calls: the supervisor stops it as soon as it exists.
            self._kill_requested = True
            return
        if self.fsm.can(WorkerEvent.STOP):
            self.fsm.fire(WorkerEvent.STOP, "shutdown")
            if self._conn is not None:
                self._send(proto.FrameKind.SHUTDOWN, 0)

    def abort(self) -> None:
        """Last resort at pool close: cancel the supervising task (a launch that never returned).

        Its cleanup still runs (shielded): a process, if one exists, is killed and reaped.
        """
        self._scope.cancel()

    def _send(self, kind: proto.FrameKind, call_id: int) -> None:
        self._put(proto.encode_frame(kind, call_id))

    def _put(self, frame: bytes, *, now: bool = False) -> None:
        """Queue ``frame`` for the writer task (dropped once the worker is finished).

        ``now``: write it at once if the connection can and nothing is queued before it. The
        pool asks for that when the worker was idle, where the writer task's wake-up is pure
        latency; a busy worker's frames wait for the writer, which sends all that came in one
        step of the event loop in one write.
        """
        if self._out_closed:
            return
        if (
            now
            and not self._outbox
            and self.tap is None
            and self._write_now is not None
            and self._write_now(frame)
        ):
            return
        self._outbox.append(frame)
        wake = self._out_wake
        if wake is not None:
            self._out_wake = None
            wake.set()

    # ---- the supervising task -------------------------------------------------------------
    async def run(self) -> None:
        """Spawn, handshake, serve until the process ends, then report. Never raises
        (except cancellation), because a failure here must not take the pool down."""
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        startup_error: WorkerStartupError | None = None
        try:
            try:
                self._conn = await self._launcher.launch(
                    self._spec(),
                    command=self._config.worker.command,
                    python=self._config.worker.python,
                    env=self._config.worker.env,
                    cwd=self._config.worker.cwd,
                    task_group=self._require_tg(),
                )
            except OSError as exc:
                self.fsm.fire(WorkerEvent.SPAWN_FAILED, str(exc))
                startup_error = WorkerStartupError(self.id, pid=None, reason=f"could not spawn: {exc}")
                return
            self.pid = self._conn.pid
            self._write_now = getattr(self._conn, "write_nowait", None)  # optional: a fast path
            self._log = self._log.bind(pid=self.pid)
            self.fsm.fire(WorkerEvent.SPAWNED)
            if self._kill_requested:  # killed while spawning (pool closing)
                self._kill_requested = False
                self.kill("pool closed during spawn")
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    tg.start_soon(self._stderr_loop)
                    tg.start_soon(self._writer_loop)
                    decoder = proto.FrameDecoder(self._max_frame)
                    startup_error = await self._handshake(decoder)
                    if startup_error is None:
                        set_receiver = getattr(self._conn, "set_receiver", None)
                        if set_receiver is not None and self.tap is None:
                            self._decoder = decoder
                            set_receiver(self._deliver)
                        await self._reader_loop(decoder)
                    await self._reap()
                    tg.cancel_scope.cancel()
                finally:
                    # From here the group only winds down, and may refuse new tasks before
                    # this task runs again (trio closes a nursery once its tasks end, while
                    # its parent is only scheduled): kill() must not start its escalation
                    # in it. None is needed: _finish SIGKILLs whatever is still alive.
                    self._tg = None
        except Exception as exc:  # a bug in poolkit: report it as a crash, never hang the pool
            self._log.exception("worker supervisor failed", error=repr(exc))
            detail = f"supervisor error: {exc!r}"
            self._fault = self._fault or (lambda call: self._crash_error(call, detail=detail))
        finally:
            self._tg = None  # closed: kill() must not start tasks in it any more
            with anyio.CancelScope(shield=True):
                await self._finish(startup_error)

    def _require_tg(self) -> anyio.abc.TaskGroup:
        tg = getattr(self._owner, "task_group", None)
        assert tg is not None, "owner must expose its task_group"
        return tg  # type: ignore[no-any-return]

    def _spec(self) -> dict[str, Any]:
        spec = self._config.worker
        return {
            "worker_id": self.id,
            "handler": spec.handler,
            "preload": list(spec.preload),
            "codec": spec.codec,
            "parent_pid": os.getpid(),
            # PR_SET_PDEATHSIG is tied to the forking thread: only safe when that is the loop's
            # own thread, as on asyncio (trio forks from a cached thread that ends when idle).
            "parent_death_signal": _native.forks_from_loop_thread(),
            "max_frame_size": self._max_frame,
            "heartbeat_interval": self._config.heartbeat_interval,
            **(_parent_main() if spec.import_main else {}),
        }

    async def _handshake(self, decoder: proto.FrameDecoder) -> WorkerStartupError | None:
        assert self._conn is not None
        with anyio.move_on_after(self._config.startup_timeout) as scope:
            while True:
                data = await self._conn.receive()
                if not data:
                    returncode = await self._wait_exit()
                    return WorkerStartupError(
                        self.id,
                        pid=self.pid,
                        reason="exited before its handshake",
                        exit_code=returncode,
                        stderr_tail=self.stderr_tail,
                    )
                try:
                    frames = decoder.feed(data)
                except proto.ProtocolViolation as exc:
                    self.kill("bad handshake")
                    return WorkerStartupError(self.id, pid=self.pid, reason=f"invalid handshake: {exc}")
                for i, frame in enumerate(frames):
                    if frame.kind is proto.FrameKind.LOG:
                        self._on_log(frame)
                        continue
                    if frame.kind is proto.FrameKind.READY:
                        info = self._json(frame.payload)
                        self.handshake = info if isinstance(info, dict) else {}
                        self.extensions = _extensions(self.handshake)
                        self._adaptive = bool(self._timed & self.extensions)
                        if self.handshake.get("protocol") != proto.PROTOCOL_VERSION:
                            self.kill("protocol version mismatch")
                            return WorkerStartupError(
                                self.id,
                                pid=self.pid,
                                reason=f"worker speaks protocol {self.handshake.get('protocol')!r}, "
                                f"pool speaks {proto.PROTOCOL_VERSION}",
                            )
                        echoed = self.handshake.get("worker_id")
                        if echoed != self.id:
                            # It did not read this worker's spec (a wrapper that dropped or
                            # replaced the argument, a worker with a fixed id), so nothing it
                            # read there (max_frame_size, heartbeat_interval) can be trusted.
                            self.kill("worker_id mismatch")
                            return WorkerStartupError(
                                self.id,
                                pid=self.pid,
                                reason=f"its READY names worker_id {echoed!r}, not {self.id!r}: a worker "
                                "must echo the worker_id of its spec (docs/protocol.md 4.1)",
                                stderr_tail=self.stderr_tail,
                            )
                        if self.fsm.can(WorkerEvent.HANDSHAKE):  # not if the pool stopped it meanwhile
                            self.last_heard = self._now()
                            self.fsm.fire(WorkerEvent.HANDSHAKE)
                            self._owner.worker_ready(self)
                        for rest in frames[i + 1 :]:
                            self._on_frame(rest)
                        return None
                    if frame.kind is proto.FrameKind.STARTUP_FAILED:
                        info = self._json(frame.payload) or {}
                        returncode = await self._wait_exit()
                        return WorkerStartupError(
                            self.id,
                            pid=self.pid,
                            reason=f"{info.get('type', 'error')}: {info.get('message', '')}",
                            remote_type=info.get("type"),
                            remote_traceback=info.get("traceback"),
                            exit_code=returncode,
                            stderr_tail=self.stderr_tail,
                        )
                    self.kill("unexpected frame before handshake")
                    return WorkerStartupError(
                        self.id, pid=self.pid, reason=f"unexpected {frame.kind.name} frame before READY"
                    )
        assert scope.cancel_called
        self.kill("handshake timeout")
        return WorkerStartupError(
            self.id,
            pid=self.pid,
            reason=f"no handshake within startup_timeout={self._config.startup_timeout:g}s",
            stderr_tail=self.stderr_tail,
        )

    async def _wait_exit(self) -> int:
        assert self._conn is not None
        with anyio.move_on_after(max(self._config.kill_grace, 1.0)):
            self.returncode = await self._conn.wait()
            return self.returncode
        self._conn.kill()
        self.returncode = await self._conn.wait()
        return self.returncode

    async def _reader_loop(self, decoder: proto.FrameDecoder) -> None:
        assert self._conn is not None
        receive = self._conn.receive
        feed = decoder.feed
        on_frame = self._on_frame
        now = self._now
        while True:
            data = await receive()
            if not data:
                return
            self.last_heard = now()
            if self.tap is not None:
                data = await self.tap.received(data)
                if not data:
                    continue  # withheld by the tap
            try:
                frames = feed(data)
            except proto.ProtocolViolation as exc:
                for frame in exc.frames:  # genuine replies that preceded the garbage
                    on_frame(frame)
                self._protocol_fault(str(exc))
                return
            if not self._on_frames(frames):
                return

    def _deliver(self, data: bytes) -> bool:
        """What :meth:`_reader_loop` does with a chunk, done in the event loop's read callback
        where the connection offers that (asyncio): one trip round the loop less per read.
        Returns False to leave the chunk to the reader task: always, once a wire tap (fault
        injection, which is async) has been installed, so chunks keep their order."""
        conn = self._conn
        assert conn is not None
        if self.tap is not None:
            conn.set_receiver(None)  # type: ignore[attr-defined]
            return False
        self.last_heard = self._now()
        on_frame = self._on_frame
        try:
            try:
                frames = self._decoder.feed(data)
            except proto.ProtocolViolation as exc:
                for frame in exc.frames:  # genuine replies that preceded the garbage
                    on_frame(frame)
                self._protocol_fault(str(exc))
                conn.stop_receiving()  # type: ignore[attr-defined]
                return True
            if not self._on_frames(frames):
                conn.stop_receiving()  # type: ignore[attr-defined]
        except Exception as exc:  # a bug in poolkit: as in the supervisor, a crash, never a hang
            self._log.exception("worker reader failed", error=repr(exc))
            detail = f"reader error: {exc!r}"
            self.kill(detail, fault=lambda call: self._crash_error(call, detail=detail))
            conn.stop_receiving()  # type: ignore[attr-defined]
        return True

    def _on_frames(self, frames: list[proto.Frame]) -> bool:
        """Handle the frames of one read, in order. Returns False once a fault stopped the
        worker (the rest are not read).

        The calls that the replies end are ended one by one (each caller is woken), but the
        worker's capacity is reported once, after the last of them: one scheduler update and
        one dispatch for the whole read, which with a deep pipeline holds ~30 replies, rather
        than one per reply (docs/performance.md item 22)."""
        ended = False
        try:
            for frame in frames:
                kind = frame.kind
                if kind is _RESULT or kind is _ERROR:
                    if self._on_reply(frame):
                        ended = True
                else:
                    self._on_frame(frame)
                if self._kill_requested and self._fault is not None:
                    return False
            return True
        finally:
            if ended:
                self._after_call()

    def _on_frame(self, frame: proto.Frame) -> None:
        kind = frame.kind
        if kind is _RESULT or kind is _ERROR:
            if self._on_reply(frame):
                self._after_call()
        elif kind is proto.FrameKind.CANCELLED:
            call = self._inflight.pop(frame.call_id, None)
            if call is not None and self._adaptive:
                self.queued_work = self.queued_work - call.cost if self._inflight else 0.0
            if call is not None and call.status is CallStatus.SENT:
                # Only the pool cancels, and only for abandoned calls; a CANCELLED for a live
                # call means the worker is confused.
                self._protocol_fault(f"CANCELLED for call {frame.call_id} that was not cancelled")
                return
            self._after_call()
        elif kind is proto.FrameKind.LOG:
            self._on_log(frame)
        elif kind is proto.FrameKind.PONG:
            if frame.payload:
                info = self._json(frame.payload)
                rss = info.get("rss") if isinstance(info, dict) else None
                if type(rss) is int and rss >= 0:
                    self.rss = rss
            self._owner.worker_pong(self)
        else:
            self._protocol_fault(f"unexpected {kind.name} frame from worker")

    def _on_reply(self, frame: proto.Frame) -> bool:
        """A RESULT or ERROR: end its call. Returns True if a call left the in-flight table
        (the caller then reports the worker's capacity: :meth:`_after_call`).

        The in-order check and the timing block are inline: this runs once per reply."""
        kind, call_id, flags, payload = frame
        inflight = self._inflight
        call = next(iter(inflight.values()), None)  # the call running now (self.head())
        if call is None or call.call_id != call_id:
            self._protocol_fault(
                f"{kind.name} for call {call_id}, but the call running is "
                f"{call.call_id if call else 'none'} (replies must come in order)"
            )
            return False
        del inflight[call_id]
        self.calls_completed += 1
        if flags & _FLAG_TIMING:
            if len(payload) < _TIMING_SIZE:
                self._inflight = {call_id: call, **inflight}
                self._protocol_fault(f"FLAG_TIMING set, but the body has only {len(payload)} bytes")
                return False
            run_ns, cpu_ns = _timing(payload)
            payload = payload[_TIMING_SIZE:]
            call.run_ns = run_ns
            call.cpu_ns = None if cpu_ns == proto.CPU_UNKNOWN else cpu_ns
        if self._adaptive:
            self._measure(call)
        if call.status is _SENT:
            if kind is _RESULT:
                call.succeed(payload, flags & _CODEC_MASK)
            elif not isinstance(self._json(payload), dict):
                # A worker that cannot describe its own error is not trustworthy: a
                # protocol fault like any other (the call fails with ProtocolError, the
                # worker is replaced, the breakers count it).
                self._inflight = {call_id: call, **self._inflight}
                self._protocol_fault(f"ERROR frame for call {call_id} is not a JSON object")
                return False
            else:
                call.fail(self._remote_error(call, payload))
        return True

    def _measure(self, call: Call) -> None:
        """A call came back: take its work off the held total, and fold its run time (as the
        worker timed it) into its target's estimate."""
        self.queued_work = self.queued_work - call.cost if self._inflight else 0.0
        run_ns = call.run_ns
        if run_ns is None:  # an ERROR without timings (e.g. a result too large to send)
            return
        costs, name, ran = self._costs, call.target_name, run_ns * 1e-9
        old = costs.get(name)
        if old is None and len(costs) >= _MAX_TARGETS:
            costs.clear()
        costs[name] = ran if old is None else old + (ran - old) * _EWMA_WEIGHT

    def _after_call(self) -> None:
        if not self._inflight:
            fsm = self.fsm
            if fsm.state is WorkerState.BUSY:  # the per-call flip (StateMachine.flip)
                fsm.flip(WorkerEvent.IDLE, report=self._owner.observes_calls)
            elif fsm.can(WorkerEvent.IDLE):
                fsm.fire(WorkerEvent.IDLE)
        self._owner.worker_capacity(self)

    def _protocol_fault(self, detail: str) -> None:
        self._log.warning("protocol error from worker", detail=detail)
        self.kill(
            f"protocol error: {detail}",
            fault=lambda call: ProtocolError(
                detail, phase=Phase.RUNNING, worker_id=self.id, pid=self.pid, target=call.target_name
            ),
            failure=FailureKind.PROTOCOL,
        )

    def _remote_error(self, call: Call, payload: bytes) -> CallError:
        info = self._json(payload)
        if not isinstance(info, dict):
            return ProtocolError(
                "ERROR frame payload is not a JSON object",
                phase=Phase.RUNNING,
                worker_id=self.id,
                pid=self.pid,
                target=call.target_name,
            )
        phase = _ERROR_PHASES.get(str(info.get("phase")), Phase.RUNNING)
        kw: dict[str, Any] = {
            "phase": phase,
            "worker_id": self.id,
            "pid": self.pid,
            "target": call.target_name,
        }
        # Only the object itself is required; absent (or null) members take the defaults of
        # docs/protocol.md 4.5, so a terse worker's error still reaches its caller.
        rtype = _text(info, "type", "Exception")
        message = _text(info, "message", "")
        tb = _text(info, "traceback", "")
        if rtype == "poolkit.PayloadTooLarge":
            size, limit = info.get("size"), info.get("limit")
            return PayloadTooLarge(
                size if type(size) is int else 0,
                limit if type(limit) is int else self._max_frame,
                what="result",
                **kw,
            )
        if info.get("phase") in ("decoding", "encoding"):
            return SerializationError(f"{rtype}: {message}", side="worker", remote_traceback=tb, **kw)
        return RemoteError(rtype, message, tb, **kw)

    @staticmethod
    def _json(payload: bytes) -> Any:
        try:
            return json.loads(payload)
        except ValueError:
            return None

    def _on_log(self, frame: proto.Frame) -> None:
        info = self._json(frame.payload)
        if isinstance(info, dict):
            call = self._inflight.get(frame.call_id) if frame.call_id else None
            self._owner.worker_output(
                self, str(info.get("stream", "stdout")), str(info.get("line", "")), call.seq if call else None
            )

    async def _writer_loop(self) -> None:
        assert self._conn is not None
        send = self._conn.send
        try:
            while True:
                chunks = self._outbox
                if not chunks:
                    if self._out_closed:
                        return
                    wake = self._out_wake = self._event()
                    await wake.wait()
                    continue
                self._outbox = []
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                if self.tap is not None:
                    data = await self.tap.sending(data)
                    if not data:
                        continue  # withheld by the tap
                await send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the process is gone; the reader sees the end of stream

    async def _stderr_loop(self) -> None:
        assert self._conn is not None
        pending = b""
        while True:
            data = await self._conn.receive_stderr()
            if not data:
                if pending:
                    self._stderr_line(pending)
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._stderr_line(line)

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self._stderr_tail.append(line)
        self._owner.worker_output(self, "stderr", line, None)

    async def _escalate(self) -> None:
        assert self._conn is not None
        with anyio.move_on_after(self._config.kill_grace):
            await self._conn.wait()
            return
        self._conn.kill()

    async def _reap(self) -> None:
        """The frame stream ended: wait for the exit; SIGTERM, then SIGKILL, if it lingers."""
        assert self._conn is not None
        for escalate in (self._conn.terminate, self._conn.kill):
            with anyio.move_on_after(self._config.kill_grace):
                self.returncode = await self._conn.wait()
                return
            escalate()
        self.returncode = await self._conn.wait()

    def _crash_error(self, call: Call, detail: str = "") -> CallError:
        code = self.returncode
        err = WorkerCrashed(
            exit_code=code if code is None or code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            stderr_tail=self.stderr_tail,
            phase=Phase.RUNNING,
            worker_id=self.id,
            pid=self.pid,
            target=call.target_name,
        )
        if detail:
            err.add_note(detail)
        return err

    async def _finish(self, startup_error: WorkerStartupError | None) -> None:
        """Kill whatever is left, settle the state, hand the calls back. Runs shielded."""
        conn = self._conn
        if conn is not None:
            if conn.returncode is None:
                conn.kill()
                with anyio.move_on_after(5):
                    self.returncode = await conn.wait()
            else:
                self.returncode = conn.returncode
            await conn.aclose()
        self._out_closed = True
        self._outbox.clear()
        if self._out_wake is not None:
            self._out_wake.set()
        if self.fsm.can(WorkerEvent.EXITED):
            self.fsm.fire(WorkerEvent.EXITED, f"returncode={self.returncode}")
            if self.failure is None and self.fsm.state is WorkerState.FAILED:
                self.failure = FailureKind.STARTUP if startup_error is not None else FailureKind.CRASHED
        elif not self.fsm.state.is_terminal and self.fsm.can(WorkerEvent.STOP):
            self.fsm.fire(WorkerEvent.STOP)
        requeue: list[Call] = []
        calls = list(self._inflight.values())
        self._inflight.clear()
        for i, call in enumerate(calls):
            if call.status is not CallStatus.SENT:
                continue
            if i == 0:
                call.fail((self._fault or self._crash_error)(call))
            else:
                call.status = CallStatus.QUEUED
                call.worker = None
                requeue.append(call)
        self._owner.worker_exited(self, requeue, startup_error)


def _text(info: dict[str, Any], member: str, default: str) -> str:
    """Member ``member`` of a worker's JSON object as text; ``default`` if absent or null."""
    value = info.get(member)
    return default if value is None else str(value)


def _extensions(handshake: dict[str, Any]) -> int:
    """The header extensions a worker may be sent, from the features its READY announced."""
    features = handshake.get("features")
    if not isinstance(features, list):
        return 0
    ext = proto.FLAG_TRACE if "trace_context" in features else 0
    return ext | (proto.FLAG_TIMING | proto.FLAG_WALL_ONLY if "timings" in features else 0)


def _parent_main() -> dict[str, Any]:
    """Where the worker finds this process's ``__main__`` (see the runtime's
    ``_adopt_parent_main``): the script's path, or its module name under ``python -m``."""
    main = sys.modules.get("__main__")
    info: dict[str, Any] = {"sys_path0": sys.path[0] if sys.path and sys.path[0] else None}
    module_spec = getattr(main, "__spec__", None)
    if module_spec is not None and module_spec.name not in ("__main__", "__mp_main__"):
        info["main_module"] = module_spec.name
    else:
        path = getattr(main, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and os.path.exists(path):
            info["main_path"] = os.path.abspath(path)
    return info
