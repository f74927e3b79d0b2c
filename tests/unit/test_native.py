"""poolkit._native.OneShot and Call.wait: how a caller waits for its call on asyncio (a bare
loop future, one waiter at a time), and on other backends."""

from __future__ import annotations

import asyncio

import pytest

from _util import scaled
from poolkit._call import Call
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


# ---- a call is its own event on asyncio (Call.wait) ----------------------------------------------
def _loop_call(loop: asyncio.AbstractEventLoop) -> Call:
    return Call("t", b"", 0, timeout=None, deadline=None, loop=loop)


def test_on_asyncio_a_call_waits_on_a_bare_future_with_no_event_object() -> None:
    """No event object per call (one GC-tracked object less per call in hand): the caller
    waits on a loop future, made at its first wait and resolved when the call ends."""

    async def main() -> None:
        call = _loop_call(asyncio.get_running_loop())
        assert call._event is None
        waiter = asyncio.ensure_future(call.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        call.succeed(b"1", 0)
        assert await asyncio.wait_for(waiter, scaled(5)) is True
        assert await asyncio.wait_for(call.wait(), scaled(5)) is True  # done: at once

        ended = _loop_call(asyncio.get_running_loop())
        ended.fail(RuntimeError("x"))  # ended before anyone waited
        assert await asyncio.wait_for(ended.wait(), scaled(5)) is True

    asyncio.run(main())


def test_a_calls_cancelled_wait_leaves_it_usable_and_a_retry_waits_again() -> None:
    async def main() -> None:
        call = _loop_call(asyncio.get_running_loop())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.wait(), 0.001)  # a caller's deadline passes
        call.fail(RuntimeError("crashed"))  # skips the cancelled future
        assert await asyncio.wait_for(call.wait(), scaled(5)) is True

        call.retry()  # queued again: a new attempt, so the next wait waits for it
        waiter = asyncio.ensure_future(call.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        call.succeed(b"1", 0)
        assert await asyncio.wait_for(waiter, scaled(5)) is True

    asyncio.run(main())


def test_without_a_loop_a_call_waits_on_its_event() -> None:
    """Other backends (trio) give the call an event of their own kind."""

    async def main() -> None:
        call = Call("t", b"", 0, timeout=None, deadline=None, event=OneShot)
        assert isinstance(call._event, OneShot)
        waiter = asyncio.ensure_future(call.wait())
        await asyncio.sleep(0)
        call.fail(RuntimeError("x"))
        assert await asyncio.wait_for(waiter, scaled(5)) is True
        call.retry()
        assert isinstance(call._event, OneShot) and not call._event.is_set()

    asyncio.run(main())
