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
    from ._config import PoolConfig, WorkerSpec
    from ._errors import (
        CallError,
        CallTimeout,
        FailureKind,
        PayloadTooLarge,
        Phase,
        PoolClosed,
        PoolError,
        PoolFailed,
        ProtocolError,
        QueueFull,
        RemoteError,
        SerializationError,
        WorkerCrashed,
        WorkerStartupError,
    )
    from ._events import (
        CallCompleted,
        CallDispatched,
        CallFailed,
        CallQueued,
        CallRequeued,
        Event,
        PoolStateChanged,
        WorkerExited,
        WorkerStateChanged,
    )
    from ._pool import Pool, PoolStatistics, WorkerInfo
    from ._state import IllegalTransition, PoolState, WorkerState
    from ._sync import SyncPool

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "PoolConfig": "._config",
    "WorkerSpec": "._config",
    "CallCompleted": "._events",
    "CallDispatched": "._events",
    "CallFailed": "._events",
    "CallQueued": "._events",
    "CallRequeued": "._events",
    "Event": "._events",
    "PoolStateChanged": "._events",
    "WorkerExited": "._events",
    "WorkerStateChanged": "._events",
    "CallError": "._errors",
    "CallTimeout": "._errors",
    "FailureKind": "._errors",
    "PayloadTooLarge": "._errors",
    "Phase": "._errors",
    "PoolClosed": "._errors",
    "PoolError": "._errors",
    "PoolFailed": "._errors",
    "ProtocolError": "._errors",
    "QueueFull": "._errors",
    "RemoteError": "._errors",
    "SerializationError": "._errors",
    "WorkerCrashed": "._errors",
    "WorkerStartupError": "._errors",
    "Pool": "._pool",
    "PoolStatistics": "._pool",
    "WorkerInfo": "._pool",
    "IllegalTransition": "._state",
    "PoolState": "._state",
    "WorkerState": "._state",
    "SyncPool": "._sync",
}

__all__ = [
    "CallCompleted",
    "CallDispatched",
    "CallError",
    "CallFailed",
    "CallQueued",
    "CallRequeued",
    "CallTimeout",
    "Event",
    "FailureKind",
    "IllegalTransition",
    "PayloadTooLarge",
    "Phase",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolFailed",
    "PoolState",
    "PoolStateChanged",
    "PoolStatistics",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "SyncPool",
    "WorkerCrashed",
    "WorkerExited",
    "WorkerInfo",
    "WorkerSpec",
    "WorkerStartupError",
    "WorkerState",
    "WorkerStateChanged",
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
