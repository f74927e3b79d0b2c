"""A call stuck in C code, ignoring signals, with a timeout (issue 6).

The call's process blocks and ignores SIGTERM, so only the SIGKILL that follows ``kill_grace``
ends it. ``kill_grace`` is set wide here: the caller's answer, the pool's capacity and the
close are each checked while the stuck process is demonstrably still alive, so none of them
can be waiting for it to die. benchmarks/peers.py's ``stuck`` workload measures the same
scenario in milliseconds, side by side with the peers.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from _util import pid_alive, scaled
from integration import _faults, _targets
from poolkit import CallTimeout, Phase, Pool, WorkerState
from poolkit.testing import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]

TIMEOUT = 0.5  # the behaviour under test: not scaled (the call never answers, at any speed)
KILL_GRACE = scaled(5.0)  # SIGTERM to SIGKILL: the window in which the stuck process lives on
STUCK_FOR = 120.0  # seconds the call would sleep: it never returns within a test


def _accepting(pool: Pool) -> int:
    """Workers that take calls (READY or BUSY): not the one being killed, nor one starting."""
    return sum(1 for w in pool.statistics().workers if w.state.accepts_calls)


def _sigkill(pid: int | None) -> None:
    """End a stuck process the test is done with, so closing the pool need not wait out
    kill_grace. Only after the assertions: it changes nothing they check."""
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


async def test_stuck_call_is_answered_at_its_deadline_not_when_its_process_dies() -> None:
    """A call stuck in C code, ignoring SIGTERM, fails with CallTimeout (RUNNING phase) at its
    deadline: its caller does not wait for the process, which is still alive then (SIGKILL
    comes only after kill_grace)."""
    async with Pool(min_workers=1, kill_grace=KILL_GRACE) as pool:
        (pid,) = [w.pid for w in pool.statistics().workers]
        start = anyio.current_time()
        with anyio.fail_after(scaled(20)), pytest.raises(CallTimeout) as info:
            await pool.call(_faults.stuck_in_c_ignoring_signals, STUCK_FOR, timeout=TIMEOUT)
        elapsed = anyio.current_time() - start
        try:
            assert isinstance(info.value, TimeoutError)
            assert info.value.phase is Phase.RUNNING and info.value.pid == pid
            assert TIMEOUT <= elapsed < TIMEOUT + scaled(1.0)
            assert elapsed < KILL_GRACE
            assert pid is not None and pid_alive(pid), "the stuck process ignored SIGTERM"
            # Settled: not "in flight" while its process is being killed (and a drain does
            # not wait for it), though the worker still holds it.
            stats = pool.statistics()
            assert (stats.in_flight, stats.timed_out) == (0, 1)
            assert [w.in_flight for w in stats.workers if w.pid == pid] == [0]
        finally:
            _sigkill(pid)


async def test_pool_serves_on_all_its_workers_while_the_stuck_process_is_killed(tmp_path: Path) -> None:
    """After a stuck call's timeout, while its process still ignores SIGTERM, the pool runs
    calls on two workers at once (a rendezvous only two simultaneous calls pass), neither of
    them the stuck process: a replacement started without waiting for the stuck one to die."""
    # One call per worker at a time: the two rendezvous calls cannot queue on one worker.
    async with Pool(min_workers=2, pipeline_depth=1, max_pipeline_depth=1, kill_grace=KILL_GRACE) as pool:
        stuck: int | None = None
        try:
            with anyio.fail_after(scaled(30)):
                with pytest.raises(CallTimeout) as info:
                    await pool.call(_faults.stuck_in_c_ignoring_signals, STUCK_FOR, timeout=TIMEOUT)
                stuck = info.value.pid
                await wait_until(
                    lambda: _accepting(pool) == 2, timeout=20, describe="two workers taking calls", pool=pool
                )
                met: list[tuple[int, bool]] = []

                async def meet() -> None:
                    met.append(await pool.call(_targets.rendezvous, str(tmp_path), 2, scaled(10)))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(meet)
                    tg.start_soon(meet)
            assert [ok for _pid, ok in met] == [True, True], met
            pids = {p for p, _ok in met}
            assert len(pids) == 2 and stuck not in pids
            assert stuck is not None and pid_alive(stuck), "the stuck process was still being killed"
            states = {w.pid: w.state for w in pool.statistics().workers}
            assert states[stuck] is WorkerState.STOPPING
        finally:
            _sigkill(stuck)


async def test_closing_the_pool_leaves_no_stuck_process() -> None:
    """Closing a pool while a timed-out call's process still ignores SIGTERM kills it: once
    the pool is closed, that process is gone (no orphan)."""
    kill_grace = scaled(2.0)  # the close waits this out: narrower than KILL_GRACE, still ample
    with anyio.fail_after(scaled(20) + kill_grace):
        async with Pool(min_workers=1, kill_grace=kill_grace) as pool:
            with pytest.raises(CallTimeout) as info:
                await pool.call(_faults.stuck_in_c_ignoring_signals, STUCK_FOR, timeout=TIMEOUT)
            stuck = info.value.pid
            assert stuck is not None and pid_alive(stuck), "the stuck process ignored SIGTERM"
    assert not pid_alive(stuck)
