"""Call targets for the worker runtime's heartbeat and session tests (``test_worker_runtime.py``).

Workers import it as ``integration._runtime_targets`` (tests/ is on their PYTHONPATH), like
``integration._targets``; standard library only, for the same reason.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolkit.worker import Session


def _sum_range_rate() -> float:
    """Seconds per element of ``sum(range(n))`` on this machine (best of three)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sum(range(1_000_000))
        best = min(best, time.perf_counter() - start)
    return best / 1_000_000


def hold_gil(fifo: str, seconds: float) -> int:
    """Say "ready", wait for a line on ``fifo`` (the GIL is free meanwhile), then say "holding"
    and keep the GIL for about ``seconds`` in one C call that never lets go of it.

    ``sum`` over a ``range`` runs entirely in C (the builtin's int fast path pulls items from
    the range iterator without running bytecode), and CPython hands the GIL to another thread
    only between bytecodes: no other thread runs until it returns. Checked on CPython 3.11
    (a thread ticking every 5 ms saw one gap as long as the whole sum); ``re`` backtracking
    and ``math.factorial`` behave the same. The size is calibrated here, so the hold lasts
    about ``seconds`` on fast and slow machines alike. Returns the number of elements summed.
    """
    n = max(1_000_000, int(seconds / _sum_range_rate()))
    print("ready", flush=True)
    with open(fifo, encoding="utf-8") as f:
        f.readline()
    print("holding", flush=True)
    sum(range(n))
    return n


def remember(value: Any, *, session: Any) -> list[Any]:
    """Append ``value`` to the session's list; return ``[session.calls, the list]``: shows
    which session object a call got and whether its state survived."""
    values = session.__dict__.setdefault("values", [])
    values.append(value)
    return [session.calls, list(values)]


#: What :func:`close_noisily`'s callbacks did, in order: observable in-process (bridge layer),
#: where the prints would only reach the test's own stdout.
CLOSED: list[str] = []


def close_noisily(*, session: Session) -> str:
    """Register three on_close callbacks on the session: two print (and append to
    :data:`CLOSED`), the middle one raises."""

    def say(text: str) -> None:
        CLOSED.append(text)
        print(text)

    session.on_close(lambda: say(f"closed {session.key} first-registered"))

    @session.on_close
    def broken() -> None:
        raise RuntimeError(f"on_close failure for {session.key}")

    session.on_close(lambda: say(f"closed {session.key} last-registered"))
    return repr(session)


def thread_count() -> int:
    """Threads in this process (Linux: entries of /proc/self/task): 1 means no heartbeat thread."""
    import os

    return len(os.listdir("/proc/self/task")) if sys.platform.startswith("linux") else -1
