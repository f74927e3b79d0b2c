"""Isolation: unique pool names, tagged worker processes, and leak checks.

Every worker a harness pool starts carries ``POOLKIT_TEST_TAG=<tag>`` in its environment and
runs in its own session (the pool always starts workers with ``start_new_session``). At
teardown the harness kills exactly the processes carrying the test's tag, whatever happened
to the test (failure, timeout), and never the test runner's other processes; then it checks
for what the test left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TAG_ENV", "Isolation", "LeakCheck", "kill_tagged", "tagged_processes", "unique_name"]

TAG_ENV = "POOLKIT_TEST_TAG"
_counter = itertools.count(1)


def unique_name(hint: str = "pool") -> str:
    """A name no other pool of this test run has, safe under pytest-xdist.

    Derived from the xdist run id and worker id when present (``PYTEST_XDIST_TESTRUNUID``,
    ``PYTEST_XDIST_WORKER``), else from this process's pid; plus a per-process counter.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")[:8] or str(os.getpid())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip("-")[:40] or "pool"
    return f"{slug}-{run}-{worker}-{next(_counter)}"


def tagged_processes(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``POOLKIT_TEST_TAG=tag``."""
    needle = f"{TAG_ENV}={tag}".encode() + b"\0"
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if needle in environ + b"\0" and _alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_tagged(tag: str) -> list[int]:
    """SIGKILL every live process carrying ``tag`` (and its process group); return their pids."""
    pids = tagged_processes(tag)
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # a session/group leader: take its children with it
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _fds() -> dict[int, str]:
    out = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


def _temp_files() -> set[str]:
    with contextlib.suppress(OSError):
        return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("poolkit")}
    return set()


class LeakCheck:
    """What a test leaves behind: tagged processes, threads, pipes/sockets, poolkit temp files.

    Take the snapshot before the test (:meth:`start`), call :meth:`leaks` after teardown.
    Only what the test *added* counts, and only kinds a pool could leak: idle daemon threads
    (anyio's thread pool keeps some on purpose) and ordinary files are not counted.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._threads: set[int] = set()
        self._fds: dict[int, str] = {}
        self._temp: set[str] = set()

    def start(self) -> None:
        self._threads = {t.ident or 0 for t in threading.enumerate()}
        self._fds = _fds()
        self._temp = _temp_files()

    def leaks(self) -> list[str]:
        found = [f"process {pid} (tagged {self.tag}) still running" for pid in tagged_processes(self.tag)]
        for thread in threading.enumerate():
            if (thread.ident or 0) not in self._threads and thread.is_alive() and not thread.daemon:
                found.append(f"thread {thread.name!r} still running")
        for fd, target in _fds().items():
            if self._fds.get(fd) != target and target.startswith(("pipe:", "socket:")):
                found.append(f"file descriptor {fd} ({target}) left open")
        found.extend(f"temp file {name} left behind" for name in sorted(_temp_files() - self._temp))
        return found

    @contextlib.contextmanager
    def checking(self) -> Iterator[LeakCheck]:
        self.start()
        yield self


@dataclasses.dataclass
class Isolation:
    """One test's isolation: ``tag`` marks its worker processes, ``name`` is unique in the run.

    The ``poolkit_isolation`` fixture makes one per test; defined here, not in the pytest plugin,
    so that using it (or annotating with it) outside pytest does not import pytest.
    """

    tag: str
    name: str
    leak_check: LeakCheck
    killed: list[int] = dataclasses.field(default_factory=list)
