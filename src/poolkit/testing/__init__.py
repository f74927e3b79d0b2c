"""poolkit.testing: the test harness for poolkit pools and the workers you run in them.

Registered as a pytest plugin (entry point ``poolkit``): install poolkit and the
``poolkit_*`` fixtures are available. See ``docs/testing.md``.

* Layers: :class:`Layer` (mock, bridge, subprocess) and :func:`pool_for`; the mock layer's
  :class:`MockScript` with :func:`returns`, :func:`raises`, :func:`crashes`, :func:`hangs`,
  :func:`delays`, :func:`runs`; the bridge layer's :class:`BridgeLauncher`.
* Deterministic helpers: :func:`wait_until`, :func:`ensure_pool_ready`, :class:`Sequencer`,
  :class:`ManualClock`, :func:`scaled`, :func:`timeout_factor`.
* Isolation: :func:`unique_name`, :func:`kill_tagged`, :class:`LeakCheck`.
* Layer-agnostic targets: :mod:`poolkit.testing.targets`.
"""

from __future__ import annotations

from . import targets
from ._bridge import BridgeLauncher
from ._context import FakeExit
from ._isolation import TAG_ENV, LeakCheck, kill_tagged, tagged_processes, unique_name
from ._layers import LAYERS, Layer, pool_for
from ._mock import MockCall, MockScript, MockWorker, crashes, delays, hangs, raises, returns, runs
from ._plugin import Isolation, PoolFactory
from ._wait import ManualClock, Sequencer, WaitTimeout, ensure_pool_ready, scaled, timeout_factor, wait_until

__all__ = [
    "LAYERS",
    "TAG_ENV",
    "BridgeLauncher",
    "FakeExit",
    "Isolation",
    "Layer",
    "LeakCheck",
    "ManualClock",
    "MockCall",
    "MockScript",
    "MockWorker",
    "PoolFactory",
    "Sequencer",
    "WaitTimeout",
    "crashes",
    "delays",
    "ensure_pool_ready",
    "hangs",
    "kill_tagged",
    "pool_for",
    "raises",
    "returns",
    "runs",
    "scaled",
    "tagged_processes",
    "targets",
    "timeout_factor",
    "unique_name",
    "wait_until",
]
