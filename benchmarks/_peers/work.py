"""What the workers of every system run: trivial module-level functions, pickled by reference.

Each system's workers import this module (``benchmarks._peers.work``: the runner puts the
repository root on ``PYTHONPATH``), so it imports nothing beyond the small standard modules: a
fresh worker's first call imports it, and timings of first calls (recovery, stuck) would
otherwise include that import. ``asyncio`` (~25 ms to import on a quiet 2-core machine, over
80 ms on a busy one) is imported only by the coroutine twins, in workers that have it already.
aiomultiprocess only runs coroutine functions: the ``a``-prefixed twins are for it, and
``ASYNC_TWIN`` maps each function to its twin.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RELEASE = "release"  # the file whose creation lets block() return


def echo(x: Any) -> Any:
    """The trivial call: its argument back (an int, or 1 KiB of bytes each way)."""
    return x


def getpid() -> int:
    return os.getpid()


def hang(directory: str) -> None:
    """The recovery scenario's victim: say which process runs it, then wait to be killed."""
    _announce(directory, "hang")
    time.sleep(120)


def block(directory: str, limit: float = 60.0) -> int:
    """Keep a worker busy until ``directory/release`` exists (polled each millisecond)."""
    _announce(directory, "block")
    release = Path(directory, RELEASE)
    deadline = time.monotonic() + limit
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    return os.getpid()


def rendezvous(directory: str, workers: int, limit: float = 30.0) -> tuple[int, bool]:
    """Return once ``workers`` distinct processes have run this (each leaves a file named after
    its pid): the pool has that many workers able to run user code. (pid, whether it met them).
    Polls every 2 ms: finer would have 16 waiting workers take CPU from the ones starting."""
    pid = os.getpid()
    Path(directory, f"{pid}.pid").touch()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if sum(1 for p in os.scandir(directory) if p.name.endswith(".pid")) >= workers:
            return pid, True
        time.sleep(0.002)
    return pid, False


def stuck(directory: str, seconds: float = 60.0) -> None:
    """The stuck scenario's call: stuck in C code, ignoring signals; only SIGKILL ends it.

    Every catchable signal is blocked in this thread, as C code that masks signals would, and
    as any signal whose Python handler cannot run while C code holds the thread (mpire
    interrupts a timed-out task with SIGUSR1 and a handler). SIGTERM and SIGINT are also
    ignored process-wide: blocking them in this thread alone is not enough, since the kernel
    then delivers a SIGTERM to another thread of the process, whose default action ends the
    whole process (a poolkit worker's heartbeat thread did exactly that). Then the process
    says which it is (``directory/stuck.pid``) and sleeps in C (``time.sleep``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(signum, signal.SIG_IGN)
        except ValueError:  # not the main thread: the mask above is all this thread can do
            pass
    _announce(directory, "stuck")
    time.sleep(seconds)


def probe(hold: float) -> tuple[int, float, float]:
    """The stuck scenario's capacity probe: hold the worker ``hold`` seconds; return (pid, start,
    end). ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, one clock for every process, so
    the parent compares these times with its own."""
    start = time.perf_counter()
    time.sleep(hold)
    return os.getpid(), start, time.perf_counter()


def _announce(directory: str, name: str) -> None:
    tmp = Path(directory, f"{name}.tmp")
    tmp.write_text(str(os.getpid()), encoding="ascii")
    tmp.rename(Path(directory, f"{name}.pid"))  # atomic: a reader never sees a partial pid


async def astuck(directory: str, seconds: float = 60.0) -> None:
    stuck(directory, seconds)  # blocks the worker's event loop too, as a call stuck in C would


async def aprobe(hold: float) -> tuple[int, float, float]:
    """probe() for a worker that runs many coroutines at once: hold without blocking it."""
    import asyncio

    start = time.perf_counter()
    await asyncio.sleep(hold)
    return os.getpid(), start, time.perf_counter()


async def aecho(x: Any) -> Any:
    return x


async def agetpid() -> int:
    return os.getpid()


async def ahang(directory: str) -> None:
    hang(directory)  # blocks the worker's event loop too, as a stuck call would


async def ablock(directory: str, limit: float = 60.0) -> int:
    return block(directory, limit)


async def arendezvous(directory: str, workers: int, limit: float = 30.0) -> tuple[int, bool]:
    """rendezvous() for a worker that runs many coroutines at once: wait without blocking it."""
    import asyncio

    pid = os.getpid()
    os.close(os.open(os.path.join(directory, f"{pid}.pid"), os.O_CREAT | os.O_WRONLY))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if sum(1 for p in os.scandir(directory) if p.name.endswith(".pid")) >= workers:
            return pid, True
        await asyncio.sleep(0.002)
    return pid, False


ASYNC_TWIN: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {
    echo: aecho,
    getpid: agetpid,
    hang: ahang,
    block: ablock,
    rendezvous: arendezvous,
    stuck: astuck,
    probe: aprobe,
}
