"""poolkit.testing: the test harness for poolkit pools and the workers you run in them.

Registered as a pytest plugin (entry point ``poolkit``): install poolkit and the
``poolkit_*`` fixtures are available. See ``docs/testing.md``.

* Layers: :class:`Layer` (mock, bridge, subprocess) and :func:`pool_for`; the mock layer's
  :class:`MockScript` with :func:`returns`, :func:`raises`, :func:`crashes`, :func:`freezes`, :func:`hangs`,
  :func:`delays`, :func:`runs`; the bridge layer's :class:`BridgeLauncher`.
* Deterministic helpers: :func:`wait_until`, :func:`ensure_pool_ready`, :class:`Sequencer`,
  :class:`ManualClock`, :func:`scaled`, :func:`timeout_factor`.
* Isolation: :func:`unique_name`, :func:`kill_tagged`, :class:`LeakCheck`.
* Fault injection: :class:`FaultInjector` (crash, hang, partition, slow, corrupt, byzantine,
  grow_memory), real on every layer where the fault means something.
* Observing and loading a pool: :class:`PoolMonitor` (events, counts, gauges, exact latency
  :func:`percentile` s) and the open-loop :func:`run_load` with a :class:`LoadProfile`.
* Chaos: scenarios (:data:`SCENARIOS`, :func:`run_scenario`) recorded in a :class:`History`
  and judged by :func:`check_history` / :func:`assert_history_ok`; seeds via :func:`chaos_seed`.
* Layer-agnostic targets: :mod:`poolkit.testing.targets`.
"""

from __future__ import annotations

from . import targets
from ._bridge import BridgeLauncher
from ._chaos import SCENARIOS, History, RetryCheck, assert_history_ok, chaos_seed, check_history, run_scenario
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
from ._isolation import TAG_ENV, LeakCheck, kill_tagged, tagged_processes, unique_name
from ._layers import LAYERS, Layer, pool_for
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
from ._mock import MockCall, MockScript, MockWorker, crashes, delays, freezes, hangs, raises, returns, runs
from ._monitor import LatencySummary, MonitorSummary, PoolMonitor, percentile
from ._plugin import Isolation, PoolFactory
from ._wait import ManualClock, Sequencer, WaitTimeout, ensure_pool_ready, scaled, timeout_factor, wait_until

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
