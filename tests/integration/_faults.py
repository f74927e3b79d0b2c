"""Objects that crash, exit or raise at each boundary of a call: CPython's
``test_concurrent_futures/test_deadlock.py`` matrix, rebuilt for poolkit.

Pickling happens in the parent for the call and in the worker for the result; unpickling the
other way round. Each class below misbehaves when pickled (``__reduce__`` runs the fault) or
when unpickled (``__reduce__`` returns the fault as the reconstructor).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import sys
from typing import Any, NoReturn


def crash() -> NoReturn:
    """A real segmentation fault: read address 0."""
    ctypes.string_at(0)
    raise AssertionError("unreachable")


def hard_exit() -> NoReturn:
    os._exit(7)


def soft_exit() -> NoReturn:
    sys.exit(5)


def raise_error() -> NoReturn:
    raise RuntimeError("error raised on purpose")


def raise_unpickling_error() -> NoReturn:
    raise pickle.UnpicklingError("error at unpickle")


FAULTS = {"crash": crash, "os_exit": hard_exit, "sys_exit": soft_exit, "raise": raise_error}


class _AtPickle:
    fault: str = ""

    def __reduce__(self) -> Any:
        FAULTS[self.fault]()


class _AtUnpickle:
    fault: str = ""

    def __reduce__(self) -> Any:
        fn = FAULTS[self.fault] if self.fault != "raise" else raise_unpickling_error
        return (fn, ())


class CrashAtPickle(_AtPickle):
    fault = "crash"


class ExitAtPickle(_AtPickle):
    fault = "os_exit"


class SysExitAtPickle(_AtPickle):
    fault = "sys_exit"


class ErrorAtPickle(_AtPickle):
    fault = "raise"


class CrashAtUnpickle(_AtUnpickle):
    fault = "crash"


class ExitAtUnpickle(_AtUnpickle):
    fault = "os_exit"


class SysExitAtUnpickle(_AtUnpickle):
    fault = "sys_exit"


class ErrorAtUnpickle(_AtUnpickle):
    fault = "raise"


AT_PICKLE = {
    "crash": CrashAtPickle,
    "os_exit": ExitAtPickle,
    "sys_exit": SysExitAtPickle,
    "raise": ErrorAtPickle,
}
AT_UNPICKLE = {
    "crash": CrashAtUnpickle,
    "os_exit": ExitAtUnpickle,
    "sys_exit": SysExitAtUnpickle,
    "raise": ErrorAtUnpickle,
}


def accept(obj: object) -> str:
    """A target that takes any argument (so the fault is in unpickling it)."""
    return type(obj).__name__


def run_fault(name: str) -> None:
    """A target that misbehaves while running."""
    FAULTS[name]()


def return_instance(kind: str, fault: str) -> object:
    """A target whose result misbehaves when pickled in the worker (kind="pickle") or
    unpickled in the parent (kind="unpickle")."""
    return (AT_PICKLE if kind == "pickle" else AT_UNPICKLE)[fault]()


def echo(x: Any) -> Any:
    return x


def stuck_ignoring_sigterm(seconds: float) -> None:
    """Block in C code (libc sleep) with SIGTERM ignored: only SIGKILL stops this worker."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def stuck_in_c_ignoring_signals(seconds: float) -> None:
    """Block in C code (libc sleep) as C code that masks signals does: SIGTERM and SIGINT
    blocked in this thread and ignored process-wide. Blocking alone is not enough: the kernel
    hands a blocked process-directed SIGTERM to another thread (the heartbeat thread, trio's
    parent watchdog), whose default action ends the process. Only SIGKILL stops this worker."""
    import signal
    import time

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(seconds)


def sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def getpid() -> int:
    return os.getpid()


def kill_self() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def chatty(n: int) -> int:
    """Writes to stdout and stderr at the Python level and at the fd level, then returns."""
    for i in range(n):
        print(f"stdout line {i}")
        print(f"stderr line {i}", file=sys.stderr)
        os.write(1, b"raw fd1 bytes that look like a frame: PK\x01\x04\n")
        os.write(2, b"raw fd2 bytes\n")
    return n


def kill_self_when(path: str) -> None:
    """Block until ``path`` exists (the test's go signal), then die by SIGKILL."""
    import time

    while not os.path.exists(path):
        time.sleep(0.002)
    kill_self()


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists (the test's go signal)."""
    import time

    while not os.path.exists(path):
        time.sleep(0.002)
    return path


class Tally:
    """A handler class: setup() runs once per worker; methods are call targets by name."""

    def __init__(self) -> None:
        self.total = 0
        self._setup_calls = 0

    def setup(self) -> None:
        self._setup_calls += 1

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    def setup_calls(self) -> int:
        return self._setup_calls
