"""A pool monitor: one subscriber that keeps the event stream, counts, gauges and latencies.

:class:`PoolMonitor` listens to :meth:`Pool.subscribe` while it is entered (``with`` or
``async with``) and keeps:

* the events (all of them, or the last ``maxlen``), counts per event type and of failures
  per :class:`~poolkit.FailureKind`;
* gauges derived only from events: calls queued, calls in flight (dispatched to a worker and
  not ended), workers per :class:`~poolkit.WorkerState`, and the peaks of the first two;
* every call's latency (``duration`` of ``CallCompleted``/``CallFailed``: admission to end),
  with exact percentiles (:func:`percentile`, nearest rank).

It is a plain listener: it does its bookkeeping synchronously inside the pool's and never
calls back into the pool.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar

from .._errors import FailureKind
from .._events import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    Event,
    WorkerExited,
    WorkerStateChanged,
)
from .._pool import Pool
from .._state import WorkerState

__all__ = ["LatencySummary", "MonitorSummary", "PoolMonitor", "percentile"]

E = TypeVar("E", bound=Event)

#: The percentiles every summary reports, in percent.
SUMMARY_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


def percentile(values: Iterable[float], q: float) -> float:
    """The exact ``q``-th percentile (``0 <= q <= 100``) of ``values``, by the nearest-rank method.

    The result is always one of the values: the smallest ``v`` such that at least ``q`` percent
    of the values are ``<= v`` (``q == 0`` gives the minimum, ``q == 100`` the maximum). No
    interpolation, no binning. Raises ValueError on no values or ``q`` out of range.
    """
    ordered = values if isinstance(values, _Sorted) else sorted(values)
    return _nearest_rank(ordered, q)


class _Sorted(list[float]):
    """A list the caller promises is sorted (skips the sort in :func:`percentile`)."""


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    if not 0.0 <= q <= 100.0:  # also rejects nan
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    n = len(ordered)
    if n == 0:
        raise ValueError("percentile of no values")
    # rank = ceil(q/100 * n), computed on integers where possible so that 99.9 of 1000 is 999
    rank = math.ceil(round(q * n, 9) / 100.0)
    return ordered[min(max(rank, 1), n) - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class LatencySummary:
    """Exact latency statistics (seconds) of ``count`` samples; all zero when there are none."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> LatencySummary:
        ordered = _Sorted(sorted(samples))
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p50, p90, p99, p999 = (_nearest_rank(ordered, q) for q in SUMMARY_PERCENTILES)
        return cls(
            count=len(ordered),
            min=ordered[0],
            mean=math.fsum(ordered) / len(ordered),
            p50=p50,
            p90=p90,
            p99=p99,
            p999=p999,
            max=ordered[-1],
        )

    def row(self) -> str:
        """``n=.. p50=.. p90=.. p99=.. p99.9=.. max=..`` in milliseconds."""
        return (
            f"n={self.count} p50={_ms(self.p50)} p90={_ms(self.p90)} p99={_ms(self.p99)} "
            f"p99.9={_ms(self.p999)} max={_ms(self.max)}"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


@dataclasses.dataclass(frozen=True, slots=True)
class MonitorSummary:
    """A frozen snapshot of a :class:`PoolMonitor`; ``str()`` renders it as a table."""

    pool: str
    events: int
    counts: Mapping[str, int]  # event type name -> count
    failures: Mapping[FailureKind, int]
    queued: int
    in_flight: int
    max_queued: int
    max_in_flight: int
    workers: Mapping[WorkerState, int]
    latency: LatencySummary

    @property
    def completed(self) -> int:
        return self.counts.get(CallCompleted.__name__, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(CallFailed.__name__, 0)

    def __str__(self) -> str:
        rows: list[tuple[str, str]] = [("events", str(self.events))]
        rows += [(f"  {name}", str(n)) for name, n in sorted(self.counts.items())]
        rows.append(("failures", str(sum(self.failures.values()))))
        rows += [(f"  {kind.value}", str(n)) for kind, n in sorted(self.failures.items(), key=_kind_key)]
        rows += [
            ("queued (now / max)", f"{self.queued} / {self.max_queued}"),
            ("in flight (now / max)", f"{self.in_flight} / {self.max_in_flight}"),
            ("workers", ", ".join(f"{n} {s.value}" for s, n in self.workers.items()) or "none"),
            ("latency", self.latency.row()),
        ]
        return _table(f"PoolMonitor {self.pool!r}", rows)


def _kind_key(item: tuple[FailureKind, int]) -> str:
    return item[0].value


def _table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join([title, *(f"  {label.ljust(width)}  {value}" for label, value in rows)])


class PoolMonitor:
    """Record a pool's events while entered: ``with PoolMonitor(pool) as mon:`` (or ``async with``).

    ``maxlen`` bounds the kept event list (counts, gauges and latencies always cover every
    event). Subscribing late is fine: it takes the live workers' states from
    ``pool.statistics()``, and calls already admitted are tracked from their next event. :meth:`start`/:meth:`stop` do what entering and
    leaving do.
    """

    def __init__(self, pool: Pool, *, maxlen: int | None = None) -> None:
        self.pool = pool
        self._events: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._total = 0
        self._counts: collections.Counter[type[Event]] = collections.Counter()
        self._failures: collections.Counter[FailureKind] = collections.Counter()
        self._latencies: list[float] = []
        self._calls: dict[int, bool] = {}  # open call seq -> dispatched to a worker
        self._queued = 0
        self._in_flight = 0
        self._max_queued = 0
        self._max_in_flight = 0
        self._workers: dict[str, WorkerState] = {}
        self._unsubscribe: Callable[[], None] | None = None

    # ---- subscription ------------------------------------------------------------------------
    def start(self) -> Self:
        if self._unsubscribe is not None:
            raise RuntimeError("this PoolMonitor is already subscribed")
        self._unsubscribe = self.pool.subscribe(self._on_event)
        for worker in self.pool.statistics().workers:  # a late subscriber: take the workers as they are
            self._workers.setdefault(worker.id, worker.state)
        return self

    def stop(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    @property
    def active(self) -> bool:
        return self._unsubscribe is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- the listener ------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self._events.append(event)
        self._total += 1
        self._counts[type(event)] += 1
        if isinstance(event, CallQueued | CallRequeued):
            self._set_call(event.call, dispatched=False)
        elif isinstance(event, CallDispatched):
            self._set_call(event.call, dispatched=True)
        elif isinstance(event, CallCompleted | CallFailed):
            self._end_call(event.call)
            self._latencies.append(event.duration)
            if isinstance(event, CallFailed):
                self._failures[event.kind] += 1
        elif isinstance(event, WorkerStateChanged):
            self._workers[event.worker_id] = event.to_state
        elif isinstance(event, WorkerExited):
            self._workers.pop(event.worker_id, None)

    def _set_call(self, seq: int, *, dispatched: bool) -> None:
        self._end_call(seq)
        self._calls[seq] = dispatched
        if dispatched:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        else:
            self._queued += 1
            self._max_queued = max(self._max_queued, self._queued)

    def _end_call(self, seq: int) -> None:
        dispatched = self._calls.pop(seq, None)
        if dispatched is True:
            self._in_flight -= 1
        elif dispatched is False:
            self._queued -= 1

    # ---- queries -----------------------------------------------------------------------------
    @property
    def events(self) -> tuple[Event, ...]:
        """The kept events, oldest first (the last ``maxlen`` if bounded)."""
        return tuple(self._events)

    def events_of(self, event_type: type[E]) -> list[E]:
        """The kept events that are instances of ``event_type``, oldest first."""
        return [e for e in self._events if isinstance(e, event_type)]

    def count(self, event_type: type[Event] = Event) -> int:
        """How many events of ``event_type`` (subclasses included) were seen; all kept or not."""
        return sum(n for t, n in self._counts.items() if issubclass(t, event_type))

    def failures(self, kind: FailureKind | None = None) -> int:
        """How many calls failed (with ``kind``, or of any kind)."""
        return self._failures[kind] if kind is not None else sum(self._failures.values())

    @property
    def failures_by_kind(self) -> dict[FailureKind, int]:
        return dict(self._failures)

    @property
    def queued(self) -> int:
        """Calls admitted or requeued and not yet dispatched or ended (from events)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Calls dispatched to a worker and not yet ended (from events).

        A call ends when its caller settles it (``CallCompleted``/``CallFailed``), which may be
        just after its worker took the next call, so between events this can briefly exceed
        ``pool.statistics().in_flight`` (the workers' own load); the two agree once callers
        have run."""
        return self._in_flight

    @property
    def open_calls(self) -> frozenset[int]:
        """Sequence numbers of the calls seen admitted (or in flight) that have not ended."""
        return frozenset(self._calls)

    def workers(self) -> dict[WorkerState, int]:
        """Live workers per state, from WorkerStateChanged/WorkerExited events."""
        return dict(collections.Counter(self._workers.values()))

    def workers_in(self, state: WorkerState) -> int:
        return sum(1 for s in self._workers.values() if s is state)

    @property
    def latencies(self) -> tuple[float, ...]:
        """Every ended call's duration (admission to end), in the order the calls ended."""
        return tuple(self._latencies)

    def percentile(self, q: float) -> float:
        """The exact ``q``-th percentile (0..100) of the call latencies seen so far."""
        return percentile(self._latencies, q)

    def latency(self) -> LatencySummary:
        return LatencySummary.of(self._latencies)

    def summary(self) -> MonitorSummary:
        return MonitorSummary(
            pool=self.pool.name,
            events=self._total,
            counts={t.__name__: n for t, n in sorted(self._counts.items(), key=lambda i: i[0].__name__)},
            failures=dict(self._failures),
            queued=self._queued,
            in_flight=self._in_flight,
            max_queued=self._max_queued,
            max_in_flight=self._max_in_flight,
            workers=dict(sorted(self.workers().items(), key=lambda i: i[0].value)),
            latency=self.latency(),
        )

    def __iter__(self) -> Iterator[Event]:
        return iter(tuple(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return f"<PoolMonitor {self.pool.name!r} {state}: {self._total} events>"
