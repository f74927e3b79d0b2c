"""The worker runtime: what runs inside ``python -m poolkit.worker '<json spec>'``.

File descriptors, and why. The parent's pipes arrive as fds 0 and 1, but user code and C
extensions believe fds 0/1/2 are theirs: one stray ``printf`` or child process writing to
fd 1 would land inside a frame, fail its checksum and take the worker down. So the
protocol moves off the standard fds before any user code runs::

    proto_in  = dup(0)   frames from the parent: CALL, CANCEL, PING, SHUTDOWN, SESSION_END
    proto_out = dup(1)   frames to the parent: READY, RESULT, ERROR, LOG, PONG, ...
    fd 0 -> /dev/null    code that reads stdin sees EOF instead of eating frames
    fd 1 -> fd 2         C-level and child-process stdout joins the stderr pipe, which
                         the parent reads and tags as this worker's output
    fd 2 unchanged       the stderr pipe

``os.dup`` makes both protocol fds non-inheritable, so subprocesses started by user code
never hold them: the parent's EOF on our output means this process is gone. Python-level
``sys.stdout``/``sys.stderr`` become line writers that send each line as a LOG frame tagged
with the running call. Every worker start pays for this module's imports: standard library
only, and the heavier ``traceback`` and ``asyncio`` are imported on first need.

Heartbeats while a call runs ("reader takeover"). Calls run on the main thread, one at a time,
and the parent must still hear PONGs during a long one: it kills a worker that stays silent
for about two heartbeat intervals. So when the spec has a ``heartbeat_interval``, a second
thread may read proto_in -- but only while user code runs, and never both threads at once:

* ``_Worker.reader`` (a plain lock) guards proto_in, the decoder and the queue of received
  frames. The main thread holds it at all times except while a call runs: it releases it
  before decoding the call and takes it back after sending the answer (unpickling and
  importing the target can take long too).
* The heartbeat thread wakes every interval/4. When the same call has been running since its
  previous wake, it takes the lock (non-blocking: failing means the call is just ending) and
  reads proto_in itself with the same ``dispatch()``: PING is answered at once, and
  CALL/CANCEL/SHUTDOWN/SESSION_END are taken in exactly as the main thread would take them in
  (queued or noted, for the main thread to act on after the call).
* At the end of the call the main thread clears ``running`` and tries the lock without
  blocking; if the heartbeat thread holds it, one byte on a wake pipe gets it out of
  ``select`` and the main thread blocks until it lets go. A stale wake byte only makes the
  heartbeat thread re-check ``running``, so none is ever harmful.
* EOF or a bad frame read by the heartbeat thread is recorded (``halted``) and acted on by
  the main thread once the call has been answered, as if it had read it itself.

So a trivial call pays one uncontended release/acquire, and the heartbeat tells the truth: a
stopped process (SIGSTOP) answers nothing, and neither does one whose main thread is stuck in
C code holding the GIL, because the heartbeat thread needs the GIL to answer.
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import io
import json
import os
import pickle
import select
import sys
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

from .._protocol import (
    CPU_UNKNOWN,
    DEFAULT_MAX_FRAME_SIZE,
    FLAG_TIMING,
    FLAG_TRACE,
    FLAG_WALL_ONLY,
    PROTOCOL_VERSION,
    TIMING,
    TRACE,
    Codec,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolViolation,
    decode_payload,
    encode_frame,
    encode_payload,
    split_trace,
)

__all__ = [
    "EXIT_OK",
    "EXIT_PROTOCOL_VIOLATION",
    "EXIT_STARTUP_FAILED",
    "FEATURES",
    "Session",
    "TraceContext",
    "handler_method",
    "main",
    "trace_context",
]

EXIT_OK = 0
EXIT_STARTUP_FAILED = 3
EXIT_PROTOCOL_VIOLATION = 4
_READ_SIZE = 65536  # what a pipe holds; 256 KiB would be a fresh mmap per read in glibc (~14 us)
_POLL_INTERVAL = 0.0005  # seconds between two checks for input between calls (serve)
_JSON, _PICKLE = int(Codec.JSON), int(Codec.PICKLE)  # a frame's codec bits, compared as ints
_CODEC_MASK = 0x000F
_perf_ns = time.perf_counter_ns
_pack_timing = TIMING.pack
_pickle_loads, _pickle_dumps, _HIGHEST = pickle.loads, pickle.dumps, pickle.HIGHEST_PROTOCOL
_CALL, _CANCEL, _PING, _SHUTDOWN = FrameKind.CALL, FrameKind.CANCEL, FrameKind.PING, FrameKind.SHUTDOWN
_RESULT = FrameKind.RESULT
_SESSION_END = FrameKind.SESSION_END
_STATM = "/proc/self/statm" if sys.platform.startswith("linux") else None
_F = TypeVar("_F", bound=Callable[[], object])
#: What this runtime announces in READY (docs/protocol.md): the pool uses each only if announced.
FEATURES = ("session_end", "pong_rss", "trace_context", "timings", "map_chunks")


class TraceContext(NamedTuple):
    """The trace context of the pool-side span of the call running now (W3C trace context)."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits: the pool's call span, the parent of work done here
    sampled: bool

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value, to hand to any tracing library."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


# A ContextVar, not a global: the bridge layer runs fake workers as tasks of one event loop.
_current_trace: ContextVar[TraceContext | None] = ContextVar("poolkit_trace_context", default=None)


def trace_context() -> TraceContext | None:
    """The caller's trace context while a traced call runs in this worker, else None.

    A call carries one when the pool that sent it records traces (an OpenTelemetry SDK is
    configured in the parent). Workers with their own SDK get a ``poolkit.worker.run`` span
    for free (its parent is the pool's span); others can pass ``traceparent`` on.
    """
    return _current_trace.get()


def _trace_context(block: bytes) -> TraceContext:
    _version, trace_id, span_id, flags = TRACE.unpack(block)
    return TraceContext(trace_id.hex(), span_id.hex(), bool(flags & 1))


def _start_timing() -> tuple[int, int]:
    return _perf_ns(), time.process_time_ns()


def _timing_block(timing: tuple[int, int] | None) -> bytes:
    """The TIMING block of a call timed from ``timing`` (its start: wall, CPU or -1 for a
    FLAG_WALL_ONLY call, whose CPU time nobody wants: the CPU clock is a system call)."""
    if timing is None:
        return b""
    wall, cpu = timing
    if cpu < 0:
        return _pack_timing(_perf_ns() - wall, CPU_UNKNOWN)
    return _pack_timing(_perf_ns() - wall, max(0, time.process_time_ns() - cpu))


def _worker_span(block: bytes) -> Any:
    """A ``poolkit.worker.run`` span continuing the pool's trace, if this process has an
    OpenTelemetry SDK configured (never imports OpenTelemetry itself: a worker that has not
    imported it pays nothing). Returns a context manager, or None."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if type(provider).__module__.startswith("opentelemetry.trace"):
        return None  # the API's no-op or proxy provider: no SDK here
    _version, trace_id, span_id, flags = TRACE.unpack(block)
    parent = trace.SpanContext(
        int.from_bytes(trace_id, "big"),
        int.from_bytes(span_id, "big"),
        is_remote=True,
        trace_flags=trace.TraceFlags(flags),
    )
    tracer = provider.get_tracer("poolkit.worker")
    return tracer.start_as_current_span(
        "poolkit.worker.run",
        context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
        kind=trace.SpanKind.SERVER,
        attributes={"poolkit.worker.pid": os.getpid()},
        record_exception=False,
        set_status_on_exception=False,
    )


def _span_error(span: Any, body: dict[str, Any]) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", str(body.get("type")))
    span.set_status(Status(StatusCode.ERROR, str(body.get("message", ""))[:200]))


class Session:
    """Per-session state, passed as ``session=`` to calls that carry a session key: one object
    per key until the parent ends the session (SESSION_END) or the worker exits (attributes are
    yours), so state persists across the calls with that key that land on this worker (the
    pool's session routing decides which do). ``calls`` counts the calls that received it.
    """

    def __init__(self, key: Any) -> None:
        self.key = key
        self.created_at = time.time()
        self.calls = 0
        self._on_close: list[Callable[[], object]] = []

    def on_close(self, fn: _F) -> _F:
        """Have ``fn()`` called when the session ends, to release what the session holds (a
        connection, a temporary file). Callbacks run newest first, like ``atexit``, so a resource
        opened on top of another is closed before it. An exception from one is reported on
        stderr and the others still run. Returns ``fn``: usable as a decorator."""
        self._on_close.append(fn)
        return fn

    def _close(self, report: Callable[[BaseException], None]) -> None:
        """Run the on_close callbacks once, newest first; ``report`` gets what they raise."""
        callbacks, self._on_close = self._on_close, []
        while callbacks:
            fn = callbacks.pop()
            try:
                fn()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a callback cannot end the worker
                report(exc)

    def __repr__(self) -> str:
        return f"Session(key={self.key!r}, calls={self.calls})"


class _ChannelClosed(Exception):
    """proto_out is gone: the parent closed it or died. Nobody is listening any more."""


class _Channel:
    """proto_out, and the one lock every frame write takes: user threads may print while the
    main thread replies, and two interleaved ``os.write`` loops would splice frames together.

    The lock is reentrant and ``busy`` marks a write in progress because the same thread can
    re-enter mid-write (a signal handler or a ``__del__`` run by the GC that prints): a plain
    lock would deadlock, a bare RLock would splice. Such a frame waits in ``deferred``.
    """

    __slots__ = ("busy", "call_id", "deferred", "fd", "limit", "lock")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.lock = _thread.RLock()  # threading.RLock's C type, without importing threading
        self.busy = False
        self.deferred: list[bytes] = []
        self.call_id = 0  # the call running now; LOG frames are tagged with it

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.busy:
                self.deferred.append(data)
                return
            self.busy = True
            try:
                sent = os.write(self.fd, data)  # the whole frame, nearly always: no _write call
                if sent < len(data):
                    self._write(data, sent)
                while self.deferred:
                    self._write(self.deferred.pop(0))
            except OSError as exc:
                raise _ChannelClosed(str(exc)) from exc
            finally:
                self.busy = False

    def _write(self, data: bytes, sent: int = 0) -> None:
        """Write ``data[sent:]``, all of it: a pipe may take a large write piecewise."""
        view = memoryview(data)[sent:]
        while view:
            view = view[os.write(self.fd, view) :]

    def send_json(self, kind: int, call_id: int, obj: dict[str, Any], timing: bytes = b"") -> None:
        """Send a JSON frame; ``timing`` is a TIMING block to open it with (FLAG_TIMING)."""
        data = _dumps(obj)
        if len(data) + len(timing) > self.limit:  # a frame the parent would refuse: shorten the text
            cut = max(16, self.limit // 32)
            data = _dumps({k: v[:cut] if isinstance(v, str) else v for k, v in obj.items()})
        if timing:
            self.send(encode_frame(kind, call_id, data, _JSON, FLAG_TIMING, timing))
        else:
            self.send(encode_frame(kind, call_id, data, _JSON))


def _dumps(obj: Any) -> bytes:
    # "replace": a lone surrogate in a message or printed line must not stop the frame.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8", "replace"
    )


class _LineWriter(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: each complete line becomes one LOG frame.

    Lines, not writes: ``print`` writes text and newline separately and the parent logs lines.
    A partial line waits for its newline or the end of the call (``flush_partial``), never
    longer; ``flush()`` does not cut lines, so output written piecewise stays whole.
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, channel: _Channel, stream: str, fd: int) -> None:
        super().__init__()
        self._channel = channel
        self._stream = stream
        self._fd = fd
        self.parts: list[str] = []
        self._lock = _thread.RLock()  # reentrant, with _busy: see _Channel
        self._busy = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The real fd behind this stream (both lead to the stderr pipe): for C-level writers."""
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._take(s, False)
        return len(s)

    def flush_partial(self) -> None:
        """Send a pending partial line: called at the end of each call and at exit."""
        if self.parts:  # unlocked peek: the common case, nothing pending, takes no lock
            self._take("", True)

    def _take(self, s: str, final: bool) -> None:
        with self._lock:
            if self._busy:  # re-entered mid-write: leave parts alone, send non-blank lines as is
                for line in s.splitlines():
                    if line:
                        self._emit(line)
                return
            self._busy = True
            try:
                self.parts.append(s)
                if final or "\n" in s:
                    *lines, rest = "".join(self.parts).split("\n")
                    self.parts.clear()
                    if rest and final:
                        lines.append(rest)
                    elif rest:
                        self.parts.append(rest)
                    for line in lines:
                        self._emit(line)
            finally:
                self._busy = False

    def _emit(self, line: str) -> None:
        ch = self._channel
        step = max(1, (ch.limit - 64) // 6)  # worst case 6 bytes per char ("\u0001"): always fits
        try:
            for start in range(0, max(len(line), 1), step):
                payload = _dumps({"stream": self._stream, "line": line[start : start + step]})
                ch.send(encode_frame(FrameKind.LOG, ch.call_id, payload, _JSON))
        except _ChannelClosed:
            pass  # the parent is gone; the main loop finds out on its next read or reply


def _load(ref: str) -> Any:
    """Import ``pkg.mod:attr.sub`` and return the attribute."""
    module_name, sep, path = ref.partition(":")
    if not sep or not module_name or not path:
        raise ValueError(f"expected 'package.module:attribute', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


_HOOKS = frozenset({"setup", "teardown"})


def handler_method(handler: Any, target: str) -> Any:
    """The handler attribute a bare target ``"name"`` (or ``"name.sub"``) names.

    Only the handler's public methods are targets. A name starting with ``_`` would reach
    its internals (``"__class__"`` builds a second handler, ``"__init__"`` resets this one)
    and ``setup``/``teardown`` belong to the worker's lifecycle (run once, at start and at a
    clean exit), so both are refused with the error an unknown method gives, AttributeError,
    before any attribute is looked up. The testing layers resolve handler names here too, so
    a fake worker refuses exactly what a real one does.

    A dotted name that does not resolve is most often ``"pkg.mod.func"`` written for
    ``"pkg.mod:func"``: the error says so (with no handler set, every bare name fails).
    """
    if handler is None:
        hint = _colon_hint(target)
        raise LookupError(f"call target {target!r} names a handler method, but no handler is set{hint}")
    parts = target.split(".")
    if parts[0] in _HOOKS or any(part.startswith("_") for part in parts):
        raise AttributeError(
            f"handler method {target!r} is not a callable target: names starting with '_' and the "
            "setup/teardown hooks are not"
        )
    try:
        fn = getattr(handler, parts[0])
    except AttributeError as exc:
        hint = _colon_hint(target)
        if not hint:
            raise
        raise AttributeError(f"{exc}{hint}") from None
    for name in parts[1:]:
        fn = getattr(fn, name)
    return fn


def _colon_hint(target: str) -> str:
    module, _, attr = target.rpartition(".")
    if not module or not attr or ":" in target:
        return ""
    return f"; did you mean '{module}:{attr}'? (targets are \"module:function\")"


def _describe(exc: BaseException) -> dict[str, Any]:
    """The JSON body of ERROR and STARTUP_FAILED: qualified type, message, traceback."""
    import traceback  # ~5 ms of imports that a worker whose calls never fail never pays

    tp = type(exc)
    try:
        message = str(exc)
    except BaseException:  # a broken (or hostile) __str__ must not lose the report
        message = f"<unprintable {tp.__qualname__} object>"
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the runtime's own frames are noise in the user's traceback
    try:
        text = "".join(traceback.format_exception(tp, exc, tb))
    except BaseException:
        text = ""
    return {"type": f"{tp.__module__}.{tp.__qualname__}", "message": message, "traceback": text}


def _report(exc: BaseException) -> None:
    """Report a failure that has no call to answer (teardown, on_close) as output on stderr."""
    body = _describe(exc)
    sys.stderr.write(body["traceback"] or f"{body['type']}: {body['message']}\n")


def _pong_payload() -> bytes:
    """PONG's payload: ``{"rss": bytes}``, this process's resident set size, where the system
    tells it cheaply (Linux: resident pages in /proc/self/statm); empty elsewhere.

    Measured here, in the worker, at the moment of the PING: the parent recycles workers on it.
    """
    if _STATM is None:
        return b""
    try:
        fd = os.open(_STATM, os.O_RDONLY)
        try:
            data = os.read(fd, 256)
        finally:
            os.close(fd)
        return b'{"rss":%d}' % (int(data.split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return b""


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _Worker:
    """Startup, the frame loop and the calls. Calls run on the main thread, one at a time, in
    order; the heartbeat thread only reads input while a call runs (module docstring)."""

    def __init__(self, spec: dict[str, Any], proto_in: int, channel: _Channel) -> None:
        self.spec = spec
        self.json_only = spec["codec"] == "json"  # refuses pickle (answer): read once, not per call
        self.proto_in = proto_in
        self.channel = channel
        self.writers: list[_LineWriter] = []
        self.handler: Any = None
        self.sessions: dict[Any, Session] = {}
        self.targets: dict[str, Any] = {}
        self.runner: Any = None  # asyncio.Runner, created on the first awaitable result
        # Guarded by ``reader``, which the main thread holds except while a call runs:
        self.decoder = FrameDecoder(spec["max_frame_size"])
        self.pending: deque[Frame] = deque()  # CALL and SESSION_END frames, in arrival order
        self.cancelled: set[int] = set()
        self.shutting_down = False
        self.halted = False  # the heartbeat thread read EOF or a bad frame during a call
        self.violation: ProtocolViolation | None = None  # the bad frame, if that was it
        self.reader = _thread.allocate_lock()
        self.reader.acquire()
        self.running = 0  # id of the call being run now, 0 between calls
        self.wake_r = self.wake_w = -1  # the heartbeat thread's wake pipe, if there is one

    def start(self) -> None:
        _adopt_parent_main(self.spec)
        for name in self.spec["preload"]:
            importlib.import_module(name)
        if self.spec["handler"] is not None:
            self.handler = _load(self.spec["handler"])()
            setup = getattr(self.handler, "setup", None)
            if setup is not None:
                setup()

    def start_heartbeat(self) -> None:
        """Start the heartbeat thread if the spec asks for heartbeats (module docstring)."""
        interval = self.spec["heartbeat_interval"]
        if interval is None:
            return
        # os.pipe's fds are non-inheritable: a child process of user code never holds them.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)  # a full pipe already holds a wake-up: never block
        _thread.start_new_thread(self.heartbeat, (interval / 4,))

    def serve(self) -> int:
        """Run until SHUTDOWN (after the calls already sent) or EOF. Returns the exit code.

        Calls run in arrival order; before each one, input that has already arrived is read
        without blocking, so a CANCEL for a call still waiting here is honoured and a PING
        answered between calls. ``fresh`` skips that check when the last read emptied the pipe,
        and it runs at most every ``_POLL_INTERVAL``: a burst of fast calls would otherwise pay
        a system call each for it (a CANCEL that arrives less than that before its call starts
        is the race docs/errors.md describes, which exists anyway).
        """
        decoder = self.decoder
        fd, pending, cancelled = self.proto_in, self.pending, self.cancelled
        clock = time.perf_counter
        fresh = False
        poll_at = 0.0
        while True:
            if pending:
                if not fresh:
                    now = clock()
                    if now >= poll_at:
                        poll_at = now + _POLL_INTERVAL
                        if select.select([fd], [], [], 0)[0]:
                            data = os.read(fd, _READ_SIZE)
                            if not data:
                                return EXIT_OK
                            self.dispatch(decoder.feed(data))
                fresh = False
                if not pending:
                    continue
                frame = pending.popleft()
                if frame.kind is _SESSION_END:
                    self.end_session(frame.payload)
                    continue
                if cancelled and frame.call_id in cancelled:
                    # Answered here, in its place: the parent gets answers in CALL order.
                    cancelled.discard(frame.call_id)
                    self.channel.send(encode_frame(FrameKind.CANCELLED, frame.call_id))
                    continue
                self.run(frame)
                if self.halted:  # what the heartbeat thread read during the call ends us
                    if self.violation is not None:
                        raise self.violation
                    return EXIT_OK
            elif self.shutting_down:
                return EXIT_OK
            else:
                data = os.read(fd, _READ_SIZE)
                if not data:
                    return EXIT_OK
                fresh = len(data) < _READ_SIZE
                self.dispatch(decoder.feed(data))

    def dispatch(self, frames: list[Frame]) -> None:
        for frame in frames:
            kind, call_id = frame.kind, frame.call_id
            if kind is _CALL:
                self.pending.append(frame)
            elif kind is _PING:
                self.channel.send(encode_frame(FrameKind.PONG, call_id, _pong_payload()))
            elif kind is _CANCEL:
                # Only a call still waiting here can be skipped; one that ran or is running
                # is past cancelling, and its RESULT/ERROR tells the parent so. (The queue is
                # searched, rarely, rather than a set of its ids kept on every call.)
                for waiting in self.pending:
                    if waiting.call_id == call_id and waiting.kind is _CALL:
                        self.cancelled.add(call_id)
                        break
            elif kind is _SHUTDOWN:
                self.shutting_down = True
            elif kind is _SESSION_END:
                # Queued, not done here: it takes effect in its place among the calls, on the
                # main thread, so on_close callbacks never run beside a target.
                self.pending.append(frame)
            else:
                raise ProtocolViolation(f"frame kind {kind.name} is not sent by a parent")

    def run(self, frame: Frame) -> None:
        """Run one call with input handed to the heartbeat thread for the whole of it: decoding
        (unpickling may import modules), resolving (importing the target), running and encoding
        can each take long, and the parent must hear PONGs throughout."""
        call_id = self.running = frame.call_id
        reader = self.reader
        reader.release()
        try:
            flags = frame.flags
            if flags & FLAG_TRACE:
                self.run_traced(frame)
            elif not flags & FLAG_TIMING:
                self.answer(call_id, flags & _CODEC_MASK, frame.payload, None, None)
            elif flags & FLAG_WALL_ONLY:  # the pool's own scheduling asks for the run time
                self.answer(call_id, flags & _CODEC_MASK, frame.payload, None, (_perf_ns(), -1))
            else:
                self.answer(call_id, flags & _CODEC_MASK, frame.payload, None, _start_timing())
        finally:
            self.running = 0
            if not reader.acquire(False):
                self.take_back_input()

    def run_traced(self, frame: Frame) -> None:
        """The same call inside the caller's trace (FLAG_TRACE: :func:`trace_context` returns it
        while the call runs, and when this process has an OpenTelemetry SDK configured the call
        runs in a ``poolkit.worker.run`` span that is a child of the pool's call span), and
        timed if asked (FLAG_TIMING: the reply carries wall and CPU nanoseconds, or only wall
        with FLAG_WALL_ONLY)."""
        flags = frame.flags
        if not flags & FLAG_TIMING:
            timing = None
        elif flags & FLAG_WALL_ONLY:
            timing = (_perf_ns(), -1)
        else:
            timing = _start_timing()
        codec = flags & _CODEC_MASK
        block, payload = split_trace(frame.payload)
        token = _current_trace.set(_trace_context(block))
        try:
            span = _worker_span(block) if "opentelemetry.trace" in sys.modules else None
            if span is None:
                self.answer(frame.call_id, codec, payload, None, timing)
            else:
                with span as current:
                    self.answer(frame.call_id, codec, payload, current, timing)
        finally:
            _current_trace.reset(token)

    def answer(
        self, call_id: int, codec: int, payload: bytes, span: Any, timing: tuple[int, int] | None
    ) -> None:
        """Decode, resolve, run and encode one call; every failure becomes an ERROR frame."""
        ch = self.channel
        phase = "decoding"
        try:
            if codec != _JSON and self.json_only:
                raise ValueError("this worker is configured for the json codec; it refuses pickle")
            call = _pickle_loads(payload) if codec == _PICKLE else decode_payload(payload, codec)
            if type(call) not in (list, tuple) or len(call) not in (3, 4):
                raise TypeError("a CALL payload is [target, args, kwargs] or [..., session_key]")
            target, args, kwargs = call[0], call[1], call[2]
            if type(args) not in (list, tuple) or type(kwargs) is not dict:
                raise TypeError("CALL args must be a list and kwargs a dict")
            if span is not None and isinstance(target, str):
                span.set_attribute("poolkit.call.target", target)
            session = None
            if len(call) == 4 and call[3] is not None:
                session = kwargs["session"] = self.session(call[3])
            phase = "resolving"
            fn = self.resolve(target) if isinstance(target, str) else target
            if not callable(fn):
                raise TypeError(f"call target {target!r} is not callable")
            phase = "running"
            if session is not None:
                session.calls += 1
            ch.call_id = call_id
            try:
                result = fn(*args, **kwargs)
                if getattr(type(result), "__await__", None) is not None:
                    result = self.wait(result)
            finally:
                for writer in self.writers:
                    if writer.parts:  # (flush_partial's own test, without a call per writer)
                        writer.flush_partial()
                ch.call_id = 0
            phase = "encoding"
            data = _pickle_dumps(result, _HIGHEST) if codec == _PICKLE else encode_payload(result, codec)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a call cannot end the worker
            body = {**_describe(exc), "phase": phase}
            if span is not None:
                _span_error(span, body)
            ch.send_json(FrameKind.ERROR, call_id, body, _timing_block(timing))
            return
        if len(data) > ch.limit:
            message = f"result of {len(data)} bytes exceeds max_frame_size={ch.limit} bytes"
            body = {"type": "poolkit.PayloadTooLarge", "message": message, "traceback": "", "phase": phase}
            if span is not None:
                _span_error(span, body)
            ch.send_json(FrameKind.ERROR, call_id, {**body, "size": len(data), "limit": ch.limit})
            return
        if timing is None:
            ch.send(encode_frame(_RESULT, call_id, data, codec))
        else:
            ch.send(encode_frame(_RESULT, call_id, data, codec, FLAG_TIMING, _timing_block(timing)))

    def resolve(self, target: str) -> Any:
        """``"pkg.mod:attr.sub"`` imports; a bare ``"name"`` is a handler method (refused as
        :func:`handler_method` says). Cached."""
        fn = self.targets.get(target)
        if fn is None:
            fn = _load(target) if ":" in target else handler_method(self.handler, target)
            self.targets[target] = fn
        return fn

    def session(self, key: Any) -> Session:
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session(key)
        return session

    def end_session(self, payload: bytes) -> None:
        """SESSION_END ``{"key": ...}``: forget the session and run its on_close callbacks.

        An unknown key is not an error: the session may never have had a call here, or the
        worker may have been replaced since. A payload without a key is reported and ignored,
        like a CALL payload that does not decode: the stream itself is fine.
        """
        try:
            body = json.loads(payload)
            session = self.sessions.pop(body["key"], None)
        except Exception:
            sys.stderr.write(f"poolkit worker: ignored a malformed SESSION_END payload {payload[:200]!r}\n")
            return
        if session is not None:
            session._close(_report)

    def take_back_input(self) -> None:
        """End of a target while the heartbeat thread holds ``reader``: wake it, wait for it."""
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already
        self.reader.acquire()

    def heartbeat(self, period: float) -> None:
        """The heartbeat thread: take over reading input when a call outlives one period.

        Waiting one period first keeps it off short calls entirely: they never see a second
        reader, and most of them never even see this thread wake.
        """
        reader, seen = self.reader, 0
        while not self.halted:
            time.sleep(period)
            running = self.running
            if running == 0 or running != seen:
                seen = running
                continue
            if not reader.acquire(False):
                continue  # the main thread has it: that call is ending
            try:
                self.read_during(running)
            finally:
                reader.release()

    def read_during(self, call_id: int) -> None:
        """Read and dispatch input until call ``call_id`` ends (heartbeat thread, ``reader`` held)."""
        fd, wake = self.proto_in, self.wake_r
        while self.running == call_id:
            if wake in select.select([fd, wake], [], [])[0]:
                try:
                    while os.read(wake, 64):
                        pass
                except BlockingIOError:
                    pass
                continue  # the main thread wants the lock back, or a stale byte: re-check
            try:
                data = os.read(fd, _READ_SIZE)
                if not data:
                    self.halted = True  # EOF: the main thread returns once the call is answered
                    return
                self.dispatch(self.decoder.feed(data))
            except ProtocolViolation as exc:
                self.violation, self.halted = exc, True
                return
            except _ChannelClosed:
                self.halted = True  # the parent stopped reading: the same as EOF
                return

    def wait(self, awaitable: Any) -> Any:
        """Run an awaitable result to completion on the worker's one event loop.

        One loop for the worker's life (``asyncio.Runner``) rather than ``asyncio.run`` per
        call: a client or connection an async handler caches between calls stays bound to a
        loop that still exists.
        """
        if self.runner is None:
            import asyncio

            self.runner = asyncio.Runner()
        return self.runner.run(_await(awaitable))

    def close(self) -> None:
        """Best-effort end: sessions' on_close, handler ``teardown()``, the event loop, partial
        output lines."""
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:  # sessions end with the worker: release what they hold first
            session._close(_report)
        teardown = getattr(self.handler, "teardown", None)
        if teardown is not None:
            try:
                teardown()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # reported as output: the calls already succeeded
                _report(exc)
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.close()
        for writer in self.writers:
            writer.flush_partial()


#: True while this worker imports the parent's script (``_adopt_parent_main``). A script
#: that starts its pool at import time, not under ``if __name__ == "__main__":``, would
#: start a pool inside every worker: ``Pool.start`` checks this and says so instead.
loading_parent_main = False


def _adopt_parent_main(spec: dict[str, Any]) -> None:
    """Let pickled references to the parent's ``__main__`` resolve here, as multiprocessing's
    spawn does: functions defined in the user's script are pickled as ``__main__.name``.

    Lazily: ``sys.modules["__main__"]`` becomes a stand-in that loads the parent's script (by
    path, or by module name for ``python -m``) under the name ``__mp_main__`` -- so its
    ``if __name__ == "__main__":`` block does not run -- on the first attribute lookup. A
    worker whose calls never reference ``__main__`` never pays for importing the script.
    """
    path, name, path0 = spec.get("main_path"), spec.get("main_module"), spec.get("sys_path0")
    if isinstance(path0, str) and path0 not in sys.path:
        sys.path.insert(0, path0)
    if not isinstance(path, str) and not isinstance(name, str):
        return
    import types

    class _ParentMain(types.ModuleType):
        def __getattr__(self, attr: str) -> Any:
            import importlib.util

            if isinstance(path, str):
                found = importlib.util.spec_from_file_location("__mp_main__", path)
            else:
                found = importlib.util.find_spec(str(name))
            if found is None or found.loader is None:
                raise AttributeError(f"cannot load the parent's main module ({path or name}) for {attr!r}")
            module = importlib.util.module_from_spec(found)
            module.__name__ = "__mp_main__"
            sys.modules["__mp_main__"] = sys.modules["__main__"] = module
            global loading_parent_main
            loading_parent_main = True  # a Pool started now is the script's own (Pool.start)
            try:
                found.loader.exec_module(module)
            finally:
                loading_parent_main = False
            return getattr(module, attr)

    sys.modules["__main__"] = _ParentMain("__main__")


def _parse_spec(argv: list[str]) -> dict[str, Any]:
    """The JSON spec argument over the defaults; unknown members are ignored (docs/protocol.md)."""
    spec: dict[str, Any] = {"worker_id": "w?", "handler": None, "preload": [], "codec": "pickle"}
    spec.update(parent_pid=None, max_frame_size=DEFAULT_MAX_FRAME_SIZE, heartbeat_interval=None)
    given = json.loads(argv[0]) if argv else {}
    if not isinstance(given, dict):
        raise TypeError(f"the worker spec must be a JSON object, got {type(given).__name__}")
    spec.update((k, v) for k, v in given.items() if v is not None)  # null: the default
    limit, ppid = spec["max_frame_size"], spec["parent_pid"]
    if spec["codec"] not in ("pickle", "json") or type(limit) is not int or limit < 1:
        raise ValueError(f"bad codec or max_frame_size in the worker spec: {given!r}")
    if ppid is not None and type(ppid) is not int:
        raise TypeError(f"parent_pid must be an int or null, got {ppid!r}")
    interval = spec["heartbeat_interval"]
    if interval is not None and (type(interval) not in (int, float) or not 0 < interval < float("inf")):
        raise ValueError(f"heartbeat_interval must be a positive number of seconds or null, got {interval!r}")
    return spec


def _die_with_parent(parent_pid: int | None, death_signal: bool = True) -> None:
    """Make sure we die with the parent; exit now if it has already died.

    PR_SET_PDEATHSIG (Linux) makes the kernel SIGKILL us at once when the parent goes, even
    while a call holds the GIL in C code. But it fires when the *thread* that forked us ends,
    not the process: a parent that spawns from a short-lived thread (trio runs Popen in a
    cached worker thread, which exits after 10 idle seconds) would see its workers killed.
    Such a parent says ``"parent_death_signal": false`` in the spec, and a watchdog thread
    then polls getppid() instead (every 0.25 s: one system call, asleep in between). The
    getppid() check here covers a parent that died before either was set up. EOF on proto_in
    ends an idle worker in any case.
    """
    if not death_signal:
        if parent_pid is not None:
            _thread.start_new_thread(_watch_parent, (parent_pid,))
    elif sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
        except Exception:
            pass  # best effort: EOF on proto_in still ends us when the parent goes
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(EXIT_OK)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.25)
    os._exit(EXIT_OK)  # reparented: the parent is gone


def _isolate_fds() -> tuple[int, int]:
    """Move the protocol to private fds; see the module docstring for the layout."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return proto_in, proto_out


_CURRENT: _Worker | None = None  # this process's worker, for run_chunk


def run_chunk(target: Any, items: list[Any]) -> list[Any]:
    """``Pool.map(..., chunksize=N)``: run ``target(*args)`` for each ``args`` of ``items``, in
    order, as one call. Returns ``[results, None]``, or at the first failure ``[the results
    before it, its error]`` (the error as an ERROR frame describes one), so the parent yields
    those results and then raises that item's error, as an unchunked map would.

    ``target`` is resolved as a call's target is (``"pkg.mod:func"``, a handler method name,
    or a callable); an awaitable result runs on the worker's event loop.
    """
    worker = _CURRENT
    if isinstance(target, str):
        fn = worker.resolve(target) if worker is not None else _load(target)
    else:
        fn = target
    results: list[Any] = []
    for args in items:
        try:
            result = fn(*args)
            if getattr(type(result), "__await__", None) is not None:
                if worker is None:
                    raise TypeError("an awaitable result needs the worker runtime's event loop")
                result = worker.wait(result)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too, as for a call
            return [results, {**_describe(exc), "phase": "running"}]
        results.append(result)
    return [results, None]


def main(argv: list[str] | None = None) -> int:
    """Run a worker; returns the exit code: 0 done, 3 startup failed, 4 protocol violation."""
    spec_error: Exception | None = None
    try:
        spec = _parse_spec(sys.argv[1:] if argv is None else argv)
    except Exception as exc:  # reported as a startup failure once the channel exists
        spec, spec_error = _parse_spec([]), exc
    _die_with_parent(spec["parent_pid"], spec.get("parent_death_signal") is not False)
    proto_in, proto_out = _isolate_fds()
    channel = _Channel(proto_out, spec["max_frame_size"])
    global _CURRENT
    worker = _CURRENT = _Worker(spec, proto_in, channel)
    # sys.stdin keeps its object, now reading /dev/null (fd 0): it is empty, as promised.
    sys.stdout = out = _LineWriter(channel, "stdout", 1)
    sys.stderr = err = _LineWriter(channel, "stderr", 2)
    worker.writers = [out, err]
    try:
        if spec_error is not None:
            raise spec_error
        worker.start()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        out.flush_partial()
        err.flush_partial()
        try:
            channel.send_json(FrameKind.STARTUP_FAILED, 0, _describe(exc))
        except _ChannelClosed:
            pass
        return EXIT_STARTUP_FAILED
    ready = {"pid": os.getpid(), "protocol": PROTOCOL_VERSION, "worker_id": spec["worker_id"]}
    ready.update(runtime="python", python="{}.{}.{}".format(*sys.version_info[:3]))
    ready.update(handler=spec["handler"], codec=spec["codec"])
    ready.update(features=list(FEATURES))
    try:
        channel.send_json(FrameKind.READY, 0, ready)
        worker.start_heartbeat()
        code = worker.serve()
    except ProtocolViolation as exc:
        os.write(2, f"poolkit worker {spec['worker_id']}: protocol violation: {exc}\n".encode())
        return EXIT_PROTOCOL_VIOLATION
    except _ChannelClosed:
        code = EXIT_OK  # the parent stopped reading: the same as EOF
    worker.close()
    return code
