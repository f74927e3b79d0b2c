"""The worker runtime as a black box: real ``python -m poolkit.worker`` processes, real frames.

These tests play the parent: they start the worker with subprocess, write frames to its stdin
and read frames from its stdout with deadlines (never sleeps), so they pin down the wire
behaviour every pool implementation relies on. Every timeout scales with the environment
variable POOLKIT_TIMEOUT_FACTOR (default 1) for slow CI machines.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _util import TESTS_DIR, scaled, wait_until_sync
from integration import _targets
from poolkit._protocol import (
    CPU_UNKNOWN,
    FLAG_TIMING,
    FLAG_WALL_ONLY,
    PROTOCOL_VERSION,
    Codec,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_payload,
    encode_frame,
    encode_payload,
    split_timing,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and signals")

SRC = TESTS_DIR.parent / "src"
T = "integration._targets"  # how workers import the targets: tests/ is on their PYTHONPATH


def worker_env(**extra: str) -> dict[str, str]:
    """Workers import poolkit from src/ and the targets from tests/ (whatever PYTHONPATH says)."""
    env = dict(os.environ)
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS_DIR), *entries])
    env.update(extra)
    return env


class FrameReader:
    """Reads whole frames from a pipe fd with a deadline: select, then read what is there."""

    def __init__(self, fd: int, max_frame_size: int = 64 * 1024 * 1024) -> None:
        self.fd = fd
        self.decoder = FrameDecoder(max_frame_size)
        self.frames: deque[Frame] = deque()

    def next(self, timeout: float) -> Frame:
        deadline = time.monotonic() + scaled(timeout)
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise TimeoutError(f"no frame within {scaled(timeout):.1f}s")
            data = os.read(self.fd, 65536)
            if not data:
                raise EOFError("the worker closed its protocol output")
            self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    def at_eof(self, timeout: float) -> bool:
        """Read until EOF; True if it came before the deadline (no frames may arrive)."""
        deadline = time.monotonic() + scaled(timeout)
        while (remaining := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], remaining)[0]:
                data = os.read(self.fd, 65536)
                if not data:
                    return True
                self.frames.extend(self.decoder.feed(data))
        return False


class Worker:
    """One worker subprocess and the parent's side of its protocol."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poolkit.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else worker_env(),
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.reader = FrameReader(self.proc.stdout.fileno(), spec.get("max_frame_size", 64 * 1024 * 1024))
        self.logs: list[Frame] = []

    def send_raw(self, data: bytes) -> None:
        self.stdin.write(data)

    def send(
        self, kind: FrameKind, call_id: int = 0, payload: bytes = b"", codec: Codec = Codec.JSON
    ) -> None:
        self.send_raw(encode_frame(kind, call_id, payload, codec))

    def call(self, call_id: int, target: Any, *args: Any, codec: Codec = Codec.PICKLE, **kw: Any) -> None:
        self.send_raw(call_frame(call_id, target, *args, codec=codec, **kw))

    def recv(self, timeout: float = 10) -> Frame:
        """The next frame that is not a LOG frame; LOG frames are collected in ``self.logs``."""
        while True:
            frame = self.reader.next(timeout)
            if frame.kind is not FrameKind.LOG:
                return frame
            self.logs.append(frame)

    def ready(self) -> dict[str, Any]:
        frame = self.recv()
        assert frame.kind is FrameKind.READY, frame
        body: dict[str, Any] = json.loads(frame.payload)
        return body

    def result(self, call_id: int, timeout: float = 10) -> Any:
        frame = self.recv(timeout)
        assert frame.call_id == call_id, frame
        assert frame.kind is FrameKind.RESULT, json.loads(frame.payload)
        return decode_payload(frame.payload, frame.codec)

    def error(self, call_id: int) -> dict[str, Any]:
        frame = self.recv()
        assert (frame.kind, frame.call_id, frame.codec) == (FrameKind.ERROR, call_id, Codec.JSON), frame
        body: dict[str, Any] = json.loads(frame.payload)
        return body

    def wait(self, timeout: float = 10) -> int:
        return self.proc.wait(scaled(timeout))

    def stderr_text(self) -> str:
        """All the worker wrote to fd 2; only once it has exited (the read runs to EOF)."""
        assert self.proc.stderr is not None and self.proc.poll() is not None
        return self.proc.stderr.read().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def call_frame(call_id: int, target: Any, *args: Any, codec: Codec = Codec.PICKLE, **kw: Any) -> bytes:
    session = kw.pop("session", None)
    body = [target, list(args), kw] if session is None else [target, list(args), kw, session]
    return encode_frame(FrameKind.CALL, call_id, encode_payload(body, codec), codec)


@pytest.fixture
def start() -> Iterator[Callable[..., Worker]]:
    """Start workers (spec as keyword arguments); every one is killed and reaped afterwards."""
    workers: list[Worker] = []

    def _start(env: dict[str, str] | None = None, **spec: Any) -> Worker:
        worker = Worker({"worker_id": "t1", **spec}, env)
        workers.append(worker)
        return worker

    yield _start
    for worker in workers:
        worker.kill()


def test_ready_handshake(start: Callable[..., Worker]) -> None:
    """The first frame is READY with the worker's pid, protocol version and identity."""
    w = start()
    body = w.ready()
    assert body["pid"] == w.proc.pid
    assert body["protocol"] == PROTOCOL_VERSION
    assert body["worker_id"] == "t1"
    assert body["runtime"] == "python"
    assert body["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert body["handler"] is None


@pytest.mark.parametrize("codec", [Codec.PICKLE, Codec.JSON])
def test_call_by_name(start: Callable[..., Worker], codec: Codec) -> None:
    """A "module:function" target runs with args and kwargs; the RESULT uses the CALL's codec."""
    w = start(codec=codec.name.lower())
    w.ready()
    w.call(1, f"{T}:add", 2, b=3, codec=codec)
    frame = w.recv()
    assert (frame.kind, frame.call_id, frame.codec) == (FrameKind.RESULT, 1, codec)
    assert decode_payload(frame.payload, codec) == 5


def test_dotted_target_path(start: Callable[..., Worker]) -> None:
    """A target "module:attr.sub" walks attributes after the import (here os.path.join)."""
    w = start()
    w.ready()
    w.call(1, "os:path.join", "a", "b", codec=Codec.JSON)
    assert w.result(1) == os.path.join("a", "b")


def test_call_by_reference_pickle(start: Callable[..., Worker]) -> None:
    """With pickle, the target may be the callable itself, pickled by reference."""
    w = start()
    w.ready()
    w.call(7, _targets.add, [1], [2])
    assert w.result(7) == [1, 2]


def test_async_target_is_awaited(start: Callable[..., Worker]) -> None:
    """A coroutine returned by the target is run to completion; its value is the result."""
    w = start()
    w.ready()
    w.call(1, f"{T}:async_add", 20, 22)
    w.call(2, f"{T}:async_add", 1, 1)
    assert (w.result(1), w.result(2)) == (42, 2)


def test_handler_session_state(start: Callable[..., Worker]) -> None:
    """Handler methods are called by bare name; a session key gets one Session object that
    persists across calls with that key and is separate for every other key."""
    w = start(handler=f"{T}:Counter")
    assert w.ready()["handler"] == f"{T}:Counter"
    w.call(1, "incr", session="a")
    w.call(2, "incr", 10, session="a")
    w.call(3, "incr", session="b")
    w.call(4, "session_info", session="b")
    assert [w.result(i) for i in (1, 2, 3)] == [1, 11, 1]
    assert w.result(4) == ["b", "Session", True]


def test_setup_and_teardown_hooks(start: Callable[..., Worker], tmp_path: Path) -> None:
    """setup() runs before READY; on SHUTDOWN the worker runs teardown() and exits 0."""
    w = start(env=worker_env(**{_targets.MARKER_DIR_ENV: str(tmp_path)}), handler=f"{T}:Counter")
    pid = w.ready()["pid"]
    w.call(1, "was_set_up")
    assert w.result(1) is True
    w.send(FrameKind.SHUTDOWN)
    assert w.wait() == 0
    assert (tmp_path / f"teardown-{pid}").read_text() == "0"


def test_shutdown_finishes_calls_already_sent(start: Callable[..., Worker]) -> None:
    """Calls written before SHUTDOWN all complete, in order, before the worker exits 0."""
    w = start()
    w.ready()
    w.send_raw(b"".join(call_frame(i, f"{T}:echo", i) for i in range(1, 201)))
    w.send(FrameKind.SHUTDOWN)
    assert [w.result(i) for i in range(1, 201)] == list(range(1, 201))
    assert w.wait() == 0


def test_target_raises(start: Callable[..., Worker]) -> None:
    """An exception in the target is an ERROR (phase running) with the worker's traceback;
    the worker keeps serving."""
    w = start()
    w.ready()
    w.call(1, f"{T}:boom", "kaput")
    err = w.error(1)
    assert err["type"] == "builtins.ValueError"
    assert err["message"] == "kaput"
    assert err["phase"] == "running"
    assert "Traceback" in err["traceback"] and "in boom" in err["traceback"]
    assert "_runtime.py" not in err["traceback"]
    w.call(2, f"{T}:add", 1, 1)
    assert w.result(2) == 2


@pytest.mark.parametrize("wall_only", [False, True])
def test_timed_calls_report_cpu_time_unless_asked_for_wall_time_only(
    start: Callable[..., Worker], wall_only: bool
) -> None:
    """A CALL with FLAG_TIMING gets its wall and CPU nanoseconds back, in a RESULT or an ERROR;
    with FLAG_WALL_ONLY as well, the CPU time is CPU_UNKNOWN (the worker skips its CPU clock,
    a system call) and the wall time is still measured (docs/protocol.md 2.1)."""
    w = start()
    w.ready()
    flags = FLAG_TIMING | (FLAG_WALL_ONLY if wall_only else 0)
    for call_id, target, args in [(1, "spin", [0.02]), (2, "boom", ["kaput"])]:
        body = encode_payload([f"{T}:{target}", args, {}], Codec.PICKLE)
        w.send_raw(encode_frame(FrameKind.CALL, call_id, body, Codec.PICKLE, flags))
        frame = w.recv()
        assert frame.call_id == call_id and frame.flags & FLAG_TIMING
        run_ns, cpu_ns, rest = split_timing(frame.payload)
        raw_cpu = int.from_bytes(frame.payload[8:16], "big")
        if call_id == 1:
            assert frame.kind is FrameKind.RESULT and decode_payload(rest, Codec.PICKLE) > 0
            assert run_ns >= 20_000_000  # it spun for 20 ms of CPU time, so as long at least
        else:
            assert frame.kind is FrameKind.ERROR and json.loads(rest)["message"] == "kaput"
            assert run_ns > 0
        if wall_only:
            assert (cpu_ns, raw_cpu) == (None, CPU_UNKNOWN)
        else:
            assert cpu_ns is not None and cpu_ns == raw_cpu
            assert cpu_ns >= (20_000_000 if call_id == 1 else 0)


def test_system_exit_in_target_is_reported(start: Callable[..., Worker]) -> None:
    """sys.exit() inside a call is an ERROR for that call, not the end of the worker."""
    w = start()
    w.ready()
    w.call(1, f"{T}:exit_now", 7)
    err = w.error(1)
    assert (err["type"], err["message"], err["phase"]) == ("builtins.SystemExit", "7", "running")
    w.send(FrameKind.PING, 2)
    assert w.recv().kind is FrameKind.PONG


def test_exception_with_hostile_str_is_reported(start: Callable[..., Worker]) -> None:
    """An exception whose __str__ raises SystemExit is still reported; the worker lives on."""
    w = start()
    w.ready()
    w.call(1, f"{T}:raise_unprintable")
    err = w.error(1)
    assert err["type"] == f"{T}.UnprintableError" and err["phase"] == "running"
    assert err["message"] == "<unprintable UnprintableError object>"
    w.send(FrameKind.PING, 2)
    assert w.recv().kind is FrameKind.PONG


def test_hostile_payload_is_a_decoding_error(start: Callable[..., Worker]) -> None:
    """A payload whose unpickling raises SystemExit is reported (phase decoding); the worker lives."""
    w = start()
    w.ready()
    w.call(1, f"{T}:echo", _targets.ExitOnUnpickle())
    err = w.error(1)
    assert (err["type"], err["phase"]) == ("builtins.SystemExit", "decoding")
    w.send(FrameKind.CALL, 2, b"[1, 2]")  # valid JSON, wrong shape
    assert w.error(2)["phase"] == "decoding"
    w.call(3, f"{T}:add", 2, 2)
    assert w.result(3) == 4


def test_json_worker_refuses_pickle(start: Callable[..., Worker]) -> None:
    """A worker configured for JSON never unpickles: a pickle CALL is a decoding error."""
    w = start(codec="json")
    w.ready()
    w.call(1, f"{T}:add", 1, 2, codec=Codec.PICKLE)
    assert w.error(1)["phase"] == "decoding"


@pytest.mark.parametrize(
    ("target", "expected_type"),
    [
        ("_no_such_module:f", "builtins.ModuleNotFoundError"),
        (f"{T}:no_such_function", "builtins.AttributeError"),
        ("incr", "builtins.LookupError"),  # a handler method, but this worker has no handler
        (f"{T}:MARKER_DIR_ENV", "builtins.TypeError"),  # exists, not callable
    ],
)
def test_unresolvable_target(start: Callable[..., Worker], target: str, expected_type: str) -> None:
    """A target that cannot be found or called is an ERROR with phase resolving."""
    w = start()
    w.ready()
    w.call(1, target)
    err = w.error(1)
    assert (err["type"], err["phase"]) == (expected_type, "resolving")


REFUSED = "is not a callable target: names starting with '_' and the setup/teardown hooks are not"
COLON_HINT = "did you mean 'math:factorial'? (targets are \"module:function\")"


@pytest.mark.parametrize("name", ["setup", "teardown", "__class__", "__init__", "_private", "incr.__func__"])
def test_handler_hooks_and_private_names_are_refused(
    start: Callable[..., Worker], tmp_path: Path, name: str
) -> None:
    """The handler's setup/teardown hooks and names starting with "_" are not targets: an
    AttributeError (as for an unknown method) with phase resolving, before anything runs
    ("teardown" leaves no marker, "__class__" builds no second handler); the worker serves on."""
    w = start(env=worker_env(**{_targets.MARKER_DIR_ENV: str(tmp_path)}), handler=f"{T}:Counter")
    w.ready()
    w.call(1, name)
    err = w.error(1)
    assert (err["type"], err["phase"]) == ("builtins.AttributeError", "resolving")
    assert err["message"] == f"handler method {name!r} {REFUSED}"
    w.call(2, "was_set_up")
    assert w.result(2) is True
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("handler", "target", "expected_type", "hint"),
    [
        (None, "math.factorial", "builtins.LookupError", True),
        (None, "incr", "builtins.LookupError", False),
        (f"{T}:Counter", "math.factorial", "builtins.AttributeError", True),
    ],
)
def test_dotted_target_hints_at_module_colon_function(
    start: Callable[..., Worker], handler: str | None, target: str, expected_type: str, hint: bool
) -> None:
    """A target like "math.factorial" (a dot for the colon) reads as a handler method; when
    that fails, with no handler or none with such an attribute, the message suggests
    'math:factorial'."""
    w = start(handler=handler)
    w.ready()
    w.call(1, target, 5)
    err = w.error(1)
    assert (err["type"], err["phase"]) == (expected_type, "resolving")
    assert err["message"].endswith(COLON_HINT) is hint
    if handler is None:
        assert err["message"].startswith(
            f"call target {target!r} names a handler method, but no handler is set"
        )


@pytest.mark.parametrize("codec", [Codec.PICKLE, Codec.JSON])
def test_unencodable_result(start: Callable[..., Worker], codec: Codec) -> None:
    """A result the codec cannot encode (a lambda) is an ERROR with phase encoding."""
    w = start(codec=codec.name.lower())
    w.ready()
    w.call(1, f"{T}:unpicklable", codec=codec)
    err = w.error(1)
    assert err["phase"] == "encoding"
    assert err["type"] in ("_pickle.PicklingError", "builtins.AttributeError", "builtins.TypeError")


def test_result_too_large(start: Callable[..., Worker]) -> None:
    """A result over max_frame_size is never sent: ERROR poolkit.PayloadTooLarge with sizes."""
    w = start(max_frame_size=4096)
    w.ready()
    w.call(1, f"{T}:blob", 10_000)
    err = w.error(1)
    assert err["type"] == "poolkit.PayloadTooLarge"
    assert err["phase"] == "encoding"
    assert err["limit"] == 4096 and err["size"] > 10_000
    assert err["message"] == f"result of {err['size']} bytes exceeds max_frame_size=4096 bytes"
    w.call(2, f"{T}:echo", "small")
    assert w.result(2) == "small"


def test_output_never_corrupts_frames(start: Callable[..., Worker]) -> None:
    """print() to stdout/stderr arrives as LOG frames tagged with the call; writes to fds 1 and 2
    go to the process's stderr pipe; the protocol stream stays intact throughout."""
    w = start()
    w.ready()
    w.call(5, f"{T}:noisy", "hi")
    assert w.result(5) == "hi"
    logs = [(f.call_id, json.loads(f.payload)) for f in w.logs]
    assert logs == [
        (5, {"stream": "stdout", "line": "hi on stdout"}),
        (5, {"stream": "stderr", "line": "hi on stderr"}),
        (5, {"stream": "stdout", "line": "hi partial"}),  # the unterminated line, at call end
    ]
    w.send(FrameKind.SHUTDOWN)
    assert w.wait() == 0
    stderr = w.stderr_text()
    assert "hi raw fd 1\n" in stderr and "hi raw fd 2\n" in stderr
    assert "hi on stdout" not in stderr


def test_threaded_prints_never_interleave_frames(start: Callable[..., Worker]) -> None:
    """Threads printing concurrently during a call produce whole LOG frames, every line intact."""
    w = start()
    w.ready()
    w.call(1, f"{T}:threaded_prints", 8, 200)
    assert w.result(1, timeout=30) == 1600
    lines = [json.loads(f.payload)["line"] for f in w.logs]
    assert sorted(lines) == sorted(f"thread {n} line {i} " + "." * 200 for n in range(8) for i in range(200))


def test_writer_reentered_mid_write(start: Callable[..., Worker]) -> None:
    """A print that runs inside sys.stdout.write itself (as a __del__ or signal handler can)
    neither deadlocks nor loses the outer line."""
    w = start()
    w.ready()
    w.call(1, f"{T}:reentrant_write")
    assert w.result(1) == "ok"
    assert [json.loads(f.payload)["line"] for f in w.logs] == ["printed from inside write", "outer line"]


def test_signal_handler_prints_during_output(start: Callable[..., Worker]) -> None:
    """A signal handler printing while the main thread prints (and writes frames) never
    deadlocks the worker or corrupts a frame, and no output is lost or reordered.

    A tick may land between a print's text and its newline and join that line, exactly as on
    a terminal; so the check is on the text, not on line boundaries."""
    w = start()
    w.ready()
    w.call(1, f"{T}:print_under_signals", 20_000)
    ticks = w.result(1, timeout=60)
    text = "".join(json.loads(f.payload)["line"] for f in w.logs)
    assert ticks > 0 and text.count("tick") == ticks
    assert text.replace("tick", "") == "".join(f"line {i}" for i in range(20_000))


def test_child_process_output_goes_to_stderr(start: Callable[..., Worker]) -> None:
    """A subprocess started by a target writes to the worker's fd 1, which is the stderr pipe:
    its output never reaches the frame stream, and it does not inherit the protocol fds."""
    w = start()
    w.ready()
    w.call(1, f"{T}:child_process_output", "hello from a child")
    assert w.result(1) == 0
    w.send(FrameKind.SHUTDOWN)
    assert w.wait() == 0
    assert "hello from a child\n" in w.stderr_text()


def test_long_lines_and_messages_respect_the_frame_limit(start: Callable[..., Worker]) -> None:
    """A printed line or an error message over max_frame_size still reaches the parent in frames
    the parent accepts (its decoder uses the same limit): lines are split, messages shortened."""
    w = start(max_frame_size=4096)
    w.ready()
    w.call(1, f"{T}:print_line", 10_000)
    assert w.result(1) == 10_000
    assert "".join(json.loads(f.payload)["line"] for f in w.logs) == "y" * 10_000
    w.call(2, f"{T}:raise_big", 10_000)
    err = w.error(2)
    assert err["type"] == "builtins.ValueError" and err["phase"] == "running"
    assert err["message"].startswith("zzz")


def test_large_result_crosses_the_pipe(start: Callable[..., Worker]) -> None:
    """A result far larger than a pipe buffer arrives whole (the writer loops over short writes)."""
    w = start()
    w.ready()
    w.call(1, f"{T}:blob", 8_000_000)
    assert w.result(1, timeout=30) == "x" * 8_000_000


def test_stdin_is_empty_for_user_code(start: Callable[..., Worker]) -> None:
    """User code reading stdin gets EOF, never the parent's frames."""
    w = start()
    w.ready()
    w.call(1, f"{T}:read_stdin")
    assert w.result(1) == ""


@pytest.mark.parametrize(
    ("handler", "expected_type"),
    [
        ("_no_such_module:Handler", "builtins.ModuleNotFoundError"),
        (f"{T}:FailingSetup", "builtins.RuntimeError"),
    ],
)
def test_startup_failure(start: Callable[..., Worker], handler: str, expected_type: str) -> None:
    """A handler that cannot be imported or set up gives STARTUP_FAILED with the traceback, exit 3."""
    w = start(handler=handler)
    frame = w.recv()
    assert (frame.kind, frame.call_id) == (FrameKind.STARTUP_FAILED, 0)
    body = json.loads(frame.payload)
    assert body["type"] == expected_type
    assert body["message"]
    assert body["traceback"].startswith("Traceback")
    assert w.wait() == 3


def test_cancel_pending_call_never_runs(start: Callable[..., Worker], tmp_path: Path) -> None:
    """CANCEL for a call queued behind a running one answers CANCELLED and the call never runs.

    Call 1 blocks on a FIFO until the test releases it, so call 2 is certainly still pending
    when the CANCEL arrives: no timing assumptions.
    """
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    gate = os.open(fifo, os.O_RDWR)  # never blocks on Linux; lets the worker's open return at once
    marker = tmp_path / "call-2-ran"
    try:
        w = start()
        w.ready()
        w.send_raw(call_frame(1, f"{T}:wait_fifo", str(fifo)) + call_frame(2, f"{T}:touch", str(marker)))
        assert w.reader.next(10).kind is FrameKind.LOG  # "waiting": call 1 is running
        w.send(FrameKind.CANCEL, 2)
        os.write(gate, b"go\n")
        assert w.result(1) == "go"
        frame = w.recv()
        assert (frame.kind, frame.call_id, frame.payload) == (FrameKind.CANCELLED, 2, b"")
        w.send(FrameKind.PING, 3)
        assert (w.recv().kind, marker.exists()) == (FrameKind.PONG, False)
    finally:
        os.close(gate)


def test_cancelled_answer_keeps_call_order(start: Callable[..., Worker]) -> None:
    """Answers come in CALL order even for a cancelled call: CANCELLED takes the call's place."""
    w = start()
    w.ready()
    w.send_raw(
        call_frame(1, f"{T}:add", 1, 1)
        + call_frame(2, f"{T}:add", 2, 2)
        + encode_frame(FrameKind.CANCEL, 2)
        + call_frame(3, f"{T}:add", 3, 3)
    )
    answers = [w.recv() for _ in range(3)]
    assert [(f.kind, f.call_id) for f in answers] == [
        (FrameKind.RESULT, 1),
        (FrameKind.CANCELLED, 2),
        (FrameKind.RESULT, 3),
    ]


def test_cancel_of_unknown_or_finished_call_is_ignored(start: Callable[..., Worker]) -> None:
    """CANCEL for a call that already ran (or never existed) gets no reply at all."""
    w = start()
    w.ready()
    w.call(1, f"{T}:add", 1, 2)
    assert w.result(1) == 3
    w.send(FrameKind.CANCEL, 1)
    w.send(FrameKind.CANCEL, 999)
    w.send(FrameKind.PING, 2)
    frame = w.recv()
    assert (frame.kind, frame.call_id) == (FrameKind.PONG, 2)


def test_ping_pong(start: Callable[..., Worker]) -> None:
    """PING is answered by PONG with the same call_id; its payload is the JSON object
    {"rss": bytes} on Linux and empty where the RSS cannot be read cheaply."""
    w = start()
    w.ready()
    w.send(FrameKind.PING, 77)
    frame = w.recv()
    assert (frame.kind, frame.call_id, frame.codec) == (FrameKind.PONG, 77, Codec.JSON)
    if sys.platform.startswith("linux"):
        assert set(json.loads(frame.payload)) == {"rss"}
    else:
        assert frame.payload == b""


def test_eof_exits_zero_and_tears_down(start: Callable[..., Worker], tmp_path: Path) -> None:
    """Closing the worker's stdin makes it exit 0, running teardown on the way out."""
    w = start(env=worker_env(**{_targets.MARKER_DIR_ENV: str(tmp_path)}), handler=f"{T}:Counter")
    pid = w.ready()["pid"]
    w.stdin.close()
    assert w.wait() == 0
    assert (tmp_path / f"teardown-{pid}").exists()


def test_corrupted_bytes_exit_4(start: Callable[..., Worker]) -> None:
    """Bytes that are not a frame are a protocol violation: a line on stderr and exit code 4."""
    w = start()
    w.ready()
    w.send_raw(b"this is not a poolkit frame at all")
    assert w.wait() == 4
    assert "protocol violation" in w.stderr_text()


def test_unexpected_frame_kind_exit_4(start: Callable[..., Worker]) -> None:
    """A valid frame of a kind only workers send (RESULT) is a protocol violation too."""
    w = start()
    w.ready()
    w.send(FrameKind.RESULT, 1, b"null")
    assert w.wait() == 4


def test_parent_already_gone_exits_without_ready(start: Callable[..., Worker]) -> None:
    """If parent_pid is not the actual parent, the parent died before the worker could watch
    it: the worker exits at once, before READY."""
    w = start(parent_pid=os.getpid() + 1_000_000)
    assert w.reader.at_eof(10)
    assert not w.reader.frames
    assert w.wait() == 0


PARENT_SCRIPT = """
import json, os, signal, subprocess, sys
spec = {"worker_id": "orphan", "parent_pid": os.getpid()}
# The worker inherits our stdin and stdout: the test's pipes, which outlive us.
subprocess.Popen([sys.executable, "-m", "poolkit.worker", json.dumps(spec)], stderr=subprocess.DEVNULL)
signal.pause()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_dies_with_parent() -> None:
    """SIGKILL of the parent kills the worker (PR_SET_PDEATHSIG).

    The worker's stdin is the test's pipe, still open after the parent dies, so it never
    sees EOF: only the death signal can end it.
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=worker_env(),
    )
    assert parent.stdout is not None and parent.stdin is not None
    reader = FrameReader(parent.stdout.fileno())
    pid, gone = 0, False
    try:
        ready = reader.next(10)
        assert ready.kind is FrameKind.READY
        pid = json.loads(ready.payload)["pid"]
        try:
            watch: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            watch = None  # no pidfd: the worker closing our stdout pipe (EOF) is the signal
        parent.kill()
        parent.wait(scaled(10))
        if watch is not None:
            try:
                assert select.select([watch], [], [], scaled(10))[0], "worker outlived its parent"
            finally:
                os.close(watch)
        else:
            assert reader.at_eof(10), "worker outlived its parent"
        gone = True
        try:  # not reaped yet (we are not its parent any more): then it must be a zombie
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            status = "State:\tX (reaped)"
        state = next(line for line in status.splitlines() if line.startswith("State:"))
        assert state.split()[1] in ("Z", "X"), state
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pid and not gone:  # only a worker seen alive: never a recycled pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.stdin.close()
        parent.stdout.close()


# --------------------------------------------------------------------------- heartbeats while calls run

R = "integration._runtime_targets"
HEARTBEAT = 0.2  # heartbeat_interval: the heartbeat thread starts reading within 0.1 s of a call
MiB = 1024 * 1024


class Gate:
    """A FIFO a target blocks on (``wait_fifo``, ``hold_gil``) until the test writes a line:
    holds a call running for exactly as long as the test wants, without timing assumptions."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "gate")
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDWR)  # never blocks; lets the worker's open return

    def release(self, line: str = "go") -> None:
        os.write(self.fd, f"{line}\n".encode())


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """A fresh :class:`Gate`, closed after the test."""
    g = Gate(tmp_path)
    yield g
    os.close(g.fd)


def next_line(w: Worker) -> str:
    """The next frame must be a LOG frame: its line."""
    frame = w.reader.next(10)
    assert frame.kind is FrameKind.LOG, frame
    line: str = json.loads(frame.payload)["line"]
    return line


def expect_pong(w: Worker, call_id: int, timeout: float = 10) -> Frame:
    """The next non-LOG frame must be the PONG for ``call_id``."""
    frame = w.recv(timeout)
    assert (frame.kind, frame.call_id) == (FrameKind.PONG, call_id), frame
    return frame


def assert_silent(w: Worker, seconds: float) -> None:
    """No byte comes from the worker for ``seconds``: a bounded wait for something that must not
    happen. Not scaled: a slower machine can only make silence more likely, never less."""
    assert not w.reader.frames
    readable = select.select([w.reader.fd], [], [], seconds)[0]
    assert not readable, f"the worker sent {w.reader.next(1)} while it should have been silent"


def proc_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def pong_rss(w: Worker, call_id: int) -> int:
    """PING, and the rss the PONG reports."""
    w.send(FrameKind.PING, call_id)
    body = json.loads(expect_pong(w, call_id).payload)
    rss: int = body["rss"]
    assert type(rss) is int
    return rss


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_ping_answered_while_a_call_runs(start: Callable[..., Worker], gate: Gate, tmp_path: Path) -> None:
    """With heartbeat_interval set, PINGs are answered while a long call runs, and a CANCEL
    read meanwhile still skips a call queued behind it; answers keep their CALL order."""
    marker = tmp_path / "call-2-ran"
    w = start(heartbeat_interval=HEARTBEAT)
    w.ready()
    w.send_raw(
        call_frame(1, f"{T}:wait_fifo", gate.path)
        + call_frame(2, f"{T}:touch", str(marker))
        + call_frame(3, f"{T}:add", 1, 2)
    )
    assert next_line(w) == "waiting"  # call 1 is running and stays so until the gate opens
    for ping in (101, 102, 103):
        w.send(FrameKind.PING, ping)
        expect_pong(w, ping)
    w.send(FrameKind.CANCEL, 2)
    w.send(FrameKind.PING, 104)
    expect_pong(w, 104)  # read after the CANCEL: the CANCEL has been taken in too
    gate.release()
    assert w.result(1) == "go"
    frame = w.recv()
    assert (frame.kind, frame.call_id) == (FrameKind.CANCELLED, 2)
    assert w.result(3) == 3
    assert not marker.exists()


@linux_only
def test_ping_not_answered_while_stopped(start: Callable[..., Worker], gate: Gate) -> None:
    """A stopped worker (SIGSTOP) answers no PING even though it has a heartbeat thread: that
    silence is how the parent detects it. After SIGCONT the PING is answered."""
    w = start(heartbeat_interval=HEARTBEAT)
    w.ready()
    w.call(1, f"{T}:wait_fifo", gate.path)
    assert next_line(w) == "waiting"
    w.send(FrameKind.PING, 1)
    expect_pong(w, 1)  # the heartbeat thread is reading
    pid = w.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until_sync(lambda: proc_state(pid) in ("T", "t"), 10, "the worker to stop")
        w.send(FrameKind.PING, 2)
        assert_silent(w, 3 * HEARTBEAT)
    finally:
        os.kill(pid, signal.SIGCONT)
    expect_pong(w, 2)
    gate.release()
    assert w.result(1) == "go"


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="needs the GIL")
def test_ping_not_answered_while_c_code_holds_the_gil(start: Callable[..., Worker], gate: Gate) -> None:
    """A call stuck in C code that holds the GIL (one long ``sum`` over a range) silences the
    worker: the heartbeat thread cannot run to answer. Once the C call returns it answers."""
    w = start(heartbeat_interval=HEARTBEAT)
    w.ready()
    w.call(1, f"{R}:hold_gil", gate.path, 2.0)
    assert next_line(w) == "ready"  # calibrated; now waiting on the gate with the GIL free
    w.send(FrameKind.PING, 1)
    expect_pong(w, 1)  # the heartbeat thread is reading
    gate.release()
    assert next_line(w) == "holding"  # the ~2 s C call has started
    w.send(FrameKind.PING, 2)
    assert_silent(w, 3 * HEARTBEAT)
    answers = sorted((f.kind, f.call_id) for f in (w.recv(30), w.recv(30)))
    assert answers == [(FrameKind.RESULT, 1), (FrameKind.PONG, 2)]


@linux_only
def test_pong_reports_the_workers_own_rss(start: Callable[..., Worker]) -> None:
    """PONG carries {"rss": bytes}: the worker's own resident size (it matches the child's
    /proc/<pid>/statm, not the test process's), and it grows when the worker allocates."""
    w = start()
    w.ready()
    before = pong_rss(w, 1)
    assert 1 * MiB < before < 1024 * MiB
    with open(f"/proc/{w.proc.pid}/statm", encoding="ascii") as f:
        measured = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert abs(measured - before) < 8 * MiB
    w.call(2, "poolkit.testing.targets:grow_memory", 64)
    assert w.result(2, timeout=30) == 64
    after = pong_rss(w, 3)
    assert after - before >= 60 * MiB


def session_end(key: str | int) -> bytes:
    """A SESSION_END frame for ``key``."""
    return encode_frame(FrameKind.SESSION_END, 0, json.dumps({"key": key}).encode())


def test_session_state_persists_and_counts_calls(start: Callable[..., Worker]) -> None:
    """A session key (str or int) gets one Session per key: state kept between its calls,
    ``calls`` counting them, other keys untouched."""
    w = start()
    w.ready()
    w.call(1, f"{R}:remember", "a1", session="a")
    w.call(2, f"{R}:remember", 7, session=7)
    w.call(3, f"{R}:remember", "a2", session="a")
    assert [w.result(i) for i in (1, 2, 3)] == [[1, ["a1"]], [1, [7]], [2, ["a1", "a2"]]]


def test_session_end_drops_state_and_runs_on_close(start: Callable[..., Worker]) -> None:
    """SESSION_END takes effect in its place among the calls: the session's on_close callbacks
    run (newest first; one raising is reported on stderr and the rest still run) and the next
    call with that key gets a new, empty Session. Other sessions and unknown keys: no effect."""
    w = start()
    w.ready()
    w.call(1, f"{R}:remember", "a1", session="a")
    w.call(2, f"{R}:remember", "b1", session=7)
    w.call(3, f"{R}:close_noisily", session="a")
    w.send_raw(
        call_frame(4, f"{R}:remember", "a2", session="a")
        + session_end("a")
        + session_end("never-seen")
        + call_frame(5, f"{R}:remember", "a3", session="a")
        + call_frame(6, f"{R}:remember", "b2", session=7)
    )
    assert [w.result(i) for i in (1, 2, 3)] == [[1, ["a1"]], [1, ["b1"]], "Session(key='a', calls=2)"]
    assert [w.result(i) for i in (4, 5, 6)] == [[3, ["a1", "a2"]], [1, ["a3"]], [2, ["b1", "b2"]]]
    out = [json.loads(f.payload) for f in w.logs if f.call_id == 0]
    stdout = [body["line"] for body in out if body["stream"] == "stdout"]
    stderr = "\n".join(body["line"] for body in out if body["stream"] == "stderr")
    assert stdout == ["closed a last-registered", "closed a first-registered"]
    assert "RuntimeError: on_close failure for a" in stderr
    w.send_raw(session_end(7) + call_frame(7, f"{R}:remember", "b3", session=7))
    assert w.result(7) == [1, ["b3"]]


def test_live_sessions_close_when_the_worker_exits(start: Callable[..., Worker]) -> None:
    """Sessions still open at SHUTDOWN end with the worker: their on_close callbacks run."""
    w = start()
    w.ready()
    w.call(1, f"{R}:close_noisily", session="x")
    assert w.result(1) == "Session(key='x', calls=1)"
    w.send(FrameKind.SHUTDOWN)
    assert w.reader.at_eof(10)
    assert w.wait() == 0
    logs = [json.loads(f.payload) for f in w.reader.frames if f.kind is FrameKind.LOG]
    stdout = [body["line"] for body in logs if body["stream"] == "stdout"]
    assert stdout == ["closed x last-registered", "closed x first-registered"]


@linux_only
@pytest.mark.parametrize(("interval", "threads"), [(None, 1), (HEARTBEAT, 2)])
def test_heartbeat_thread_only_when_asked(
    start: Callable[..., Worker], interval: float | None, threads: int
) -> None:
    """Without heartbeat_interval the worker stays single-threaded (the hot path of today);
    with it, exactly one extra thread runs."""
    w = start(heartbeat_interval=interval)
    w.ready()
    w.call(1, f"{R}:thread_count")
    assert w.result(1) == threads


def test_heartbeat_handoff_under_pipelined_load(start: Callable[..., Worker]) -> None:
    """A heartbeat thread that wakes every millisecond, calls just long enough for it to take
    over, PINGs in between: every call is answered once, in order, and every PING once."""
    w = start(heartbeat_interval=0.004)
    w.ready()
    stream = []
    for i in range(1, 201):
        stream.append(call_frame(i, "time:sleep", 0.003) if i % 2 else call_frame(i, f"{T}:echo", i))
        stream.append(encode_frame(FrameKind.PING, 10_000 + i))
    w.send_raw(b"".join(stream))
    answers: list[int] = []
    pongs: list[int] = []
    while len(answers) < 200 or len(pongs) < 200:
        frame = w.recv(30)
        if frame.kind is FrameKind.PONG:
            pongs.append(frame.call_id)
        else:
            assert frame.kind is FrameKind.RESULT, frame
            expected = None if frame.call_id % 2 else frame.call_id
            assert decode_payload(frame.payload, frame.codec) == expected
            answers.append(frame.call_id)
    assert answers == list(range(1, 201))
    assert sorted(pongs) == list(range(10_001, 10_201))


def test_eof_read_during_a_call_ends_the_worker_after_it(
    start: Callable[..., Worker], gate: Gate, tmp_path: Path
) -> None:
    """EOF read by the heartbeat thread while a call runs: that call still finishes and is
    answered, the calls queued behind it never start, and the worker exits 0."""
    marker = tmp_path / "call-2-ran"
    w = start(heartbeat_interval=HEARTBEAT)
    w.ready()
    w.send_raw(call_frame(1, f"{T}:wait_fifo", gate.path) + call_frame(2, f"{T}:touch", str(marker)))
    assert next_line(w) == "waiting"
    w.send(FrameKind.PING, 1)
    expect_pong(w, 1)  # the heartbeat thread is the one reading now
    w.stdin.close()
    gate.release()
    assert w.result(1) == "go"
    assert w.wait() == 0
    assert not marker.exists()


def test_bad_bytes_read_during_a_call_exit_4_after_it(start: Callable[..., Worker], gate: Gate) -> None:
    """A protocol violation read by the heartbeat thread while a call runs: the call is
    answered, then the worker exits 4 with the diagnostic on stderr, as between calls."""
    w = start(heartbeat_interval=HEARTBEAT)
    w.ready()
    w.call(1, f"{T}:wait_fifo", gate.path)
    assert next_line(w) == "waiting"
    w.send(FrameKind.PING, 1)
    expect_pong(w, 1)
    w.send_raw(b"this is not a poolkit frame at all")
    gate.release()
    assert w.result(1) == "go"
    assert w.wait() == 4
    assert "protocol violation" in w.stderr_text()


@pytest.mark.parametrize("interval", [0, -1, "fast", True])
def test_bad_heartbeat_interval_fails_startup(start: Callable[..., Worker], interval: Any) -> None:
    """A heartbeat_interval that is not a positive number is a startup failure (exit 3)."""
    w = start(heartbeat_interval=interval)
    frame = w.recv()
    assert frame.kind is FrameKind.STARTUP_FAILED
    assert "heartbeat_interval" in json.loads(frame.payload)["message"]
    assert w.wait() == 3
