"""Helpers shared by unit and integration tests (importable as ``_util``: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

__all__ = ["TESTS_DIR", "pid_alive", "scaled", "timeout_factor", "wait_until", "wait_until_sync"]

#: tests/ itself. It is on sys.path in pytest (``pythonpath`` in pyproject.toml) and on
#: PYTHONPATH for worker processes started by tests (tests/conftest.py), so helper modules such
#: as ``integration._targets`` import the same way in both.
TESTS_DIR = Path(__file__).resolve().parent


def timeout_factor() -> float:
    """POOLKIT_TIMEOUT_FACTOR as a float (default 1.0): > 1 stretches test deadlines on slow machines."""
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
    """A test deadline of `seconds`, multiplied by :func:`timeout_factor`."""
    return seconds * timeout_factor()


def wait_until_sync(predicate: Callable[[], bool], timeout: float, describe: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail with ``describe`` after ``scaled(timeout)`` seconds.

    For conditions no event announces (a process of another tree disappearing). Polls every
    10 ms, which is a check interval, not a wait for something to happen.
    """
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):g}s waiting for: {describe}")
        time.sleep(0.01)


async def wait_until(predicate: Callable[[], bool], timeout: float, describe: str = "condition") -> None:
    """Async :func:`wait_until_sync`: yields to the event loop between checks."""
    with anyio.move_on_after(scaled(timeout)):
        while not predicate():  # noqa: ASYNC110 - a polled fallback; the harness adds event-driven waits
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {scaled(timeout):g}s waiting for: {describe}")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a killed orphan may linger as one under PID 1)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def running_parent(*args: str) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """Run ``python ARGS`` from tests/ (a parent process holding a pool, for the orphan tests)
    and yield it with the JSON it prints on its first line once its pool is up; always kill
    and reap it and close its pipes, whatever the test does."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=TESTS_DIR,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the pool is up (bounded by the global timeout)
            if not line:
                proc.wait(timeout=scaled(10))
                raise AssertionError(f"parent failed to start: {proc.stderr.read() if proc.stderr else ''}")
            yield proc, json.loads(line)
        finally:
            proc.kill()
            proc.communicate(timeout=scaled(10))
