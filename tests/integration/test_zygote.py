"""``WorkerSpec(start_method="zygote")``: workers forked from a template process.

Real processes throughout. What must hold is what holds for exec'd workers (calls, output,
crash reports, no orphans), plus the zygote's own contract: every worker is a child of one
zygote, a replacement is forked by it, and the zygote dies with the pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from _util import TESTS_DIR, pid_alive, running_parent, scaled, wait_until, wait_until_sync
from integration import _faults, _targets
from poolkit import (
    Pool,
    PoolFailed,
    WorkerCrashed,
    WorkerOutput,
    WorkerSpec,
    WorkerStartupError,
    WorkerState,
)
from poolkit._zygote import ZygoteLauncher
from poolkit.testing import targets

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("processes")]

ZYGOTE = WorkerSpec(start_method="zygote")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _ready_pids(pool: Pool) -> set[int]:
    return {w.pid for w in pool.statistics().workers if w.state is WorkerState.READY and w.pid is not None}


@contextlib.asynccontextmanager
async def _zygote_pool(**kw: Any) -> Any:
    """A zygote pool whose launcher is closed with it (until the pool closes its launcher
    itself: see test_closing_the_pool_stops_the_zygote)."""
    launcher = ZygoteLauncher()
    try:
        async with Pool(launcher=launcher, **kw) as pool:
            yield pool
    finally:
        await launcher.aclose()


@pytest.mark.anyio
async def test_workers_are_forks_of_one_zygote() -> None:
    """Calls are served, by two workers with different pids whose parent is the same zygote,
    itself a child of the pool's process."""
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=2, worker=ZYGOTE) as pool:
            assert await pool.call(_faults.echo, "hi") == "hi"
            assert [x async for x in pool.map(pow, [2, 3], [5, 2])] == [32, 9]
            pids = _ready_pids(pool)
            assert len(pids) == 2
            (zygote,) = {_ppid(p) for p in pids}
            assert zygote not in pids and _ppid(zygote) == os.getpid()
            await pool.aclose()
            await pool._launcher.aclose()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_handler_and_preload_work_per_worker() -> None:
    """The handler module is imported in the zygote, but each worker builds its own handler
    (setup once per worker) and keeps its own state."""
    spec = WorkerSpec(start_method="zygote", handler="integration._faults:Tally", preload=("json",))
    with anyio.fail_after(scaled(30)):
        async with _zygote_pool(min_workers=1, worker=spec) as pool:
            assert await pool.call("add", 2) == 2
            assert await pool.call("add", 3) == 5
            assert await pool.call("setup_calls") == 1


@pytest.mark.anyio
async def test_sigkilled_worker_is_replaced_through_the_zygote() -> None:
    """SIGKILL mid-call fails that call with WorkerCrashed(signal=9); the replacement is a new
    fork of the same zygote and the pool keeps serving."""
    with anyio.fail_after(scaled(30)):
        async with _zygote_pool(min_workers=2, worker=ZYGOTE) as pool:
            before = _ready_pids(pool)
            (zygote,) = {_ppid(p) for p in before}
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(targets.crash, signal.SIGKILL)
            assert info.value.signal == signal.SIGKILL
            await wait_until(
                lambda: len(_ready_pids(pool)) == 2 and _ready_pids(pool) != before,
                20,
                f"a replacement: {pool!r}",
            )
            after = _ready_pids(pool)
            assert len(after - before) == 1
            assert {_ppid(p) for p in after} == {zygote}
            assert await pool.call(_faults.echo, 5) == 5
            assert pool.statistics().worker_crashes == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "exit_code", "signum"),
    [
        (_faults.crash, None, signal.SIGSEGV),
        (_faults.hard_exit, 7, None),
        (targets.crash, None, signal.SIGKILL),
    ],
    ids=["segfault", "os_exit", "sigkill"],
)
@pytest.mark.parametrize("start_method", ["exec", "zygote"])
async def test_crashes_are_reported_like_the_exec_launchers(
    start_method: str, fault: Any, exit_code: int | None, signum: int | None
) -> None:
    """A worker that segfaults, calls os._exit(7) or is SIGKILLed mid-call fails the call with
    the same WorkerCrashed (exit code or signal) whichever start method made it."""
    spec = WorkerSpec(start_method=start_method)  # type: ignore[arg-type]
    with anyio.fail_after(scaled(30)):
        async with (
            _zygote_pool(min_workers=1, worker=spec)
            if start_method == "zygote"
            else Pool(min_workers=1, worker=spec) as pool
        ):
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(fault)
    assert (info.value.exit_code, info.value.signal) == (exit_code, signum)


@pytest.mark.anyio
async def test_output_reaches_the_pool() -> None:
    """print, sys.stderr and raw writes to fds 1 and 2 in a forked worker all arrive as
    WorkerOutput lines, as they do from an exec'd worker."""
    lines: list[str] = []
    with anyio.fail_after(scaled(30)):
        async with _zygote_pool(min_workers=1, worker=ZYGOTE) as pool:
            pool.subscribe(lambda e: lines.append(e.line), types=(WorkerOutput,))
            assert await pool.call(_targets.noisy, "zz") == "zz"
            want = {"zz on stdout", "zz on stderr", "zz raw fd 1", "zz raw fd 2", "zz partial"}
            await wait_until(lambda: want <= set(lines), 10, f"all output lines, got {lines}")


@pytest.mark.anyio
async def test_startup_failure_is_reported_by_the_worker() -> None:
    """A preload module that does not exist fails the pool's start with the worker's own
    ModuleNotFoundError (the zygote skips it; the forked worker reports it)."""
    spec = WorkerSpec(start_method="zygote", preload=("poolkit_no_such_module",))
    with anyio.fail_after(scaled(30)):
        with pytest.raises(PoolFailed) as info:
            async with _zygote_pool(min_workers=1, worker=spec, max_startup_failures=1):
                pass
    cause = info.value.cause
    assert isinstance(cause, WorkerStartupError)
    assert cause.remote_type == "builtins.ModuleNotFoundError"


@pytest.mark.anyio
async def test_a_dead_zygote_is_replaced() -> None:
    """SIGKILL the zygote: its workers die with it, the pool forks replacements from a new
    zygote and serves again."""
    with anyio.fail_after(scaled(30)):
        async with _zygote_pool(min_workers=2, worker=ZYGOTE) as pool:
            before = _ready_pids(pool)
            (zygote,) = {_ppid(p) for p in before}
            os.kill(zygote, signal.SIGKILL)
            await wait_until(
                lambda: len(_ready_pids(pool)) == 2 and not _ready_pids(pool) & before,
                20,
                f"replacements: {pool!r}",
            )
            after = _ready_pids(pool)
            (new_zygote,) = {_ppid(p) for p in after}
            assert new_zygote != zygote
            assert not any(pid_alive(p) for p in before) and not pid_alive(zygote)
            assert await pool.call(_faults.echo, 1) == 1


@pytest.mark.anyio
async def test_closing_the_launcher_leaves_no_process() -> None:
    """After the pool and its launcher are closed, no worker and no zygote is left."""
    with anyio.fail_after(scaled(30)):
        async with _zygote_pool(min_workers=2, worker=ZYGOTE) as pool:
            pids = _ready_pids(pool)
            zygotes = {_ppid(p) for p in pids}
            assert await pool.call(_faults.echo, 1) == 1
    assert not any(pid_alive(p) for p in pids | zygotes)


@pytest.mark.anyio
async def test_closing_the_pool_stops_the_zygote() -> None:
    """Closing the pool alone stops its zygote."""
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1, worker=ZYGOTE) as pool:
            (zygote,) = {_ppid(p) for p in _ready_pids(pool)}
        try:
            assert not pid_alive(zygote)
        finally:
            await pool._launcher.aclose()  # type: ignore[attr-defined]


def test_command_is_refused_with_the_zygote() -> None:
    """A non-Python worker (command=) cannot be forked from the zygote: a config error."""
    with pytest.raises(ValueError, match="start_method='zygote'"):
        WorkerSpec(command=("./worker",), start_method="zygote")


_PARENT = """
import json, os, sys, anyio
from poolkit import Pool, WorkerSpec
from integration import _targets

async def main(mode):
    async with Pool(min_workers=2, worker=WorkerSpec(start_method="zygote")) as pool:
        pids = [w.pid for w in pool.statistics().workers]
        async with anyio.create_task_group() as tg:
            if mode == "busy":
                tg.start_soon(pool.call, _targets.sleepy, 3600)
                while pool.statistics().in_flight == 0:
                    await anyio.sleep(0.01)
            print(json.dumps(pids), flush=True)
            await anyio.sleep_forever()

anyio.run(main, sys.argv[2], backend=sys.argv[1])
"""


@contextlib.contextmanager
def _parent(backend: str, mode: str) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    with running_parent("-c", _PARENT, backend, mode) as (proc, pids):
        yield proc, pids


@pytest.mark.parametrize("mode", ["idle", "busy"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkilled_parent_leaves_no_zygote_and_no_worker(backend: str, mode: str) -> None:
    """SIGKILL the pool's process, idle or with a call running: the zygote and every worker
    exit within seconds."""
    with _parent(backend, mode) as (proc, pids):
        zygotes = {_ppid(p) for p in pids}
        assert len(zygotes) == 1 and all(pid_alive(p) for p in [*pids, *zygotes])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=scaled(10)) == -signal.SIGKILL
        everything = [*pids, *zygotes]
        wait_until_sync(lambda: not any(pid_alive(p) for p in everything), 10, f"{everything} gone")


@pytest.mark.anyio
async def test_a_zygote_with_threads_refuses_to_fork(tmp_path: Path) -> None:
    """A preload module that starts a thread at import makes the zygote unsafe to fork: the
    pool fails to start with a startup error that says so, instead of forking workers that
    could inherit a held lock."""
    (tmp_path / "poolkit_threaded_mod.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
        encoding="utf-8",
    )
    path = os.pathsep.join([str(tmp_path), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    spec = WorkerSpec(start_method="zygote", preload=("poolkit_threaded_mod",), env={"PYTHONPATH": path})
    with anyio.fail_after(scaled(30)):
        with pytest.raises(PoolFailed) as info:
            async with _zygote_pool(min_workers=1, worker=spec, max_startup_failures=1):
                pass
    assert "threads" in str(info.value.cause)


@pytest.mark.anyio
async def test_connection_follows_the_transport_protocol() -> None:
    """A zygote connection behaves as the exec launcher's: frames arrive on receive(), a SHUTDOWN
    frame ends the worker with returncode 0, and kill() reports -SIGKILL; aclose() ends a
    receive waiting on the connection with b"" (end of stream) while the process still lives."""
    from poolkit import _protocol as proto

    launcher = ZygoteLauncher()
    try:
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                conns = []
                for name in ("z1", "z2"):
                    conns.append(
                        await launcher.launch(
                            {"worker_id": name},
                            command=None,
                            python=sys.executable,
                            env={},
                            cwd=None,
                            task_group=tg,
                        )
                    )
                first, second = conns
                decoder = proto.FrameDecoder(proto.DEFAULT_MAX_FRAME_SIZE)
                frames: list[proto.Frame] = []
                while not frames:
                    frames += decoder.feed(await first.receive())
                assert frames[0].kind is proto.FrameKind.READY
                assert json.loads(frames[0].payload)["pid"] == first.pid
                await first.send(proto.encode_frame(proto.FrameKind.SHUTDOWN, 0))
                assert await first.wait() == 0 and first.returncode == 0
                await first.aclose()

                got: list[bytes] = []

                async def read_stderr() -> None:
                    got.append(await second.receive_stderr())

                assert second.pid is not None
                os.kill(second.pid, signal.SIGSTOP)  # holds its pipes open, and reacts to nothing
                tg.start_soon(read_stderr)
                await anyio.wait_all_tasks_blocked()
                await second.aclose()
                await wait_until(lambda: got == [b""], 10, "the waiting receive ended")
                second.kill()
                assert await second.wait() == -signal.SIGKILL
    finally:
        await launcher.aclose()


@pytest.mark.anyio
async def test_connection_hands_replies_to_a_receiver(anyio_backend: str) -> None:
    """On asyncio, ``set_receiver(deliver)`` gets the worker's stdout in the loop's read
    callback (as the exec connection does); a chunk it refuses waits for receive(), and
    stop_receiving() ends a waiting receive() with b"". On trio every chunk goes to receive()."""
    from poolkit import _protocol as proto

    launcher = ZygoteLauncher()
    try:
        with anyio.fail_after(scaled(30)):
            async with anyio.create_task_group() as tg:
                conn = await launcher.launch(
                    {"worker_id": "z1"}, command=None, python=sys.executable, env={}, cwd=None, task_group=tg
                )
                delivered: list[bytes] = []
                taking = True

                def deliver(data: bytes) -> bool:
                    if taking:
                        delivered.append(data)
                    return taking

                conn.set_receiver(deliver)
                decoder = proto.FrameDecoder(proto.DEFAULT_MAX_FRAME_SIZE)
                frames: list[proto.Frame] = []
                if anyio_backend == "asyncio":
                    await wait_until(lambda: bool(delivered), 20, "READY delivered to the receiver")
                    frames += decoder.feed(b"".join(delivered))
                else:
                    while not frames:
                        frames += decoder.feed(await conn.receive())
                assert frames[0].kind is proto.FrameKind.READY

                taking = False  # refused chunks wait for receive()
                await conn.send(proto.encode_frame(proto.FrameKind.PING, 7))
                frames = []
                while not frames:
                    frames += decoder.feed(await conn.receive())
                assert (frames[0].kind, frames[0].call_id) == (proto.FrameKind.PONG, 7)

                if anyio_backend == "asyncio":
                    got: list[bytes] = []

                    async def receive() -> None:
                        got.append(await conn.receive())

                    tg.start_soon(receive)
                    await anyio.wait_all_tasks_blocked()
                    conn.stop_receiving()
                    await wait_until(lambda: got == [b""], 10, "receive() ended by stop_receiving()")
                conn.kill()
                assert await conn.wait() == -signal.SIGKILL
                await conn.aclose()
    finally:
        await launcher.aclose()
