"""The public API: poolkit.__all__ is complete, sorted, and every name resolves."""

from __future__ import annotations

import tomllib

import pytest

import poolkit
from _util import TESTS_DIR

EXPECTED = {
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
    "RECOVERY",
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
}


def test_all_is_sorted_and_complete() -> None:
    """__all__ lists exactly the expected public names, sorted (constants, then classes, then
    the rest, as ruff's RUF022 keeps it), without duplicates."""

    def order(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert poolkit.__all__ == sorted(poolkit.__all__, key=order)
    assert len(poolkit.__all__) == len(set(poolkit.__all__))
    assert set(poolkit.__all__) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_resolves(name: str) -> None:
    """Each name in __all__ is an attribute of poolkit (lazily imported) and is not None."""
    assert getattr(poolkit, name) is not None


def test_public_names_are_the_private_modules_objects() -> None:
    """The lazy re-exports are the very objects of the modules defining them."""
    from poolkit._errors import PoolError
    from poolkit._pool import Pool

    assert poolkit.Pool is Pool
    assert poolkit.PoolError is PoolError
    assert issubclass(poolkit.CallTimeout, poolkit.CallError)
    assert issubclass(poolkit.CallTimeout, TimeoutError)
    assert issubclass(poolkit.PoolClosed, poolkit.PoolError)


def test_dir_lists_the_public_names() -> None:
    """dir(poolkit) shows every public name."""
    assert set(poolkit.__all__) <= set(dir(poolkit))


def test_unknown_attribute_raises_attribute_error() -> None:
    """A name that is not exported raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_name"):
        poolkit.no_such_name  # noqa: B018


def test_star_import_gives_the_public_names() -> None:
    """``from poolkit import *`` binds exactly __all__."""
    namespace: dict[str, object] = {}
    exec("from poolkit import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPECTED


def test_version_matches_pyproject() -> None:
    """__version__ is the version declared in pyproject.toml."""
    with open(TESTS_DIR.parent / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert poolkit.__version__ == project["version"]
