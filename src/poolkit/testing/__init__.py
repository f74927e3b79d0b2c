"""poolkit.testing: the test harness for poolkit pools and the workers you run in them.

Registered as a pytest plugin (entry point ``poolkit``): install poolkit and the
``poolkit_*`` fixtures are available. See ``docs/testing.md``.

* Layers: :class:`Layer` (mock, bridge, subprocess) and :func:`pool_for`; the mock layer's
  :class:`MockScript` with :func:`returns`, :func:`raises`, :func:`crashes`, :func:`freezes`,
  :func:`hangs`, :func:`delays`, :func:`runs`; the bridge layer's :class:`BridgeLauncher`.
* Deterministic helpers: :func:`wait_until`, :func:`ensure_pool_ready` (:class:`PoolNotReady`),
  :class:`Sequencer`, :class:`ManualClock`, :func:`scaled`, :func:`timeout_factor`.
* Isolation: :func:`unique_name`, :func:`kill_tagged`, :class:`LeakCheck`, :class:`Isolation`
  (and :data:`PoolFactory`, the pool factory fixture's type): none of them imports pytest.
* Fault injection: :class:`FaultInjector` (crash, hang, partition, slow, corrupt, byzantine,
  grow_memory), real on every layer where the fault means something.
* Observing and loading a pool: :class:`PoolMonitor` (events, counts, gauges, exact latency
  :func:`percentile` s) and the open-loop :func:`run_load` with a :class:`LoadProfile`.
* Chaos: scenarios (:data:`SCENARIOS`, :func:`run_scenario`) recorded in a :class:`History`
  and judged by :func:`check_history` / :func:`assert_history_ok`; seeds via :func:`chaos_seed`.
* Layer-agnostic targets: :mod:`poolkit.testing.targets`.

The re-exports are *lazy* (PEP 562 ``__getattr__``, as in :mod:`poolkit`): worker processes
import ``poolkit.testing.targets`` and ``poolkit.testing._context`` (your own layer-agnostic
targets read ``_context.in_process``), which imports this package first. An eager import here
would load pytest (the plugin) and the whole harness into every worker: ~0.4 s per worker
start, and a ``ModuleNotFoundError`` where pytest is not installed. A name is imported from
its private module on first use; the ``TYPE_CHECKING`` block lets type checkers and IDEs see
every name. A test guards ``__all__`` and that a worker-side import loads no pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import targets
    from ._bridge import BridgeLauncher
    from ._chaos import (
        SCENARIOS,
        History,
        RetryCheck,
        assert_history_ok,
        chaos_seed,
        check_history,
        run_scenario,
    )
    from ._context import FakeExit
    from ._faults import (
        ByzantineMode,
        CorruptMode,
        CrashMode,
        CrashReport,
        FaultError,
        FaultHandle,
        FaultInjector,
        FaultNotSupported,
        WireRecord,
    )
    from ._isolation import TAG_ENV, Isolation, LeakCheck, kill_tagged, tagged_processes, unique_name
    from ._layers import LAYERS, Layer, PoolFactory, pool_for
    from ._load import (
        CallOutcome,
        LoadProfile,
        LoadReport,
        Operation,
        OperationStats,
        PlannedCall,
        Segment,
        plan_load,
        run_load,
    )
    from ._mock import (
        MockCall,
        MockScript,
        MockWorker,
        crashes,
        delays,
        freezes,
        hangs,
        raises,
        returns,
        runs,
    )
    from ._monitor import LatencySummary, MonitorSummary, PoolMonitor, percentile
    from ._wait import (
        ManualClock,
        PoolNotReady,
        Sequencer,
        WaitTimeout,
        ensure_pool_ready,
        scaled,
        timeout_factor,
        wait_until,
    )

# name -> the private module that defines it. ``targets`` is a submodule, imported on first use.
_EXPORTS: dict[str, str] = {
    "LAYERS": "._layers",
    "SCENARIOS": "._chaos",
    "TAG_ENV": "._isolation",
    "BridgeLauncher": "._bridge",
    "ByzantineMode": "._faults",
    "CallOutcome": "._load",
    "CorruptMode": "._faults",
    "CrashMode": "._faults",
    "CrashReport": "._faults",
    "FakeExit": "._context",
    "FaultError": "._faults",
    "FaultHandle": "._faults",
    "FaultInjector": "._faults",
    "FaultNotSupported": "._faults",
    "History": "._chaos",
    "Isolation": "._isolation",
    "LatencySummary": "._monitor",
    "Layer": "._layers",
    "LeakCheck": "._isolation",
    "LoadProfile": "._load",
    "LoadReport": "._load",
    "ManualClock": "._wait",
    "MockCall": "._mock",
    "MockScript": "._mock",
    "MockWorker": "._mock",
    "MonitorSummary": "._monitor",
    "Operation": "._load",
    "OperationStats": "._load",
    "PlannedCall": "._load",
    "PoolFactory": "._layers",
    "PoolMonitor": "._monitor",
    "PoolNotReady": "._wait",
    "RetryCheck": "._chaos",
    "Segment": "._load",
    "Sequencer": "._wait",
    "WaitTimeout": "._wait",
    "WireRecord": "._faults",
    "assert_history_ok": "._chaos",
    "chaos_seed": "._chaos",
    "check_history": "._chaos",
    "crashes": "._mock",
    "delays": "._mock",
    "ensure_pool_ready": "._wait",
    "freezes": "._mock",
    "hangs": "._mock",
    "kill_tagged": "._isolation",
    "percentile": "._monitor",
    "plan_load": "._load",
    "pool_for": "._layers",
    "raises": "._mock",
    "returns": "._mock",
    "run_load": "._load",
    "run_scenario": "._chaos",
    "runs": "._mock",
    "scaled": "._wait",
    "tagged_processes": "._isolation",
    "timeout_factor": "._wait",
    "unique_name": "._isolation",
    "wait_until": "._wait",
}

__all__ = [
    "LAYERS",
    "SCENARIOS",
    "TAG_ENV",
    "BridgeLauncher",
    "ByzantineMode",
    "CallOutcome",
    "CorruptMode",
    "CrashMode",
    "CrashReport",
    "FakeExit",
    "FaultError",
    "FaultHandle",
    "FaultInjector",
    "FaultNotSupported",
    "History",
    "Isolation",
    "LatencySummary",
    "Layer",
    "LeakCheck",
    "LoadProfile",
    "LoadReport",
    "ManualClock",
    "MockCall",
    "MockScript",
    "MockWorker",
    "MonitorSummary",
    "Operation",
    "OperationStats",
    "PlannedCall",
    "PoolFactory",
    "PoolMonitor",
    "PoolNotReady",
    "RetryCheck",
    "Segment",
    "Sequencer",
    "WaitTimeout",
    "WireRecord",
    "assert_history_ok",
    "chaos_seed",
    "check_history",
    "crashes",
    "delays",
    "ensure_pool_ready",
    "freezes",
    "hangs",
    "kill_tagged",
    "percentile",
    "plan_load",
    "pool_for",
    "raises",
    "returns",
    "run_load",
    "run_scenario",
    "runs",
    "scaled",
    "tagged_processes",
    "targets",
    "timeout_factor",
    "unique_name",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    if name == "targets":
        value: Any = importlib.import_module(".targets", __name__)
    else:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
