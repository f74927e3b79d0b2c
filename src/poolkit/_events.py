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
    "CallCompleted",
    "CallDispatched",
    "CallFailed",
    "CallQueued",
    "CallRequeued",
    "Event",
    "Listener",
    "PoolStateChanged",
    "WorkerExited",
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
    expected: bool  # True when the pool asked it to stop or killed it


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


Listener = Callable[[Event], None]
