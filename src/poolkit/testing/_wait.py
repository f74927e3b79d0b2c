"""Deterministic waiting: wake on pool events, poll only as a fallback, scale every timeout.

A test never sleeps to let something happen; it waits for the thing. :func:`wait_until`
re-checks its predicate whenever the pool emits an event (a worker changed state, a call
ended), with a slow poll only as a fallback for conditions no event announces. On timeout it
fails with what it waited for and the pool's state at that moment.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .._state import PoolState, WorkerState

if TYPE_CHECKING:
    from .._pool import Pool

__all__ = [
    "ManualClock",
    "PoolNotReady",
    "Sequencer",
    "WaitTimeout",
    "ensure_pool_ready",
    "scaled",
    "timeout_factor",
    "wait_until",
]


def timeout_factor() -> float:
    """``POOLKIT_TIMEOUT_FACTOR`` (default 1): multiply every test timeout on slow machines."""
    raw = os.environ.get("POOLKIT_TIMEOUT_FACTOR", "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"POOLKIT_TIMEOUT_FACTOR must be a number, got {raw!r}") from None
    if not factor > 0:  # also rejects nan
        raise ValueError(f"POOLKIT_TIMEOUT_FACTOR must be > 0, got {raw!r}")
    return factor


def scaled(seconds: float) -> float:
    """``seconds`` times :func:`timeout_factor`."""
    return seconds * timeout_factor()


class WaitTimeout(AssertionError):
    """A :func:`wait_until` condition did not hold in time. The message says what and where."""


class PoolNotReady(AssertionError):
    """:func:`ensure_pool_ready` cannot succeed: the pool was never started, is closing or
    closed, or has failed. Raised at once instead of after the whole timeout; ``state`` is the
    pool's state."""

    def __init__(self, pool: Pool, why: str) -> None:
        super().__init__(f"pool {pool.name!r} cannot become ready: {why}\n  pool: {pool!r}")
        self.state = pool.state


def _check_sync(predicate: Callable[[], bool], value: object) -> None:
    """Refuse an async predicate: a coroutine object is truthy, so the wait would end at once
    having checked nothing."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: close it rather than leave a RuntimeWarning behind
        raise TypeError(
            f"wait_until needs a synchronous predicate returning a bool; {predicate!r} returned an "
            "awaitable. Read state in the predicate (it is re-checked on every pool event) and do "
            "any awaiting outside it."
        )


async def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float = 10.0,
    describe: str = "condition",
    pool: Pool | None = None,
    poll: float = 0.05,
) -> None:
    """Return once ``predicate()`` is true; raise :class:`WaitTimeout` after ``scaled(timeout)``.

    With ``pool``, the predicate is re-checked on every event the pool emits, so the wait
    ends as soon as the pool does the thing; ``poll`` is the fallback re-check interval.

    The predicate must be synchronous: it only reads state, and is called again whenever
    something may have changed. A coroutine function (or a predicate returning an awaitable)
    raises TypeError rather than being awaited: awaiting inside the check would let it block
    and miss the very events that wake the wait, and silently accepting it would end the wait
    at once (a coroutine object is truthy).
    """
    if inspect.iscoroutinefunction(predicate):
        raise TypeError(
            f"wait_until needs a synchronous predicate returning a bool, got the coroutine "
            f"function {predicate!r}"
        )
    first = predicate()
    _check_sync(predicate, first)
    if first:
        return
    changed = anyio.Event()

    def on_event(_event: object) -> None:
        changed.set()

    unsubscribe = pool.subscribe(on_event) if pool is not None else None
    limit = scaled(timeout)
    try:
        with anyio.move_on_after(limit):
            while not predicate():
                with anyio.move_on_after(poll):
                    await changed.wait()
                changed = anyio.Event()
            return
    finally:
        if unsubscribe is not None:
            unsubscribe()
    detail = f"\n  pool: {pool!r}\n  statistics: {pool.statistics()}" if pool is not None else ""
    raise WaitTimeout(f"timed out after {limit:g}s waiting for: {describe}{detail}")


async def ensure_pool_ready(pool: Pool, *, timeout: float = 30.0) -> None:
    """Wait until the pool's worker list has settled at full strength.

    Settled means: the pool is running, at least ``min_workers`` workers are READY, and no
    listed worker is coming (SPAWNING, STARTING) or going (STOPPING, or already STOPPED or
    FAILED but not yet removed). Why the last part: after a fault (a crash, a hang block's
    exit, a timeout) the pool starts the replacement at once, so ``min_workers`` READY can
    hold while the old worker is still listed and being killed; a test that checks
    ``pool.workers()`` or ``statistics()`` next would see it. A STOPPING worker always leaves
    (killed after ``kill_grace`` at most). RETIRING and DRAINING workers are not waited for:
    they leave when their calls or sessions end, which the test itself may be holding open.

    Fails at once with :class:`PoolNotReady` when the pool cannot get there: never started,
    closing or closed, or failed (also if that happens during the wait); otherwise raises
    :class:`WaitTimeout` after ``scaled(timeout)``.
    """
    want = pool.config.min_workers

    def check_pool() -> None:
        state = pool.state
        if state is PoolState.CREATED:
            raise PoolNotReady(pool, "it was never started (use `async with pool:` or `await pool.start()`)")
        if state is PoolState.FAILED:
            raise PoolNotReady(pool, "it has failed (its workers kept failing; calls raise PoolFailed)")
        if state in (PoolState.DRAINING, PoolState.CLOSED):
            raise PoolNotReady(pool, f"it is {'closing' if state is PoolState.DRAINING else 'closed'}")

    def settled() -> bool:
        check_pool()
        if pool.state is not PoolState.RUNNING:
            return False  # STARTING
        ready = 0
        for w in pool.statistics().workers:
            if w.state in _UNSETTLED:
                return False
            ready += w.state is WorkerState.READY
        return ready >= want

    await wait_until(
        settled,
        timeout=timeout,
        describe=f"{want} ready workers, none starting or stopping",
        pool=pool,
    )


#: Workers on their way in or out of the pool: ensure_pool_ready waits until none is listed.
_UNSETTLED = frozenset(
    {
        WorkerState.SPAWNING,
        WorkerState.STARTING,
        WorkerState.STOPPING,
        WorkerState.STOPPED,
        WorkerState.FAILED,
    }
)


class Sequencer:
    """Order steps of concurrent tasks: ``async with seq(n):`` runs after step ``n - 1`` ends.

    Modelled on ``trio.testing.Sequencer``, on anyio so it works on asyncio too::

        seq = Sequencer()
        async def a():
            async with seq(0): ...   # first
            async with seq(2): ...   # third
        async def b():
            async with seq(1): ...   # second
    """

    def __init__(self) -> None:
        self._done: dict[int, anyio.Event] = {}
        self._claimed: set[int] = set()

    def _event(self, step: int) -> anyio.Event:
        event = self._done.get(step)
        if event is None:
            event = self._done[step] = anyio.Event()
        return event

    @asynccontextmanager
    async def __call__(self, step: int) -> AsyncIterator[None]:
        if step in self._claimed:
            raise RuntimeError(f"step {step} of the sequence was already used")
        self._claimed.add(step)
        if step > 0:
            await self._event(step - 1).wait()
        try:
            yield
        finally:
            self._event(step).set()


class ManualClock:
    """A clock that moves only when told: ``clock.now()`` (or ``clock()``) reads it,
    ``clock.advance(dt)`` moves it and wakes whatever slept until then.

    Pass it as ``Pool(clock=...)`` to test time-based behaviour (backoff, session TTLs,
    heartbeats, idle timeouts, lifetimes, the circuit breaker) without waiting: nothing in the
    pool moves on its own, and one ``advance(3600)`` expires an hour-long TTL. It implements
    :class:`poolkit.Clock`. Sleepers are woken by ``advance`` in the order of their deadlines;
    they run at the event loop's next turn, so follow an advance with ``wait_until`` on what
    should have happened.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        self._now += seconds
        due = [s for s in self._sleepers if s[0] <= self._now]
        if due:
            self._sleepers = [s for s in self._sleepers if s[0] > self._now]
            for _, _, event in sorted(due, key=lambda s: (s[0], s[1])):
                event.set()

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        self._seq += 1
        entry = (deadline, self._seq, anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[2].wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock (to wait until the pool has gone to sleep)."""
        return len(self._sleepers)

    @property
    def next_deadline(self) -> float | None:
        """The earliest time a sleeper waits for, or None."""
        return min((s[0] for s in self._sleepers), default=None)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:g}, sleepers={len(self._sleepers)})"
