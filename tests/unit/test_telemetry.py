"""Telemetry on the in-process layers, on asyncio and trio: the mock layer (scripted workers)
and the bridge layer (fake workers speaking the real protocol, with trace context and timings).

What is checked: the event stream's lifecycle and call records; that an unobserved pool builds
no call events and sends no frame extensions; ``pool.events()``; OpenTelemetry spans and
metrics recorded through the SDK's in-memory exporter and reader passed to the pool (never the
global providers, which other tests would see); and the structlog / stdlib logging sink.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import structlog
import structlog.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import poolkit._pool
import poolkit._protocol as proto
import poolkit.testing._bridge
from _util import scaled
from integration._otel_worker import current_trace
from poolkit import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    CallRetried,
    CallTimeout,
    Event,
    EventStreamOverflow,
    FailureKind,
    Pool,
    PoolClosing,
    PoolStarted,
    PoolStopped,
    QueueFull,
    QueueSaturated,
    RemoteError,
    SessionEnded,
    SessionExpired,
    WorkerCrashed,
    WorkerExited,
    WorkerReady,
    WorkerRecycled,
    WorkerSpawned,
    WorkerState,
)
from poolkit._events import CALL_EVENTS
from poolkit.testing import BridgeLauncher, FaultInjector, ManualClock, MockScript, wait_until
from poolkit.testing import targets as T
from unit._targets import (
    Gate,
    Outcome,
    add,
    boom,
    crash_exit,
    crash_segv,
    hang,
    new_gate,
    wait_for,
    wait_then_crash,
)

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=Event)


# --------------------------------------------------------------------------- fixtures, helpers
@pytest.fixture(params=["mock", "bridge"])
def layer(request: pytest.FixtureRequest) -> str:
    """The in-process layers: scripted mock workers, and bridge workers speaking the protocol."""
    value: str = request.param
    return value


def make_pool(layer: str, *, clock: ManualClock | None = None, **fields: Any) -> Pool:
    """One worker on ``layer`` unless told otherwise, a manual clock (nothing time-based happens
    unless the test advances it), no heartbeats, retries without backoff, a seeded rng.
    ``tracer_provider`` / ``meter_provider`` pass through to the pool."""
    fields.setdefault("min_workers", 1)
    fields.setdefault("heartbeat_interval", None)
    fields.setdefault("retry", {"backoff_initial": 0.0})
    common: dict[str, Any] = {"clock": clock or ManualClock(), "rng": random.Random(0)}
    if layer == "mock":
        return Pool(worker_factory=MockScript().factory(), **common, **fields)
    return Pool(launcher=BridgeLauncher(), **common, **fields)


class Recorder:
    """Every event the pool emits from now on, in order."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[Event] = []
        pool.subscribe(self.events.append)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def index(self, event: Event) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)


def calls_on(pool: Pool) -> bool:
    """Does ``pool`` build call events now (Telemetry.calls)?"""
    return pool._tel.calls


async def hold(pool: Pool, tg: anyio.abc.TaskGroup, key: str) -> tuple[Gate, Outcome]:
    """Start a call that runs until the test releases ``key``'s gate; return once it runs."""
    gate = new_gate(key)
    outcome = Outcome()
    tg.start_soon(outcome.capture, pool.call, wait_for, key, key)
    await gate.entered.wait()
    return gate, outcome


async def tick(pool: Pool, clock: ManualClock, seconds: float) -> None:
    """Advance the pool's clock and wait until its housekeeper has done that round and sleeps
    again (until a time still to come)."""
    clock.advance(seconds)
    with anyio.fail_after(scaled(5)):
        while True:
            sleep = pool._sleep
            if sleep is not None and sleep[1] > clock.now():
                return
            await anyio.lowlevel.checkpoint()


@dataclasses.dataclass
class Traces:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def calls(self) -> list[ReadableSpan]:
        """The finished ``poolkit.call`` spans, in the order they ended."""
        return [s for s in self.exporter.get_finished_spans() if s.name == "poolkit.call"]


@pytest.fixture
def traces() -> Iterator[Traces]:
    """An SDK tracer provider of the test's own, exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Traces(provider, exporter)
    provider.shutdown()


@dataclasses.dataclass
class Metrics:
    provider: MeterProvider
    reader: InMemoryMetricReader

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (collects now: gauges read the pools now)."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def value(self, name: str, **attributes: Any) -> Any:
        """The value (counter, gauge) or count (histogram) of ``name`` summed over the points
        whose attributes include ``attributes`` (keys with dots spelled with ``__``)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        total = 0
        for point in self.points(name):
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """An SDK meter provider of the test's own, read in memory."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Metrics(provider, reader)
    provider.shutdown()


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog entries captured while the test runs; structlog's defaults restored after
    (capture_logs leaves structlog "configured", which would reroute later tests' logs)."""
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.reset_defaults()


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """The default for a library user: structlog never configured."""
    structlog.reset_defaults()
    assert not structlog.is_configured()
    yield
    structlog.reset_defaults()


# --------------------------------------------------------------------------- lifecycle events
async def test_pool_started_closing_stopped_are_emitted_once_each(layer: str) -> None:
    """PoolStarted (with the ready workers), PoolClosing and PoolStopped (with the call totals)
    each come exactly once, in that order, and PoolStopped is the pool's last event."""
    pool = make_pool(layer, min_workers=2)
    rec = Recorder(pool)
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 2) == 3
            with pytest.raises(RemoteError):
                await pool.call(boom)
    (started,) = rec.of(PoolStarted)
    (closing,) = rec.of(PoolClosing)
    (stopped,) = rec.of(PoolStopped)
    assert started.workers == 2 and started.duration >= 0
    assert (closing.drain, closing.queued, closing.in_flight) == (True, 0, 0)
    assert (stopped.completed, stopped.failed) == (1, 1)
    assert stopped.duration >= 0 and started.pool == closing.pool == stopped.pool == pool.name
    assert rec.index(started) < rec.index(closing) < rec.index(stopped) == len(rec.events) - 1


async def test_each_worker_is_spawned_for_start_and_reports_ready(layer: str) -> None:
    """Each starting worker gets WorkerSpawned(reason="start") and then WorkerReady, both with
    its id and pid, and the ready event comes before PoolStarted."""
    pool = make_pool(layer, min_workers=2)
    rec = Recorder(pool)
    with anyio.fail_after(scaled(10)):
        async with pool:
            ids = {w.id: w.pid for w in pool.workers()}
    spawned = rec.of(WorkerSpawned)
    ready = rec.of(WorkerReady)
    assert len(ids) == 2
    assert sorted((e.worker_id, e.pid, e.reason) for e in spawned) == sorted(
        (wid, pid, "start") for wid, pid in ids.items()
    )
    assert sorted((e.worker_id, e.pid) for e in ready) == sorted(ids.items())
    (started,) = rec.of(PoolStarted)
    for s, r in zip(
        sorted(spawned, key=lambda e: e.worker_id), sorted(ready, key=lambda e: e.worker_id), strict=True
    ):
        assert rec.index(s) < rec.index(r) < rec.index(started)
        assert r.startup >= 0


async def test_bridge_workers_announce_trace_context_and_timings() -> None:
    """A worker speaking the real protocol announces the telemetry extensions in READY, and
    WorkerReady carries them (the mock layer has no handshake features to announce)."""
    pool = make_pool("bridge")
    rec = Recorder(pool)
    with anyio.fail_after(scaled(10)):
        async with pool:
            pass
    (ready,) = rec.of(WorkerReady)
    assert {"trace_context", "timings"} <= set(ready.features)


@pytest.mark.parametrize(
    ("target", "returncode", "exit_code", "signal", "cause"),
    [(crash_segv, -11, None, 11, "segfault"), (crash_exit, 1, 1, None, "exit")],
    ids=["segfault", "exit1"],
)
async def test_crashed_worker_exit_is_classified_and_replaced(
    layer: str,
    target: Callable[[], None],
    returncode: int,
    exit_code: int | None,
    signal: int | None,
    cause: str,
) -> None:
    """A worker that dies mid-call: WorkerExited carries its returncode split into exit code or
    signal, the cause, failure CRASHED and expected=False; then a WorkerSpawned(reason="replace")
    and a WorkerReady for its replacement follow."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            (crashed,) = pool.workers()
            with pytest.raises(WorkerCrashed):
                await pool.call(target)
            await wait_until(lambda: bool(rec.of(WorkerReady)), pool=pool, describe="a replacement ready")
            (exited,) = rec.of(WorkerExited)
            (spawned,) = rec.of(WorkerSpawned)
            (ready,) = rec.of(WorkerReady)
    assert (exited.worker_id, exited.pid) == (crashed.id, crashed.pid)
    assert (exited.returncode, exited.exit_code, exited.signal) == (returncode, exit_code, signal)
    assert (exited.cause, exited.failure, exited.expected) == (cause, FailureKind.CRASHED, False)
    assert exited.reason == "exited"  # on its own: the pool did not kill it
    assert spawned.reason == "replace" and spawned.worker_id != crashed.id
    assert ready.worker_id == spawned.worker_id
    assert rec.index(exited) < rec.index(spawned) < rec.index(ready)


async def test_recycle_all_spawns_replacements_with_reason_recycle(layer: str) -> None:
    """recycle_all(): WorkerRecycled(reason="generation") for the old worker, a replacement
    spawned with reason "recycle", and the old worker's exit is expected, with no failure."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            (old,) = pool.workers()
            pool.recycle_all()
            await wait_until(
                lambda: bool(rec.of(WorkerReady)) and bool(rec.of(WorkerExited)),
                pool=pool,
                describe="the old worker gone and its replacement ready",
            )
    (recycled,) = rec.of(WorkerRecycled)
    assert (recycled.worker_id, recycled.reason) == (old.id, "generation")
    assert [(e.reason, e.worker_id != old.id) for e in rec.of(WorkerSpawned)] == [("recycle", True)]
    (exited,) = [e for e in rec.of(WorkerExited) if e.worker_id == old.id]
    assert (exited.expected, exited.failure, exited.reason) == (True, None, "stopped")


async def test_max_calls_recycles_with_reason_calls(layer: str) -> None:
    """recycle.max_calls=1: after one call the worker is recycled (reason "calls") and its
    replacement is spawned with reason "recycle"."""
    pool = make_pool(layer, recycle={"max_calls": 1})
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            (old,) = pool.workers()
            assert await pool.call(add, 2, 3) == 5
            await wait_until(lambda: bool(rec.of(WorkerReady)), pool=pool, describe="the replacement ready")
    assert [(e.worker_id, e.reason) for e in rec.of(WorkerRecycled)][:1] == [(old.id, "calls")]
    assert rec.of(WorkerSpawned)[0].reason == "recycle"


async def test_a_worker_killed_for_a_timed_out_call_says_why_and_is_replaced(layer: str) -> None:
    """To stop a call past its deadline the pool kills its worker: WorkerExited carries the
    kill's reason (not "exited" or "stopped") and the signal, and the replacement is spawned
    with reason "replace"."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            (killed,) = pool.workers()
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
            await wait_until(lambda: bool(rec.of(WorkerReady)), pool=pool, describe="a replacement ready")
    (exited,) = [e for e in rec.of(WorkerExited) if e.worker_id == killed.id]
    assert "timed out" in exited.reason
    assert exited.signal is not None and exited.exit_code is None
    assert [e.reason for e in rec.of(WorkerSpawned)] == ["replace"]


async def test_calls_queueing_beyond_min_workers_spawn_with_reason_scale_up(layer: str) -> None:
    """With max_workers > min_workers, a call that queues behind a busy worker makes the pool
    spawn a worker with reason "scale_up", which serves it."""
    pool = make_pool(layer, min_workers=1, max_workers=2, pipeline_depth=1)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            async with anyio.create_task_group() as tg:
                gate, _ = await hold(pool, tg, "busy")
                assert await pool.call(add, 1, 1) == 2
                gate.release.set()
    (spawned,) = rec.of(WorkerSpawned)
    assert spawned.reason == "scale_up"
    (done,) = [e for e in rec.of(CallCompleted) if e.target.endswith(":add")]
    assert done.worker_id == spawned.worker_id


async def test_queue_saturated_once_per_episode_when_callers_wait(layer: str) -> None:
    """queue_policy="wait": the first admission that finds the queue full emits QueueSaturated
    (depth, limit, policy); callers arriving while it stays full emit nothing more; after an
    admission finds room again, the next saturation is a new episode with its own event."""
    pool = make_pool(layer, max_queue=1, pipeline_depth=1)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            for episode in (1, 2):
                async with anyio.create_task_group() as tg:
                    gate, _ = await hold(pool, tg, f"hold-{episode}")
                    tg.start_soon(pool.call, add, 0, 0)  # queued: the queue has room for one
                    await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="one queued")
                    for i in range(3):  # each finds the queue full and waits
                        tg.start_soon(pool.call, add, i, i)
                    await wait_until(
                        lambda: pool.statistics().waiting == 3, pool=pool, describe="three callers waiting"
                    )
                    assert len(rec.of(QueueSaturated)) == episode
                    gate.release.set()
                assert await pool.call(add, 1, 1) == 2  # admitted with room: the episode is over
    saturated = rec.of(QueueSaturated)
    assert [(s.depth, s.limit, s.policy, s.pool) for s in saturated] == [(1, 1, "wait", pool.name)] * 2


async def test_queue_saturated_once_per_episode_when_calls_are_rejected(layer: str) -> None:
    """queue_policy="reject": every refused call raises QueueFull, but only the first of an
    episode emits QueueSaturated; once a call is admitted with room, the next refusal emits
    again."""
    pool = make_pool(layer, max_queue=1, pipeline_depth=1, queue_policy="reject")
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            for episode in (1, 2):
                async with anyio.create_task_group() as tg:
                    gate, _ = await hold(pool, tg, f"hold-{episode}")
                    tg.start_soon(pool.call, add, 0, 0)
                    await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="one queued")
                    for i in range(3):
                        with pytest.raises(QueueFull):
                            await pool.call(add, i, i)
                    assert len(rec.of(QueueSaturated)) == episode
                    gate.release.set()
                assert await pool.call(add, 1, 1) == 2
    assert [(s.depth, s.limit, s.policy) for s in rec.of(QueueSaturated)] == [(1, 1, "reject")] * 2


async def test_dispatch_reports_the_attempt_and_its_queue_wait(layer: str) -> None:
    """CallDispatched.queue_wait is the time from CallQueued to the dispatch (for a call that
    waited behind a busy worker: at least until that worker's call was let go), and attempt is 1
    for a first attempt."""
    pool = make_pool(layer, pipeline_depth=1)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            async with anyio.create_task_group() as tg:
                gate, _ = await hold(pool, tg, "first")
                waiting = Outcome()
                tg.start_soon(waiting.capture, pool.call, add, 1, 2)
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="one queued")
                released_at = anyio.current_time()
                gate.release.set()
            assert waiting.value == 3
    queued = {e.call: e for e in rec.of(CallQueued)}
    first, second = rec.of(CallDispatched)
    for d in (first, second):
        assert d.attempt == 1
        assert d.queue_wait == pytest.approx(d.at - queued[d.call].at)
    # the second call waited (at least) until the first one was let go
    assert second.target.endswith(":add")
    assert second.queue_wait >= released_at - queued[second.call].at > 0


async def test_completed_and_failed_calls_carry_the_workers_timings(layer: str) -> None:
    """The worker's own timings come back: CallCompleted and CallFailed (an error the worker
    answered) carry run_time and cpu_time, and the run time fits in the caller's duration."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            assert await pool.call(add, 2, 2) == 4
            with pytest.raises(RemoteError):
                await pool.call(boom)
    (done,) = rec.of(CallCompleted)
    (failed,) = rec.of(CallFailed)
    for event in (done, failed):
        assert event.run_time is not None and event.cpu_time is not None
        assert 0 <= event.run_time <= event.duration
        assert event.cpu_time >= 0


async def test_a_worker_without_the_features_gets_no_extensions(
    monkeypatch: pytest.MonkeyPatch, traces: Traces
) -> None:
    """A worker whose READY does not list "timings" / "trace_context" is sent plain CALL
    frames: its calls have no run_time or cpu_time, and no trace context, even while a
    subscriber and a tracer are recording."""
    monkeypatch.setattr(poolkit.testing._bridge, "FEATURES", ("session_end", "pong_rss"))
    pool = make_pool("bridge", tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            (worker,) = pool.workers()
            assert worker.extensions == 0
            assert await pool.call(current_trace) is None
    (done,) = rec.of(CallCompleted)
    assert (done.run_time, done.cpu_time) == (None, None)
    (span,) = traces.calls()
    assert span.attributes is not None and "poolkit.worker.run_time" not in span.attributes


async def test_idempotent_call_whose_worker_crashed_is_retried_as_attempt_two(layer: str) -> None:
    """An idempotent call whose worker crashes mid-run: CallRetried(attempt=2, kind=CRASHED)
    names the crashed worker, the retry is dispatched as attempt 2 elsewhere, and the call ends
    with one CallCompleted(attempt=2) and no CallFailed."""
    pool = make_pool(layer, min_workers=2, pipeline_depth=1)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            gate = new_gate("k")
            outcome = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(outcome.capture, lambda: pool.call(wait_for, "k", "done", idempotent=True))
                await gate.entered.wait()
                (busy,) = [w for w in pool.workers() if w.load]
                await FaultInjector(pool).crash(busy, how="segfault")
                gate.release.set()
            assert outcome.value == "done", outcome.error
    (retried,) = rec.of(CallRetried)
    assert (retried.attempt, retried.kind, retried.worker_id) == (2, FailureKind.CRASHED, busy.id)
    dispatched = rec.of(CallDispatched)
    assert [d.attempt for d in dispatched] == [1, 2]
    assert dispatched[1].worker_id != busy.id
    (done,) = rec.of(CallCompleted)
    assert (done.attempt, done.call) == (2, retried.call)
    assert rec.index(retried) < rec.index(dispatched[1]) < rec.index(done)
    assert rec.of(CallFailed) == []


async def test_idle_session_past_its_ttl_emits_session_expired(layer: str) -> None:
    """A session idle past sessions.ttl is dropped with SessionExpired (its key, its worker,
    how long it was idle on the pool's clock), not SessionEnded, which is for sessions their
    user ended."""
    clock = ManualClock()
    pool = make_pool(layer, clock=clock, sessions={"ttl": 5.0})
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            assert await pool.call(T.remember, 1, session="s1") == [1]
            (worker,) = pool.workers()
            await tick(pool, clock, 6.0)
            await wait_until(
                lambda: pool.statistics().sessions == 0, pool=pool, describe="the session expired"
            )
            (expired,) = rec.of(SessionExpired)
    assert (expired.key, expired.worker_id) == ("s1", worker.id)
    assert expired.idle == pytest.approx(6.0)
    assert rec.of(SessionEnded) == []


# --------------------------------------------------------------------------- zero cost
def _count_constructors(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap every call-event class the pool module builds with a counter of constructions."""
    built: dict[str, int] = {}
    for cls in CALL_EVENTS:
        name = cls.__name__
        built[name] = 0

        def counting(*args: Any, _cls: type[Event] = cls, **kwargs: Any) -> Event:
            built[_cls.__name__] += 1
            return _cls(*args, **kwargs)

        monkeypatch.setattr(poolkit._pool, name, counting)
    return built


def _spy_call_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The flags of every CALL frame encoded from now on."""
    seen: list[int] = []
    real = proto.encode_frame

    def spy(
        kind: int,
        call_id: int,
        payload: bytes = b"",
        codec: int = proto.Codec.JSON,
        flags: int = 0,
        blocks: bytes = b"",
    ) -> bytes:
        if kind == proto.FrameKind.CALL:
            seen.append(flags)
        return real(kind, call_id, payload, codec, flags, blocks)

    monkeypatch.setattr(proto, "encode_frame", spy)
    return seen


async def test_an_unobserved_pool_builds_no_call_events(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no subscriber, no OpenTelemetry SDK and log_calls off, the pool's call path builds
    no call event at all: successes, errors, timeouts and crash retries alike."""
    built = _count_constructors(monkeypatch)
    pool = make_pool(layer, min_workers=2)
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert pool._tel.traces is None and pool._tel.metrics is None
            assert not calls_on(pool)
            assert await pool.call(add, 1, 2) == 3
            with pytest.raises(RemoteError):
                await pool.call(boom)
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
            assert await pool.call(T.remember, "s", session="key") == ["s"]
    assert built == dict.fromkeys(built, 0)


async def test_subscribing_turns_call_events_and_extensions_on_and_unsubscribing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unobserved, a CALL frame carries no header extension and no event is built; a
    subscriber turns both on (FLAG_TIMING, CallQueued...), its unsubscribe turns them off.
    (The adaptive pipeline window asks for FLAG_TIMING on its own: turned off here.)"""
    built = _count_constructors(monkeypatch)
    flags = _spy_call_frames(monkeypatch)
    pool = make_pool("bridge", pipeline_depth=2, max_pipeline_depth=2)
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 1) == 2
            assert not calls_on(pool) and flags == [0] and sum(built.values()) == 0

            seen: list[Event] = []
            unsubscribe = pool.subscribe(seen.append)
            assert calls_on(pool)
            assert await pool.call(add, 2, 2) == 4
            assert flags[1] & proto.FLAG_TIMING and not flags[1] & proto.FLAG_TRACE  # no tracer here
            assert built["CallQueued"] == built["CallCompleted"] == 1
            assert [type(e) for e in seen if type(e) in CALL_EVENTS] == [
                CallQueued,
                CallDispatched,
                CallCompleted,
            ]

            unsubscribe()
            assert not calls_on(pool)
            assert await pool.call(add, 3, 3) == 6
            assert flags[2] == 0 and built["CallQueued"] == 1


async def test_the_adaptive_window_asks_for_timings_but_builds_no_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By default (adaptive pipeline window) a CALL frame asks for the worker's timings, which
    size the window; still no event is built while nobody observes the pool."""
    built = _count_constructors(monkeypatch)
    flags = _spy_call_frames(monkeypatch)
    pool = make_pool("bridge")
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 1) == 2
            assert flags == [proto.FLAG_TIMING | proto.FLAG_WALL_ONLY] and sum(built.values()) == 0


async def test_a_lifecycle_only_subscription_leaves_call_events_off(layer: str) -> None:
    """A subscriber or event stream asking only for lifecycle events does not turn call
    events on; one whose types include a call event does, until it leaves."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            lifecycle: list[Event] = []
            pool.subscribe(lifecycle.append, types=(WorkerExited, WorkerReady))
            async with pool.events(types=(WorkerExited,)):
                assert not calls_on(pool)
            calls: list[Event] = []
            unsubscribe = pool.subscribe(calls.append, types=(CallCompleted,))
            assert calls_on(pool)
            assert await pool.call(add, 1, 1) == 2
            unsubscribe()
            assert not calls_on(pool)
            async with pool.events(types=(CallFailed,)):
                assert calls_on(pool)
            assert not calls_on(pool)
    assert [type(e) for e in calls] == [CallCompleted]
    assert {type(e) for e in lifecycle} == {WorkerExited}  # the worker exits at close


# --------------------------------------------------------------------------- pool.events()
async def test_event_stream_iteration_ends_after_pool_stopped(layer: str) -> None:
    """``async for`` over pool.events() yields the pool's events as they happen (the same ones
    a subscriber gets) and ends by itself after PoolStopped."""
    pool = make_pool(layer)
    rec = Recorder(pool)
    got: list[Event] = []
    stream = pool.events()  # subscribed from here on

    async def consume() -> None:
        async with stream:
            async for event in stream:
                got.append(event)

    with anyio.fail_after(scaled(10)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            async with pool:
                assert await pool.call(add, 1, 2) == 3
    assert got == rec.events
    assert isinstance(got[-1], PoolStopped)
    assert any(isinstance(e, CallCompleted) for e in got)


async def test_event_stream_types_keeps_only_those_and_still_ends(layer: str) -> None:
    """types=(CallCompleted, CallFailed) yields only those events, and the iteration still
    ends after PoolStopped, which it does not yield."""
    pool = make_pool(layer)
    stream = pool.events(types=(CallCompleted, CallFailed))
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 2) == 3
            with pytest.raises(RemoteError):
                await pool.call(boom)
        async with stream:
            got = [event async for event in stream]
    assert [type(e) for e in got] == [CallCompleted, CallFailed]


async def test_event_stream_overflow_delivers_the_buffer_then_raises(layer: str) -> None:
    """A consumer that falls more than ``buffer`` events behind first gets every event that
    fit, then EventStreamOverflow saying how many were dropped: never a silent gap."""
    pool = make_pool(layer)
    rec = Recorder(pool)
    stream = pool.events(buffer=3)
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 2) == 3
        got: list[Event] = []
        async with stream:
            with pytest.raises(EventStreamOverflow) as info:
                async for event in stream:
                    got.append(event)
    assert got == rec.events[:3]
    assert info.value.dropped == len(rec.events) - 3 > 0
    assert info.value.buffer == 3


async def test_event_stream_overflow_counts_only_events_of_its_types(layer: str) -> None:
    """With ``types``, EventStreamOverflow.dropped counts the events of those types that were
    lost, not the stream's own end-of-pool marker."""
    pool = make_pool(layer)
    rec = Recorder(pool)
    stream = pool.events(buffer=1, types=(CallCompleted,))
    with anyio.fail_after(scaled(10)):
        async with pool:
            for i in range(3):
                assert await pool.call(add, i, i) == 2 * i
        got: list[Event] = []
        async with stream:
            with pytest.raises(EventStreamOverflow) as info:
                async for event in stream:
                    got.append(event)
    assert got == rec.of(CallCompleted)[:1]
    assert info.value.dropped == 2


async def test_event_stream_keeps_buffered_events_readable_after_exit(layer: str) -> None:
    """Leaving the stream's block unsubscribes it: list(stream) then returns exactly the
    events received until then, and nothing emitted afterwards."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            async with pool.events() as stream:
                assert await pool.call(add, 1, 2) == 3
            before = list(rec.events)
            assert await pool.call(add, 2, 2) == 4
    assert list(stream) == before
    assert list(stream) == []  # read once
    assert len(rec.events) > len(before)


async def test_event_stream_rejects_a_buffer_below_one() -> None:
    """pool.events(buffer=0) is a usage error, raised at once."""
    pool = make_pool("mock")
    with pytest.raises(ValueError, match="buffer"):
        pool.events(buffer=0)


# --------------------------------------------------------------------------- traces
async def test_one_client_span_per_call_child_of_the_callers_span(layer: str, traces: Traces) -> None:
    """Each call gets one "poolkit.call" span of kind CLIENT, started in the caller's context:
    its parent is the caller's current span, in the same trace."""
    tracer = traces.provider.get_tracer("test")
    pool = make_pool(layer, tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            with tracer.start_as_current_span("caller") as caller:
                for i in range(3):
                    assert await pool.call(add, i, 1) == i + 1
    spans = traces.calls()
    assert len(spans) == 3
    assert len({s.attributes["poolkit.call.id"] for s in spans if s.attributes}) == 3
    parent = caller.get_span_context()
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.context is not None and span.context.trace_id == parent.trace_id
        assert span.end_time is not None


async def test_a_call_that_waited_for_room_has_its_span_under_its_callers_span(
    layer: str, traces: Traces
) -> None:
    """Calls that find the queue full wait in line, and the pool queues them itself when room
    frees, from the task that freed it. Their spans still start in their own caller's context:
    each is the child of its caller's span, not of whatever ran when room came."""
    tracer = traces.provider.get_tracer("test")
    pool = make_pool(layer, tracer_provider=traces.provider, pipeline_depth=1, max_queue=1)
    callers: dict[int, Any] = {}
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)

            async def caller(i: int) -> None:
                with tracer.start_as_current_span(f"caller-{i}") as span:
                    callers[i] = span.get_span_context()
                    assert await pool.call(add, i, 1) == i + 1

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(caller, i)
    assert rec.of(QueueSaturated), "no call waited in line: the test did not test it"
    spans = traces.calls()
    assert len(spans) == 6
    parents = sorted(s.parent.span_id if s.parent is not None else 0 for s in spans)
    assert parents == sorted(c.span_id for c in callers.values())  # one call under each caller


async def test_call_span_attributes(layer: str, traces: Traces) -> None:
    """A call's span names the pool, target, call id, idempotence, session, worker, attempt,
    queue wait and outcome, and the worker's run and CPU time; a "poolkit.dispatched" event
    marks the dispatch."""
    pool = make_pool(layer, tracer_provider=traces.provider, name="traced")
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            assert await pool.call(add, 1, 2, idempotent=True) == 3
            assert await pool.call(T.remember, 5, session="sess") == [5]
    plain, session = traces.calls()
    (worker_id,) = {e.worker_id for e in rec.of(CallDispatched)}
    queued = rec.of(CallQueued)
    assert plain.attributes is not None and session.attributes is not None
    attrs = dict(plain.attributes)
    assert {k: attrs.pop(k) for k in list(attrs) if not k.endswith(("_time", "queue_wait"))} == {
        "poolkit.pool.name": "traced",
        "poolkit.call.target": "unit._targets:add",
        "poolkit.call.id": queued[0].call,
        "poolkit.call.idempotent": True,
        "poolkit.worker.id": worker_id,
        "poolkit.call.attempt": 1,
        "poolkit.call.outcome": "ok",
    }
    assert set(attrs) == {"poolkit.call.queue_wait", "poolkit.worker.run_time", "poolkit.worker.cpu_time"}
    assert all(isinstance(v, float) and v >= 0 for v in attrs.values())
    assert session.attributes["poolkit.session.key"] == "sess"
    assert "poolkit.session.key" not in plain.attributes
    assert [e.name for e in plain.events] == ["poolkit.dispatched"]
    assert plain.status.status_code is StatusCode.UNSET


async def test_failed_call_span_has_error_status_and_error_type(layer: str, traces: Traces) -> None:
    """A failed call's span ends with status ERROR, error.type and outcome set to the failure
    kind, and the phase it failed in."""
    pool = make_pool(layer, tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            with pytest.raises(RemoteError):
                await pool.call(boom, "no good")
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
    app, timeout = traces.calls()
    assert app.attributes is not None and timeout.attributes is not None
    for span, kind in ((app, FailureKind.APPLICATION), (timeout, FailureKind.TIMEOUT)):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == span.attributes["poolkit.call.outcome"] == kind.value
        assert span.attributes["poolkit.call.phase"] == "running"
    assert "no good" in (app.status.description or "")


async def test_retried_call_span_records_the_retry(layer: str, traces: Traces) -> None:
    """A call retried after its worker crashed stays one span: a "poolkit.retry" event (attempt
    2, error.type crashed) between two dispatch events, and it ends ok at attempt 2."""
    pool = make_pool(layer, min_workers=2, pipeline_depth=1, tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            gate = new_gate("k")
            outcome = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(outcome.capture, lambda: pool.call(wait_for, "k", 7, idempotent=True))
                await gate.entered.wait()
                await FaultInjector(pool).crash(how="segfault")
                gate.release.set()
            assert outcome.value == 7, outcome.error
    (span,) = traces.calls()
    assert [e.name for e in span.events] == ["poolkit.dispatched", "poolkit.retry", "poolkit.dispatched"]
    retry = span.events[1].attributes
    assert retry is not None
    assert (retry["poolkit.call.attempt"], retry["error.type"]) == (2, "crashed")
    assert retry["poolkit.retry.backoff"] == 0.0
    assert span.attributes is not None
    assert (span.attributes["poolkit.call.attempt"], span.attributes["poolkit.call.outcome"]) == (2, "ok")
    assert span.status.status_code is StatusCode.UNSET


async def test_a_call_requeued_from_a_dead_worker_keeps_its_one_span(layer: str, traces: Traces) -> None:
    """A call pipelined behind one that crashed its worker never started there: CallRequeued
    names the dead worker, the call is dispatched again as attempt 1 (it never ran), and its
    one span records "poolkit.requeued" between the two dispatches."""
    pool = make_pool(layer, pipeline_depth=2, tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            gate = new_gate("k")
            crashed, behind = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(crashed.capture, pool.call, wait_then_crash, "k")
                await gate.entered.wait()
                (worker,) = pool.workers()
                tg.start_soon(behind.capture, pool.call, add, 2, 3)
                await wait_until(lambda: worker.load == 2, pool=pool, describe="a second call sent to it")
                gate.release.set()
            assert isinstance(crashed.error, WorkerCrashed)
            assert behind.value == 5, behind.error
    (requeued,) = rec.of(CallRequeued)
    assert requeued.worker_id == worker.id and requeued.target == "unit._targets:add"
    again = [d for d in rec.of(CallDispatched) if d.call == requeued.call]
    assert [(d.attempt, d.worker_id == worker.id) for d in again] == [(1, True), (1, False)]
    assert rec.of(CallRetried) == []
    (span,) = [s for s in traces.calls() if s.attributes and s.attributes["poolkit.call.id"] == requeued.call]
    assert [e.name for e in span.events] == ["poolkit.dispatched", "poolkit.requeued", "poolkit.dispatched"]
    assert span.attributes is not None and span.attributes["poolkit.call.outcome"] == "ok"


async def test_calls_withdrawn_by_a_map_left_early_end_their_spans(layer: str, traces: Traces) -> None:
    """Leaving pool.map early withdraws its queued calls and lets the running one finish
    unobserved: each admitted call still ends with one terminal event, and its span ends."""
    pool = make_pool(layer, pipeline_depth=1, tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            rec = Recorder(pool)
            async with pool.map(add, range(6), range(6), concurrency=4) as results:
                async for _ in results:
                    break
            await wait_until(
                lambda: pool.statistics().in_flight == 0 == pool.statistics().queued,
                pool=pool,
                describe="the withdrawn calls gone",
            )
        sink = pool._tel.traces
        assert sink is not None
        assert sink.open_spans == 0
    queued = sorted(e.call for e in rec.of(CallQueued))
    ended = sorted(e.call for e in rec.events if isinstance(e, CallCompleted | CallFailed))
    assert ended == queued


async def test_no_span_is_left_open(layer: str, traces: Traces) -> None:
    """Every admitted call's span ends, whatever ended the call (value, error, timeout,
    cancellation, crash), and a call refused at admission opens none."""
    pool = make_pool(
        layer, pipeline_depth=1, max_queue=1, queue_policy="reject", tracer_provider=traces.provider
    )

    async def replaced() -> None:
        await wait_until(
            lambda: pool.statistics().workers_in(WorkerState.READY) == 1, pool=pool, describe="a ready worker"
        )

    with anyio.fail_after(scaled(10)):
        async with pool:
            sink = pool._tel.traces
            assert sink is not None
            assert await pool.call(add, 1, 1) == 2
            with pytest.raises(RemoteError):
                await pool.call(boom)
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
            await replaced()
            with anyio.move_on_after(0.05):
                await pool.call(hang)
            await replaced()
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
            await replaced()
            async with anyio.create_task_group() as tg:
                gate, _ = await hold(pool, tg, "busy")
                tg.start_soon(pool.call, add, 2, 2)  # queued behind it
                await wait_until(lambda: pool.statistics().queued == 1, pool=pool, describe="one queued")
                assert sink.open_spans == 2
                with pytest.raises(QueueFull):
                    await pool.call(add, 3, 3)
                assert sink.open_spans == 2
                gate.release.set()
            assert sink.open_spans == 0
    spans = traces.calls()
    assert all(s.end_time is not None for s in spans)
    outcomes = sorted(str(s.attributes["poolkit.call.outcome"]) for s in spans if s.attributes)
    assert outcomes == sorted(["ok", "application", "timeout", "cancelled", "crashed", "ok", "ok"])


@pytest.mark.parametrize("how", ["traces_off", "no_provider"])
async def test_no_spans_without_a_tracer(layer: str, traces: Traces, how: str) -> None:
    """telemetry.traces=False ignores the tracer provider it is given, and with no provider
    (and no global SDK) there is none: no trace sink, no span, no call events, no trace
    context sent to the worker."""
    if how == "traces_off":
        pool = make_pool(layer, tracer_provider=traces.provider, telemetry={"traces": False})
    else:
        pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert pool._tel.traces is None
            assert not calls_on(pool)
            assert await pool.call(current_trace) is None
    assert traces.exporter.get_finished_spans() == ()


# A fresh interpreter: this one has imported OpenTelemetry's API already (the fixtures above).
_FIND_SDK = """
import os, sys, anyio
from poolkit import Pool
from poolkit.testing import BridgeLauncher
if os.environ.get("SET_GLOBAL"):
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider())
async def main():
    async with Pool(min_workers=1, heartbeat_interval=None, launcher=BridgeLauncher()) as pool:
        assert await pool.call("math:factorial", 3) == 6
        found = (pool._tel.traces is not None, pool._tel.metrics is not None)
    print(found, "opentelemetry" in sys.modules)
anyio.run(main)
"""


@pytest.mark.parametrize(
    ("env", "found"),
    [
        ({}, "(False, False) False"),
        ({"SET_GLOBAL": "1"}, "(True, True) True"),
        (
            {
                "OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider",
                "OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider",
            },
            "(True, True) True",
        ),
    ],
    ids=["nothing_configured", "global_sdk_set", "providers_named_in_the_environment"],
)
def test_a_pool_imports_opentelemetry_only_where_an_sdk_may_be_configured(
    env: dict[str, str], found: str
) -> None:
    """With nothing importing OpenTelemetry and no provider named in the environment, a pool
    does not import the API only to find its no-op (a start-up and garbage-collection cost,
    docs/performance.md item 24). A global SDK set before the pool starts, or a provider the
    environment names for the API to load, is still found, for traces and for metrics."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _FIND_SDK],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == found


async def test_bridge_worker_sees_the_call_spans_trace_context(traces: Traces) -> None:
    """On the bridge layer, poolkit.worker.trace_context() inside a call is the pool's
    "poolkit.call" span: its trace id, its span id (the parent of worker-side work), sampled,
    and the matching W3C traceparent."""
    pool = make_pool("bridge", tracer_provider=traces.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            seen = await pool.call(current_trace)
    (span,) = traces.calls()
    assert span.context is not None
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert seen == {
        "trace_id": trace_id,
        "span_id": span_id,
        "sampled": True,
        "traceparent": f"00-{trace_id}-{span_id}-01",
    }


# --------------------------------------------------------------------------- metrics
async def test_call_counters_and_duration_histograms(layer: str, metrics: Metrics) -> None:
    """poolkit.calls counts ended calls by outcome (and error.type for failures); every call
    lands in poolkit.call.duration, every dispatch in poolkit.call.queue.duration, and every
    worker-timed call in poolkit.call.run.duration."""
    pool = make_pool(layer, meter_provider=metrics.provider, name="m")
    with anyio.fail_after(scaled(10)):
        async with pool:
            for i in range(2):
                assert await pool.call(add, i, i) == 2 * i
            with pytest.raises(RemoteError):
                await pool.call(boom)
    add_target, boom_target = "unit._targets:add", "unit._targets:boom"
    assert metrics.value("poolkit.calls", poolkit__call__target=add_target, poolkit__call__outcome="ok") == 2
    assert (
        metrics.value(
            "poolkit.calls",
            poolkit__call__target=boom_target,
            poolkit__call__outcome="error",
            error__type="application",
        )
        == 1
    )
    assert metrics.value("poolkit.calls", poolkit__pool__name="m") == 3
    for name in ("poolkit.call.duration", "poolkit.call.queue.duration", "poolkit.call.run.duration"):
        assert metrics.value(name, poolkit__pool__name="m") == 3, name
    assert metrics.value("poolkit.call.retries") == 0


async def test_retry_restart_and_worker_failure_metrics(layer: str, metrics: Metrics) -> None:
    """A worker crashing under an idempotent call counts one poolkit.call.retries (error.type
    crashed), one poolkit.worker.failures (error.type, exit cause) and, once replaced, one
    poolkit.worker.restarts."""
    pool = make_pool(layer, min_workers=2, pipeline_depth=1, meter_provider=metrics.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            gate = new_gate("k")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pool.call(wait_for, "k", 1, idempotent=True))
                await gate.entered.wait()
                await FaultInjector(pool).crash(how="segfault")
                gate.release.set()
            await wait_until(
                lambda: pool.statistics().workers_in(WorkerState.READY) == 2,
                pool=pool,
                describe="two ready workers again",
            )
    assert metrics.value("poolkit.call.retries", error__type="crashed") == 1
    assert (
        metrics.value(
            "poolkit.worker.failures", error__type="crashed", poolkit__worker__exit_cause="segfault"
        )
        == 1
    )
    assert metrics.value("poolkit.worker.restarts", poolkit__pool__name=pool.name) == 1


async def test_gauges_report_queue_depth_and_workers_by_state(layer: str, metrics: Metrics) -> None:
    """While the pool runs, poolkit.queue.depth is its number of queued calls and
    poolkit.worker.count its workers by state; a closed pool stops reporting."""
    pool = make_pool(layer, min_workers=2, pipeline_depth=1, meter_provider=metrics.provider)
    with anyio.fail_after(scaled(10)):
        async with pool:
            name = pool.name
            assert (
                metrics.value(
                    "poolkit.worker.count", poolkit__pool__name=name, poolkit__worker__state="ready"
                )
                == 2
            )
            async with anyio.create_task_group() as tg:
                gates = [(await hold(pool, tg, key))[0] for key in ("a", "b")]
                for i in range(3):
                    tg.start_soon(pool.call, add, i, i)
                await wait_until(lambda: pool.statistics().queued == 3, pool=pool, describe="three queued")
                assert metrics.value("poolkit.queue.depth", poolkit__pool__name=name) == 3
                by_state = {
                    p.attributes["poolkit.worker.state"]: p.value
                    for p in metrics.points("poolkit.worker.count")
                    if p.attributes["poolkit.pool.name"] == name
                }
                assert by_state["busy"] == 2 and by_state["ready"] == 0
                assert sum(by_state.values()) == 2
                for gate in gates:
                    gate.release.set()
            assert metrics.value("poolkit.queue.depth", poolkit__pool__name=name) == 0
    assert [
        p for p in metrics.points("poolkit.queue.depth") if p.attributes["poolkit.pool.name"] == name
    ] == []


async def test_two_pools_on_one_meter_provider_both_report(layer: str, metrics: Metrics) -> None:
    """Two pools sharing a meter provider share its instruments: the counters and the gauges
    report each pool under its own name."""
    first = make_pool(layer, meter_provider=metrics.provider, name="first")
    second = make_pool(layer, meter_provider=metrics.provider, name="second", min_workers=2)
    with anyio.fail_after(scaled(10)):
        async with first, second:
            assert await first.call(add, 1, 1) == 2
            for _ in range(2):
                assert await second.call(add, 2, 2) == 4
            ready = {
                n: metrics.value(
                    "poolkit.worker.count", poolkit__pool__name=n, poolkit__worker__state="ready"
                )
                for n in ("first", "second")
            }
            depth_pools = {p.attributes["poolkit.pool.name"] for p in metrics.points("poolkit.queue.depth")}
    assert ready == {"first": 1, "second": 2}
    assert depth_pools == {"first", "second"}
    assert metrics.value("poolkit.calls", poolkit__pool__name="first") == 1
    assert metrics.value("poolkit.calls", poolkit__pool__name="second") == 2


# --------------------------------------------------------------------------- logs
async def test_lifecycle_log_entries_are_bound_to_pool_and_worker(
    layer: str, captured: list[MutableMapping[str, Any]]
) -> None:
    """With structlog configured, lifecycle events arrive as entries bound with the pool's
    name and, for worker events, the worker's id and pid ("pool started", "worker ready",
    "worker exited")."""
    pool = make_pool(layer, name="logged")
    with anyio.fail_after(scaled(10)):
        async with pool:
            (worker,) = pool.workers()
            assert await pool.call(add, 1, 1) == 2
    by_event = {e["event"]: e for e in captured}
    assert by_event["pool started"]["pool"] == "logged"
    assert by_event["pool started"]["log_level"] == "info"
    assert by_event["pool started"]["workers"] == 1
    for message in ("worker spawned", "worker ready", "worker exited"):
        entry = by_event[message]
        assert (entry["pool"], entry["worker_id"], entry["pid"]) == ("logged", worker.id, worker.pid), message
    assert by_event["worker exited"]["expected"] is True
    assert not [e for e in captured if str(e["event"]).startswith("call ")]


async def test_a_crash_is_logged_at_info_with_its_cause(
    layer: str, captured: list[MutableMapping[str, Any]]
) -> None:
    """A crashed worker's "worker exited" entry is INFO and says why (failure, cause, signal)."""
    pool = make_pool(layer)
    with anyio.fail_after(scaled(10)):
        async with pool:
            (worker,) = pool.workers()
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
    (entry,) = [e for e in captured if e["event"] == "worker exited" and e["worker_id"] == worker.id]
    assert entry["log_level"] == "info"
    assert (entry["failure"], entry["cause"], entry["signal"]) == ("crashed", "segfault", 11)


async def test_log_calls_logs_call_events_with_their_call_id(
    layer: str, captured: list[MutableMapping[str, Any]]
) -> None:
    """telemetry.log_calls=True logs each call event at DEBUG, with the call's number as
    call_id and the worker's id; it also makes the pool build call events with no subscriber."""
    pool = make_pool(layer, telemetry={"log_calls": True})
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert calls_on(pool)
            assert await pool.call(add, 1, 1) == 2
            (worker,) = pool.workers()
    calls = [e for e in captured if str(e["event"]).startswith("call ")]
    assert [e["event"] for e in calls] == ["call queued", "call dispatched", "call completed"]
    assert len({e["call_id"] for e in calls}) == 1
    assert all(e["log_level"] == "debug" for e in calls)
    assert calls[1]["worker_id"] == calls[2]["worker_id"] == worker.id
    assert calls[2]["target"] == "unit._targets:add"


async def test_unconfigured_logging_is_silent_below_warning(
    layer: str, unconfigured_structlog: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Without structlog configured, entries go to stdlib logging "poolkit.*" loggers: by
    default nothing below WARNING gets through, and a handler at INFO receives the lifecycle
    entries with their fields."""
    pool = make_pool(layer, name="quiet")
    with anyio.fail_after(scaled(10)):
        async with pool:
            assert await pool.call(add, 1, 1) == 2
    assert [r for r in caplog.records if r.name.startswith("poolkit")] == []

    caplog.set_level(logging.INFO, logger="poolkit")
    pool = make_pool(layer, name="louder")
    with anyio.fail_after(scaled(10)):
        async with pool:
            pass
    (started,) = [r for r in caplog.records if r.getMessage() == "pool started"]
    assert (started.name, started.levelno) == ("poolkit.pool", logging.INFO)
    assert started.__dict__["pool"] == "louder"
    assert all(r.levelno >= logging.INFO for r in caplog.records)


async def test_a_breaker_opening_warns_through_stdlib_logging(
    layer: str, unconfigured_structlog: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A circuit breaker opening is a WARNING on the stdlib logger "poolkit.pool", visible
    with logging left at its defaults."""
    pool = make_pool(layer, breaker={"failure_threshold": 1})
    with anyio.fail_after(scaled(10)):
        async with pool:
            with pytest.raises(WorkerCrashed):
                await pool.call(crash_segv)
    warnings = [r for r in caplog.records if r.name.startswith("poolkit") and r.levelno >= logging.WARNING]
    assert warnings, "no warning logged"
    assert {(r.name, r.levelno, r.getMessage()) for r in warnings} == {
        ("poolkit.pool", logging.WARNING, "circuit breaker changed")
    }
    assert {r.__dict__["to_state"] for r in warnings} == {"open"}


def test_a_warning_with_no_logging_configured_carries_its_fields_in_the_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no handler anywhere, Python's last-resort handler prints the message alone: a bare
    "pool state changed". The fields then go into the message; with a handler they stay
    record attributes (the message is the event)."""
    from poolkit._log import get_logger

    name = "poolkit.test_last_resort"
    std = logging.getLogger(name)
    std.propagate = False  # pytest's capture handlers sit on the root logger
    try:
        get_logger(name, pool="p1").warning("pool state changed", to_state="failed")
        assert capsys.readouterr().err.strip() == "pool state changed: pool='p1' to_state='failed'"
        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        std.addHandler(Keep())
        get_logger(name, pool="p1").warning("pool state changed", to_state="failed")
        assert [r.getMessage() for r in seen] == ["pool state changed"]
        assert seen[0].pool == "p1"  # type: ignore[attr-defined]
    finally:
        std.propagate = True
        std.handlers.clear()
