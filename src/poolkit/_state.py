"""Worker and pool lifecycle state machines: one enum, one transition table each.

Pure: no I/O, no clock of its own (the caller passes timestamps). Every state change of a
worker or of the pool goes through :meth:`StateMachine.fire`; anything not in the table
raises :class:`IllegalTransition`. Predicates such as "can this worker take a call" are
derived from the state, never kept as parallel booleans (DESIGN.md, rule 1).

Self-loops (for example BUSY --dispatch--> BUSY while pipelining) are legal but are not
recorded in the history: the history is for diagnosing lifecycles, and recording every
dispatch would put an allocation on the hot path for no insight. For the same reason a
worker's per-call flip between READY and BUSY goes through :meth:`StateMachine.flip`:
checked against the table like every change, but not recorded (after 16 calls a 32-entry
history would hold nothing else), and reported to the hook only when its owner asks.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable, Mapping
from typing import Generic, NamedTuple, TypeVar

__all__ = [
    "POOL_TRANSITIONS",
    "WORKER_TRANSITIONS",
    "IllegalTransition",
    "PoolEvent",
    "PoolState",
    "PoolStateMachine",
    "StateMachine",
    "Transition",
    "WorkerEvent",
    "WorkerState",
    "WorkerStateMachine",
]


class WorkerState(enum.Enum):
    # Members are singletons: identity hashing is right, and C-fast; Enum's own __hash__ is
    # a Python call, paid twice per transition-table lookup, several times per call.
    __hash__ = object.__hash__

    SPAWNING = "spawning"  # process being created
    STARTING = "starting"  # process exists, waiting for the READY handshake
    READY = "ready"  # idle, can take calls
    BUSY = "busy"  # one or more calls in flight, can take more up to the pipeline depth
    RETIRING = "retiring"  # being recycled: serves its sessions' calls only, then stops
    DRAINING = "draining"  # finishing in-flight calls, takes no new ones
    STOPPING = "stopping"  # asked or forced to exit, waiting for the exit
    STOPPED = "stopped"  # exited after the pool asked it to stop or killed it (terminal)
    FAILED = "failed"  # exited without being asked: crash, startup failure (terminal)

    # Predicates of the state, set on each member below: plain attributes, not properties,
    # because the pool reads them several times per call and a property is a Python call.
    accepts_calls: bool  # can take new calls
    is_terminal: bool  # the process has exited (STOPPED or FAILED)
    serves_sessions: bool  # can take calls of sessions already bound to it (RETIRING too)
    is_alive: bool  # the process may still be running (or about to)


_ACCEPTS_CALLS = frozenset({WorkerState.READY, WorkerState.BUSY})
_SERVES_SESSIONS = frozenset({WorkerState.READY, WorkerState.BUSY, WorkerState.RETIRING})
_TERMINAL = frozenset({WorkerState.STOPPED, WorkerState.FAILED})
for _state in WorkerState:
    _state.accepts_calls = _state in _ACCEPTS_CALLS
    _state.is_terminal = _state in _TERMINAL
    _state.serves_sessions = _state in _SERVES_SESSIONS
    _state.is_alive = _state not in _TERMINAL
del _state


class WorkerEvent(enum.Enum):
    # Members are singletons: identity hashing is right, and C-fast; Enum's own __hash__ is
    # a Python call, paid twice per transition-table lookup, several times per call.
    __hash__ = object.__hash__

    SPAWNED = "spawned"  # the OS process exists
    SPAWN_FAILED = "spawn_failed"  # the OS refused to start it
    HANDSHAKE = "handshake"  # READY frame received
    STARTUP_FAILED = "startup_failed"  # the worker reported STARTUP_FAILED and has exited
    DISPATCH = "dispatch"  # a call was sent
    IDLE = "idle"  # the last in-flight call ended
    DRAIN = "drain"  # stop taking calls, finish the in-flight ones
    RETIRE = "retire"  # recycle: take no new work except calls of sessions bound to it
    STOP = "stop"  # ask (or force) the process to exit
    KILL = "kill"  # a fault (timeout, cancelled running call, protocol error): kill it now
    EXITED = "exited"  # the process is gone


_S = WorkerState
_E = WorkerEvent

#: THE worker transition table. (state, event) -> next state. Nothing else is legal.
WORKER_TRANSITIONS: Mapping[tuple[WorkerState, WorkerEvent], WorkerState] = {
    (_S.SPAWNING, _E.SPAWNED): _S.STARTING,
    (_S.SPAWNING, _E.SPAWN_FAILED): _S.FAILED,
    (_S.SPAWNING, _E.STOP): _S.STOPPED,
    (_S.STARTING, _E.HANDSHAKE): _S.READY,
    (_S.STARTING, _E.STARTUP_FAILED): _S.FAILED,
    (_S.STARTING, _E.STOP): _S.STOPPING,
    (_S.STARTING, _E.KILL): _S.STOPPING,
    (_S.STARTING, _E.EXITED): _S.FAILED,
    (_S.READY, _E.DISPATCH): _S.BUSY,
    (_S.READY, _E.DRAIN): _S.DRAINING,
    (_S.READY, _E.STOP): _S.STOPPING,
    (_S.READY, _E.KILL): _S.STOPPING,
    (_S.READY, _E.EXITED): _S.FAILED,
    (_S.BUSY, _E.DISPATCH): _S.BUSY,
    (_S.BUSY, _E.IDLE): _S.READY,
    (_S.BUSY, _E.DRAIN): _S.DRAINING,
    (_S.BUSY, _E.STOP): _S.STOPPING,
    (_S.BUSY, _E.KILL): _S.STOPPING,
    (_S.BUSY, _E.EXITED): _S.FAILED,
    (_S.READY, _E.RETIRE): _S.RETIRING,
    (_S.BUSY, _E.RETIRE): _S.RETIRING,
    (_S.RETIRING, _E.DISPATCH): _S.RETIRING,
    (_S.RETIRING, _E.IDLE): _S.RETIRING,
    (_S.RETIRING, _E.RETIRE): _S.RETIRING,
    (_S.RETIRING, _E.STOP): _S.STOPPING,
    (_S.RETIRING, _E.KILL): _S.STOPPING,
    (_S.RETIRING, _E.EXITED): _S.FAILED,
    (_S.DRAINING, _E.IDLE): _S.DRAINING,
    (_S.DRAINING, _E.STOP): _S.STOPPING,
    (_S.DRAINING, _E.KILL): _S.STOPPING,
    (_S.DRAINING, _E.EXITED): _S.FAILED,
    (_S.STOPPING, _E.IDLE): _S.STOPPING,
    (_S.STOPPING, _E.STOP): _S.STOPPING,
    (_S.STOPPING, _E.KILL): _S.STOPPING,
    (_S.STOPPING, _E.EXITED): _S.STOPPED,
}


class PoolState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"  # could not keep workers alive (startup failures past the budget)
    DRAINING = "draining"
    CLOSED = "closed"

    accepts_calls: bool  # RUNNING only; a plain attribute (set below): read on every call


for _pool_state in PoolState:
    _pool_state.accepts_calls = _pool_state is PoolState.RUNNING
del _pool_state


class PoolEvent(enum.Enum):
    START = "start"
    STARTED = "started"
    BROKEN = "broken"
    CLOSE = "close"
    CLOSED = "closed"


_P = PoolState
_PE = PoolEvent

#: THE pool lifecycle table.
POOL_TRANSITIONS: Mapping[tuple[PoolState, PoolEvent], PoolState] = {
    (_P.CREATED, _PE.START): _P.STARTING,
    (_P.CREATED, _PE.CLOSE): _P.CLOSED,
    (_P.STARTING, _PE.STARTED): _P.RUNNING,
    (_P.STARTING, _PE.BROKEN): _P.FAILED,
    (_P.STARTING, _PE.CLOSE): _P.DRAINING,
    (_P.RUNNING, _PE.BROKEN): _P.FAILED,
    (_P.RUNNING, _PE.CLOSE): _P.DRAINING,
    (_P.FAILED, _PE.BROKEN): _P.FAILED,
    (_P.FAILED, _PE.CLOSE): _P.DRAINING,
    (_P.DRAINING, _PE.BROKEN): _P.DRAINING,
    (_P.DRAINING, _PE.CLOSE): _P.DRAINING,
    (_P.DRAINING, _PE.CLOSED): _P.CLOSED,
    (_P.CLOSED, _PE.CLOSE): _P.CLOSED,
}


class IllegalTransition(RuntimeError):
    """A state machine was asked to make a move its transition table does not allow.

    This is always a bug in poolkit (or in a test driving the machine), never a condition
    callers are expected to handle.
    """

    def __init__(self, machine: str, state: enum.Enum, event: enum.Enum) -> None:
        self.machine = machine
        self.state = state
        self.event = event
        super().__init__(f"{machine}: no transition from {state.name} on {event.name}")


_St = TypeVar("_St", bound=enum.Enum)
_Ev = TypeVar("_Ev", bound=enum.Enum)


class Transition(NamedTuple, Generic[_St, _Ev]):
    from_state: _St
    to_state: _St
    event: _Ev
    reason: str
    at: float


class StateMachine(Generic[_St, _Ev]):
    """A current state, a table, and a bounded history of the changes made."""

    __slots__ = ("_clock", "_history", "_name", "_table", "on_change", "state")

    def __init__(
        self,
        name: str,
        table: Mapping[tuple[_St, _Ev], _St],
        initial: _St,
        *,
        history: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._table = table
        self.state: _St = initial
        self._history: collections.deque[Transition[_St, _Ev]] = collections.deque(maxlen=history)
        self._clock = clock
        #: Called with each recorded Transition (real changes only); the pool emits events from it.
        self.on_change: Callable[[Transition[_St, _Ev]], None] | None = None

    def can(self, event: _Ev) -> bool:
        return (self.state, event) in self._table

    def fire(self, event: _Ev, reason: str = "") -> _St:
        """Apply ``event``; return the new state. Raises IllegalTransition if not in the table."""
        old = self.state
        try:
            new = self._table[(old, event)]
        except KeyError:
            raise IllegalTransition(self._name, old, event) from None
        if new is not old:
            self.state = new
            transition = Transition(old, new, event, reason, self._clock())
            self._history.append(transition)
            if self.on_change is not None:
                self.on_change(transition)
        return new

    def flip(self, event: _Ev, *, report: bool) -> _St:
        """Apply ``event`` like :meth:`fire`, for a change that happens on every call (a
        worker's READY <-> BUSY): the table still decides, but the history does not record it,
        and ``on_change`` hears of it only when ``report`` (the pool asks while it builds call
        events: those are its only use for it). ~25 bytecodes where :meth:`fire` and the
        pool's hook take ~100, twice per call."""
        old = self.state
        try:
            new = self._table[(old, event)]
        except KeyError:
            raise IllegalTransition(self._name, old, event) from None
        self.state = new
        if report and new is not old and self.on_change is not None:
            self.on_change(Transition(old, new, event, "", self._clock()))
        return new

    @property
    def history(self) -> tuple[Transition[_St, _Ev], ...]:
        return tuple(self._history)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} {self.state.name}>"


class WorkerStateMachine(StateMachine[WorkerState, WorkerEvent]):
    __slots__ = ()

    def __init__(self, name: str, *, history: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, WORKER_TRANSITIONS, WorkerState.SPAWNING, history=history, clock=clock)


class PoolStateMachine(StateMachine[PoolState, PoolEvent]):
    __slots__ = ()

    def __init__(self, name: str, *, history: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, POOL_TRANSITIONS, PoolState.CREATED, history=history, clock=clock)
