"""The async Pool: lifecycle, admission, dispatch, supervision, drain.

Shape (after httpcore's connection pool): every state change ends in :meth:`Pool._dispatch`,
a synchronous function that hands queued calls to workers with room, as decided by the pure
:class:`~poolkit._scheduler.Scheduler`. Sending is synchronous too (a worker's writer task
does the actual write), so a caller's task never awaits anything but its own result, and
there is never a half-finished step for cancellation to interrupt.

Life of a call: :meth:`Pool.call` encodes it (a serialization error or an oversize payload
fails here, before anything is sent), admits it to the bounded queue (waiting or rejecting
when full), dispatches, then waits for its event under one deadline that covers queue wait
and run. On timeout or cancellation, :meth:`Pool._abandon` takes it out of the queue, or
asks its worker to skip it, or kills the worker that is running it (the only way to stop
running Python code); the pool replaces the worker and sends its other calls elsewhere.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from . import _protocol as proto
from ._call import Call, CallStatus, describe_target
from ._config import PoolConfig
from ._errors import (
    CallTimeout,
    FailureKind,
    PayloadTooLarge,
    Phase,
    PoolClosed,
    PoolError,
    PoolFailed,
    QueueFull,
    SerializationError,
    WorkerStartupError,
)
from ._events import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    Event,
    Listener,
    PoolStateChanged,
    WorkerExited,
    WorkerStateChanged,
)
from ._log import get_logger
from ._scheduler import Scheduler
from ._state import PoolEvent, PoolState, PoolStateMachine, Transition, WorkerEvent, WorkerState
from ._transport import Launcher, SubprocessLauncher
from ._worker import Worker, WorkerOwner

WorkerFactory = Callable[[WorkerOwner, PoolConfig, Launcher, str], Worker]

__all__ = ["Pool", "PoolStatistics", "WorkerInfo"]

_pool_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    pid: int | None
    state: WorkerState
    in_flight: int
    calls_completed: int


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A frozen snapshot of a pool; taking one costs O(workers) and never blocks."""

    name: str
    state: PoolState
    workers: tuple[WorkerInfo, ...]
    queued: int
    in_flight: int
    completed: int
    failed: int
    timed_out: int
    cancelled: int
    worker_starts: int
    worker_crashes: int
    startup_failures: int
    waiting: int = 0  # callers waiting for room in a full queue (queue_policy="wait")

    def workers_in(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers if w.state is state)


class Pool:
    """An async pool of long-lived subprocess workers. Use as ``async with Pool(config) as pool``.

    ``Pool(config, **overrides)`` or ``Pool(**fields)``: keyword arguments are
    :class:`PoolConfig` fields. ``launcher`` replaces how worker processes are started and
    ``worker_factory`` the worker handle itself: ``poolkit.testing`` runs the same pool over
    in-process fake workers (bridge layer) and scripted workers (mock layer) this way.
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        /,
        *,
        launcher: Launcher | None = None,
        worker_factory: WorkerFactory | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = PoolConfig(**overrides)
        elif overrides:
            config = PoolConfig.model_validate({**config.model_dump(), **overrides})
        self.config = config
        self.name = config.name or f"pool{next(_pool_ids)}"
        self._launcher: Launcher = launcher or SubprocessLauncher()
        self._worker_factory: WorkerFactory = worker_factory or Worker
        self._fsm = PoolStateMachine(self.name)
        self._fsm.on_change = self._on_pool_transition
        self._listeners: list[Listener] = []
        self._codec = proto.Codec.PICKLE if config.worker.codec == "pickle" else proto.Codec.JSON
        self._workers: dict[str, Worker] = {}
        self._worker_ids = itertools.count(1)
        self._sched: Scheduler[Worker] = Scheduler(config.pipeline_depth)
        self._queue: collections.deque[Call] = collections.deque()
        self._room_waiters: collections.deque[anyio.Event] = collections.deque()
        self._changed: anyio.Event | None = None
        self._failure: PoolFailed | None = None
        self._consecutive_startup_failures = 0
        self._hard_closing = False
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._in_context = False
        self.task_group: anyio.abc.TaskGroup | None = None
        self._log = get_logger("poolkit.pool", pool=self.name)
        # counters for statistics()
        self._completed = 0
        self._failed = 0
        self._timed_out = 0
        self._cancelled = 0
        self._worker_starts = 0
        self._worker_crashes = 0
        self._startup_failures = 0

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._fsm.state

    async def __aenter__(self) -> Self:
        await self.start()
        self._in_context = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._close(drain=exc is None)
        finally:
            await self._exit_task_group()

    async def start(self) -> None:
        """Start ``min_workers`` workers concurrently and wait until all are ready.

        Raises PoolFailed (its ``cause`` is the last WorkerStartupError, with the worker's
        traceback) if workers keep failing to start; nothing is left running in that case.
        """
        self._fsm.fire(PoolEvent.START)
        self._exit_stack = contextlib.AsyncExitStack()
        self.task_group = await self._exit_stack.enter_async_context(anyio.create_task_group())
        for _ in range(self.config.min_workers):
            self._spawn()
        try:
            await self._wait_for(
                lambda: self._failure is not None or self._count_ready() >= self.config.min_workers
            )
        except BaseException:
            try:
                await self._close(drain=False)
            finally:
                await self._exit_task_group()
            raise
        if self._failure is not None:
            failure = self._failure
            try:
                await self._close(drain=False)
            finally:
                await self._exit_task_group()
            raise failure from failure.cause
        if not self._fsm.can(PoolEvent.STARTED):  # aclose() ran while we were starting
            raise PoolClosed(self.name, detail="closed while starting")
        self._fsm.fire(PoolEvent.STARTED)
        self._log.debug("pool started", workers=len(self._workers))

    async def aclose(self, *, drain: bool = True) -> None:
        """Close the pool. With ``drain``, admitted calls may finish (up to ``drain_timeout``);
        then workers are asked to exit, and killed if they do not within ``kill_grace``.
        Leaves no process behind. Safe to call twice, and from any task inside the pool's
        ``async with`` block (the block's exit then finishes the bookkeeping)."""
        await self._close(drain=drain)
        if not self._in_context:  # started with start(): this call owns the task group
            await self._exit_task_group()

    async def _close(self, *, drain: bool) -> None:
        if self._fsm.state is PoolState.CLOSED:
            return
        if self._fsm.state is PoolState.CREATED:
            self._fsm.fire(PoolEvent.CLOSE)
            return
        if self._fsm.state is PoolState.DRAINING:  # another task is closing: wait for it
            await self._wait_for(lambda: self._fsm.state is PoolState.CLOSED)
            return
        self._fsm.fire(PoolEvent.CLOSE)
        self._notify_room()
        try:
            if drain:
                with anyio.move_on_after(self.config.drain_timeout):
                    await self._wait_for(lambda: not self._queue and not self._in_flight())
        finally:
            # Whatever happened to the drain (timeout, cancellation), the rest always runs:
            # nothing may be left running once aclose() returns or is cancelled.
            with anyio.CancelScope(shield=True):
                await self._stop_workers()
            self._fsm.fire(PoolEvent.CLOSED)
            self._notify_changed()
            self._log.debug("pool closed")

    async def _exit_task_group(self) -> None:
        """Exit the workers' task group. Must run in the task (and cancel scope) that entered
        it, which is why it is separate from closing; every worker task has ended by now."""
        stack, self._exit_stack = self._exit_stack, None
        self._in_context = False
        if stack is not None:
            await stack.aclose()

    async def _stop_workers(self) -> None:
        self._hard_closing = True
        for call in list(self._queue):
            call.fail(PoolClosed(self.name, phase=Phase.QUEUED, detail="closed before the call was sent"))
        self._queue.clear()
        for worker in list(self._workers.values()):
            if worker.load:
                worker.kill(
                    "pool closed with calls in flight",
                    fault=lambda call: PoolClosed(
                        self.name, phase=Phase.RUNNING, detail="closed while the call was running"
                    ),
                )
            else:
                worker.shutdown()
        with anyio.move_on_after(self.config.kill_grace + 2):
            await self._wait_for(lambda: not self._workers)
        for worker in list(self._workers.values()):
            worker.kill("did not exit after shutdown")
            if worker.state is WorkerState.SPAWNING:
                worker.abort()
        # SIGKILL cannot be ignored; the bound only guards against a launch that ignores
        # cancellation, so that closing can never hang.
        with anyio.move_on_after(self.config.kill_grace + 10):
            await self._wait_for(lambda: not self._workers)
        if self._workers:
            self._log.error("workers still unaccounted for after close", workers=list(self._workers))

    # ---- calls -------------------------------------------------------------------------------
    async def call(
        self, target: str | Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``target(*args, **kwargs)`` in a worker and return its result.

        ``target``: ``"pkg.mod:func"``, a method name of the configured handler, or (pickle
        codec) a module-level callable, sent by reference. ``timeout`` (default: the config's
        ``default_timeout``) is one deadline for queue wait and run. To pass the target a
        keyword argument named ``timeout``, wrap it with ``functools.partial``.

        Raises a :class:`~poolkit.PoolError` subclass saying what went wrong and how far the
        call got; cancelling the caller removes or stops the call (see ``docs/errors.md``).
        """
        call = self._make_call(target, args, kwargs, timeout)
        await self._admit(call)
        return await self._result(call)

    def map(
        self,
        target: str | Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> MapIterator:
        """Like ``map(target, *iterables)``: results in input order, streamed as they come.

        At most ``concurrency`` calls (default: workers x pipeline depth) are admitted at a
        time, so an endless iterable is fine. The first failing call raises its error and
        ends the iteration. Leaving early (``break``) is cheap: queued calls are withdrawn
        and running ones finish in their worker with their results discarded.
        Use ``async with pool.map(...) as results:`` to close it promptly on early exit.
        """
        return MapIterator(self, target, zip(*iterables, strict=False), concurrency, timeout)

    def starmap(
        self,
        target: str | Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        /,
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
    ) -> MapIterator:
        """Like :meth:`map`, but each item of ``iterable`` is the tuple of arguments."""
        return MapIterator(self, target, (tuple(args) for args in iterable), concurrency, timeout)

    def _make_call(
        self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Call:
        self._check_open()
        name = describe_target(target)
        if self._codec == proto.Codec.JSON and not isinstance(target, str):
            raise SerializationError(
                "the json codec sends targets by name: pass 'pkg.mod:func', not a callable",
                side="parent",
                phase=Phase.QUEUED,
                target=name,
            )
        if not isinstance(target, str) and not callable(target):
            raise TypeError(f"target must be a string or a callable, not {type(target).__name__}")
        try:
            payload = proto.encode_payload([target, list(args), kwargs], self._codec)
        except (Exception, SystemExit) as exc:
            raise SerializationError(
                f"could not encode the call: {type(exc).__name__}: {exc}",
                side="parent",
                phase=Phase.QUEUED,
                target=name,
            ) from exc
        limit = self.config.max_frame_size
        if len(payload) > limit:
            raise PayloadTooLarge(len(payload), limit, phase=Phase.QUEUED, target=name)
        if timeout is None:
            timeout = self.config.default_timeout
        elif timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        deadline = anyio.current_time() + timeout if timeout is not None else None
        return Call(name, payload, self._codec, timeout=timeout, deadline=deadline)

    def _check_open(self) -> None:
        if self._failure is not None and self._fsm.state is PoolState.FAILED:
            raise self._failure
        if not self._fsm.state.accepts_calls:
            raise PoolClosed(self.name, detail=f"pool is {self._fsm.state.value}")

    async def _admit(self, call: Call) -> None:
        """Put ``call`` in the queue, waiting for room (under its deadline) or rejecting.

        Waiting is first come, first served: a caller that finds others already waiting
        queues behind them even if a slot is free right now, so no early caller is starved
        by later ones racing for each freed slot.
        """
        queue = self._queue
        if self._room_waiters or not self._has_room():
            if self.config.queue_policy == "reject":
                raise QueueFull(self.name, self.config.max_queue)
            await self._wait_for_room(call)
        queue.append(call)
        call.admitted_at = anyio.current_time()
        if self._listeners:
            self._emit(
                CallQueued(pool=self.name, at=call.admitted_at, call=call.seq, target=call.target_name)
            )
        self._dispatch()

    async def _result(self, call: Call) -> Any:
        """Wait for ``call`` to end; return its value or raise its error.

        Every path out of here settles the call exactly once in the statistics and the event
        stream (CallCompleted or CallFailed), which is what the harness's history checker
        verifies.
        """
        try:
            if call.deadline is None:
                await call.event.wait()
            else:
                with anyio.CancelScope(deadline=call.deadline):
                    await call.event.wait()
        except BaseException:
            if not call.ended:
                self._cancelled += 1
                if self._listeners:
                    self._emit_failed(call, FailureKind.CANCELLED, call.phase, "cancelled by the caller")
                self._abandon(call, stop_running=True)
            raise
        worker = call.worker
        error: PoolError | None
        if not call.ended:
            self._timed_out += 1
            error = CallTimeout(
                call.timeout or 0.0,
                phase=call.phase,
                worker_id=worker.id if worker else None,
                pid=worker.pid if worker else None,
                target=call.target_name,
            )
            self._abandon(call, stop_running=True)
        elif call.error is not None:
            self._failed += 1
            error = call.error if isinstance(call.error, PoolError) else None
            if error is None:
                raise call.error
        else:
            assert call.result is not None
            try:
                value = proto.decode_payload(call.result, call.result_codec)
            except (Exception, SystemExit) as exc:
                self._failed += 1
                error = SerializationError(
                    f"could not decode the result: {type(exc).__name__}: {exc}",
                    side="parent",
                    phase=Phase.RETURNING,
                    worker_id=worker.id if worker else None,
                    pid=worker.pid if worker else None,
                    target=call.target_name,
                )
                error.__cause__ = exc
            else:
                self._completed += 1
                if self._listeners:
                    self._emit(
                        CallCompleted(
                            pool=self.name,
                            at=anyio.current_time(),
                            call=call.seq,
                            target=call.target_name,
                            worker_id=worker.id if worker else None,
                            duration=anyio.current_time() - call.admitted_at,
                        )
                    )
                return value
        if self._listeners:
            self._emit_failed(
                call, error.kind, getattr(error, "phase", Phase.QUEUED), str(error).split("\n")[0]
            )
        raise error

    def _emit_failed(self, call: Call, kind: FailureKind, phase: Phase, message: str) -> None:
        worker = call.worker
        now = anyio.current_time()
        self._emit(
            CallFailed(
                pool=self.name,
                at=now,
                call=call.seq,
                target=call.target_name,
                worker_id=worker.id if worker else None,
                kind=kind,
                phase=phase,
                error=message,
                duration=now - call.admitted_at,
            )
        )

    # ---- events ------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event this pool emits; returns an unsubscribe function.

        Listeners run synchronously inside the pool's bookkeeping: they must be quick and must
        not call back into the pool. An exception in a listener is logged and ignored.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                self._log.exception(
                    "event listener failed", listener=repr(listener), event_type=type(event).__name__
                )

    def _on_pool_transition(self, transition: Transition[PoolState, PoolEvent]) -> None:
        if self._listeners:
            self._emit(
                PoolStateChanged(
                    pool=self.name,
                    at=anyio.current_time(),
                    from_state=transition.from_state,
                    to_state=transition.to_state,
                    reason=transition.reason or transition.event.value,
                )
            )

    def worker_state_changed(self, worker: Worker, transition: Transition[WorkerState, WorkerEvent]) -> None:
        if self._listeners:
            self._emit(
                WorkerStateChanged(
                    pool=self.name,
                    at=anyio.current_time(),
                    worker_id=worker.id,
                    pid=worker.pid,
                    from_state=transition.from_state,
                    to_state=transition.to_state,
                    reason=transition.reason or transition.event.value,
                )
            )

    def _abandon(self, call: Call, *, stop_running: bool) -> None:
        """The caller gave up on ``call``. Synchronous, so it is safe under cancellation."""
        status = call.status
        call.abandon()
        if status is CallStatus.QUEUED:
            with contextlib.suppress(ValueError):
                self._queue.remove(call)
            self._notify_room()
        elif status is CallStatus.SENT and call.worker is not None:
            worker = call.worker
            if stop_running or worker.head() is not call:
                worker.cancel(call)

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        queue = self._queue
        sched = self._sched
        moved = False
        while queue:
            worker = sched.pick()
            if worker is None:
                break
            call = queue.popleft()
            worker.submit(call)
            sched.update(worker, worker.load, worker.has_room)
            moved = True
            if self._listeners:
                self._emit(
                    CallDispatched(
                        pool=self.name,
                        at=anyio.current_time(),
                        call=call.seq,
                        target=call.target_name,
                        worker_id=worker.id,
                    )
                )
        if moved:
            self._notify_room()
        if queue:
            self._maybe_scale_up()

    def _has_room(self) -> bool:
        return len(self._queue) < self.config.max_queue or self._sched.pick() is not None

    async def _wait_for_room(self, call: Call) -> None:
        """Wait in line (a FIFO of tickets) until there is room, the deadline passes, or the
        pool closes. A woken caller that finds the room taken again keeps its place at the front."""
        waiters = self._room_waiters
        ticket = anyio.Event()
        waiters.append(ticket)
        admitted = False
        try:
            while True:
                with anyio.CancelScope(deadline=call.deadline if call.deadline is not None else float("inf")):
                    await ticket.wait()
                self._check_open()
                if not ticket.is_set():  # the deadline passed while waiting
                    self._timed_out += 1
                    raise CallTimeout(call.timeout or 0.0, phase=Phase.QUEUED, target=call.target_name)
                if self._has_room():
                    admitted = True
                    return
                ticket = anyio.Event()
                waiters.appendleft(ticket)
        finally:
            if ticket in waiters:
                waiters.remove(ticket)
            elif not admitted and ticket.is_set():
                self._notify_room()  # we were woken but are leaving: pass the turn on

    def _notify_room(self) -> None:
        """Wake the first waiter in line if there is room (all of them if the pool stopped
        accepting calls, so each sees why)."""
        waiters = self._room_waiters
        if not waiters:
            return
        if not self._fsm.state.accepts_calls:
            while waiters:
                waiters.popleft().set()
        elif self._has_room():
            waiters.popleft().set()

    def _notify_changed(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _maybe_scale_up(self) -> None:
        # Runs on every dispatch that leaves calls queued: the cheap checks come first.
        if len(self._workers) >= self.config.worker_limit or self._fsm.state is not PoolState.RUNNING:
            return
        starting = sum(
            1 for w in self._workers.values() if w.state in (WorkerState.SPAWNING, WorkerState.STARTING)
        )
        room = self.config.worker_limit - len(self._workers)
        want = min(room, len(self._queue) - starting * self.config.pipeline_depth)
        for _ in range(max(0, want)):
            self._spawn()

    def _spawn(self) -> None:
        assert self.task_group is not None
        worker = self._worker_factory(
            self, self.config, self._launcher, f"{self.name}-w{next(self._worker_ids)}"
        )
        self._workers[worker.id] = worker
        self._worker_starts += 1
        self.task_group.start_soon(worker.run, name=f"poolkit worker {worker.id}")

    # ---- WorkerOwner callbacks (synchronous) -----------------------------------------------
    def worker_ready(self, worker: Worker) -> None:
        self._consecutive_startup_failures = 0
        self._sched.update(worker, worker.load, worker.has_room)
        self._dispatch()
        self._notify_changed()

    def worker_capacity(self, worker: Worker) -> None:
        self._sched.update(worker, worker.load, worker.has_room)
        if self._queue:
            self._dispatch()
        if self._changed is not None:
            self._notify_changed()

    def worker_exited(
        self, worker: Worker, requeue: list[Call], startup_error: WorkerStartupError | None
    ) -> None:
        self._sched.remove(worker)
        self._workers.pop(worker.id, None)
        if startup_error is not None and not self._hard_closing:
            self._startup_failures += 1
            self._consecutive_startup_failures += 1
            self._log.info(
                "worker failed to start", worker_id=worker.id, error=str(startup_error).splitlines()[0]
            )
            if self._consecutive_startup_failures >= self.config.max_startup_failures:
                self._break(PoolFailed(self.name, self._consecutive_startup_failures, startup_error))
        elif worker.state is WorkerState.FAILED and not self._hard_closing:
            self._worker_crashes += 1
            # INFO, not WARNING: the caller of the running call already has a typed error,
            # and a library must not print on its users' stderr by default.
            self._log.info(
                "worker exited unexpectedly",
                worker_id=worker.id,
                pid=worker.pid,
                returncode=worker.returncode,
            )
        if self._listeners:
            now = anyio.current_time()
            self._emit(
                WorkerExited(
                    pool=self.name,
                    at=now,
                    worker_id=worker.id,
                    pid=worker.pid,
                    returncode=worker.returncode,
                    expected=worker.state is WorkerState.STOPPED,
                )
            )
            for call in requeue:
                self._emit(
                    CallRequeued(
                        pool=self.name, at=now, call=call.seq, target=call.target_name, worker_id=worker.id
                    )
                )
        if self._hard_closing or self._failure is not None:
            for call in requeue:
                call.fail(
                    self._failure
                    or PoolClosed(self.name, phase=Phase.SENT, detail="closed before the call ran")
                )
        else:
            self._queue.extendleft(reversed(requeue))
        state = self._fsm.state
        if not self._hard_closing and self._failure is None:
            live = len(self._workers)
            if (state in (PoolState.STARTING, PoolState.RUNNING) and live < self.config.min_workers) or (
                state is PoolState.DRAINING and self._queue and live == 0
            ):
                self._spawn()
        self._dispatch()
        self._notify_changed()

    def _break(self, failure: PoolFailed) -> None:
        """Too many startup failures: stop trying, fail what waits, refuse new calls."""
        self._failure = failure
        if self._fsm.can(PoolEvent.BROKEN):
            self._fsm.fire(PoolEvent.BROKEN, str(failure).splitlines()[0])
        self._log.error("pool failed", error=str(failure).splitlines()[0])
        for call in list(self._queue):
            call.fail(failure)
        self._queue.clear()
        self._notify_room()

    # ---- introspection -----------------------------------------------------------------------
    def _count_ready(self) -> int:
        return sum(1 for w in self._workers.values() if w.state.accepts_calls)

    def _in_flight(self) -> int:
        return sum(w.load for w in self._workers.values())

    def statistics(self) -> PoolStatistics:
        workers = tuple(
            WorkerInfo(w.id, w.pid, w.state, w.load, w.calls_completed) for w in self._workers.values()
        )
        return PoolStatistics(
            name=self.name,
            state=self._fsm.state,
            workers=workers,
            queued=len(self._queue),
            in_flight=sum(w.in_flight for w in workers),
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            worker_starts=self._worker_starts,
            worker_crashes=self._worker_crashes,
            startup_failures=self._startup_failures,
            waiting=len(self._room_waiters),
        )

    def workers(self) -> tuple[Worker, ...]:
        """The live worker handles (for the test harness and diagnostics)."""
        return tuple(self._workers.values())

    def __repr__(self) -> str:
        s = self.statistics()
        by_state = collections.Counter(w.state.value for w in s.workers)
        workers = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items())) or "none"
        return (
            f"<Pool {self.name!r} {s.state.value} | calls: {s.queued} queued, {s.in_flight} in flight, "
            f"{s.completed} ok, {s.failed + s.timed_out} failed | workers: {workers}>"
        )


class MapIterator:
    """Async iterator of :meth:`Pool.map` results, in input order. Also an async context manager."""

    def __init__(
        self,
        pool: Pool,
        target: Any,
        source: Iterator[tuple[Any, ...]],
        concurrency: int | None,
        timeout: float | None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        self._pool = pool
        self._target = target
        self._source: Iterator[tuple[Any, ...]] | None = source
        self._concurrency = concurrency or pool.config.worker_limit * pool.config.pipeline_depth
        self._timeout = timeout
        self._pending: collections.deque[Call] = collections.deque()

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        pool = self._pool
        try:
            while self._source is not None and len(self._pending) < self._concurrency:
                args = next(self._source, None)
                if args is None:
                    self._source = None
                    break
                call = pool._make_call(self._target, args, {}, self._timeout)
                await pool._admit(call)
                self._pending.append(call)
            if not self._pending:
                raise StopAsyncIteration
            call = self._pending[0]
            value = await pool._result(call)
            self._pending.popleft()
            return value
        except StopAsyncIteration:
            raise
        except BaseException:
            if self._pending and self._pending[0].ended:
                self._pending.popleft()
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Withdraw what has not run; let running calls finish unobserved."""
        self._source = None
        while self._pending:
            call = self._pending.popleft()
            if not call.ended:
                self._pool._abandon(call, stop_running=False)
