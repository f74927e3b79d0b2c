"""An open-loop load generator for pools: offered load fixed in advance, latency from intent.

A closed-loop generator (send, wait for the answer, send the next) slows down with the pool
it measures, so the calls that would have waited are never sent and the worst latencies
never recorded ("coordinated omission"). :func:`run_load` is open loop:

* a :class:`LoadProfile` (``constant``, ``ramp``, ``spike``, ``sustained``, or a
  concatenation with :meth:`LoadProfile.then`) fixes every call's *intended* send time up
  front (:meth:`LoadProfile.schedule`; evenly spaced, or Poisson arrivals from a seed);
* a scheduler sleeps until each intended time and starts that call in its own task (one
  task per call in flight, in one task group), whatever the calls before it are doing;
* each call's latency is measured *from its intended send time* to its end, so time spent
  waiting for the generator, for admission or in the queue all counts.

Which operation each call runs is drawn by weight from a seeded RNG; the seed is in the
report, so a run's schedule and mix can be replayed exactly (:func:`plan_load`). Every
clock read is :func:`anyio.current_time`, so a run under trio's ``MockClock`` takes no real
time and has exact latencies.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import anyio

from .._call import describe_target
from .._errors import FailureKind, PoolError
from .._events import CallCompleted, CallFailed, CallQueued, Event
from .._pool import Pool
from ._monitor import LatencySummary, MonitorSummary, PoolMonitor, _table

__all__ = [
    "CallOutcome",
    "LoadProfile",
    "LoadReport",
    "Operation",
    "OperationStats",
    "PlannedCall",
    "Segment",
    "plan_load",
    "run_load",
]

Arrivals = Literal["uniform", "poisson"]
Seed = int | str | None


def _check_rate(name: str, rate: float) -> float:
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError(f"{name} must be a finite rate >= 0 (calls/s), got {rate!r}")
    return float(rate)


def _check_duration(name: str, seconds: float) -> float:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a finite duration > 0 (s), got {seconds!r}")
    return float(seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """``duration`` seconds whose rate goes linearly from ``start_rate`` to ``end_rate`` (calls/s)."""

    duration: float
    start_rate: float
    end_rate: float

    def __post_init__(self) -> None:
        _check_duration("duration", self.duration)
        _check_rate("start_rate", self.start_rate)
        _check_rate("end_rate", self.end_rate)

    @property
    def calls(self) -> float:
        """The expected number of calls: the integral of the rate."""
        return (self.start_rate + self.end_rate) / 2 * self.duration

    def rate_at(self, t: float) -> float:
        return self.start_rate + (self.end_rate - self.start_rate) * t / self.duration

    def cumulative(self, t: float) -> float:
        """Expected calls in ``[0, t]``."""
        return self.start_rate * t + (self.end_rate - self.start_rate) * t * t / (2 * self.duration)

    def time_for(self, calls: float) -> float:
        """The inverse of :meth:`cumulative`: when the ``calls``-th expected call is due."""
        if calls <= 0:
            return 0.0
        r0 = self.start_rate
        a = (self.end_rate - r0) / (2 * self.duration)
        # a t^2 + r0 t - calls = 0, in the form that is stable for a -> 0 and a < 0
        denominator = r0 + math.sqrt(max(r0 * r0 + 4 * a * calls, 0.0))
        t = 2 * calls / denominator if denominator > 0 else self.duration
        return min(max(t, 0.0), self.duration)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadProfile:
    """Offered load over time: consecutive :class:`Segment` s of linearly changing rate.

    Build with :meth:`constant`, :meth:`sustained`, :meth:`ramp`, :meth:`spike`; join with
    :meth:`then`. :meth:`schedule` turns it into intended send times.
    """

    segments: tuple[Segment, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a LoadProfile needs at least one segment")

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def constant(cls, rate: float, duration: float) -> LoadProfile:
        """``rate`` calls/s for ``duration`` seconds."""
        return cls((Segment(duration, rate, rate),), f"constant({rate:g}/s, {duration:g}s)")

    @classmethod
    def sustained(cls, rate: float, duration: float) -> LoadProfile:
        """Same as :meth:`constant` (the name reads better for long soak runs)."""
        return cls((Segment(duration, rate, rate),), f"sustained({rate:g}/s, {duration:g}s)")

    @classmethod
    def ramp(cls, start_rate: float, end_rate: float, duration: float) -> LoadProfile:
        """A rate going linearly from ``start_rate`` to ``end_rate`` over ``duration`` seconds."""
        return cls(
            (Segment(duration, start_rate, end_rate),),
            f"ramp({start_rate:g}->{end_rate:g}/s, {duration:g}s)",
        )

    @classmethod
    def spike(
        cls, base_rate: float, peak_rate: float, *, at: float, width: float, duration: float
    ) -> LoadProfile:
        """``base_rate`` for ``duration`` seconds, except ``peak_rate`` during ``[at, at + width)``."""
        _check_duration("duration", duration)
        _check_duration("width", width)
        if not (at >= 0 and at + width <= duration):
            raise ValueError(f"the spike [{at!r}, {at!r} + {width!r}) must lie within [0, {duration!r}]")
        parts = [(at, base_rate), (width, peak_rate), (duration - at - width, base_rate)]
        return cls(
            tuple(Segment(d, r, r) for d, r in parts if d > 0),
            f"spike({base_rate:g}/s, {peak_rate:g}/s at {at:g}s for {width:g}s, {duration:g}s)",
        )

    def then(self, other: LoadProfile) -> LoadProfile:
        """This profile followed by ``other``."""
        return LoadProfile(self.segments + other.segments, f"{self} + {other}")

    # ---- the rate function -------------------------------------------------------------------
    @property
    def duration(self) -> float:
        return math.fsum(s.duration for s in self.segments)

    @property
    def expected_calls(self) -> float:
        """The integral of the rate over the profile."""
        return math.fsum(s.calls for s in self.segments)

    @property
    def mean_rate(self) -> float:
        return self.expected_calls / self.duration

    def _locate(self, t: float) -> tuple[Segment, float, float]:
        """The segment holding time ``t``, ``t`` within it, and the calls due before it."""
        before = 0.0
        for segment in self.segments[:-1]:
            if t < segment.duration:
                return segment, t, before
            t -= segment.duration
            before += segment.calls
        return self.segments[-1], min(t, self.segments[-1].duration), before

    def rate_at(self, t: float) -> float:
        """The intended rate (calls/s) at ``t`` seconds from the start; 0 outside the profile."""
        if t < 0 or t > self.duration:
            return 0.0
        segment, offset, _ = self._locate(t)
        return segment.rate_at(offset)

    def cumulative(self, t: float) -> float:
        """Expected calls due in ``[0, t]``."""
        if t <= 0:
            return 0.0
        segment, offset, before = self._locate(min(t, self.duration))
        return before + segment.cumulative(offset)

    def schedule(self, *, seed: Seed = None, arrivals: Arrivals = "uniform") -> tuple[float, ...]:
        """Intended send times (seconds from the start, ascending), a pure function of the arguments.

        ``uniform``: the k-th call (k = 0, 1, ...) is due when :meth:`cumulative` reaches k, so
        a constant rate gives evenly spaced calls starting at 0 and ``floor(rate * duration)``
        of them. ``poisson``: a non-homogeneous Poisson process with this rate (unit-rate
        exponential gaps mapped through the inverse of :meth:`cumulative`), drawn from ``seed``.
        """
        if arrivals not in ("uniform", "poisson"):
            raise ValueError(f"arrivals must be 'uniform' or 'poisson', got {arrivals!r}")
        total = self.expected_calls
        rng = random.Random(seed)
        times: list[float] = []
        start = 0.0  # start time of the current segment
        before = 0.0  # calls due before the current segment
        index = 0
        segments = self.segments
        k = 0.0 if arrivals == "uniform" else rng.expovariate(1.0)
        while k < total - 1e-9:
            while index < len(segments) - 1 and k >= before + segments[index].calls:
                before += segments[index].calls
                start += segments[index].duration
                index += 1
            times.append(start + segments[index].time_for(k - before))
            k = k + 1.0 if arrivals == "uniform" else k + rng.expovariate(1.0)
        return tuple(times)

    def __str__(self) -> str:
        return self.name or " + ".join(
            f"{s.start_rate:g}->{s.end_rate:g}/s for {s.duration:g}s" for s in self.segments
        )


@dataclasses.dataclass(frozen=True)
class Operation:
    """One kind of call in the mix: ``pool.call(target, *args, timeout=timeout, idempotent=idempotent)``.

    ``weight`` is its relative share of the calls. ``idempotent`` goes to ``pool.call``: the
    pool may then retry the call on another worker after a worker fault (run_load itself never
    retries; a retried call is one outcome). An operation whose target fails
    (``targets.fail``) is error injection under load.
    """

    target: str | Callable[..., Any]
    args: tuple[Any, ...] = ()
    weight: float = 1.0
    idempotent: bool = False
    timeout: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"weight must be a finite number > 0, got {self.weight!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")

    @property
    def label(self) -> str:
        return self.name or describe_target(self.target)


DEFAULT_OPERATIONS: tuple[Operation, ...] = (Operation("poolkit.testing.targets:echo", (None,)),)


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedCall:
    index: int
    at: float  # intended send time, seconds from the start of the run
    operation: Operation


def plan_load(
    profile: LoadProfile,
    operations: Sequence[Operation] = DEFAULT_OPERATIONS,
    *,
    seed: Seed,
    arrivals: Arrivals = "uniform",
) -> tuple[PlannedCall, ...]:
    """Every call of a run, decided in advance: intended time and operation (drawn by weight).

    Pure: the same arguments give the same plan. The arrival times and the operation mix use
    independent streams of ``seed``, so changing the mix does not move the send times.
    """
    if not operations:
        raise ValueError("run_load needs at least one Operation")
    times = profile.schedule(seed=seed, arrivals=arrivals)
    mix_rng = random.Random(f"poolkit.load.mix/{seed!r}")
    if len(operations) == 1:
        chosen: list[Operation] = [operations[0]] * len(times)
    else:
        chosen = mix_rng.choices(list(operations), weights=[o.weight for o in operations], k=len(times))
    return tuple(PlannedCall(i, at, op) for i, (at, op) in enumerate(zip(times, chosen, strict=True)))


@dataclasses.dataclass(frozen=True, slots=True)
class CallOutcome:
    """What happened to one planned call (times on the :func:`anyio.current_time` clock)."""

    index: int
    operation: str
    intended: float
    sent: float
    ended: float
    kind: FailureKind | None  # None: completed

    @property
    def latency(self) -> float:
        """From the intended send time to the end: queueing anywhere is included."""
        return self.ended - self.intended

    @property
    def lag(self) -> float:
        """How late the call was actually sent."""
        return self.sent - self.intended


@dataclasses.dataclass(frozen=True, slots=True)
class OperationStats:
    offered: int
    completed: int
    failed: int


@dataclasses.dataclass(frozen=True, slots=True)
class LoadReport:
    """The result of :func:`run_load`; ``str()`` renders it as a table."""

    profile: LoadProfile
    seed: Seed
    arrivals: Arrivals
    offered: int  # calls planned (and, unless the run was cut short, sent)
    sent: int
    completed: int
    failed: Mapping[FailureKind, int]
    lost: int  # admitted or started but never ended: must be 0
    elapsed: float  # first intended send to the last call's end
    latency: LatencySummary  # intended send -> end, every ended call
    pool_latency: LatencySummary  # admission -> end, as the pool measures it (CallCompleted/Failed)
    max_lag: float
    mean_lag: float
    operations: Mapping[str, OperationStats]
    outcomes: tuple[CallOutcome, ...]
    monitor: MonitorSummary

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def offered_rate(self) -> float:
        return self.offered / self.profile.duration

    @property
    def throughput(self) -> float:
        """Completed calls per second of the run."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        failures = ", ".join(
            f"{k.value}: {n}" for k, n in sorted(self.failed.items(), key=lambda i: i[0].value)
        )
        rows = [
            ("offered", f"{self.offered} calls ({self.offered_rate:.1f}/s over {self.profile.duration:g}s)"),
            ("sent", str(self.sent)),
            ("completed", str(self.completed)),
            ("failed", f"{self.failed_total}" + (f" ({failures})" if failures else "")),
            ("lost", str(self.lost)),
            ("throughput", f"{self.throughput:.1f}/s over {self.elapsed:.3f}s"),
            ("latency (from intended send)", self.latency.row()),
            ("latency (pool: admission to end)", self.pool_latency.row()),
            ("scheduler lag", f"max {self.max_lag * 1000:.2f}ms, mean {self.mean_lag * 1000:.2f}ms"),
        ]
        rows.append(("operations", str(len(self.operations))))
        rows += [
            (f"  {label}", f"{s.offered} offered, {s.completed} ok, {s.failed} failed")
            for label, s in self.operations.items()
        ]
        return _table(f"LoadReport {self.profile} arrivals={self.arrivals} seed={self.seed!r}", rows)


# The load task (run token, planned index) a pool event is emitted from: CallQueued, CallCompleted
# and CallFailed are emitted synchronously in the caller's task, so this attributes them exactly.
_current: contextvars.ContextVar[tuple[object, int] | None] = contextvars.ContextVar(
    "poolkit_load_call", default=None
)


async def run_load(
    pool: Pool,
    profile: LoadProfile,
    operations: Sequence[Operation] = DEFAULT_OPERATIONS,
    *,
    seed: Seed = None,
    arrivals: Arrivals = "uniform",
    drain_timeout: float | None = None,
) -> LoadReport:
    """Offer ``profile`` to a started ``pool`` open loop and report what happened.

    Each call starts at its intended time in its own task, whatever earlier calls are doing,
    and its latency counts from that intended time. After the last send, the run waits for
    the calls still open; with ``drain_timeout`` it cancels them after that many seconds
    (they end as ``CANCELLED`` failures). ``seed=None`` draws a seed, recorded in the report.

    ``lost`` counts calls that started but recorded no outcome, plus calls of this run the
    pool admitted (``CallQueued``) but never ended (``CallCompleted``/``CallFailed``); the pool
    guarantees it is 0.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    plan = plan_load(profile, operations, seed=seed, arrivals=arrivals)
    token = object()
    outcomes: list[CallOutcome | None] = [None] * len(plan)
    admitted: set[int] = set()  # plan indexes the pool admitted and has not ended
    pool_latencies: list[float] = []
    started = 0
    open_tasks = 0
    all_ended = anyio.Event()

    def on_event(event: Event) -> None:
        current = _current.get()
        if current is None or current[0] is not token:
            return
        if isinstance(event, CallQueued):
            admitted.add(current[1])
        elif isinstance(event, CallCompleted | CallFailed):
            admitted.discard(current[1])
            pool_latencies.append(event.duration)

    async def one_call(planned: PlannedCall, intended: float) -> None:
        nonlocal open_tasks
        _current.set((token, planned.index))
        sent = anyio.current_time()
        op = planned.operation
        kind: FailureKind | None = None
        try:
            await pool.call(op.target, *op.args, timeout=op.timeout, idempotent=op.idempotent)
        except PoolError as exc:
            kind = exc.kind
        except anyio.get_cancelled_exc_class():
            outcomes[planned.index] = CallOutcome(
                planned.index, op.label, intended, sent, anyio.current_time(), FailureKind.CANCELLED
            )
            raise
        finally:
            open_tasks -= 1
            if open_tasks == 0 and started == len(plan):
                all_ended.set()
        outcomes[planned.index] = CallOutcome(
            planned.index, op.label, intended, sent, anyio.current_time(), kind
        )

    # The report needs the monitor's counts, gauges and latencies, not its event list: keeping
    # every event (three or more per call) would hold ~1M objects in a 5-minute run at 1,000/s,
    # and the garbage collector's full passes over them stall the event loop (~0.1 s at 60 s).
    with PoolMonitor(pool, maxlen=0) as monitor:
        unsubscribe = pool.subscribe(on_event)
        try:
            async with anyio.create_task_group() as tg:
                t0 = anyio.current_time()
                for planned in plan:
                    intended = t0 + planned.at
                    await anyio.sleep_until(intended)
                    started += 1
                    open_tasks += 1
                    tg.start_soon(one_call, planned, intended, name=f"poolkit load call {planned.index}")
                if open_tasks == 0:
                    all_ended.set()
                if drain_timeout is not None:
                    with anyio.move_on_after(drain_timeout):
                        await all_ended.wait()
                    tg.cancel_scope.cancel()
            t_end = anyio.current_time()
        finally:
            unsubscribe()

    ended = [o for o in outcomes if o is not None]
    failed: dict[FailureKind, int] = {}
    per_op: dict[str, list[int]] = {}
    for p in plan:
        per_op.setdefault(p.operation.label, [0, 0, 0])[0] += 1
    for o in ended:
        stats = per_op[o.operation]
        if o.kind is None:
            stats[1] += 1
        else:
            stats[2] += 1
            failed[o.kind] = failed.get(o.kind, 0) + 1
    lags = [o.lag for o in ended]
    last_end = max((o.ended for o in ended), default=t_end)
    return LoadReport(
        profile=profile,
        seed=seed,
        arrivals=arrivals,
        offered=len(plan),
        sent=started,
        completed=sum(1 for o in ended if o.kind is None),
        failed=failed,
        lost=(started - len(ended)) + len(admitted),
        elapsed=last_end - t0,
        latency=LatencySummary.of(o.latency for o in ended),
        pool_latency=LatencySummary.of(pool_latencies),
        max_lag=max(lags, default=0.0),
        mean_lag=math.fsum(lags) / len(lags) if lags else 0.0,
        operations={label: OperationStats(*s) for label, s in per_op.items()},
        outcomes=tuple(ended),
        monitor=monitor.summary(),
    )
