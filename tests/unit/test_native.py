"""poolkit._native.OneShot: the pool's per-call event on asyncio (set once, one waiter at a time)."""

from __future__ import annotations

import asyncio

import pytest

from _util import scaled
from poolkit._native import OneShot, current


def test_the_pool_uses_it_on_asyncio() -> None:
    async def main() -> None:
        factory, clock = current()
        assert isinstance(factory(), OneShot)
        assert abs(clock() - asyncio.get_running_loop().time()) < scaled(1)

    asyncio.run(main())


def test_the_pools_events_know_their_loop_and_never_look_it_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Python 3.11 ``asyncio.get_running_loop()`` makes a getpid() system call: the pool's
    per-call events are bound to the loop once, by ``current()``, so a wait never asks."""

    async def main() -> None:
        factory, _ = current()
        event = factory()

        def no_lookup() -> asyncio.AbstractEventLoop:
            raise AssertionError("OneShot.wait() looked the running loop up")

        monkeypatch.setattr(asyncio, "get_running_loop", no_lookup)
        waiter = event.wait()
        event.set()
        assert await asyncio.wait_for(waiter, scaled(5)) is True
        monkeypatch.undo()

    asyncio.run(main())


def test_a_waiter_wakes_when_set_and_waiting_after_set_returns_at_once() -> None:
    async def main() -> None:
        event = OneShot()
        assert not event.is_set()
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        event.set()
        assert event.is_set()
        assert await asyncio.wait_for(waiter, scaled(5)) is True
        event.set()  # a second set is harmless
        assert await asyncio.wait_for(event.wait(), scaled(5)) is True

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_it_usable() -> None:
    """A caller whose wait is cancelled (a deadline, a cancel scope) cancels the future; a later
    set() must not fail on it, and a later wait() gets a fresh future that set() resolves."""

    async def main() -> None:
        event = OneShot()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), 0.001)
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.sleep(0)
        event.set()
        assert await asyncio.wait_for(waiter, scaled(5)) is True

        other = OneShot()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(other.wait(), 0.001)
        other.set()  # the cancelled future is skipped
        assert other.is_set()
        assert await asyncio.wait_for(other.wait(), scaled(5)) is True

    asyncio.run(main())
