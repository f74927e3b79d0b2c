"""Call targets that behave the same on every layer (mock, bridge, subprocess).

Each does the real thing where it runs: in a worker process, ``crash()`` SIGKILLs the process
and ``sleep()`` blocks it; in-process (mock and bridge layers) ``crash()`` ends the fake
worker with the same returncode and ``sleep()`` awaits without blocking the event loop.
A conformance test written with these targets therefore proves the same behaviour on all
three layers. Refer to them by name (``"poolkit.testing.targets:echo"``) or by reference.

Targets that wait are ``async def``: the worker runtime runs coroutines to completion, and
in a real process their body does not touch an event loop at all.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, NoReturn

from ._context import FakeExit, freeze_hook, in_process

__all__ = [
    "Tally",
    "add",
    "crash",
    "echo",
    "exit_now",
    "fail",
    "freeze",
    "getpid",
    "grow_memory",
    "hang",
    "remember",
    "session_calls",
    "sleep",
    "stuck_in_c",
    "unencodable",
]


def echo(value: Any) -> Any:
    """Return the argument unchanged."""
    return value


def add(*values: Any) -> Any:
    """Sum the arguments (``add(1, 2, 3) == 6``)."""
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def fail(message: str = "failed on purpose", exc_type: str = "ValueError") -> NoReturn:
    """Raise ``exc_type`` (a builtin exception name) with ``message``: an application error."""
    import builtins

    cls = getattr(builtins, exc_type)
    raise cls(message)


def getpid() -> int:
    """The worker's pid (in-process layers report the fake worker's pid via the pool instead)."""
    return os.getpid()


async def sleep(seconds: float) -> float:
    """Take ``seconds`` to answer: the worker is busy for that long, then returns ``seconds``."""
    if in_process.get():
        import anyio

        await anyio.sleep(seconds)
    else:
        time.sleep(seconds)  # noqa: ASYNC251 - a worker process: blocking it is the point
    return seconds


async def hang() -> NoReturn:
    """Never answer (until the worker is killed)."""
    if in_process.get():
        import anyio

        await anyio.sleep_forever()
    while True:
        time.sleep(3600)  # noqa: ASYNC251 - a worker process: blocking it is the point


def crash(signum: int = signal.SIGKILL) -> NoReturn:
    """Die by ``signum`` while running the call (really, in a worker process)."""
    if in_process.get():
        raise FakeExit(-signum)
    os.kill(os.getpid(), signum)
    time.sleep(10)  # the signal is delivered asynchronously; never return meanwhile
    os._exit(70)


def exit_now(code: int = 1) -> NoReturn:
    """End the worker with exit status ``code`` without cleanup (``os._exit``)."""
    if in_process.get():
        raise FakeExit(code)
    os._exit(code)


async def freeze() -> NoReturn:
    """Freeze the worker while it runs this call: in a process, SIGSTOP itself (state ``T``:
    nothing in it runs, heartbeats go unanswered); in-process, the fake worker stops
    answering. The pool must find it unresponsive and kill it."""
    if in_process.get():
        import anyio

        hook = freeze_hook.get()
        if hook is not None:
            hook()
        await anyio.sleep_forever()
    os.kill(os.getpid(), signal.SIGSTOP)
    while True:  # only SIGKILL ends a stopped process; if someone sends SIGCONT, stay busy
        time.sleep(3600)  # noqa: ASYNC251 - a worker process: blocking it is the point


async def stuck_in_c(seconds: float = 3600.0) -> float:
    """Block in C code for ``seconds`` without releasing the GIL (libc ``sleep`` through
    ``ctypes.PyDLL``, which keeps the GIL held): no Python thread of the worker runs, so it
    cannot answer heartbeats, and signals wait for the C call to return. In-process, the
    fake worker freezes instead (holding the test's own GIL would stop the test)."""
    if in_process.get():
        await freeze()
    import ctypes

    libc = ctypes.PyDLL(None)
    libc.sleep(max(1, round(seconds)))
    return seconds


def remember(value: Any, *, session: Any) -> list[Any]:
    """A session-aware target: append ``value`` to this session's state on this worker and
    return everything the session remembered (its state survives between calls only on the
    worker that holds it)."""
    values: list[Any] = getattr(session, "values", [])
    values.append(value)
    session.values = values
    return list(values)


def session_calls(*, session: Any) -> int:
    """How many calls this session's state on this worker has seen (1 for a fresh session)."""
    return int(session.calls)


_hoard: list[bytearray] = []


def grow_memory(megabytes: int) -> int:
    """Really allocate and touch ``megabytes`` MiB in the worker and keep it; returns the total
    held. In a worker process this raises its RSS (the memory-exhaustion fault)."""
    chunk = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(chunk), 4096):  # touch every page so it is resident, not just reserved
        chunk[i] = 1
    _hoard.append(chunk)
    return sum(len(c) for c in _hoard) // (1024 * 1024)


def unencodable() -> object:
    """Return a value no codec can encode (a lock): the worker fails to send the result."""
    import threading

    return threading.Lock()


class Tally:
    """A handler class (``WorkerSpec(handler="poolkit.testing.targets:Tally")``): built once per
    worker, ``setup()`` run at start; its methods are call targets by name (``"add"``)."""

    def __init__(self) -> None:
        self.total = 0
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    def setup_count(self) -> int:
        return self.setups
