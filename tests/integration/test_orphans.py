"""No orphans: workers die with their parent, however the parent dies.

The parent is a separate process (tests/integration/_parent.py) so the test can kill it or let
a fault kill it. Workers notice through the parent-death signal (Linux) and EOF on their
input; the test asserts every worker pid is gone within a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import anyio
import pytest

from _util import pid_alive, running_parent, scaled, wait_until_sync
from integration import _faults
from poolkit import Pool

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

BACKENDS = ["asyncio", "trio"]


@contextlib.contextmanager
def _parent(backend: str, mode: str) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """The parent (``integration._parent``) and its two workers' pids."""
    with running_parent("-m", "integration._parent", backend, mode) as (proc, pids):
        assert len(pids) == 2
        yield proc, pids


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkilled_parent_leaves_no_worker(backend: str) -> None:
    """SIGKILL the parent while its pool is idle: every worker exits within seconds."""
    with _parent(backend, "wait") as (proc, pids):
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=scaled(10)) == -signal.SIGKILL
        wait_until_sync(lambda: not any(pid_alive(p) for p in pids), 10, f"workers {pids} gone")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("mode", "returncode"),
    [
        ("crash-pickle", -signal.SIGSEGV),
        ("os_exit-pickle", 7),
        ("crash-unpickle", -signal.SIGSEGV),
        ("os_exit-unpickle", 7),
    ],
)
def test_parent_dying_mid_call_leaves_no_worker(backend: str, mode: str, returncode: int) -> None:
    """The deadlock matrix rows that kill the caller's own process: a segfault or os._exit
    while the parent pickles a call or unpickles a result. The parent dies; its workers follow."""
    with _parent(backend, mode) as (proc, pids):
        assert proc.wait(timeout=scaled(20)) == returncode
        wait_until_sync(lambda: not any(pid_alive(p) for p in pids), 10, f"workers {pids} gone")


@pytest.mark.anyio
async def test_closing_the_pool_leaves_no_worker() -> None:
    """After ``async with Pool`` exits, every worker process it started has exited."""
    async with Pool(min_workers=2) as pool:
        pids = [w.pid for w in pool.statistics().workers]
        assert await pool.call(_faults.echo, 1) == 1
    assert pids and all(p is not None and not pid_alive(p) for p in pids)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_workers_outlive_the_thread_that_spawned_them(anyio_backend: str) -> None:
    """The parent-death signal must not fire while the parent lives. On trio, Popen runs in a
    cached worker thread that exits after 10 idle seconds: a worker that had tied
    PR_SET_PDEATHSIG to that thread was SIGKILLed then, every ~10 s of idle. Here an idle pool
    is watched for longer than that window (an observation window: the bug is the absence
    of an event, so there is nothing to wait on), then still answers from the same workers."""
    import trio._core._thread_cache as thread_cache

    from poolkit import Event, WorkerExited

    with anyio.fail_after(scaled(30) + thread_cache.IDLE_TIMEOUT):
        async with Pool(min_workers=1, heartbeat_interval=None) as pool:
            exited: list[Event] = []
            pool.subscribe(exited.append, types=(WorkerExited,))
            (pid,) = {w.pid for w in pool.statistics().workers}
            await anyio.sleep(thread_cache.IDLE_TIMEOUT + 1.5)
            assert exited == [], exited
            assert await pool.call(os.getpid) == pid
