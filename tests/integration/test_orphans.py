"""No orphans: workers die with their parent, however the parent dies; and what a worker
started dies with the worker.

The parent is a separate process (tests/integration/_parent.py) so the test can kill it or let
a fault kill it. Workers notice through the parent-death signal (Linux) and EOF on their
input; the test asserts every worker pid is gone within a bound.

Grandchildren: each worker leads a process group of its own, which the pool signals when it
kills the worker and SIGKILLs once the worker has exited. The grandchild here ignores SIGTERM,
so it is the sweep after the exit that must end it, and it runs behind three kinds of worker:
exec'd, forked by the zygote, and a Python worker behind a shell wrapper (``command=``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from _util import pid_alive, running_parent, scaled, wait_until, wait_until_sync
from integration import _faults, _targets
from poolkit import CallTimeout, Pool, PoolFailed, WorkerSpawned, WorkerSpec

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

BACKENDS = ["asyncio", "trio"]

#: The kinds of worker a grandchild is started from. "shell": ``sh`` is the process the pool
#: started, the Python worker its child (integration/_wrapped_worker.py says how).
WORKERS = {
    "exec": WorkerSpec(),
    "zygote": WorkerSpec(start_method="zygote"),
    "shell": WorkerSpec(
        command=("/bin/sh", "-c", f'{shlex.quote(sys.executable)} -m integration._wrapped_worker "$0"; :')
    ),
}


def _group(pgid: int) -> set[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members.add(int(entry))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return members


def _worker_pid(pool: Pool) -> int:
    (pid,) = [w.pid for w in pool.statistics().workers]
    assert pid is not None
    return pid


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


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(WORKERS))
async def test_a_killed_worker_leaves_no_grandchild(kind: str, tmp_path: Path) -> None:
    """A call starts a subprocess, then overruns its timeout: the pool kills the worker, and
    the subprocess (which ignores SIGTERM) and the rest of the worker's group go too, while
    the pool is still open."""
    marker = tmp_path / "grandchild.pid"
    with anyio.fail_after(scaled(60)):
        async with Pool(min_workers=1, max_workers=1, worker=WORKERS[kind]) as pool:
            worker = _worker_pid(pool)
            with pytest.raises(CallTimeout):
                await pool.call(_targets.grandchild_then_block, str(marker), 600, timeout=scaled(3))
            assert marker.exists(), "the call timed out before it had started its grandchild"
            grandchild = int(marker.read_text())
            await wait_until(lambda: not pid_alive(grandchild), 10, f"grandchild {grandchild} gone")
            await wait_until(lambda: not _group(worker), 10, f"nothing left of group {worker}")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(WORKERS))
async def test_closing_the_pool_leaves_no_grandchild(kind: str) -> None:
    """A call starts a subprocess and returns its pid; the worker exits cleanly when the pool
    closes, and the subprocess must not stay behind."""
    with anyio.fail_after(scaled(60)):
        async with Pool(min_workers=1, max_workers=1, worker=WORKERS[kind]) as pool:
            worker = _worker_pid(pool)
            grandchild = await pool.call(_targets.start_grandchild)
            assert pid_alive(grandchild)
            assert os.getpgid(grandchild) == worker
        await wait_until(lambda: not pid_alive(grandchild), 10, f"grandchild {grandchild} gone")
        await wait_until(lambda: not _group(worker), 10, f"nothing left of group {worker}")


@pytest.mark.anyio
async def test_a_shell_worker_killed_at_startup_leaves_no_child() -> None:
    """The audit's case: ``command=("/bin/sh", "-c", "sleep 600; :")`` never sends its
    handshake, so the pool kills the shell at ``startup_timeout``; its ``sleep`` must go too."""
    spawned: list[int | None] = []
    pool = Pool(
        min_workers=1,
        max_workers=1,
        worker=WorkerSpec(command=("/bin/sh", "-c", "sleep 600; :")),
        startup_timeout=scaled(3),
        max_startup_failures=1,
    )
    pool.subscribe(lambda event: spawned.append(getattr(event, "pid", None)), types=(WorkerSpawned,))

    async def start() -> None:
        with pytest.raises(PoolFailed):
            await pool.start()

    def shell_and_sleep() -> set[int]:
        return _group(spawned[0]) if spawned and spawned[0] is not None else set()

    with anyio.fail_after(scaled(60)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            await wait_until(lambda: len(shell_and_sleep()) == 2, 10, "the shell and its sleep running")
            members = shell_and_sleep()
        await wait_until(lambda: not any(pid_alive(p) for p in members), 10, f"{sorted(members)} gone")


@pytest.mark.anyio
async def test_a_dead_zygote_leaves_no_grandchild() -> None:
    """SIGKILL the zygote while its worker has a subprocess: the worker dies with the zygote
    (its parent-death signal), and with no zygote left to sweep that worker's group, the pool
    must SIGKILL the subprocess itself."""
    with anyio.fail_after(scaled(60)):
        async with Pool(min_workers=1, max_workers=1, worker=WORKERS["zygote"]) as pool:
            worker = _worker_pid(pool)
            grandchild = await pool.call(_targets.start_grandchild)
            zygote = pool._launcher.zygote_pid  # type: ignore[attr-defined]
            assert zygote is not None
            os.kill(zygote, signal.SIGKILL)
            await wait_until(lambda: not pid_alive(grandchild), 10, f"grandchild {grandchild} gone")
            await wait_until(lambda: not _group(worker), 10, f"nothing left of group {worker}")
