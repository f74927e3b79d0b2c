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
    from ._pool import Pool, PoolStatistics, WorkerInfo
    from ._state import IllegalTransition, PoolState, WorkerState
    from ._sync import SyncPool

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "PoolConfig": "._config",
    "WorkerSpec": "._config",
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
    "CallError",
    "CallTimeout",
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
    "PoolStatistics",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "SyncPool",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerSpec",
    "WorkerStartupError",
    "WorkerState",
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
