"""How single calls fail over in-memory fake workers: timeouts, crashes, cancellation, a full
queue and bad input. Each failure must hit only its own call and leave the pool serving."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import pytest

from _util import scaled, wait_until
from poolkit import (
    CallQueued,
    CallTimeout,
    Event,
    FailureKind,
    PayloadTooLarge,
    Phase,
    Pool,
    PoolClosed,
    PoolState,
    QueueFull,
    RemoteError,
    SerializationError,
    WorkerCrashed,
    WorkerState,
)
from poolkit._transport import Connection
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import (
    RUNS,
    TARGET,
    Outcome,
    add,
    big_result,
    crash_exit,
    crash_segv,
    echo,
    hang,
    new_gate,
    record,
    unpicklable_result,
    wait_for,
    wait_then_crash,
)

pytestmark = pytest.mark.anyio


def make_pool(launcher: BridgeLauncher | None = None, **overrides: Any) -> Pool:
    """A small pool over fake workers (one worker unless told otherwise)."""
    fields: dict[str, Any] = {"min_workers": 1, **overrides}
    return Pool(launcher=launcher or BridgeLauncher(), **fields)


def replaced(pool: Pool, old_id: str, starts: int) -> bool:
    """The pool is back to one READY worker that is not ``old_id``, after ``starts`` spawns."""
    s = pool.statistics()
    return (
        s.worker_starts == starts
        and len(s.workers) == 1
        and s.workers[0].id != old_id
        and s.workers[0].state is WorkerState.READY
    )


# ---- timeouts ------------------------------------------------------------------------------------
async def test_timeout_of_a_running_call_kills_and_replaces_its_worker() -> None:
    """A running call past its deadline raises CallTimeout (a TimeoutError, phase RUNNING); its
    worker is killed and replaced, and the call pipelined behind it still succeeds."""
    launcher = BridgeLauncher()
    with anyio.fail_after(scaled(10)):
        async with make_pool(launcher, pipeline_depth=2) as pool:
            old = pool.statistics().workers[0]
            gate = new_gate("never")
            slow, behind = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: slow.capture(pool.call, wait_for, "never", timeout=scaled(0.5)))
                await gate.entered.wait()
                tg.start_soon(behind.capture, pool.call, add, 40, 2)
            assert behind.value == 42, behind.error
            err = slow.error
            assert isinstance(err, CallTimeout)
            assert isinstance(err, TimeoutError)
            assert err.kind is FailureKind.TIMEOUT
            assert err.phase is Phase.RUNNING
            assert not err.retry_safe
            assert err.timeout == pytest.approx(scaled(0.5))
            assert (err.worker_id, err.pid) == (old.id, old.pid)
            assert "deadline" in str(err)

            await wait_until(lambda: replaced(pool, old.id, starts=2), 10, "a replacement worker")
            assert launcher.connections[0].returncode == -15  # terminated
            stats = pool.statistics()
            assert stats.timed_out == 1
            assert stats.worker_crashes == 0  # killed on purpose, not a crash
            assert await pool.call(add, 1, 2) == 3


async def test_call_right_after_a_timeout_is_not_sent_to_the_killed_worker() -> None:
    """A call made at once after a running call timed out (its worker killed, not yet gone) is
    not dispatched to the dying worker: it runs on the replacement and succeeds."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
            assert await pool.call(add, 1, 2) == 3
            stats = pool.statistics()
            assert stats.worker_starts == 2
            assert stats.in_flight == 0


async def test_timeout_while_queued_never_sends_the_call() -> None:
    """A call still queued at its deadline raises CallTimeout with phase QUEUED and never runs;
    the worker busy meanwhile is not harmed."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            gate = new_gate("busy")
            busy = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "done")
                await gate.entered.wait()
                with pytest.raises(CallTimeout) as info:
                    await pool.call(record, "late", timeout=0.05)
                assert pool.statistics().queued == 0
                gate.release.set()
            err = info.value
            assert err.phase is Phase.QUEUED
            assert err.retry_safe
            assert err.worker_id is None
            assert busy.value == "done"
            assert await pool.call(record, "after") == "after"
            assert RUNS == {"after": 1}
            stats = pool.statistics()
            assert stats.worker_starts == 1
            assert stats.workers[0].calls_completed == 2  # "busy" and "after"
            assert stats.timed_out == 1


async def test_timeout_of_a_pipelined_call_reports_sent_and_spares_the_worker() -> None:
    """A call sent behind a running one (pipelining) that times out has phase SENT (safe to
    retry); the worker is not killed and the running call still succeeds."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            gate = new_gate("head")
            head = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(head.capture, pool.call, wait_for, "head", "ok")
                await gate.entered.wait()
                with pytest.raises(CallTimeout) as info:
                    await pool.call(add, 1, 2, timeout=0.05)
                gate.release.set()
            assert info.value.phase is Phase.SENT
            assert info.value.retry_safe
            assert head.value == "ok"
            assert await pool.call(add, 2, 3) == 5
            assert pool.statistics().worker_starts == 1


async def test_worker_ignoring_sigterm_is_killed_after_kill_grace() -> None:
    """Killing a worker sends SIGTERM, then SIGKILL after kill_grace if it is still there."""
    launcher = BridgeLauncher(ignore_sigterm=True)
    with anyio.fail_after(scaled(10)):
        async with make_pool(launcher, kill_grace=0.05) as pool:
            old = pool.statistics().workers[0]
            with pytest.raises(CallTimeout):
                await pool.call(hang, timeout=0.05)
            await wait_until(lambda: replaced(pool, old.id, starts=2), 10, "a replacement worker")
            assert launcher.connections[0].returncode == -9
            assert await pool.call(add, 1, 2) == 3


# ---- crashes -------------------------------------------------------------------------------------
async def test_crash_fails_only_its_call_and_the_pool_refills() -> None:
    """A worker dying by SIGSEGV fails the call it ran with WorkerCrashed (signal 11, no exit
    code, worker id and pid, phase RUNNING); a call on the other worker succeeds; the pool
    starts a replacement."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=2) as pool:
            pids = {w.id: w.pid for w in pool.statistics().workers}
            gate = new_gate("other")
            other = Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(other.capture, pool.call, wait_for, "other", "survived")
                await gate.entered.wait()
                (busy,) = [w.id for w in pool.statistics().workers if w.in_flight]
                with pytest.raises(WorkerCrashed) as info:
                    await pool.call(crash_segv)
                gate.release.set()
            err = info.value
            assert err.signal == 11
            assert err.exit_code is None
            assert err.kind is FailureKind.CRASHED
            assert err.phase is Phase.RUNNING
            assert not err.retry_safe
            assert err.worker_id in pids
            assert err.worker_id != busy
            assert err.pid == pids[err.worker_id]
            assert "SIGSEGV" in str(err)
            assert other.value == "survived"

            def refilled() -> bool:
                s = pool.statistics()
                return s.worker_starts == 3 and s.workers_in(WorkerState.READY) == 2

            await wait_until(refilled, 10, "the pool to refill")
            stats = pool.statistics()
            assert stats.worker_crashes == 1
            assert err.worker_id not in {w.id for w in stats.workers}
            assert await pool.call(add, 1, 2) == 3


async def test_crash_with_an_exit_code_reports_it() -> None:
    """A worker exiting with status 1 mid-call gives WorkerCrashed(exit_code=1, signal=None)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(WorkerCrashed) as info:
                await pool.call(crash_exit)
            assert info.value.exit_code == 1
            assert info.value.signal is None
            assert "exit code 1" in str(info.value)
            assert await pool.call(add, 1, 2) == 3


async def test_calls_pipelined_behind_a_crash_are_requeued_and_succeed() -> None:
    """When a worker dies, only its running call fails: the call sent behind it (never started)
    goes back to the queue and runs, exactly once, on the replacement."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            first = pool.statistics().workers[0].id
            gate = new_gate("crash")
            crashed, behind = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(crashed.capture, pool.call, wait_then_crash, "crash")
                await gate.entered.wait()
                tg.start_soon(behind.capture, pool.call, record, "behind")
                await wait_until(lambda: pool.statistics().in_flight == 2, 10, "the call behind to be sent")
                gate.release.set()
            assert isinstance(crashed.error, WorkerCrashed)
            assert behind.value == "behind", behind.error
            assert RUNS["behind"] == 1
            stats = pool.statistics()
            assert stats.worker_starts == 2
            assert stats.worker_crashes == 1
            (replacement,) = stats.workers
            assert replacement.id != first
            assert replacement.calls_completed == 1


# ---- cancellation --------------------------------------------------------------------------------
async def test_cancelling_a_queued_call_removes_it() -> None:
    """Cancelling the caller of a queued call takes it out of the queue: it never runs, the
    cancellation reaches the caller's scope, and the worker is untouched."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            gate = new_gate("busy")
            busy = Outcome()
            scope = anyio.CancelScope()
            after_call = False

            async def caller() -> None:
                nonlocal after_call
                with scope:
                    await pool.call(record, "never")
                    after_call = True

            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "done")
                await gate.entered.wait()
                tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().queued == 1, 10, "the call to be queued")
                scope.cancel()
                await wait_until(lambda: pool.statistics().queued == 0, 10, "the call to leave the queue")
                gate.release.set()
            assert scope.cancel_called
            assert scope.cancelled_caught
            assert not after_call
            assert busy.value == "done"
            assert await pool.call(add, 1, 2) == 3
            assert RUNS["never"] == 0
            stats = pool.statistics()
            assert stats.cancelled == 1
            assert stats.worker_starts == 1


async def test_cancelling_a_running_call_kills_its_worker() -> None:
    """Cancelling the caller of a running call kills its worker (the only way to stop it); a
    replacement starts and the pool keeps serving."""
    launcher = BridgeLauncher()
    with anyio.fail_after(scaled(10)):
        async with make_pool(launcher) as pool:
            old = pool.statistics().workers[0].id
            gate = new_gate("run")
            scope = anyio.CancelScope()
            after_call = False

            async def caller() -> None:
                nonlocal after_call
                with scope:
                    await pool.call(wait_for, "run")
                    after_call = True

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await gate.entered.wait()
                scope.cancel()
            assert scope.cancel_called
            assert scope.cancelled_caught
            assert not after_call
            await wait_until(lambda: replaced(pool, old, starts=2), 10, "a replacement worker")
            assert launcher.connections[0].returncode == -15
            assert pool.statistics().cancelled == 1
            assert await pool.call(add, 1, 2) == 3


async def test_call_right_after_cancelling_a_running_call_succeeds() -> None:
    """A caller that cancels its running call and calls again at once is served by the
    replacement worker, not dispatched to the one being killed."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            new_gate("run")
            with anyio.CancelScope() as scope:
                scope.cancel()  # takes effect at the call's first wait, once it has been sent
                await pool.call(wait_for, "run")
            assert scope.cancelled_caught
            assert await pool.call(add, 1, 2) == 3
            assert pool.statistics().worker_starts == 2


async def test_cancelling_a_pipelined_call_skips_it_in_the_worker() -> None:
    """Cancelling the caller of a call that was sent behind a running one (not started) sends
    CANCEL: the worker skips it (it never runs) and is not killed (docs/protocol.md, CANCEL)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=2) as pool:
            gate = new_gate("head")
            head = Outcome()
            scope = anyio.CancelScope()

            async def caller() -> None:
                with scope:
                    await pool.call(record, "skipped")

            async with anyio.create_task_group() as tg:
                tg.start_soon(head.capture, pool.call, wait_for, "head", "ok")
                await gate.entered.wait()
                tg.start_soon(caller)
                await wait_until(lambda: pool.statistics().in_flight == 2, 10, "the call to be sent")
                scope.cancel()
                await anyio.wait_all_tasks_blocked()  # the CANCEL frame has reached the worker
                gate.release.set()
            assert scope.cancelled_caught
            assert head.value == "ok"
            assert await pool.call(add, 1, 2) == 3
            assert RUNS["skipped"] == 0
            assert pool.statistics().worker_starts == 1


class _SlowCloseConnection:
    """A fake worker's connection whose ``aclose`` yields until released, as closing real pipes
    does (``_ProcessConnection.aclose`` awaits each stream's ``aclose``)."""

    def __init__(self, inner: Connection, launcher: SlowCloseLauncher) -> None:
        self._inner = inner
        self._launcher = launcher

    @property
    def pid(self) -> int | None:
        return self._inner.pid

    @property
    def returncode(self) -> int | None:
        return self._inner.returncode

    async def send(self, data: bytes) -> None:
        await self._inner.send(data)

    async def receive(self) -> bytes:
        return await self._inner.receive()

    async def receive_stderr(self) -> bytes:
        return await self._inner.receive_stderr()

    async def wait(self) -> int:
        return await self._inner.wait()

    def terminate(self) -> None:
        self._inner.terminate()

    def kill(self) -> None:
        self._inner.kill()

    async def aclose(self) -> None:
        self._launcher.closing.set()
        await self._launcher.release.wait()
        await self._inner.aclose()


class SlowCloseLauncher(BridgeLauncher):
    """BridgeLauncher whose connections take until ``release`` is set to close."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = anyio.Event()  # set when a worker's streams start closing
        self.release = anyio.Event()

    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> Connection:
        inner = await super().launch(
            spec, command=command, python=python, env=env, cwd=cwd, task_group=task_group
        )
        return _SlowCloseConnection(inner, self)


async def test_cancelling_a_call_whose_worker_is_exiting_propagates_the_cancellation() -> None:
    """Cancelling the caller of a call whose worker process has just died (the pool is still
    closing its streams) ends the caller with its own cancellation, not an internal error."""
    with anyio.fail_after(scaled(10)):
        launcher = SlowCloseLauncher()
        async with make_pool(launcher) as pool:
            gate = new_gate("crash")
            scope = anyio.CancelScope()
            errors: list[Exception] = []

            async def caller() -> None:
                with scope:
                    try:
                        await pool.call(wait_then_crash, "crash")
                    except Exception as exc:
                        errors.append(exc)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(caller)
                    await gate.entered.wait()
                    gate.release.set()  # the worker dies...
                    await launcher.closing.wait()  # ...and its supervisor is closing its streams
                    scope.cancel()
                    await anyio.wait_all_tasks_blocked()
            finally:
                launcher.release.set()
            assert errors == []
            assert scope.cancelled_caught
            assert await pool.call(add, 1, 2) == 3


# ---- the queue -----------------------------------------------------------------------------------
async def test_full_queue_rejects_with_queue_full() -> None:
    """With queue_policy="reject", a call finding every worker busy and the queue full raises
    QueueFull at once; the admitted calls are unaffected."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1, max_queue=1, queue_policy="reject") as pool:
            gate = new_gate("busy")
            busy, queued = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "b")
                await gate.entered.wait()
                tg.start_soon(queued.capture, pool.call, record, "queued")
                await wait_until(lambda: pool.statistics().queued == 1, 10, "one queued call")
                with pytest.raises(QueueFull) as info:
                    await pool.call(record, "rejected")
                gate.release.set()
            assert info.value.capacity == 1
            assert info.value.kind is FailureKind.QUEUE_FULL
            assert (busy.value, queued.value) == ("b", "queued")
            assert RUNS["rejected"] == 0


async def test_full_queue_with_wait_policy_waits_for_room() -> None:
    """With queue_policy="wait", a call finding the queue full waits (outside the queue) and is
    admitted and run once room frees up."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1, max_queue=1, queue_policy="wait") as pool:
            gate = new_gate("busy")
            busy, queued, waiting = Outcome(), Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "b")
                await gate.entered.wait()
                tg.start_soon(queued.capture, pool.call, record, "queued")
                await wait_until(lambda: pool.statistics().queued == 1, 10, "one queued call")
                tg.start_soon(waiting.capture, pool.call, record, "waiting")
                await anyio.wait_all_tasks_blocked()
                assert not waiting.ended.is_set()
                assert pool.statistics().queued == 1  # waiting for room, not in the queue
                gate.release.set()
            assert (busy.value, queued.value, waiting.value) == ("b", "queued", "waiting")
            assert RUNS == {"queued": 1, "waiting": 1}


@pytest.mark.parametrize("waiters", [1, 3], ids=["one-waiting", "three-waiting"])
async def test_no_queue_at_all_runs_waiting_calls_as_workers_free_up(waiters: int) -> None:
    """max_queue=0: no call waits in the queue, so a worker finishing a call is the only thing
    that makes room. The callers waiting for room must be woken by it (they waited forever:
    nothing moved in the empty queue, so nothing woke them)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1, max_queue=0, queue_policy="wait") as pool:
            gate = new_gate("busy")
            busy = Outcome()
            waiting = [Outcome() for _ in range(waiters)]
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "b")
                await gate.entered.wait()
                for i, outcome in enumerate(waiting):
                    tg.start_soon(outcome.capture, pool.call, record, f"w{i}")
                await anyio.wait_all_tasks_blocked()
                assert not any(o.ended.is_set() for o in waiting)
                assert pool.statistics().queued == 0
                gate.release.set()
            assert busy.value == "b"
            assert [o.value for o in waiting] == [f"w{i}" for i in range(waiters)]
            async for value in pool.map(echo, range(5)):  # a map too (it admits the same way)
                assert value in range(5)


async def test_deadline_covers_the_wait_for_queue_room() -> None:
    """A call waiting for queue room past its deadline raises CallTimeout (phase QUEUED) and never
    runs."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1, max_queue=1, queue_policy="wait") as pool:
            gate = new_gate("busy")
            busy, queued = Outcome(), Outcome()
            async with anyio.create_task_group() as tg:
                tg.start_soon(busy.capture, pool.call, wait_for, "busy", "b")
                await gate.entered.wait()
                tg.start_soon(queued.capture, pool.call, record, "queued")
                await wait_until(lambda: pool.statistics().queued == 1, 10, "one queued call")
                with pytest.raises(CallTimeout) as info:
                    await pool.call(record, "too-late", timeout=0.05)
                gate.release.set()
            assert info.value.phase is Phase.QUEUED
            assert queued.value == "queued"
            assert RUNS["too-late"] == 0
            assert pool.statistics().timed_out == 1


async def test_closing_the_pool_fails_calls_waiting_for_room() -> None:
    """Closing a pool wakes a call waiting for queue room with PoolClosed; admitted calls drain."""
    with anyio.fail_after(scaled(10)):
        pool = make_pool(pipeline_depth=1, max_queue=1, queue_policy="wait")
        # The pool's block is inner: leaving it drains the pool while the callers' tasks live on.
        async with anyio.create_task_group() as tg, pool:
            gate = new_gate("busy")
            busy, queued, waiting = Outcome(), Outcome(), Outcome()
            tg.start_soon(busy.capture, pool.call, wait_for, "busy", "b")
            await gate.entered.wait()
            tg.start_soon(queued.capture, pool.call, record, "queued")
            await wait_until(lambda: pool.statistics().queued == 1, 10, "one queued call")
            tg.start_soon(waiting.capture, pool.call, record, "waiting")
            await anyio.wait_all_tasks_blocked()

            async def release_when_draining() -> None:
                await wait_until(lambda: pool.state is PoolState.DRAINING, 10, "the pool to drain")
                await waiting.ended.wait()
                gate.release.set()

            tg.start_soon(release_when_draining)
        assert isinstance(waiting.error, PoolClosed)
        assert (busy.value, queued.value) == ("b", "queued")
        assert RUNS["waiting"] == 0


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_arg",
    [pytest.param(lambda: None, id="lambda"), pytest.param(threading.Lock(), id="lock")],
)
async def test_unpicklable_argument_fails_in_the_caller(bad_arg: object) -> None:
    """An argument pickle refuses raises SerializationError(side="parent", phase QUEUED) in the
    caller; nothing reaches the worker."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(SerializationError) as info:
                await pool.call(echo, bad_arg)
            err = info.value
            assert err.side == "parent"
            assert err.phase is Phase.QUEUED
            assert err.retry_safe
            assert err.kind is FailureKind.SERIALIZATION
            assert err.__cause__ is not None
            stats = pool.statistics()
            assert (stats.queued, stats.in_flight) == (0, 0)
            assert stats.workers[0].calls_completed == 0
            assert await pool.call(add, 1, 2) == 3
            assert pool.statistics().workers[0].calls_completed == 1


async def test_oversized_payload_raises_payload_too_large() -> None:
    """A call whose encoded payload exceeds max_frame_size raises PayloadTooLarge naming the limit;
    nothing is sent."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(max_frame_size=1024) as pool:
            with pytest.raises(PayloadTooLarge) as info:
                await pool.call(echo, b"x" * 10 * 1024)
            err = info.value
            assert isinstance(err, ValueError)
            assert err.limit == 1024
            assert err.size > 10 * 1024
            assert err.phase is Phase.QUEUED
            assert "max_frame_size=1024" in str(err)
            assert pool.statistics().workers[0].calls_completed == 0
            assert await pool.call(echo, b"small") == b"small"


async def test_oversized_result_raises_payload_too_large() -> None:
    """A result over max_frame_size is answered with an ERROR, not sent (docs/protocol.md,
    section 7): the call raises PayloadTooLarge for the result and the worker keeps serving."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(max_frame_size=1024) as pool:
            with pytest.raises(PayloadTooLarge) as info:
                await pool.call(big_result, 4096)
            assert info.value.limit == 1024
            assert info.value.phase is Phase.RETURNING
            assert "result" in str(info.value)
            assert await pool.call(add, 1, 2) == 3
            assert pool.statistics().worker_starts == 1


async def test_unpicklable_result_fails_in_the_worker() -> None:
    """A result that cannot be pickled raises SerializationError(side="worker", phase RETURNING);
    the worker keeps serving."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(SerializationError) as info:
                await pool.call(unpicklable_result)
            err = info.value
            assert err.side == "worker"
            assert err.phase is Phase.RETURNING
            assert "_thread.lock" in str(err)
            assert err.remote_traceback
            assert await pool.call(add, 1, 2) == 3
            assert pool.statistics().worker_starts == 1


async def test_unknown_target_is_a_remote_error_that_never_ran() -> None:
    """A target the worker cannot resolve fails in the "resolving" phase (docs/protocol.md):
    RemoteError with phase SENT, so retrying is safe."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call(TARGET + "no_such_target")
            assert info.value.remote_type == "builtins.AttributeError"
            assert info.value.phase is Phase.SENT
            assert info.value.retry_safe
            assert await pool.call(add, 1, 2) == 3


async def test_json_codec_sends_targets_by_name_only() -> None:
    """With the json codec, string targets work (tuples come back as lists); a callable target or
    a non-JSON argument raises SerializationError in the caller."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(worker={"codec": "json"}) as pool:
            assert await pool.call(TARGET + "add", 1, 2) == 3
            assert await pool.call(TARGET + "echo", (1, "a")) == [1, "a"]
            with pytest.raises(SerializationError, match="json codec") as info:
                await pool.call(add, 1, 2)
            assert info.value.side == "parent"
            assert info.value.phase is Phase.QUEUED
            with pytest.raises(SerializationError) as info:
                await pool.call(TARGET + "echo", {1, 2})
            assert info.value.side == "parent"
            assert pool.statistics().workers[0].calls_completed == 2


async def test_callers_waiting_for_room_are_admitted_first_come_first_served() -> None:
    """With a full queue and queue_policy="wait", callers get in in the order they arrived:
    a caller that arrives while others wait queues behind them, so none is starved."""
    gate = new_gate("fifo")
    order: list[int] = []
    async with Pool(
        min_workers=1, pipeline_depth=1, max_queue=1, queue_policy="wait", launcher=BridgeLauncher()
    ) as pool:
        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:

                async def caller(i: int) -> None:
                    order.append(await pool.call(echo, i))

                tg.start_soon(pool.call, wait_for, "fifo")  # occupies the worker
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "worker busy")
                tg.start_soon(caller, 0)  # fills the queue
                await wait_until(lambda: pool.statistics().queued == 1, 10, "queue full")
                for i in range(1, 6):
                    tg.start_soon(caller, i)
                    await wait_until(lambda i=i: pool.statistics().waiting == i, 10, f"caller {i} waiting")  # type: ignore[misc]
                gate.release.set()
    assert order == [0, 1, 2, 3, 4, 5]


async def test_a_call_waiting_for_room_is_queued_by_the_pool_in_its_callers_context() -> None:
    """Callers that find the queue full wait in line; when room frees, the pool moves their
    calls into the queue itself, from the task that freed it (so a waiting caller is woken
    once, by its result, not also to queue its call). Each call is still queued in its own
    caller's context: CallQueued sees the caller's context variables (a span's parent, a
    structlog context) and they run first come, first served."""
    gate = new_gate("context")
    who: contextvars.ContextVar[int] = contextvars.ContextVar("who", default=-1)
    queued: list[tuple[int, int, object]] = []  # (call seq, the caller's index seen, task)
    tasks: dict[int, object] = {}
    order: list[int] = []

    def on_queued(event: Event) -> None:
        assert isinstance(event, CallQueued)
        queued.append((event.call, who.get(), anyio.get_current_task().id))

    async with Pool(
        min_workers=1, pipeline_depth=1, max_queue=1, queue_policy="wait", launcher=BridgeLauncher()
    ) as pool:
        pool.subscribe(on_queued, types=(CallQueued,))
        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:

                async def caller(i: int) -> None:
                    who.set(i)
                    tasks[i] = anyio.get_current_task().id
                    order.append(await pool.call(echo, i))

                tg.start_soon(pool.call, wait_for, "context")  # occupies the worker
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "worker busy")
                for i in range(4):
                    tg.start_soon(caller, i)
                    await wait_until(lambda i=i: len(tasks) == i + 1, 10, f"caller {i} started")  # type: ignore[misc]
                await wait_until(lambda: pool.statistics().waiting == 3, 10, "three callers in line")
                gate.release.set()
    assert order == [0, 1, 2, 3]
    seen = [(index, task) for _seq, index, task in queued if index >= 0]
    assert [index for index, _task in seen] == [0, 1, 2, 3]  # each in its caller's context, in order
    assert seen[0][1] == tasks[0]  # found room: queued by its own caller
    assert all(task != tasks[index] for index, task in seen[1:])  # queued by the pool, elsewhere


async def test_room_for_several_is_given_to_that_many_waiting_callers_before_newcomers() -> None:
    """Two queued calls are cancelled at once: both calls first in line are queued together
    (not one per trip round the event loop, which made 10,000 waiting callers get in one
    after another), and a caller arriving just then queues behind them instead of taking the
    room freed for them."""
    gate = new_gate("several")
    order: list[int] = []
    async with Pool(
        min_workers=1, pipeline_depth=1, max_queue=2, queue_policy="wait", launcher=BridgeLauncher()
    ) as pool:
        with anyio.fail_after(scaled(20)):
            async with anyio.create_task_group() as tg:
                doomed = [anyio.CancelScope(), anyio.CancelScope()]

                async def queued(i: int) -> None:
                    with doomed[-1 - i]:
                        await pool.call(echo, i)

                async def caller(i: int) -> None:
                    order.append(await pool.call(echo, i))

                tg.start_soon(pool.call, wait_for, "several")  # occupies the worker
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "worker busy")
                tg.start_soon(queued, -1)
                tg.start_soon(queued, -2)
                await wait_until(lambda: pool.statistics().queued == 2, 10, "queue full")
                for i in (0, 1):
                    tg.start_soon(caller, i)
                    await wait_until(lambda n=i + 1: pool.statistics().waiting == n, 10, "callers waiting")  # type: ignore[misc]
                for scope in doomed:  # two slots free at once
                    scope.cancel()
                tg.start_soon(caller, 2)  # a newcomer, right behind the wake-up
                await wait_until(
                    lambda: (s := pool.statistics()).cancelled == 2 and s.queued == 2,
                    10,
                    "the calls in line queued",
                )
                assert pool.statistics().waiting == 1  # the newcomer, in line
                gate.release.set()
    # Both woken callers ran before the newcomer (trio may resume the two in either order).
    assert sorted(order[:2]) == [0, 1] and order[2] == 2
    assert pool.statistics().cancelled == 2
