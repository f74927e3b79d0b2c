"""The pool's one event stream and its sinks: structlog, OpenTelemetry traces and metrics,
and in-process subscribers (DESIGN.md rule 9: telemetry is data).

:class:`Telemetry` fans every event out to its sinks. Lifecycle events always reach the log
sink; call events exist only while something wants them (``Telemetry.calls``): an
in-process subscriber, a tracer or meter from a configured OpenTelemetry SDK, or
``telemetry.log_calls``. The pool tests that one flag before building a call event, so a
pool nobody observes pays one truth test per step.

"A configured SDK" is decided when the pool starts: the provider passed to ``Pool(...)``,
else OpenTelemetry's global one, counts unless it is the API's own no-op or proxy provider
(``type(provider).__module__`` inside ``opentelemetry.trace`` / ``opentelemetry.metrics``).
Configure the SDK before starting the pool. When nothing has imported the API and the
environment names no provider for it to load, no SDK can be configured, and the pool does
not import the API only to find its no-op (:func:`_may_be_configured`).

Names (spans, metrics, attributes) follow OpenTelemetry's semantic-convention style and are
listed in ``docs/telemetry.md``; a test keeps the two in step.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import anyio

from . import _protocol as proto
from ._events import (
    ON_DEMAND_EVENTS,
    BreakerStateChanged,
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    CallRetried,
    Event,
    Listener,
    PoolClosing,
    PoolStarted,
    PoolStateChanged,
    PoolStopped,
    QueueSaturated,
    SessionBound,
    SessionEnded,
    SessionExpired,
    SessionRebound,
    SessionStateLost,
    WorkerExited,
    WorkerOutput,
    WorkerReady,
    WorkerRecycled,
    WorkerSpawned,
    WorkerStateChanged,
)
from ._log import Logger, get_logger

if TYPE_CHECKING:
    from types import TracebackType

    from ._pool import Pool

__all__ = [
    "DURATION_BUCKETS",
    "EventStream",
    "EventStreamOverflow",
    "Telemetry",
]

#: Histogram bucket boundaries (seconds) for the duration metrics: 100 us to 1 min.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


def _may_be_configured(api_module: str, env_var: str) -> bool:
    """Could OpenTelemetry's global provider be an SDK's? Only if something has imported the
    API module (an SDK sets its provider through it: ``set_tracer_provider``), or if the
    environment names a provider for the API to load (``OTEL_PYTHON_TRACER_PROVIDER``,
    ``OTEL_PYTHON_METER_PROVIDER``). Otherwise importing the API would only find its no-op,
    and it costs every pool that does not use OpenTelemetry: the API and, through its
    provider lookup, ``importlib.metadata`` and ``email`` are ~15,000 objects that every full
    garbage collection of the parent then scans (~5 ms more on this host, in the event loop),
    and tens of milliseconds at start (docs/performance.md item 24)."""
    return api_module in sys.modules or env_var in os.environ


def _real(provider: Any, api_module: str) -> bool:
    """Is ``provider`` an SDK (something that records), not the API's no-op or proxy?"""
    return provider is not None and not type(provider).__module__.startswith(api_module)


class Telemetry:
    """One pool's sinks. The pool calls :meth:`emit` for every event it builds."""

    def __init__(
        self,
        pool_name: str,
        *,
        log_calls: bool = False,
        traces: bool = True,
        metrics: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        self.pool_name = pool_name
        self.log = get_logger("poolkit.pool", pool=pool_name)
        self.listeners: list[_Subscription] = []
        self.traces: TraceSink | None = None
        self.metrics: MetricsSink | None = None
        self._log_sink = LogSink(pool_name, log_calls=log_calls)
        self._want_traces = traces
        self._want_metrics = metrics
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._log_calls = log_calls
        self._sinks: tuple[Callable[[Event], None], ...] = ()
        self.calls = False  # build call events? (module docstring)
        self._rebuild()

    def start(self, pool: Pool) -> None:
        """Find the OpenTelemetry SDK, if one is configured (module docstring)."""
        if self._want_traces and self.traces is None:
            provider = self._tracer_provider
            if provider is None and _may_be_configured("opentelemetry.trace", "OTEL_PYTHON_TRACER_PROVIDER"):
                from opentelemetry import trace

                provider = trace.get_tracer_provider()
            if _real(provider, "opentelemetry.trace"):
                self.traces = TraceSink(provider, self.pool_name)
        if self._want_metrics and self.metrics is None:
            provider = self._meter_provider
            if provider is None and _may_be_configured("opentelemetry.metrics", "OTEL_PYTHON_METER_PROVIDER"):
                from opentelemetry import metrics

                provider = metrics.get_meter_provider()
            if _real(provider, "opentelemetry.metrics"):
                self.metrics = MetricsSink(provider, pool)
        self._rebuild()

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.detach()

    def subscribe(
        self, listener: Listener, types: tuple[type[Event], ...] | None = None
    ) -> Callable[[], None]:
        """Add ``listener`` (for events of ``types`` only, if given); returns the unsubscribe
        function. Only a subscription that can receive on-demand events turns them on."""
        if types is not None:
            types = tuple(types)
            for t in types:
                if not (isinstance(t, type) and issubclass(t, Event)):
                    raise TypeError(f"types must be Event subclasses, got {t!r}")
        sub = _Subscription(listener, types)
        self.listeners.append(sub)
        self._rebuild()

        def unsubscribe() -> None:
            try:
                self.listeners.remove(sub)
            except ValueError:
                return
            self._rebuild()

        return unsubscribe

    def _rebuild(self) -> None:
        sinks: list[Callable[[Event], None]] = [self._log_sink]
        if self.traces is not None:
            sinks.append(self.traces)
        if self.metrics is not None:
            sinks.append(self.metrics)
        self._sinks = tuple(sinks)
        demand = any(sub.on_demand for sub in self.listeners)
        self.calls = demand or len(sinks) > 1 or self._log_calls

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a bug in a sink must not break the pool's bookkeeping
                self.log.exception(
                    "telemetry sink failed", sink=type(sink).__name__, event_type=type(event).__name__
                )
        for sub in tuple(self.listeners):
            if sub.types is not None and not isinstance(event, sub.types):
                continue
            try:
                sub.listener(event)
            except Exception:
                self.log.exception(
                    "event listener failed", listener=repr(sub.listener), event_type=type(event).__name__
                )

    def trace_block(self, call: int) -> bytes | None:
        """The FLAG_TRACE block of call ``call``'s span, for its CALL frame."""
        return self.traces.block(call) if self.traces is not None else None


class _Subscription:
    __slots__ = ("listener", "on_demand", "types")

    def __init__(self, listener: Listener, types: tuple[type[Event], ...] | None) -> None:
        self.listener = listener
        self.types = types
        # Could it receive an on-demand event? (A filter naming Event itself, or a base of one.)
        self.on_demand = types is None or any(issubclass(kind, t) for kind in ON_DEMAND_EVENTS for t in types)


# --------------------------------------------------------------------------- structlog
def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


class LogSink:
    """Events as structlog entries, at a level that says how much they matter.

    The level table is the policy: warnings are what an operator must see (a breaker
    opening, the pool failing); a worker crash is INFO because the caller of the call it
    ran already holds a typed error; call events are DEBUG and built only with
    ``log_calls``.
    """

    def __init__(self, pool_name: str, *, log_calls: bool) -> None:
        self._loggers = {family: get_logger(f"poolkit.{family}", pool=pool_name) for family in _FAMILIES}
        self._workers: dict[str, Logger] = {}
        self._log_calls = log_calls

    def __call__(self, event: Event) -> None:
        entry = _LOG_TABLE.get(type(event))
        if entry is None:
            return
        family, message, level = entry
        if family == "call" and not self._log_calls:
            return
        if callable(level):
            level = level(event)
        if not self._loggers[family].enabled(level):
            return  # the common case without logging configured: nothing built
        fields = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
        del fields["pool"], fields["at"]
        if "call" in fields:
            fields["call_id"] = fields.pop("call")
        worker_id = fields.pop("worker_id", None)
        log = self._loggers[family]
        if family == "worker" and worker_id is not None:
            pid = fields.pop("pid", None)
            log = self._workers.get(worker_id) or self._bind_worker(log, worker_id, pid)
        elif worker_id is not None:
            fields["worker_id"] = worker_id
        log.log(level, message, **fields)
        if type(event) is WorkerExited:
            self._workers.pop(event.worker_id, None)

    def _bind_worker(self, log: Logger, worker_id: str, pid: int | None) -> Logger:
        log = log.bind(worker_id=worker_id, pid=pid)
        if pid is not None:  # a spawned worker: cache its logger until it exits
            self._workers[worker_id] = log
        return log


_FAMILIES = ("pool", "worker", "session", "call")


def _pool_state_level(event: Event) -> int:
    assert isinstance(event, PoolStateChanged)
    return _ERROR if event.to_state.value == "failed" else _DEBUG


def _exit_level(event: Event) -> int:
    assert isinstance(event, WorkerExited)
    return _INFO if event.failure is not None else _DEBUG


def _breaker_level(event: Event) -> int:
    assert isinstance(event, BreakerStateChanged)
    return _WARNING if event.to_state == "open" else _INFO


_LOG_TABLE: dict[type[Event], tuple[str, str, int | Callable[[Event], int]]] = {
    PoolStarted: ("pool", "pool started", _INFO),
    PoolClosing: ("pool", "pool closing", _INFO),
    PoolStopped: ("pool", "pool closed", _INFO),
    PoolStateChanged: ("pool", "pool state changed", _pool_state_level),
    QueueSaturated: ("pool", "queue saturated", _INFO),
    BreakerStateChanged: ("pool", "circuit breaker changed", _breaker_level),
    WorkerSpawned: ("worker", "worker spawned", _DEBUG),
    WorkerReady: ("worker", "worker ready", _DEBUG),
    WorkerStateChanged: ("worker", "worker state changed", _DEBUG),
    WorkerExited: ("worker", "worker exited", _exit_level),
    WorkerRecycled: ("worker", "worker recycled", _INFO),
    WorkerOutput: ("worker", "worker output", _INFO),
    SessionBound: ("session", "session bound", _DEBUG),
    SessionRebound: ("session", "session rebound", _DEBUG),
    SessionStateLost: ("session", "session state lost", _INFO),
    SessionEnded: ("session", "session ended", _DEBUG),
    SessionExpired: ("session", "session expired", _DEBUG),
    CallQueued: ("call", "call queued", _DEBUG),
    CallDispatched: ("call", "call dispatched", _DEBUG),
    CallRequeued: ("call", "call requeued", _DEBUG),
    CallCompleted: ("call", "call completed", _DEBUG),
    CallFailed: ("call", "call failed", _DEBUG),
    CallRetried: ("call", "call retried", _DEBUG),
}


# --------------------------------------------------------------------------- traces
class TraceSink:
    """One span per call, ``poolkit.call`` (kind CLIENT): started at CallQueued in the
    caller's context (so it is a child of the caller's current span), ended at CallCompleted
    or CallFailed. Dispatches, requeues and retries are span events; its context travels to
    the worker in the CALL frame (FLAG_TRACE), and the worker's timings come back in the
    reply and land on the span as ``poolkit.worker.run_time`` / ``cpu_time``."""

    def __init__(self, provider: Any, pool_name: str) -> None:
        from opentelemetry import trace

        from . import __version__

        self._trace = trace
        self._tracer = provider.get_tracer("poolkit", __version__)
        self._pool = pool_name
        self._spans: dict[int, Any] = {}
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)

    def __call__(self, event: Event) -> None:
        kind = type(event)
        if kind is CallQueued:
            assert isinstance(event, CallQueued)
            attributes: dict[str, Any] = {
                "poolkit.pool.name": self._pool,
                "poolkit.call.target": event.target,
                "poolkit.call.id": event.call,
                "poolkit.call.idempotent": event.idempotent,
            }
            if event.session is not None:
                attributes["poolkit.session.key"] = str(event.session)
            self._spans[event.call] = self._tracer.start_span(
                "poolkit.call", kind=self._client, attributes=attributes
            )
            return
        if kind not in _SPAN_EVENTS:
            return
        span = self._spans.get(event.call)  # type: ignore[attr-defined]
        if span is None:
            return
        if kind is CallDispatched:
            assert isinstance(event, CallDispatched)
            span.set_attributes(
                {
                    "poolkit.worker.id": event.worker_id,
                    "poolkit.call.attempt": event.attempt,
                    "poolkit.call.queue_wait": event.queue_wait,
                }
            )
            span.add_event(
                "poolkit.dispatched",
                {"poolkit.worker.id": event.worker_id, "poolkit.call.attempt": event.attempt},
            )
        elif kind is CallRetried:
            assert isinstance(event, CallRetried)
            span.add_event(
                "poolkit.retry",
                {
                    "poolkit.call.attempt": event.attempt,
                    "poolkit.retry.backoff": event.delay,
                    "error.type": event.kind.value,
                },
            )
        elif kind is CallRequeued:
            assert isinstance(event, CallRequeued)
            span.add_event("poolkit.requeued", {"poolkit.worker.id": event.worker_id})
        elif kind is CallCompleted:
            assert isinstance(event, CallCompleted)
            del self._spans[event.call]
            span.set_attribute("poolkit.call.outcome", "ok")
            self._finish(span, event.attempt, event.run_time, event.cpu_time)
        else:
            assert isinstance(event, CallFailed)
            del self._spans[event.call]
            span.set_attribute("poolkit.call.outcome", event.kind.value)
            span.set_attribute("error.type", event.kind.value)
            span.set_attribute("poolkit.call.phase", event.phase.value)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error[:500]))
            self._finish(span, event.attempt, event.run_time, event.cpu_time)

    @staticmethod
    def _finish(span: Any, attempt: int, run_time: float | None, cpu_time: float | None) -> None:
        attributes: dict[str, Any] = {"poolkit.call.attempt": attempt}
        if run_time is not None:
            attributes["poolkit.worker.run_time"] = run_time
        if cpu_time is not None:
            attributes["poolkit.worker.cpu_time"] = cpu_time
        span.set_attributes(attributes)
        span.end()

    def block(self, call: int) -> bytes | None:
        span = self._spans.get(call)
        if span is None:
            return None
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return proto.TRACE.pack(
            0, ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"), ctx.trace_flags
        )

    @property
    def open_spans(self) -> int:
        return len(self._spans)


_SPAN_EVENTS = frozenset({CallDispatched, CallRetried, CallRequeued, CallCompleted, CallFailed})


# --------------------------------------------------------------------------- metrics
class _Instruments:
    """The instruments of one meter provider, shared by every pool on it (an SDK keeps one
    instrument per name: a second pool creating its own would lose its callbacks)."""

    def __init__(self, provider: Any) -> None:
        from . import __version__

        meter = provider.get_meter("poolkit", __version__)
        self.pools: weakref.WeakSet[Pool] = weakref.WeakSet()
        self.calls = meter.create_counter("poolkit.calls", unit="{call}", description="Calls that ended.")
        self.duration = meter.create_histogram(
            "poolkit.call.duration",
            unit="s",
            description="Admission to result (or error), as the caller saw it.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.queue = meter.create_histogram(
            "poolkit.call.queue.duration",
            unit="s",
            description="Time an attempt waited in the pool's queue before it was sent to a worker.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.run = meter.create_histogram(
            "poolkit.call.run.duration",
            unit="s",
            description="Time the worker spent on a call (decode, run, encode), as it reported.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.retries = meter.create_counter(
            "poolkit.call.retries", unit="{retry}", description="Failed attempts sent again."
        )
        self.restarts = meter.create_counter(
            "poolkit.worker.restarts", unit="{worker}", description="Workers started to replace failed ones."
        )
        self.failures = meter.create_counter(
            "poolkit.worker.failures", unit="{worker}", description="Workers that died or were killed."
        )
        meter.create_observable_gauge(
            "poolkit.queue.depth",
            callbacks=[self._queue_depth],
            unit="{call}",
            description="Admitted calls not yet sent to a worker.",
        )
        meter.create_observable_gauge(
            "poolkit.worker.count",
            callbacks=[self._workers],
            unit="{worker}",
            description="Workers, by state.",
        )

    def _queue_depth(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        for pool in list(self.pools):
            yield Observation(pool.statistics().queued, {"poolkit.pool.name": pool.name})

    def _workers(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        from ._state import WorkerState

        for pool in list(self.pools):
            counts = dict.fromkeys(WorkerState, 0)
            for worker in pool.statistics().workers:
                counts[worker.state] += 1
            for state, n in counts.items():
                yield Observation(n, {"poolkit.pool.name": pool.name, "poolkit.worker.state": state.value})


_instruments: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()


class MetricsSink:
    """Counters and histograms fed from call and worker events; gauges read the pool's
    statistics when the SDK collects (no per-call cost)."""

    def __init__(self, provider: Any, pool: Pool) -> None:
        shared = _instruments.get(provider)
        if shared is None:
            shared = _instruments[provider] = _Instruments(provider)
        shared.pools.add(pool)
        self._shared = shared
        self._pool_ref = weakref.ref(pool)
        self._name = pool.name
        self._attrs: dict[tuple[str, ...], dict[str, str]] = {}

    def detach(self) -> None:
        pool = self._pool_ref()
        if pool is not None:
            self._shared.pools.discard(pool)

    def _attributes(self, *key: str) -> dict[str, str]:
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"poolkit.pool.name": self._name, "poolkit.call.target": key[0]}
            if len(key) > 1:
                attrs["poolkit.call.outcome"] = key[1]
            if len(key) > 2:
                attrs["error.type"] = key[2]
            if len(self._attrs) < 10_000:  # a bound: targets named per call must not leak
                self._attrs[key] = attrs
        return attrs

    def __call__(self, event: Event) -> None:
        kind = type(event)
        m = self._shared
        if kind is CallCompleted:
            assert isinstance(event, CallCompleted)
            attrs = self._attributes(event.target, "ok")
            m.calls.add(1, attrs)
            m.duration.record(event.duration, attrs)
            if event.run_time is not None:
                m.run.record(event.run_time, attrs)
        elif kind is CallFailed:
            assert isinstance(event, CallFailed)
            attrs = self._attributes(event.target, "error", event.kind.value)
            m.calls.add(1, attrs)
            m.duration.record(event.duration, attrs)
            if event.run_time is not None:
                m.run.record(event.run_time, attrs)
        elif kind is CallDispatched:
            assert isinstance(event, CallDispatched)
            m.queue.record(event.queue_wait, self._attributes(event.target))
        elif kind is CallRetried:
            assert isinstance(event, CallRetried)
            m.retries.add(1, self._attributes(event.target, "retry", event.kind.value))
        elif kind is WorkerSpawned:
            assert isinstance(event, WorkerSpawned)
            if event.reason == "replace":
                m.restarts.add(1, {"poolkit.pool.name": self._name})
        elif kind is WorkerExited:
            assert isinstance(event, WorkerExited)
            if event.failure is not None:
                m.failures.add(
                    1,
                    {
                        "poolkit.pool.name": self._name,
                        "error.type": event.failure.value,
                        "poolkit.worker.exit_cause": event.cause,
                    },
                )


# --------------------------------------------------------------------------- subscriptions
class EventStreamOverflow(RuntimeError):
    """An :class:`EventStream` consumer fell ``buffer`` events behind; ``dropped`` were lost.

    Raised by the iteration once it has delivered every event received before the gap, so
    a consumer never mistakes a partial history for a whole one."""

    def __init__(self, dropped: int, buffer: int) -> None:
        super().__init__(f"{dropped} events were dropped: the consumer fell more than {buffer} behind")
        self.dropped = dropped
        self.buffer = buffer


class EventStream:
    """``async with pool.events() as stream: async for event in stream: ...``

    Subscribes on creation, so no event emitted after :meth:`Pool.events` returns is missed;
    unsubscribes on exit. Iteration ends after the pool's ``PoolStopped``. ``types``
    restricts the stream to those event classes (and their subclasses).
    """

    def __init__(self, telemetry: Telemetry, buffer: float, types: tuple[type[Event], ...] | None) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer!r}")
        self._types = types
        self._buffer = buffer
        self._send, self._receive = anyio.create_memory_object_stream[Event](
            math.inf if buffer == math.inf else int(buffer)
        )
        self.dropped = 0
        self._leftover: collections.deque[Event] = collections.deque()
        self._unsubscribe: Callable[[], None] | None = telemetry.subscribe(
            self._on_event, None if types is None else (*types, PoolStopped)
        )

    def _on_event(self, event: Event) -> None:
        if self.dropped:
            if self._types is None or isinstance(event, self._types):
                self.dropped += 1
            return
        if self._types is None or isinstance(event, self._types):
            try:
                self._send.send_nowait(event)
            except anyio.WouldBlock:
                self.dropped = 1
                self._send.close()
                return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.close()
                return
        if type(event) is PoolStopped:
            self._send.close()

    def close(self) -> None:
        """Stop receiving events (what is buffered can still be read)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        self._send.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Unsubscribe. Events still buffered stay readable with ``list(stream)``."""
        self.close()
        self._leftover.extend(self._drain())
        self._receive.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._leftover:
            return self._leftover.popleft()
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.close()  # iterated to the end without ``async with``: release it all the same
            self._receive.close()
            if self.dropped:
                raise EventStreamOverflow(self.dropped, int(self._buffer)) from None
            raise StopAsyncIteration from None

    def __iter__(self) -> Iterator[Event]:
        """The events already buffered, without waiting (for tests and post-mortems)."""
        while self._leftover:
            yield self._leftover.popleft()
        yield from self._drain()

    def _drain(self) -> Iterator[Event]:
        while True:
            try:
                yield self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
