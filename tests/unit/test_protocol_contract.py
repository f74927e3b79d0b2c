"""What the pool puts on the wire, and what it accepts from a worker, as docs/protocol.md says.

An auditor wrote a worker from the protocol document alone and listed where the document and
the pool disagreed; each disagreement was settled (the document or the pool fixed) and is
pinned here. The tests run the real pool against the bridge's fake workers (real frames, no
processes) through a wire that records every frame the pool sends and may rewrite the frames a
worker sends, so a test can play a worker that differs from poolkit's runtime in one way only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from _util import scaled, wait_until
from poolkit import (
    CallError,
    PayloadTooLarge,
    Phase,
    Pool,
    PoolFailed,
    ProtocolError,
    RemoteError,
    SerializationError,
    TelemetryPolicy,
    WorkerSpec,
    WorkerStartupError,
)
from poolkit import _protocol as proto
from poolkit._transport import Connection
from poolkit.testing import targets
from poolkit.testing._bridge import BridgeLauncher

pytestmark = pytest.mark.anyio

SPEC_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
K = proto.FrameKind

#: What a test does to the frames a worker sends: a frame in, the frames (bytes) to deliver
#: to the pool in its place out.
Rewrite = Callable[[proto.Frame], list[bytes]]

#: No OpenTelemetry, whatever another test configured globally: only subscribers (none unless
#: a test adds one) could consume call events.
NO_OTEL = TelemetryPolicy(traces=False, metrics=False)


class Wire:
    """A :class:`Connection` between the pool and one bridge fake worker: ``sent`` is every
    frame the pool wrote (``raw`` the bytes), and ``rewrite`` changes what the worker says."""

    def __init__(self, conn: Connection, rewrite: Rewrite | None) -> None:
        self._conn = conn
        self._rewrite = rewrite
        self._from_pool = proto.FrameDecoder()
        self._from_worker = proto.FrameDecoder()
        self.sent: list[proto.Frame] = []
        self.raw = b""

    @property
    def pid(self) -> int | None:
        return self._conn.pid

    @property
    def returncode(self) -> int | None:
        return self._conn.returncode

    async def send(self, data: bytes) -> None:
        self.raw += data
        self.sent += self._from_pool.feed(data)
        await self._conn.send(data)

    async def receive(self) -> bytes:
        while True:
            data = await self._conn.receive()
            if not data or self._rewrite is None:
                return data
            frames = self._from_worker.feed(data)
            out = b"".join(chunk for frame in frames for chunk in self._rewrite(frame))
            if out:
                return out

    async def receive_stderr(self) -> bytes:
        return await self._conn.receive_stderr()

    async def wait(self) -> int:
        return await self._conn.wait()

    def terminate(self) -> None:
        self._conn.terminate()

    def kill(self) -> None:
        self._conn.kill()

    async def aclose(self) -> None:
        await self._conn.aclose()


class WireLauncher:
    """Bridge fake workers behind :class:`Wire`s; ``specs`` are the spec arguments the pool gave."""

    def __init__(self, rewrite: Rewrite | None = None) -> None:
        self._bridge = BridgeLauncher()
        self._rewrite = rewrite
        self.specs: list[dict[str, Any]] = []
        self.wires: list[Wire] = []

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
        # Through the JSON text, as a worker process receives it on its command line.
        self.specs.append(json.loads(json.dumps(dict(spec))))
        conn = await self._bridge.launch(
            spec, command=command, python=python, env=env, cwd=cwd, task_group=task_group
        )
        wire = Wire(conn, self._rewrite)
        self.wires.append(wire)
        return wire

    def calls(self) -> list[proto.Frame]:
        return [frame for wire in self.wires for frame in wire.sent if frame.kind is K.CALL]


def rewrite_json(kind: proto.FrameKind, change: Callable[[Any], Any]) -> Rewrite:
    """Replace the JSON payload of every ``kind`` frame the worker sends with ``change(payload)``
    (a timing block, if any, is dropped: a reply without one is valid)."""

    def rewrite(frame: proto.Frame) -> list[bytes]:
        ext = frame.flags & ~0x000F
        if frame.kind is not kind:
            return [proto.encode_frame(frame.kind, frame.call_id, frame.payload, frame.codec, ext)]
        payload = frame.payload
        if ext & proto.FLAG_TIMING:
            _, _, payload = proto.split_timing(payload)
        body = json.dumps(change(json.loads(payload)), separators=(",", ":")).encode()
        return [proto.encode_frame(kind, frame.call_id, body)]

    return rewrite


def documented_spec_members() -> set[str]:
    """The members the table of docs/protocol.md 1.1 describes."""
    text = SPEC_DOC.read_text(encoding="utf-8")
    section = text[text.index("### 1.1 Command line") : text.index("## 2. Frame layout")]
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.MULTILINE))


# --------------------------------------------------------------------------- FLAG_TIMING (2.1)


async def _call(pool: Pool) -> None:
    assert await pool.call(targets.add, 1, 2) == 3


async def _map_auto(pool: Pool) -> None:
    assert [v async for v in pool.map(targets.add, [1, 2], [3, 4])] == [4, 6]


async def _map_fixed(pool: Pool) -> None:
    assert [v async for v in pool.map(targets.add, [1, 2], [3, 4], chunksize=1)] == [4, 6]


async def _call_observed(pool: Pool) -> None:
    unsubscribe = pool.subscribe(lambda event: None)
    try:
        await _call(pool)
    finally:
        unsubscribe()


@pytest.mark.parametrize(
    ("config", "action", "timed", "wall_only"),
    [
        pytest.param({}, _call, True, True, id="default-window-call"),
        pytest.param({}, _map_fixed, True, True, id="default-window-map"),
        pytest.param({}, _call_observed, True, False, id="default-window-call-observed"),
        pytest.param({"pipeline_depth": 2}, _call, False, False, id="fixed-window-call"),
        pytest.param({"pipeline_depth": 2}, _map_fixed, False, False, id="fixed-window-fixed-map"),
        pytest.param({"pipeline_depth": 2}, _map_auto, True, True, id="fixed-window-adaptive-map"),
        pytest.param({"pipeline_depth": 2}, _call_observed, True, False, id="fixed-window-call-observed"),
        pytest.param({"max_pipeline_depth": 8}, _call, True, True, id="larger-maximum-call"),
    ],
)
async def test_when_calls_carry_flag_timing(
    config: dict[str, Any], action: Callable[[Pool], Awaitable[None]], timed: bool, wall_only: bool
) -> None:
    """With no OpenTelemetry SDK and no subscriber, a CALL to a worker announcing "timings"
    still carries FLAG_TIMING whenever the pool itself uses run times: always under the default,
    adaptive pipeline window, and under a fixed window for adaptive map chunks and while call
    events have a consumer (docs/protocol.md 2.1, "When"). Never FLAG_TRACE without an SDK.
    FLAG_WALL_ONLY goes with it exactly when nothing consumes call events, whose CPU time is
    the only use of the worker's CPU clock."""
    launcher = WireLauncher()
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, telemetry=NO_OTEL, **config) as pool:
            await action(pool)
    calls = launcher.calls()
    assert calls
    assert [bool(f.flags & proto.FLAG_TIMING) for f in calls] == [timed] * len(calls)
    assert [bool(f.flags & proto.FLAG_WALL_ONLY) for f in calls] == [wall_only] * len(calls)
    assert not any(f.flags & proto.FLAG_TRACE for f in calls)


async def test_a_worker_without_the_timings_feature_never_gets_flag_timing() -> None:
    """FLAG_TIMING is negotiated: a worker whose READY does not list "timings" never receives
    it, even where every CALL to one that does would carry it."""

    def no_timings(ready: dict[str, Any]) -> dict[str, Any]:
        return {**ready, "features": [f for f in ready["features"] if f != "timings"]}

    launcher = WireLauncher(rewrite_json(K.READY, no_timings))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, telemetry=NO_OTEL) as pool:
            await _call_observed(pool)
            await _map_auto(pool)
    calls = launcher.calls()
    assert calls and not any(f.flags & (proto.FLAG_TIMING | proto.FLAG_WALL_ONLY) for f in calls)


# --------------------------------------------------------------------------- SESSION_END (4.8)


@pytest.mark.parametrize(
    ("key", "payload"),
    [("a", b'{"key":"a"}'), (7, b'{"key":7}'), ("é", '{"key":"é"}'.encode())],
    ids=["str", "int", "non-ascii"],
)
async def test_session_end_payload_is_compact_utf8_json(key: str | int, payload: bytes) -> None:
    """The pool sends SESSION_END's {"key"} as every JSON payload: compact, UTF-8 (no escapes),
    and for key "a" byte for byte the frame of docs/protocol.md 9.3."""
    launcher = WireLauncher()
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1) as pool:
            async with pool.session(key) as session:
                assert await session.call(targets.remember, 1) == [1]
            assert await pool.call(targets.echo, "after") == "after"  # sent after SESSION_END
    (wire,) = launcher.wires
    (end,) = [f for f in wire.sent if f.kind is K.SESSION_END]
    assert (end.call_id, end.flags, end.payload) == (0, 0, payload)
    frame = proto.encode_frame(K.SESSION_END, 0, payload)
    assert frame in wire.raw
    if key == "a":
        dump = frame.hex(" ")
        doc = " ".join(SPEC_DOC.read_text(encoding="utf-8").split())
        assert dump in doc


# --------------------------------------------------------------------------- the spec (1.1)


@pytest.mark.parametrize("import_main", [False, True])
async def test_the_spec_has_only_documented_members(import_main: bool) -> None:
    """Every member of the spec argument is in the table of docs/protocol.md 1.1, and every
    member there is sent: eight always, ``sys_path0`` (and at most one of ``main_module`` /
    ``main_path``, which depend on how the parent was started) with ``import_main``."""
    launcher = WireLauncher()
    worker = WorkerSpec(import_main=import_main)
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, worker=worker) as pool:
            (spec,) = launcher.specs
            assert spec["worker_id"] == pool.workers()[0].id
    documented = documented_spec_members()
    always = documented - {"sys_path0", "main_module", "main_path"}
    assert len(always) == 8
    assert set(spec) <= documented
    if import_main:
        assert always | {"sys_path0"} <= set(spec)
        assert len(set(spec) & {"main_module", "main_path"}) <= 1
    else:
        assert set(spec) == always


# --------------------------------------------------------------------------- READY (4.1)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda ready: {**ready, "worker_id": "someone-else"}, id="another-id"),
        pytest.param(lambda ready: {k: v for k, v in ready.items() if k != "worker_id"}, id="missing"),
    ],
)
async def test_a_ready_that_does_not_echo_the_worker_id_is_a_startup_failure(
    change: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """READY must echo the spec's worker_id: one that names another id, or none, fails the
    worker's startup with a WorkerStartupError saying so, and the worker is killed."""
    launcher = WireLauncher(rewrite_json(K.READY, change))
    pool = Pool(launcher=launcher, min_workers=1, max_startup_failures=1)
    with anyio.fail_after(scaled(10)):
        with pytest.raises(PoolFailed) as info:
            async with pool:
                pass
    cause = info.value.cause
    assert isinstance(cause, WorkerStartupError)
    assert cause.worker_id in [spec["worker_id"] for spec in launcher.specs]
    assert f"not {cause.worker_id!r}" in cause.reason
    assert "must echo the worker_id" in cause.reason
    assert all(wire.returncode is not None for wire in launcher.wires)


async def test_the_pid_in_ready_is_informative_only() -> None:
    """The pool keeps the pid of the process it started, not READY's ``pid``, and stops the
    worker through that process (the bridge's connection): a wrapper's READY may name its child."""
    bogus = 2**31 - 1  # above any pid_max: were it ever signalled, nothing would be hit
    launcher = WireLauncher(rewrite_json(K.READY, lambda ready: {**ready, "pid": bogus}))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, kill_grace=0.1) as pool:
            (wire,) = launcher.wires
            assert wire.pid is not None and wire.pid != bogus
            assert [w.pid for w in pool.statistics().workers] == [wire.pid]
            assert pool.workers()[0].handshake["pid"] == bogus
            with pytest.raises(CallError):
                await pool.call(targets.hang, timeout=0.1)
            assert await wire.wait() < 0  # the process the pool started was signalled


# --------------------------------------------------------------------------- ERROR (4.5)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({}, ("Exception", "", "", Phase.RUNNING), id="empty"),
        pytest.param(
            {"type": "E", "message": "m", "traceback": "tb", "phase": "sideways"},
            ("E", "m", "tb", Phase.RUNNING),
            id="unknown-phase",
        ),
        pytest.param(
            {"type": None, "message": None, "traceback": None, "phase": None},
            ("Exception", "", "", Phase.RUNNING),
            id="nulls",
        ),
        pytest.param(
            {"message": "m", "phase": "resolving"}, ("Exception", "m", "", Phase.SENT), id="no-type"
        ),
    ],
)
async def test_error_members_are_optional_with_documented_defaults(
    body: dict[str, Any], expected: tuple[str, str, str, Phase]
) -> None:
    """An ERROR payload must be a JSON object, but each member may be missing (or null):
    ``type`` reads as "Exception", ``message`` and ``traceback`` as "", and a missing or unknown
    ``phase`` as "running" (docs/protocol.md 4.5). The worker keeps serving."""
    launcher = WireLauncher(rewrite_json(K.ERROR, lambda _: body))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1) as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call(targets.fail, "real message")
            err = info.value
            assert (err.remote_type, err.remote_message, err.remote_traceback, err.phase) == expected
            assert await pool.call(targets.echo, "ok") == "ok"
            assert len(launcher.wires) == 1


async def test_an_error_in_the_decoding_phase_without_a_type_is_a_serialization_error() -> None:
    """The phase alone decides the error class: "decoding" without other members is a
    worker-side SerializationError of a call that never ran."""
    launcher = WireLauncher(rewrite_json(K.ERROR, lambda _: {"phase": "decoding"}))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1) as pool:
            with pytest.raises(SerializationError) as info:
                await pool.call(targets.fail)
    assert info.value.side == "worker" and info.value.phase is Phase.SENT and info.value.retry_safe


async def test_payload_too_large_without_size_and_limit_uses_the_defaults() -> None:
    """A "poolkit.PayloadTooLarge" ERROR whose ``size``/``limit`` are missing or not integers
    still raises PayloadTooLarge: size 0, and the pool's own frame size limit."""
    body = {"type": "poolkit.PayloadTooLarge", "phase": "encoding", "size": "big"}
    launcher = WireLauncher(rewrite_json(K.ERROR, lambda _: body))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, max_frame_size=4096) as pool:
            with pytest.raises(PayloadTooLarge) as info:
                await pool.call(targets.fail)
            assert await pool.call(targets.echo, "ok") == "ok"
    assert (info.value.size, info.value.limit) == (0, 4096)


async def test_an_error_payload_that_is_not_an_object_is_a_protocol_error() -> None:
    """The one requirement on an ERROR payload: a JSON object. Anything else fails the call
    with ProtocolError and the worker is replaced."""
    launcher = WireLauncher(rewrite_json(K.ERROR, lambda _: ["not", "an", "object"]))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1) as pool:
            with pytest.raises(ProtocolError):
                await pool.call(targets.fail)
    assert launcher.wires[0].returncode is not None


# --------------------------------------------------------------------------- replies in one read


def _held_replies(count: int, last: Callable[[proto.Frame], bytes] | None = None) -> Rewrite:
    """Hold a worker's RESULT frames back and deliver them ``count`` at a time, in one read;
    ``last`` replaces the last frame of each read (a worker that breaks the protocol there)."""
    held: list[bytes] = []

    def rewrite(frame: proto.Frame) -> list[bytes]:
        raw = proto.encode_frame(frame.kind, frame.call_id, frame.payload, frame.codec, frame.flags & ~0x000F)
        if frame.kind is not K.RESULT:
            return [raw]
        held.append(raw if last is None or len(held) < count - 1 else last(frame))
        if len(held) < count:
            return []
        out = b"".join(held)
        held.clear()
        return [out]

    return rewrite


async def _gather(pool: Pool, values: list[int]) -> list[Any]:
    results: list[Any] = [None] * len(values)

    async def one(i: int) -> None:
        try:
            results[i] = await pool.call(targets.echo, values[i])
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(values)):
            tg.start_soon(one, i)
    return results


async def test_replies_that_arrive_in_one_read_end_every_call_and_report_capacity_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several replies in one read each end their call, in order, and the worker's room is
    reported to the pool once for the read, not once per reply (docs/performance.md item 22):
    one scheduler update and one dispatch for the batch."""
    launcher = WireLauncher(_held_replies(2))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, max_workers=1, pipeline_depth=2) as pool:
            reports: list[int] = []
            report = pool.worker_capacity

            def counted(worker: Any) -> None:
                reports.append(worker.load)
                report(worker)

            monkeypatch.setattr(pool, "worker_capacity", counted)
            assert await _gather(pool, [1, 2, 3, 4]) == [1, 2, 3, 4]
    # Four replies in two reads: two reports, each after both of its replies (nothing left).
    assert reports == [0, 0]


async def test_a_bad_reply_after_a_good_one_in_the_same_read_fails_only_its_own_call() -> None:
    """A read that holds a genuine reply and then one for a call that is not running (replies
    must come in order): the call of the genuine reply gets its result, the other fails with
    ProtocolError and the worker is replaced."""

    def stray(frame: proto.Frame) -> bytes:
        return proto.encode_frame(K.RESULT, frame.call_id + 100, frame.payload, frame.codec)

    launcher = WireLauncher(_held_replies(2, last=stray))
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, max_workers=1, pipeline_depth=2) as pool:
            results = await _gather(pool, [1, 2])
            await wait_until(lambda: launcher.wires[0].returncode is not None, scaled(5), "worker gone")
    # (Which caller's call went first is up to the event loop: trio may start them either way.)
    errors = [r for r in results if isinstance(r, ProtocolError)]
    assert len(errors) == 1, results
    assert "replies must come in order" in str(errors[0])
    assert [r for r in results if r not in errors] in ([1], [2])


async def test_a_reply_whose_timing_block_is_short_is_a_protocol_error() -> None:
    """FLAG_TIMING on a reply promises a 16-byte block before the payload (docs/protocol.md
    2.1); a body shorter than that fails the call with ProtocolError and the worker goes."""

    def short(frame: proto.Frame) -> list[bytes]:
        if frame.kind is not K.RESULT:
            return [
                proto.encode_frame(
                    frame.kind, frame.call_id, frame.payload, frame.codec, frame.flags & ~0x000F
                )
            ]
        return [proto.encode_frame(K.RESULT, frame.call_id, b"1", proto.Codec.JSON, proto.FLAG_TIMING)]

    launcher = WireLauncher(short)
    with anyio.fail_after(scaled(10)):
        async with Pool(launcher=launcher, min_workers=1, telemetry=NO_OTEL) as pool:
            with pytest.raises(ProtocolError, match="FLAG_TIMING set, but the body has only 1 bytes"):
                await pool.call(targets.echo, 1)
            await wait_until(lambda: launcher.wires[0].returncode is not None, scaled(5), "worker gone")
