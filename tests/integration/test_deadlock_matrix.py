"""CPython's test_concurrent_futures/test_deadlock.py matrix, against real poolkit workers.

Every fault (segfault, ``os._exit``, ``sys.exit``, raise) at every boundary that runs in a
worker (unpickling the call, running it, pickling the result), plus raise/``sys.exit`` at
the boundaries that run in the caller (pickling the call, unpickling the result), must end
that call with a typed error, never a hang, and leave the pool serving at full size.
A segfault or ``os._exit`` in the *caller's* process kills the caller; that row is proven
in test_orphans.py (the dead parent leaves no worker behind).
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
import pytest

import poolkit
from _util import scaled, wait_until
from integration import _faults
from poolkit import Phase, Pool, RemoteError, SerializationError, WorkerCrashed

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]


async def _assert_pool_recovers(pool: Pool) -> None:
    """The pool answers a fresh call and is back to its full size of ready workers."""
    with anyio.fail_after(scaled(20)):
        assert await pool.call(_faults.echo, "still serving") == "still serving"
    await wait_until(
        lambda: pool.statistics().workers_in(poolkit.WorkerState.READY) == pool.config.min_workers,
        timeout=20,
        describe=f"pool back to {pool.config.min_workers} ready workers: {pool!r}",
    )


def _expect_crash(
    err: BaseException, *, signal_number: int | None = None, exit_code: int | None = None
) -> None:
    assert isinstance(err, WorkerCrashed), repr(err)
    assert err.phase is Phase.RUNNING
    assert err.worker_id is not None and err.pid is not None
    assert err.signal == signal_number
    assert err.exit_code == exit_code


async def _call_expecting_error(pool: Pool, target: Any, *args: Any) -> BaseException:
    with anyio.fail_after(scaled(20)):
        with pytest.raises(poolkit.PoolError) as info:
            await pool.call(target, *args)
    return info.value


# (where, fault) -> check of the error. "where" names the boundary, as in CPython's matrix.
@pytest.mark.parametrize(
    ("fault", "check"),
    [
        pytest.param("crash", lambda e: _expect_crash(e, signal_number=signal.SIGSEGV), id="crash"),
        pytest.param("os_exit", lambda e: _expect_crash(e, exit_code=7), id="os_exit"),
        pytest.param(
            "sys_exit",
            lambda e: isinstance(e, SerializationError) and e.side == "worker" and e.phase is Phase.SENT,
            id="sys_exit",
        ),
        pytest.param(
            "raise",
            lambda e: (
                isinstance(e, SerializationError) and e.side == "worker" and "UnpicklingError" in str(e)
            ),
            id="raise",
        ),
    ],
)
async def test_fault_while_unpickling_the_call_in_the_worker(fault: str, check: Any) -> None:
    """A call whose argument misbehaves when the worker unpickles it fails with a typed error
    (crash/exit: WorkerCrashed with the signal or code; raise/sys.exit: a worker-side
    SerializationError) and the pool keeps serving."""
    async with Pool(min_workers=1) as pool:
        err = await _call_expecting_error(pool, _faults.accept, _faults.AT_UNPICKLE[fault]())
        result = check(err)
        assert result is None or result, repr(err)
        await _assert_pool_recovers(pool)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        pytest.param("crash", lambda e: _expect_crash(e, signal_number=signal.SIGSEGV), id="crash"),
        pytest.param("os_exit", lambda e: _expect_crash(e, exit_code=7), id="os_exit"),
        pytest.param(
            "sys_exit",
            lambda e: isinstance(e, RemoteError) and e.remote_type == "builtins.SystemExit",
            id="sys_exit",
        ),
        pytest.param(
            "raise",
            lambda e: (
                isinstance(e, RemoteError)
                and e.remote_type == "builtins.RuntimeError"
                and "error raised on purpose" in e.remote_traceback
                and e.phase is Phase.RUNNING
            ),
            id="raise",
        ),
    ],
)
async def test_fault_while_running_in_the_worker(fault: str, check: Any) -> None:
    """A target that segfaults, exits or raises fails only its call with a typed error
    (the raise carries the remote type and traceback) and the pool keeps serving."""
    async with Pool(min_workers=1) as pool:
        err = await _call_expecting_error(pool, _faults.run_fault, fault)
        result = check(err)
        assert result is None or result, repr(err)
        await _assert_pool_recovers(pool)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        pytest.param("crash", lambda e: _expect_crash(e, signal_number=signal.SIGSEGV), id="crash"),
        pytest.param("os_exit", lambda e: _expect_crash(e, exit_code=7), id="os_exit"),
        pytest.param(
            "sys_exit",
            lambda e: isinstance(e, SerializationError) and e.side == "worker" and e.phase is Phase.RETURNING,
            id="sys_exit",
        ),
        pytest.param(
            "raise",
            lambda e: isinstance(e, SerializationError) and e.side == "worker" and e.phase is Phase.RETURNING,
            id="raise",
        ),
    ],
)
async def test_fault_while_pickling_the_result_in_the_worker(fault: str, check: Any) -> None:
    """A result that misbehaves when the worker pickles it fails the call with a typed error
    (RETURNING phase: it ran) and the pool keeps serving."""
    async with Pool(min_workers=1) as pool:
        err = await _call_expecting_error(pool, _faults.return_instance, "pickle", fault)
        result = check(err)
        assert result is None or result, repr(err)
        await _assert_pool_recovers(pool)


@pytest.mark.parametrize("fault", ["sys_exit", "raise"])
async def test_fault_while_pickling_the_call_in_the_caller(fault: str) -> None:
    """An argument that raises (or calls sys.exit) while the caller pickles it fails that call
    with a parent-side SerializationError before anything is sent; no worker is touched."""
    async with Pool(min_workers=1) as pool:
        before = pool.statistics()
        err = await _call_expecting_error(pool, _faults.accept, _faults.AT_PICKLE[fault]())
        assert isinstance(err, SerializationError)
        assert err.side == "parent" and err.phase is Phase.QUEUED and err.retry_safe
        after = pool.statistics()
        assert after.worker_starts == before.worker_starts
        assert sum(w.calls_completed for w in after.workers) == sum(w.calls_completed for w in before.workers)
        await _assert_pool_recovers(pool)


@pytest.mark.parametrize("fault", ["sys_exit", "raise"])
async def test_fault_while_unpickling_the_result_in_the_caller(fault: str) -> None:
    """A result that raises (or calls sys.exit) while the caller unpickles it fails that call
    with a parent-side SerializationError in the RETURNING phase; the worker is unharmed."""
    async with Pool(min_workers=1) as pool:
        pid = pool.statistics().workers[0].pid
        err = await _call_expecting_error(pool, _faults.return_instance, "unpickle", fault)
        assert isinstance(err, SerializationError)
        assert err.side == "parent" and err.phase is Phase.RETURNING and not err.retry_safe
        await _assert_pool_recovers(pool)
        assert pool.statistics().workers[0].pid == pid, "the worker should not have been replaced"
