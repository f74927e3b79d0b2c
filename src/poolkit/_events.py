"""Typed, frozen records of what a pool does: one event per lifecycle step.

The pool emits each event once, synchronously, to its sinks (``poolkit._telemetry``): the
structlog sink, the OpenTelemetry trace and metric sinks, and in-process subscribers
(:meth:`Pool.subscribe`, :meth:`Pool.events`) such as monitors and the test harness. They
are all consumers of this one stream (DESIGN.md rule 9); ``docs/telemetry.md`` is the
catalog, and a test checks that it matches what the test suite sees emitted.

Two families: *lifecycle* events (pool, worker, breaker, session loss and expiry, queue
saturation, worker output) are rare and always built, because the log sink reports them;
*on-demand* events (``ON_DEMAND_EVENTS``: the ``Call*`` events, session binding records and
worker state transitions, all as frequent as calls) are built only when something can
receive them (a subscriber, tracing, metrics, or ``log_calls``), so an unobserved pool pays
one truth test per step.

Every admitted call produces ``CallQueued`` and then exactly one of ``CallCompleted`` or
``CallFailed``; the harness's history checker and the trace sink (one span per call) rely
on that. The two state-machine records (``PoolStateChanged``, ``WorkerStateChanged``) follow
every transition; the other lifecycle records carry the facts of one step (a pid, a startup
time, an exit status) that a transition alone does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ._errors import FailureKind, Phase
from ._state import PoolState, WorkerState

__all__ = [
    "CALL_EVENTS",
    "ON_DEMAND_EVENTS",
    "BreakerStateChanged",
    "CallCompleted",
    "CallDispatched",
    "CallFailed",
    "CallQueued",
    "CallRequeued",
    "CallRetried",
    "Event",
    "Listener",
    "PoolClosing",
    "PoolStarted",
    "PoolStateChanged",
    "PoolStopped",
    "QueueSaturated",
    "SessionBound",
    "SessionEnded",
    "SessionExpired",
    "SessionRebound",
    "SessionStateLost",
    "WorkerExited",
    "WorkerOutput",
    "WorkerReady",
    "WorkerRecycled",
    "WorkerSpawned",
    "WorkerStateChanged",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    pool: str
    at: float  # the event loop's clock (anyio.current_time()), seconds


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolStateChanged(Event):
    from_state: PoolState
    to_state: PoolState
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolStarted(Event):
    """``start()`` finished: ``workers`` are ready to serve."""

    workers: int
    duration: float  # seconds from start() to the last of them ready


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolClosing(Event):
    """Closing began: no new calls are admitted; with ``drain``, admitted ones may finish."""

    drain: bool
    queued: int  # admitted calls not yet sent
    in_flight: int  # calls sent to workers


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolStopped(Event):
    """Every worker is gone; the pool is CLOSED."""

    duration: float  # seconds the close took
    completed: int  # calls that returned a value over the pool's life
    failed: int  # calls that ended in an error (timeouts and cancellations included)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueueSaturated(Event):
    """An admission found the queue full: callers now wait (``queue_policy="wait"``) or are
    refused with QueueFull (``"reject"``). Emitted once per episode: again only after a call
    was admitted without waiting."""

    depth: int  # calls waiting in the queue
    limit: int  # max_queue
    policy: str  # wait | reject


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpawned(Event):
    """A worker process exists (it has a pid) and is starting up."""

    worker_id: str
    pid: int | None
    reason: str  # start | scale_up | replace (after a failure) | recycle | min_workers


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReady(Event):
    """A worker finished its handshake and takes calls."""

    worker_id: str
    pid: int | None
    startup: float  # seconds from spawn request to READY
    features: tuple[str, ...]  # what its runtime announced (protocol.md, READY)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOutput(Event):
    """One line a worker wrote to stdout or stderr (Python-level prints arrive tagged with
    the call that was running; C-level and child-process output only with the worker)."""

    worker_id: str
    pid: int | None
    stream: str  # stdout | stderr
    line: str
    call: int | None  # the pool-wide number of the call that printed it, when known


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStateChanged(Event):
    worker_id: str
    pid: int | None
    from_state: WorkerState
    to_state: WorkerState
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerExited(Event):
    worker_id: str
    pid: int | None
    returncode: int | None
    expected: bool  # True when the pool asked it to stop, or retired it
    failure: FailureKind | None = None  # why, when it was a fault: crashed, unresponsive, ...
    cause: str = ""  # how it died: segfault, abort, killed, exit, clean, ... (crash_cause)
    exit_code: int | None = None  # its exit status, when it exited
    signal: int | None = None  # the signal that ended it, when one did
    reason: str = ""  # why the pool killed it ("call timed out", "no heartbeat reply ..."), or
    # "stopped" (asked to exit), or "exited" (on its own)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecycled(Event):
    """The pool retired a healthy worker; a replacement takes its place."""

    worker_id: str
    reason: str  # calls | lifetime | memory | generation | idle


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallQueued(Event):
    call: int  # pool-wide sequence number of the call
    target: str
    idempotent: bool = False
    session: str | int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallDispatched(Event):
    call: int
    target: str
    worker_id: str
    attempt: int = 1
    queue_wait: float = 0.0  # seconds this attempt waited in the pool before being sent


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallRequeued(Event):
    """The call's worker died before it started: it goes back to the queue (never ran)."""

    call: int
    target: str
    worker_id: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallCompleted(Event):
    call: int
    target: str
    worker_id: str | None
    duration: float  # admission to result, seconds
    attempt: int = 1  # the attempt that succeeded
    run_time: float | None = None  # seconds the worker spent on it (decode, run, encode), if reported
    cpu_time: float | None = None  # CPU seconds the worker process used meanwhile, if reported


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(Event):
    call: int
    target: str
    worker_id: str | None
    kind: FailureKind
    phase: Phase
    error: str
    duration: float
    attempt: int = 1
    run_time: float | None = None  # as in CallCompleted: when the worker answered with an error
    cpu_time: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallRetried(Event):
    """A failed call is sent again (after ``delay`` seconds of backoff) as attempt ``attempt``."""

    call: int
    target: str
    worker_id: str | None  # the worker the failed attempt was on
    attempt: int  # the attempt about to be made (2 for the first retry)
    delay: float
    kind: FailureKind  # what failed the previous attempt


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    scope: str  # "pool" or a target name
    from_state: str  # closed | open | half_open
    to_state: str
    failures: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionBound(Event):
    key: str | int
    worker_id: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionRebound(Event):
    """A ``hint`` session moved to another worker; the state its old worker held is lost."""

    key: str | int
    from_worker: str | None
    worker_id: str
    reason: str  # busy | worker_gone


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionStateLost(Event):
    """The worker a session was bound to is gone (crashed, killed, recycled)."""

    key: str | int
    worker_id: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded(Event):
    """A session was ended by its user (``end_session``, leaving ``async with pool.session()``)
    and its worker told to drop its state."""

    key: str | int
    worker_id: str | None
    reason: str = "closed"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionExpired(Event):
    """A session sat idle for ``sessions.ttl`` and was dropped (its worker told to drop its state)."""

    key: str | int
    worker_id: str | None
    idle: float  # seconds since its last call ended, on the pool's clock


Listener = Callable[[Event], None]

#: The call events.
CALL_EVENTS: frozenset[type[Event]] = frozenset(
    {CallQueued, CallDispatched, CallRequeued, CallCompleted, CallFailed, CallRetried}
)
#: Events built only when something can receive them (module docstring): the call events, the
#: per-session binding records (as frequent as session calls) and worker state transitions
#: (READY -> BUSY -> READY around calls).
ON_DEMAND_EVENTS: frozenset[type[Event]] = CALL_EVENTS | {
    SessionBound,
    SessionRebound,
    SessionEnded,
    WorkerStateChanged,
}
