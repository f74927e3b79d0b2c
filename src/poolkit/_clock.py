"""The pool's clock: every time-based behaviour reads it, so tests can drive time by hand.

Backoff before a retry or a restart, session TTLs, heartbeats, idle timeouts, recycling by
lifetime and the circuit breaker's cool-down all ask the pool's :class:`Clock` for the time
and sleep on it (DESIGN.md rule 3). The default, :class:`SystemClock`, is the event loop's
own clock (``anyio.current_time``), so trio's ``MockClock`` drives it too. Tests pass
``poolkit.testing.ManualClock`` and call ``advance()``: a TTL of an hour expires at once,
and nothing waits for real time to pass.

Call deadlines (``timeout=``) are not on this clock: they are cancel scopes on the event
loop's clock, because they must interrupt an ``await`` in the caller's own task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic time source the pool can also sleep on."""

    def now(self) -> float:
        """Seconds on this clock (monotonic; the origin is arbitrary)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`now` has reached ``deadline`` (at once if it already has)."""
        ...


class SystemClock:
    """The event loop's clock (``anyio.current_time``): real time, or trio's MockClock.

    ``time``: the running loop's own clock function, which a pool passes once it knows its
    loop (``poolkit._native``): the same readings without a backend lookup per call.
    """

    __slots__ = ("now",)

    def __init__(self, time: Callable[[], float] | None = None) -> None:
        self.now: Callable[[], float] = time if time is not None else anyio.current_time

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def __repr__(self) -> str:
        return "SystemClock()"
