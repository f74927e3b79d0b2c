"""Call targets, handlers and helpers for unit tests over the in-memory launcher.

``poolkit.testing._bridge.BridgeLauncher`` runs its fake workers as tasks in the test's own event loop,
so everything here runs in that loop too: a sync target blocks it (as it would block a worker
process), an async target is awaited, and module-level state (gates, counters) is shared
between a test and the "workers" it drives. Targets are referred to by reference
(``pool.call(add, 1, 2)``, pickled as ``unit._targets.add``) or by name (``TARGET + "add"``).

Gates make a call hang until the test releases it, and tell the test when the call has started,
so no test ever sleeps to let something happen::

    gate = new_gate("a")
    tg.start_soon(pool.call, wait_for, "a")
    await gate.entered.wait()   # the call is running in its worker
    gate.release.set()          # let it return

Module state is reset by :func:`reset` (an autouse fixture in each test module calls it), and
each gate's events are created inside the running test, so nothing leaks between tests or
between the asyncio and trio runs.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio

from poolkit.testing._bridge import FakeExit

__all__ = [
    "GATES",
    "RUNS",
    "TARGET",
    "BadSetup",
    "Counter",
    "Gate",
    "Outcome",
    "add",
    "big_result",
    "boom",
    "crash_exit",
    "crash_segv",
    "echo",
    "hang",
    "kwargs_echo",
    "new_gate",
    "record",
    "record_or_fail",
    "reset",
    "unpicklable_result",
    "wait_for",
    "wait_then_crash",
]

#: Prefix for string targets: ``TARGET + "add"`` is ``"unit._targets:add"``.
TARGET = f"{__name__}:"


@dataclasses.dataclass
class Gate:
    """``entered`` is set when a call waiting on this gate starts; ``release`` lets it return."""

    release: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    entered: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    runs: int = 0


#: Gates by key. Create them with :func:`new_gate` inside the test (events bind to its loop).
GATES: dict[str, Gate] = {}

#: Side-effect counter: how many times :func:`record` ran with each key.
RUNS: collections.Counter[str] = collections.Counter()


def new_gate(key: str) -> Gate:
    gate = GATES[key] = Gate()
    return gate


def reset() -> None:
    GATES.clear()
    RUNS.clear()
    Counter.instances.clear()
    Counter.torn_down.clear()


# ---- sync targets ------------------------------------------------------------------------------
def add(a: Any, b: Any) -> Any:
    return a + b


def echo(x: Any) -> Any:
    return x


def kwargs_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def boom(message: str = "boom") -> None:
    raise ValueError(message)


def record(key: str) -> str:
    """Counts its runs in :data:`RUNS`: proves whether a call ever ran."""
    RUNS[key] += 1
    return key


def record_or_fail(key: str) -> str:
    """Like :func:`record`; raises ValueError(key) when ``key`` starts with "fail"."""
    RUNS[key] += 1
    if key.startswith("fail"):
        raise ValueError(key)
    return key


def crash_segv() -> None:
    """The fake worker dies as if killed by SIGSEGV (returncode -11)."""
    raise FakeExit(-11)


def crash_exit() -> None:
    """The fake worker exits with status 1 (like ``os._exit(1)``)."""
    raise FakeExit(1)


def unpicklable_result() -> Any:
    """Runs fine; its result cannot be pickled in the worker."""
    return threading.Lock()


def big_result(size: int) -> bytes:
    return b"x" * size


# ---- async targets -----------------------------------------------------------------------------
async def hang() -> None:
    await anyio.sleep_forever()


async def wait_for(key: str, value: Any = None) -> Any:
    """Signal ``GATES[key].entered``, wait for ``GATES[key].release``, return ``value``."""
    gate = GATES[key]
    gate.runs += 1
    gate.entered.set()
    await gate.release.wait()
    return value


async def wait_then_crash(key: str) -> None:
    """Like :func:`wait_for`, then the fake worker dies by SIGSEGV."""
    await wait_for(key)
    raise FakeExit(-11)


# ---- handlers ----------------------------------------------------------------------------------
class Counter:
    """A stateful handler: ``setup`` at worker start, ``teardown`` at clean worker exit."""

    instances: ClassVar[list[Counter]] = []
    torn_down: ClassVar[list[int]] = []  # the count of each instance when it was torn down

    def __init__(self) -> None:
        self.count = 0
        self.set_up = False
        Counter.instances.append(self)

    def setup(self) -> None:
        self.set_up = True

    def incr(self, by: int = 1) -> int:
        if not self.set_up:
            raise RuntimeError("incr() before setup()")
        self.count += by
        return self.count

    def teardown(self) -> None:
        Counter.torn_down.append(self.count)


class BadSetup:
    """A handler whose ``setup`` fails: every worker fails to start."""

    def setup(self) -> None:
        raise RuntimeError("setup exploded")


# ---- test helpers ------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    """What one background call produced: run ``tg.start_soon(outcome.capture, pool.call, ...)``.

    ``ended`` is set when the call returned or raised (an Exception; cancellation propagates).
    """

    value: Any = None
    error: Exception | None = None
    ended: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    async def capture(self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> None:
        try:
            self.value = await fn(*args, **kwargs)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended.set()


class Blob:
    """A picklable argument a test can hold a weak reference to."""

    def __init__(self, size: int) -> None:
        self.data = bytes(size)


class Unhashable:
    """A callable object that cannot be a dict key (``__eq__`` without ``__hash__``)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unhashable)

    __hash__ = None  # type: ignore[assignment]

    def __call__(self, x: int) -> int:
        return x * 2


class HashRaises:
    """A callable object whose ``__hash__`` raises something other than TypeError."""

    def __hash__(self) -> int:
        raise ValueError("no hashing here")

    def __call__(self, x: int) -> int:
        return x + 100
