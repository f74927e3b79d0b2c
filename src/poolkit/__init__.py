"""poolkit: an async pool of long-lived subprocess workers that never hangs and never loses a call.

Public API is re-exported here and listed in ``__all__`` (a test guards it).

The re-exports are *lazy* (PEP 562 ``__getattr__``): ``python -m poolkit.worker`` imports this
package before the worker runtime, and the worker must import only the standard library to
start fast and stay small. Importing ``poolkit.Pool`` in the parent loads anyio, pydantic and
friends on first use; a worker never pays for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._clock import Clock, SystemClock
    from ._config import (
        BreakerPolicy,
        PoolConfig,
        RecyclePolicy,
        RestartPolicy,
        RetryPolicy,
        SessionPolicy,
        TelemetryPolicy,
        WorkerSpec,
    )
    from ._errors import (
        CallError,
        CallTimeout,
        CircuitOpen,
        FailureKind,
        PayloadTooLarge,
        Phase,
        PoolClosed,
        PoolError,
        PoolFailed,
        ProtocolError,
        QueueFull,
        QueueTimeout,
        RemoteError,
        SerializationError,
        SessionError,
        SessionLost,
        SessionUnavailable,
        WorkerCrashed,
        WorkerMemoryExceeded,
        WorkerStartupError,
        WorkerUnresponsive,
    )
    from ._events import (
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
    from ._pool import Pool, PoolStatistics, WorkerInfo
    from ._recovery import (
        RECOVERY,
        Blame,
        BreakerState,
        Recovery,
        RetryRule,
    )
    from ._session import PoolSession
    from ._state import IllegalTransition, PoolState, WorkerState
    from ._sync import SyncPool, SyncSession
    from ._telemetry import EventStream, EventStreamOverflow

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Blame": "._recovery",
    "BreakerPolicy": "._config",
    "BreakerState": "._recovery",
    "BreakerStateChanged": "._events",
    "CallCompleted": "._events",
    "CallDispatched": "._events",
    "CallError": "._errors",
    "CallFailed": "._events",
    "CallQueued": "._events",
    "CallRequeued": "._events",
    "CallRetried": "._events",
    "CallTimeout": "._errors",
    "CircuitOpen": "._errors",
    "Clock": "._clock",
    "Event": "._events",
    "EventStream": "._telemetry",
    "EventStreamOverflow": "._telemetry",
    "FailureKind": "._errors",
    "IllegalTransition": "._state",
    "Listener": "._events",
    "PayloadTooLarge": "._errors",
    "Phase": "._errors",
    "Pool": "._pool",
    "PoolClosed": "._errors",
    "PoolClosing": "._events",
    "PoolConfig": "._config",
    "PoolError": "._errors",
    "PoolFailed": "._errors",
    "PoolSession": "._session",
    "PoolStarted": "._events",
    "PoolState": "._state",
    "PoolStateChanged": "._events",
    "PoolStatistics": "._pool",
    "PoolStopped": "._events",
    "ProtocolError": "._errors",
    "QueueFull": "._errors",
    "QueueSaturated": "._events",
    "QueueTimeout": "._errors",
    "RECOVERY": "._recovery",
    "Recovery": "._recovery",
    "RecyclePolicy": "._config",
    "RemoteError": "._errors",
    "RestartPolicy": "._config",
    "RetryPolicy": "._config",
    "RetryRule": "._recovery",
    "SerializationError": "._errors",
    "SessionBound": "._events",
    "SessionEnded": "._events",
    "SessionError": "._errors",
    "SessionExpired": "._events",
    "SessionLost": "._errors",
    "SessionPolicy": "._config",
    "SessionRebound": "._events",
    "SessionStateLost": "._events",
    "SessionUnavailable": "._errors",
    "SyncPool": "._sync",
    "SyncSession": "._sync",
    "SystemClock": "._clock",
    "TelemetryPolicy": "._config",
    "WorkerCrashed": "._errors",
    "WorkerExited": "._events",
    "WorkerInfo": "._pool",
    "WorkerMemoryExceeded": "._errors",
    "WorkerOutput": "._events",
    "WorkerReady": "._events",
    "WorkerRecycled": "._events",
    "WorkerSpawned": "._events",
    "WorkerSpec": "._config",
    "WorkerStartupError": "._errors",
    "WorkerState": "._state",
    "WorkerStateChanged": "._events",
    "WorkerUnresponsive": "._errors",
}

__all__ = [
    "RECOVERY",
    "Blame",
    "BreakerPolicy",
    "BreakerState",
    "BreakerStateChanged",
    "CallCompleted",
    "CallDispatched",
    "CallError",
    "CallFailed",
    "CallQueued",
    "CallRequeued",
    "CallRetried",
    "CallTimeout",
    "CircuitOpen",
    "Clock",
    "Event",
    "EventStream",
    "EventStreamOverflow",
    "FailureKind",
    "IllegalTransition",
    "Listener",
    "PayloadTooLarge",
    "Phase",
    "Pool",
    "PoolClosed",
    "PoolClosing",
    "PoolConfig",
    "PoolError",
    "PoolFailed",
    "PoolSession",
    "PoolStarted",
    "PoolState",
    "PoolStateChanged",
    "PoolStatistics",
    "PoolStopped",
    "ProtocolError",
    "QueueFull",
    "QueueSaturated",
    "QueueTimeout",
    "Recovery",
    "RecyclePolicy",
    "RemoteError",
    "RestartPolicy",
    "RetryPolicy",
    "RetryRule",
    "SerializationError",
    "SessionBound",
    "SessionEnded",
    "SessionError",
    "SessionExpired",
    "SessionLost",
    "SessionPolicy",
    "SessionRebound",
    "SessionStateLost",
    "SessionUnavailable",
    "SyncPool",
    "SyncSession",
    "SystemClock",
    "TelemetryPolicy",
    "WorkerCrashed",
    "WorkerExited",
    "WorkerInfo",
    "WorkerMemoryExceeded",
    "WorkerOutput",
    "WorkerReady",
    "WorkerRecycled",
    "WorkerSpawned",
    "WorkerSpec",
    "WorkerStartupError",
    "WorkerState",
    "WorkerStateChanged",
    "WorkerUnresponsive",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
