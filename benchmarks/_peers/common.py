"""Measuring tools shared by the runner's workloads: process trees, memory, CPU time, pinning.

Linux only (``/proc``), like the benchmark: on another system the memory figures come back
empty and pinning is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import resource
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PR_SET_TIMERSLACK = 29
_PR_SET_CHILD_SUBREAPER = 36


def compile_bytecode() -> list[str]:
    """Write the bytecode of poolkit and of these benchmarks, as a wheel install does.

    pip compiles a package's modules when it installs it, so every peer starts its workers
    from bytecode. poolkit's editable install does not, and with PYTHONDONTWRITEBYTECODE set
    (as on our CI machines) each worker would compile poolkit's source on every start: ~8 ms
    more per worker start, a cost no user of a wheel pays. Returns the directories compiled."""
    import compileall
    import importlib.util

    dirs: list[str] = []
    spec = importlib.util.find_spec("poolkit")
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(spec.submodule_search_locations)
    dirs.append(str(Path(__file__).resolve().parent.parent))  # benchmarks/: the targets' module
    for d in dirs:
        compileall.compile_dir(d, quiet=1)
    return dirs


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def precise_sleeps() -> bool:
    """Timer slack of 1 ns for the calling thread (and threads it starts later).

    Linux lets a sleeping thread wake up to 50 us late by default so that wake-ups coalesce;
    an open-loop sender would add that to every latency it measures."""
    return _prctl(_PR_SET_TIMERSLACK, 1)


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (not init), so they can be found
    and killed after a runner is done: no benchmark run leaves a process behind."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1  # time.perf_counter's clock on Linux
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _timespec(seconds: float) -> _Timespec:
    ns = round(seconds * 1e9)
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def periodic_timer_fd(first: float, period: float) -> int | None:
    """A Linux timerfd that becomes readable at ``first`` (a ``time.perf_counter`` time) and
    every ``period`` seconds after it; each read returns the expiries since the last one (8
    bytes, native order). None where there is no timerfd (then the caller times sends with a
    thread).

    The open-loop latency workload of the async systems waits on it in their event loop, so
    the kernel's timer wakes the loop itself at each intended send time: one wake-up per
    call before it is sent, as the sync systems' sender thread has, rather than a sender
    thread's wake-up and then the loop's. (asyncio cannot time it: epoll rounds its timeout
    up to the next millisecond. ``os.timerfd_create`` is Python 3.13's; this is the same
    system call through ctypes.)"""
    if not hasattr(time, "CLOCK_MONOTONIC") or time.get_clock_info("perf_counter").implementation != (
        "clock_gettime(CLOCK_MONOTONIC)"
    ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    fd = int(create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
    if fd < 0:
        return None
    spec = _Itimerspec(_timespec(period), _timespec(first))
    if int(settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)) != 0:
        os.close(fd)
        return None
    return fd


# --------------------------------------------------------------------------- process trees
def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int | None = None) -> list[int]:
    """Live (not zombie) descendants of ``pid`` (default: this process), breadth first."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, parent in _ppid_map().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """The process runs (it exists and is not a zombie: a zombie has died, unreaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class DeathWatch:
    """A thread that notes when ``pid`` dies (``died``: a ``time.perf_counter`` time, None
    while it lives), polling /proc every millisecond."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.died: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"death watch {pid}")
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if not pid_alive(self.pid):
                self.died = time.perf_counter()
                return
            time.sleep(0.001)

    def wait(self, timeout: float) -> bool:
        """Whether the process died within ``timeout`` seconds (from now)."""
        self._thread.join(timeout)
        return self.died is not None

    def stop(self) -> None:
        self._stop.set()


def kill_tree(pids: Iterable[int]) -> int:
    """SIGKILL each pid; the number that were still there."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def clean_up(limit: float = 5.0) -> int:
    """Kill every descendant and wait until all are gone and reaped; the number killed.

    This process is a subreaper: what a finished runner left behind (processes it killed but
    did not wait for, or that outlived it) is re-parented here, and is gone before the next
    measurement starts."""
    killed: set[int] = set()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        alive = descendants()
        kill_tree(alive)
        killed.update(alive)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no children left, dead or alive
        if pid == 0:
            time.sleep(0.001)
    return len(killed)


# --------------------------------------------------------------------------- CPU
def pin(parent_cpu: int, worker_cpus: Sequence[int], workers: Iterable[int]) -> None:
    """Every thread of this process on ``parent_cpu``; each worker process (all its threads) on
    one of ``worker_cpus``, round-robin. Threads started afterwards inherit their creator's CPU."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {parent_cpu})
        except OSError:
            pass
    for i, pid in enumerate(workers):
        cpu = worker_cpus[i % len(worker_cpus)]
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except OSError:
                pass


def own_cpu() -> float:
    """CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) the given processes have used so far (10 ms resolution)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


# --------------------------------------------------------------------------- memory
def status_kib(
    pid: int | str, keys: Sequence[str] = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
) -> dict[str, int]:
    """Fields of /proc/<pid>/status, in KiB ({} if the process is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0])
    return out


def rollup_kib(pid: int | str) -> dict[str, int]:
    """PSS and USS (private clean + dirty) from /proc/<pid>/smaps_rollup, in KiB ({} if unreadable).

    VmRSS counts pages a forked worker still shares with its parent; PSS splits shared pages
    between their users and USS counts only the worker's own: compare forked and fresh
    workers with those."""
    fields: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[-1] == "kB":
            fields[name.strip()] = int(parts[0])
    if "Pss" not in fields:
        return {}
    return {"Pss": fields["Pss"], "Uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def memory_of(pid: int | str) -> dict[str, int]:
    return {**status_kib(pid), **rollup_kib(pid)}


# --------------------------------------------------------------------------- statistics
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))


def percentiles_us(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9 (nearest rank), max and mean of latencies given in seconds, in us."""
    values = sorted(seconds)
    if not values:
        return {}
    out = {name: values[max(0, math.ceil(q * len(values)) - 1)] * 1e6 for name, q in PERCENTILES}
    out["max"] = values[-1] * 1e6
    out["mean"] = sum(values) / len(values) * 1e6
    return {k: round(v, 1) for k, v in out.items()}


def jsonable(value: Any) -> Any:
    """An exception (or anything) as something json.dumps takes."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"[:300]
    return value
