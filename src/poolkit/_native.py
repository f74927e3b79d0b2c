"""The running event loop's own event and clock, for the per-call hot path.

``anyio.Event()`` and ``anyio.current_time()`` look the backend up (sniffio) on every use:
about 1 us each, several times per call. The pool and its workers run in one event loop for
their whole life, so they look it up once, at creation, and use the backend's types directly:
:class:`OneShot` (a one-waiter ``asyncio.Event``) and the loop's ``time`` on asyncio, ``trio.Event`` and
``trio.current_time`` on trio. Both events have the interface the pool uses (``set``,
``is_set``, ``await wait()``), honour anyio cancel scopes (which cancel the waiting task), and
``current_time`` is exactly what ``anyio.current_time()`` returns. Any other backend falls back
to anyio's own.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

__all__ = ["Event", "asyncio_loop", "current", "forks_from_loop_thread"]


class Event(Protocol):
    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class OneShot:
    """asyncio's :class:`asyncio.Event` cut to what the pool needs: set once, never cleared,
    awaited by one task at a time. ``wait()`` returns a bare loop future instead of running a
    coroutine that parks a future in a deque: two objects a call instead of five (the call
    stays alive while it waits, so every object is one more for the garbage collector to scan
    while thousands of calls are in hand) and no Python frame per wait.

    A waiter that is cancelled cancels the future; the next ``wait()`` makes a new one, and
    ``set()`` skips a future that is done. Two tasks waiting at once would share the future,
    and cancelling one would wake the other: the pool never does that.
    """

    __slots__ = ("_flag", "_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._flag = False
        self._future: asyncio.Future[bool] | None = None
        # The pool's loop, given once (``current`` binds it): on Python 3.11 every
        # ``asyncio.get_running_loop()`` is a getpid() system call, once per call's wait.
        self._loop = loop

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            future = self._future
            if future is not None and not future.done():
                future.set_result(True)

    def is_set(self) -> bool:
        return self._flag

    def wait(self) -> asyncio.Future[bool]:
        future = self._future
        if future is None or future.done():  # done and unset: a waiter gave up (cancelled)
            loop = self._loop or asyncio.get_running_loop()
            future = self._future = loop.create_future()
            if self._flag:
                future.set_result(True)
        return future


def current() -> tuple[Callable[[], Event], Callable[[], float]]:
    """(event factory, clock) of the event loop running now (sniffio is not a dependency of
    every anyio version, so the loop is found directly)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        return functools.partial(OneShot, loop), loop.time
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return trio.Event, trio.current_time
    return anyio.Event, anyio.current_time


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None on any other backend: a pool's calls wait on bare
    futures of this loop (``Call.wait``), with no event object each."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def forks_from_loop_thread() -> bool:
    """Does ``anyio.open_process`` fork from the event loop's own thread here? True on
    asyncio (the loop's subprocess machinery); False on trio, which runs ``Popen`` in a cached
    worker thread that exits after 10 idle seconds (the worker runtime's PR_SET_PDEATHSIG
    would then kill the child: see ``_die_with_parent``)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
