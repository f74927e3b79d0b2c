"""The bridge layer's fake worker on its own: the test plays the parent, frame by frame.

It must behave as the real runtime does (tests/integration/test_worker_runtime.py pins that
down): PING answered even while an async call awaits, answers in CALL order, CANCEL honoured
for queued calls, per-key sessions ended by SESSION_END; plus the test controls the real
runtime has no use for: ``conn.rss`` and ``freeze()``/``thaw()``. Silence is checked after
``anyio.wait_all_tasks_blocked()``: every task has had its chance to answer, no clock involved.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from _util import scaled
from integration import _runtime_targets
from poolkit._protocol import (
    Codec,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_payload,
    encode_frame,
    encode_payload,
)
from poolkit.testing._bridge import DEFAULT_FAKE_RSS, BridgeLauncher, _MemoryConnection
from unit._targets import RUNS, new_gate

pytestmark = pytest.mark.anyio

U = "unit._targets"
R = "integration._runtime_targets"


class Parent:
    """The parent's end of one fake worker: send frames, receive them with a deadline."""

    def __init__(self, conn: _MemoryConnection) -> None:
        self.conn = conn
        self.decoder = FrameDecoder()
        self.frames: deque[Frame] = deque()

    async def send(self, *frames: bytes) -> None:
        await self.conn.send(b"".join(frames))

    async def recv(self, timeout: float = 5) -> Frame:
        with anyio.fail_after(scaled(timeout)):
            while not self.frames:
                data = await self.conn.receive()
                if not data:
                    raise EOFError("the fake worker closed its output")
                self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    async def result(self, call_id: int) -> Any:
        frame = await self.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.RESULT, call_id), frame
        return decode_payload(frame.payload, frame.codec)

    async def pong(self, call_id: int) -> dict[str, Any]:
        await self.send(encode_frame(FrameKind.PING, call_id))
        frame = await self.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.PONG, call_id), frame
        body: dict[str, Any] = json.loads(frame.payload)
        return body

    async def assert_silent(self) -> None:
        """Once every task is blocked, nothing has come from the worker."""
        await anyio.wait_all_tasks_blocked()
        assert not self.frames
        with pytest.raises(anyio.WouldBlock):
            self.conn._to_parent_rx.receive_nowait()


def call(call_id: int, target: str, *args: Any, session: str | int | None = None) -> bytes:
    body: list[Any] = [target, list(args), {}]
    if session is not None:
        body.append(session)
    return encode_frame(FrameKind.CALL, call_id, encode_payload(body, Codec.JSON))


def session_end(key: str | int) -> bytes:
    return encode_frame(FrameKind.SESSION_END, 0, json.dumps({"key": key}).encode())


@asynccontextmanager
async def fake_worker(**spec: Any) -> AsyncIterator[Parent]:
    """One fake worker, READY already received; killed and its streams closed at the end."""
    launcher = BridgeLauncher()
    async with anyio.create_task_group() as tg:
        conn = await launcher.launch(
            {"worker_id": "b1", **spec}, command=None, python="python", env={}, cwd=None, task_group=tg
        )
        assert isinstance(conn, _MemoryConnection)
        parent = Parent(conn)
        try:
            assert (await parent.recv()).kind is FrameKind.READY
            yield parent
        finally:
            conn.kill()
            await conn.aclose()


async def test_ping_answered_while_an_async_call_awaits() -> None:
    """An async target that awaits does not silence the fake worker: PING gets its PONG at
    once, and a CANCEL sent meanwhile still skips the call queued behind; answers stay in
    CALL order."""
    gate = new_gate("a")
    async with fake_worker() as parent:
        await parent.send(call(1, f"{U}:wait_for", "a", "one"), call(2, f"{U}:record", "r2"))
        await gate.entered.wait()
        assert await parent.pong(10) == {"rss": DEFAULT_FAKE_RSS}
        await parent.send(encode_frame(FrameKind.CANCEL, 2), call(3, f"{U}:echo", 3))
        assert await parent.pong(11) == {"rss": DEFAULT_FAKE_RSS}
        gate.release.set()
        assert await parent.result(1) == "one"
        frame = await parent.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.CANCELLED, 2)
        assert await parent.result(3) == 3
    assert RUNS["r2"] == 0


async def test_cancel_behind_a_call_in_the_same_chunk_skips_it() -> None:
    """CANCEL arriving right behind its CALL (the worker idle) skips the call, as in the
    real runtime, which reads what has arrived before starting a call."""
    async with fake_worker() as parent:
        await parent.send(
            call(1, f"{U}:record", "r1"), encode_frame(FrameKind.CANCEL, 1), call(2, f"{U}:add", 1, 1)
        )
        frame = await parent.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.CANCELLED, 1)
        assert await parent.result(2) == 2
    assert RUNS["r1"] == 0


async def test_pong_reports_the_settable_rss() -> None:
    """PONG carries {"rss": conn.rss}: a test raises it to simulate a worker growing."""
    async with fake_worker() as parent:
        assert await parent.pong(1) == {"rss": DEFAULT_FAKE_RSS}
        parent.conn.rss = 900 * 1024 * 1024
        assert await parent.pong(2) == {"rss": 900 * 1024 * 1024}


async def test_frozen_worker_answers_nothing_until_thawed() -> None:
    """A frozen fake worker (as under SIGSTOP) neither answers PING nor runs calls; thawed,
    it answers everything that was sent meanwhile."""
    async with fake_worker() as parent:
        parent.conn.freeze()
        await parent.send(encode_frame(FrameKind.PING, 1), call(2, f"{U}:echo", "hi"))
        await parent.assert_silent()
        parent.conn.thaw()
        frame = await parent.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.PONG, 1)
        assert await parent.result(2) == "hi"


async def test_freeze_holds_back_the_answer_of_a_running_call() -> None:
    """Frozen while an async call awaits: the call may finish in the event loop, but its
    RESULT (like everything the worker writes) arrives only after thaw()."""
    gate = new_gate("a")
    async with fake_worker() as parent:
        await parent.send(call(1, f"{U}:wait_for", "a", "done"))
        await gate.entered.wait()
        parent.conn.freeze()
        gate.release.set()
        await parent.send(encode_frame(FrameKind.PING, 2))
        await parent.assert_silent()
        parent.conn.thaw()
        assert await parent.result(1) == "done"
        frame = await parent.recv()
        assert (frame.kind, frame.call_id) == (FrameKind.PONG, 2)


async def test_sigterm_waits_for_thaw_sigkill_does_not() -> None:
    """terminate() of a frozen fake worker takes effect when it is thawed (a stopped process
    gets SIGTERM on SIGCONT); kill() ends it at once."""
    async with fake_worker() as parent:
        conn = parent.conn
        conn.freeze()
        conn.terminate()
        await anyio.wait_all_tasks_blocked()
        assert conn.returncode is None
        conn.thaw()
        with anyio.fail_after(scaled(5)):
            assert await conn.wait() == -15
    async with fake_worker() as parent:
        parent.conn.freeze()
        parent.conn.kill()
        with anyio.fail_after(scaled(5)):
            assert await parent.conn.wait() == -9


async def test_session_state_persists_per_key() -> None:
    """A CALL with a session key (str or int) gets ``session=``, a poolkit.worker.Session, one
    per key: its state and ``calls`` count persist across that key's calls only."""
    async with fake_worker() as parent:
        await parent.send(
            call(1, f"{R}:remember", "a1", session="a"),
            call(2, f"{R}:remember", "x", session=7),
            call(3, f"{R}:remember", "a2", session="a"),
            call(4, f"{R}:remember", "no session"),
        )
        assert await parent.result(1) == [1, ["a1"]]
        assert await parent.result(2) == [1, ["x"]]
        assert await parent.result(3) == [2, ["a1", "a2"]]
        frame = await parent.recv()  # no session key: no session= argument
        assert (frame.kind, frame.call_id) == (FrameKind.ERROR, 4)
        assert "session" in json.loads(frame.payload)["message"]


async def test_session_end_drops_state_and_runs_on_close() -> None:
    """SESSION_END takes effect in its place among the calls: the session's on_close callbacks
    run newest first (one raising is reported on stderr; the rest still run), the next call
    with the key gets a new Session; other keys and unknown keys are unaffected."""
    _runtime_targets.CLOSED.clear()
    async with fake_worker() as parent:
        await parent.send(
            call(1, f"{R}:remember", "a1", session="a"),
            call(2, f"{R}:remember", "b1", session=7),
            call(3, f"{R}:close_noisily", session="a"),
            session_end("a"),
            session_end("never-seen"),
            call(4, f"{R}:remember", "a2", session="a"),
            call(5, f"{R}:remember", "b2", session=7),
        )
        assert [await parent.result(i) for i in (1, 2)] == [[1, ["a1"]], [1, ["b1"]]]
        assert await parent.result(3) == "Session(key='a', calls=2)"
        assert [await parent.result(i) for i in (4, 5)] == [[1, ["a2"]], [2, ["b1", "b2"]]]
        assert _runtime_targets.CLOSED == ["closed a last-registered", "closed a first-registered"]
        with anyio.fail_after(scaled(5)):
            stderr = (await parent.conn.receive_stderr()).decode()
        assert "RuntimeError: on_close failure for a" in stderr


async def test_shutdown_closes_live_sessions() -> None:
    """SHUTDOWN after the calls: sessions still open end with the worker (on_close runs), exit 0."""
    _runtime_targets.CLOSED.clear()
    async with fake_worker() as parent:
        await parent.send(call(1, f"{R}:close_noisily", session="x"), encode_frame(FrameKind.SHUTDOWN, 0))
        assert await parent.result(1) == "Session(key='x', calls=1)"
        with anyio.fail_after(scaled(5)):
            assert await parent.conn.wait() == 0
    assert _runtime_targets.CLOSED == ["closed x last-registered", "closed x first-registered"]


REFUSED = "is not a callable target: names starting with '_' and the setup/teardown hooks are not"
COLON_HINT = "did you mean 'math:factorial'? (targets are \"module:function\")"


async def error(parent: Parent, call_id: int) -> dict[str, Any]:
    frame = await parent.recv()
    assert (frame.kind, frame.call_id) == (FrameKind.ERROR, call_id), frame
    body: dict[str, Any] = json.loads(frame.payload)
    return body


@pytest.mark.parametrize("name", ["setup", "teardown", "__class__", "__init__", "_private", "incr.__func__"])
async def test_handler_hooks_and_private_names_are_refused(name: str) -> None:
    """As in the runtime: the handler's setup/teardown hooks and names starting with "_" are
    an AttributeError with phase resolving, and the worker serves on."""
    async with fake_worker(handler="integration._targets:Counter") as parent:
        await parent.send(call(1, name), call(2, "was_set_up"))
        err = await error(parent, 1)
        assert (err["type"], err["phase"]) == ("builtins.AttributeError", "resolving")
        assert err["message"] == f"handler method {name!r} {REFUSED}"
        assert await parent.result(2) is True


@pytest.mark.parametrize(
    ("handler", "target", "expected_type", "hint"),
    [
        (None, "math.factorial", "builtins.LookupError", True),
        (None, "incr", "builtins.LookupError", False),
        ("integration._targets:Counter", "math.factorial", "builtins.AttributeError", True),
    ],
)
async def test_dotted_target_hints_at_module_colon_function(
    handler: str | None, target: str, expected_type: str, hint: bool
) -> None:
    """As in the runtime: a dotted name that fails as a handler method suggests 'math:factorial'."""
    async with fake_worker(handler=handler) as parent:
        await parent.send(call(1, target, 5))
        err = await error(parent, 1)
        assert (err["type"], err["phase"]) == (expected_type, "resolving")
        assert err["message"].endswith(COLON_HINT) is hint


async def test_eof_during_a_call_finishes_it_and_starts_no_other() -> None:
    """EOF while a call runs (the parent closed its end): the running call finishes, the calls
    queued behind it never start, and the worker exits 0, as the real runtime does."""
    gate = new_gate("a")
    async with fake_worker() as parent:
        await parent.send(call(1, f"{U}:wait_for", "a", "one"), call(2, f"{U}:record", "r2"))
        await gate.entered.wait()
        await parent.conn.aclose()
        await anyio.wait_all_tasks_blocked()
        gate.release.set()
        with anyio.fail_after(scaled(5)):
            assert await parent.conn.wait() == 0
    assert RUNS["r2"] == 0
