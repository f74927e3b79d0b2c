"""Typed, frozen records of what a pool does: one event per lifecycle step.

The pool emits each event once, synchronously, to its subscribers (:meth:`Pool.subscribe`).
Monitors, the test harness's ``wait_until`` and (later) the structlog and OpenTelemetry sinks
are all consumers of this one stream (DESIGN.md rule 9). With no subscriber the pool does no
event work beyond one truth test of its subscriber list.

Every admitted call produces ``CallQueued`` and then exactly one of ``CallCompleted`` or
``CallFailed``; the harness's history checker relies on that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ._errors import FailureKind, Phase
from ._state import PoolState, WorkerState

__all__ = [
    "BreakerStateChanged",
    "CallCompleted",
    "CallDispatched",
    "CallFailed",
    "CallQueued",
    "CallRequeued",
    "CallRetried",
    "Event",
    "Listener",
    "PoolStateChanged",
    "SessionBound",
    "SessionEnded",
    "SessionRebound",
    "SessionStateLost",
    "WorkerExited",
    "WorkerRecycled",
    "WorkerStateChanged",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    pool: str
    at: float  # the pool's clock (anyio.current_time()), seconds


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PoolStateChanged(Event):
    from_state: PoolState
    to_state: PoolState
    reason: str


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecycled(Event):
    """The pool retired a healthy worker; a replacement takes its place."""

    worker_id: str
    reason: str  # calls | lifetime | memory | generation | idle


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallQueued(Event):
    call: int  # pool-wide sequence number of the call
    target: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallDispatched(Event):
    call: int
    target: str
    worker_id: str


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(Event):
    call: int
    target: str
    worker_id: str | None
    kind: FailureKind
    phase: Phase
    error: str
    duration: float


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
    """A session was dropped (and its worker told to drop its state)."""

    key: str | int
    worker_id: str | None
    reason: str  # closed | expired


Listener = Callable[[Event], None]
