"""Call targets and handlers that integration tests run inside real workers.

Tests and workers both import it as ``integration._targets`` (tests/ is on sys.path in pytest
and on PYTHONPATH for workers), so string targets read ``"integration._targets:add"`` and
callables pickled by reference resolve to the same module in the worker. Keep it importable
with the standard library only: workers must not pay for anything else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MARKER_DIR_ENV = "POOLKIT_TEST_MARKER_DIR"


def add(a: Any, b: Any) -> Any:
    return a + b


def echo(x: Any) -> Any:
    return x


def spin(seconds: float) -> int:
    """Burn CPU (not sleep) for ``seconds`` of process CPU time: for CPU timings."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def blob(size: int) -> str:
    """A result of ``size`` characters from a tiny call: for result-size limits."""
    return "x" * size


def boom(message: str = "boom") -> None:
    raise ValueError(message)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise SystemExit("str() of this exception ends the process, if nobody guards it")


def raise_unprintable() -> None:
    raise UnprintableError()


def exit_now(code: int = 7) -> None:
    """Raise SystemExit from a call: the worker must report it and keep serving."""
    sys.exit(code)


def noisy(tag: str = "noisy") -> str:
    """Print through every channel user code has: Python stdout/stderr and raw fds 1 and 2."""
    print(f"{tag} on stdout")
    print(f"{tag} on stderr", file=sys.stderr)
    os.write(1, f"{tag} raw fd 1\n".encode())
    os.write(2, f"{tag} raw fd 2\n".encode())
    sys.stdout.write(f"{tag} partial")  # no newline: flushed as a LOG frame at the end of the call
    return tag


def raise_big(size: int) -> None:
    """An exception whose message alone is ``size`` characters (larger than small frame limits)."""
    raise ValueError("z" * size)


def print_line(size: int) -> int:
    """Print one line of ``size`` characters (larger than small frame limits)."""
    print("y" * size)
    return size


def threaded_prints(threads: int, lines: int) -> int:
    """Write lines from several threads at once: frames must never interleave on the wire.

    One ``write`` per line: ``print`` makes two (text, then newline), and another thread's
    text may land between them, in a worker as anywhere else in Python.
    """

    def work(n: int) -> None:
        for i in range(lines):
            sys.stdout.write(f"thread {n} line {i} " + "." * 200 + "\n")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return threads * lines


class _PrintsWhenSearched(str):
    """A str whose ``in`` test prints: makes the worker's stdout writer re-enter itself."""

    def __contains__(self, item: object) -> bool:
        print("printed from inside write")
        return super().__contains__(item)  # type: ignore[operator]


def reentrant_write() -> str:
    """Re-enter sys.stdout.write from inside itself, as a __del__ or signal handler can."""
    sys.stdout.write(_PrintsWhenSearched("outer line\n"))
    return "ok"


def print_under_signals(lines: int) -> int:
    """Print ``lines`` lines while a fast timer's signal handler prints "tick" in between.

    Handlers run between bytecodes of the main thread, so they land inside the worker's own
    writers mid-write. Returns how many ticks ran.
    """
    ticks = 0

    def on_alarm(signum: int, frame: Any) -> None:
        nonlocal ticks
        ticks += 1
        print("tick")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        for i in range(lines):
            print(f"line {i}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return ticks


def child_process_output(text: str) -> int:
    """Run a child process that writes to its inherited stdout (the worker's fd 1)."""
    code = f"import sys; print({text!r}); sys.stdout.flush()"
    return subprocess.run([sys.executable, "-c", code], check=True).returncode


# A grandchild that only SIGKILL ends: it ignores SIGTERM (so the pool's SIGTERM to the worker's
# group is not enough: the group must also be swept after the worker's exit), says it is set
# up, and sleeps far longer than any test.
_GRANDCHILD = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"  # sleep-ok: a process to be killed, not a wait
)
_GRANDCHILDREN: list[subprocess.Popen[bytes]] = []  # never waited for, on purpose; kept from __del__


def start_grandchild() -> int:
    """Start a process the worker never waits for (``_GRANDCHILD``) and return its pid once it
    ignores SIGTERM. It stays in the worker's process group, as a careless target's would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _GRANDCHILD], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    _GRANDCHILDREN.append(proc)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    return proc.pid


def grandchild_then_block(path: str, seconds: float) -> None:
    """Start a grandchild (:func:`start_grandchild`), write its pid to ``path`` (atomically),
    then block for ``seconds``: past the call's timeout, so the pool kills this worker."""
    pid = start_grandchild()
    Path(path + ".tmp").write_text(str(pid))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def getpid() -> int:
    return os.getpid()


def read_stdin() -> str:
    """What user code reading stdin gets in a worker: it must be empty, never protocol bytes."""
    return sys.stdin.read()


def wait_fifo(path: str) -> str:
    """Announce the call started (a LOG line), then block until a line arrives on a FIFO.

    Lets a test hold a call running for exactly as long as it wants, without sleeping.
    """
    print("waiting", flush=True)
    with open(path, encoding="utf-8") as fifo:
        return fifo.readline().strip()


def touch(path: str) -> str:
    Path(path).touch()
    return path


def unpicklable() -> Any:
    return lambda: None


def rendezvous(directory: str, parties: int, limit: float) -> tuple[int, bool]:
    """A barrier across processes: leave a file named after this pid in ``directory``, then
    wait (up to ``limit`` seconds) until ``parties`` distinct processes have. (pid, whether
    they met): calls that meet ran at the same time on that many workers."""
    Path(directory, str(os.getpid())).touch()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if len(os.listdir(directory)) >= parties:
            return os.getpid(), True
        time.sleep(0.002)
    return os.getpid(), False


async def async_add(a: Any, b: Any) -> Any:
    await asyncio.sleep(0)
    return a + b


class ExitOnUnpickle:
    """Unpickling this raises SystemExit: a hostile payload must not end the worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (9,))


class Counter:
    """A handler with per-session state and lifecycle hooks that leave visible traces."""

    def __init__(self) -> None:
        self.set_up = False
        self.calls = 0

    def setup(self) -> None:
        self.set_up = True

    def teardown(self) -> None:
        marker_dir = os.environ.get(MARKER_DIR_ENV)
        if marker_dir:
            Path(marker_dir, f"teardown-{os.getpid()}").write_text(str(self.calls))

    def was_set_up(self) -> bool:
        return self.set_up

    def incr(self, by: int = 1, *, session: Any) -> int:
        self.calls += 1
        session.count = getattr(session, "count", 0) + by
        return int(session.count)

    def session_info(self, *, session: Any) -> list[Any]:
        return [session.key, type(session).__name__, isinstance(session.created_at, float)]


class FailingSetup:
    def setup(self) -> None:
        raise RuntimeError("setup refused")
