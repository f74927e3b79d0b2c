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

Recovery (``_recovery``): a failed attempt is looked up in the recovery table; the caller's
task retries it after a backoff when the table, the call (idempotent, or never reached a
worker), the attempt limit and the deadline all allow. Circuit breakers (the pool's and one
per target) and the restart budget are fed from the same outcomes.

Time (``_clock``): one housekeeping task sleeps on the pool's clock until the next thing
is due -- a heartbeat round, a delayed restart, a session TTL, an idle timeout, a lifetime
-- and does it. With ``poolkit.testing.ManualClock`` nothing happens until a test advances it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import heapq
import itertools
import math
import random
import sys
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal, Self, cast

import anyio
import anyio.abc
import anyio.lowlevel

from . import _native
from . import _protocol as proto
from ._call import Call, CallStatus, describe_target
from ._clock import Clock, SystemClock
from ._config import PoolConfig
from ._errors import (
    CallTimeout,
    CircuitOpen,
    FailureKind,
    PayloadTooLarge,
    Phase,
    PoolClosed,
    PoolError,
    PoolFailed,
    QueueFull,
    QueueTimeout,
    SerializationError,
    SessionLost,
    SessionUnavailable,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerStartupError,
    WorkerUnresponsive,
    crash_cause,
)
from ._events import (
    BreakerStateChanged,
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    CallRetried,
    Event,
    Listener,
    PoolClosing,
    PoolStarted,
    PoolStateChanged,
    PoolStopped,
    QueueSaturated,
    SessionBound,
    SessionEnded,
    SessionExpired,
    SessionRebound,
    SessionStateLost,
    WorkerExited,
    WorkerOutput,
    WorkerReady,
    WorkerRecycled,
    WorkerSpawned,
    WorkerStateChanged,
)
from ._log import get_logger
from ._map import MapIterator
from ._recovery import RECOVERY, BreakerState, CircuitBreaker, RestartBudget, restart_delay, retry_delay
from ._scheduler import Scheduler
from ._session import AffinityMode, Binding, PoolSession, check_key, check_mode
from ._state import PoolEvent, PoolState, PoolStateMachine, Transition, WorkerEvent, WorkerState
from ._telemetry import EventStream, Telemetry
from ._transport import Launcher, SubprocessLauncher
from ._worker import Worker, WorkerOwner

WorkerFactory = Callable[[WorkerOwner, PoolConfig, Launcher, str], Worker]

__all__ = ["Pool", "PoolStatistics", "WorkerInfo"]

_pool_ids = itertools.count(1)
_CLOSED = BreakerState.CLOSED
_LIVE = frozenset({WorkerState.SPAWNING, WorkerState.STARTING, WorkerState.READY, WorkerState.BUSY})
_HEARTBEAT = frozenset({WorkerState.READY, WorkerState.BUSY, WorkerState.RETIRING, WorkerState.DRAINING})
# Outcomes that say how the worker fared with the call (the breakers' verdicts); the others
# (cancelled, timed out, closed) say nothing about it.
_VERDICT = frozenset({FailureKind.APPLICATION, FailureKind.SERIALIZATION, FailureKind.PAYLOAD_TOO_LARGE})
_SHUTDOWN_GRACE = 10.0  # seconds a retired worker may take to exit cleanly (teardown) before a kill
_MAX_NAMES = 256  # target names memoised per pool (Pool._make_call)
_BLOCK = object()  # _route_session: no worker can take it now; stop dispatching
_HANDLED = object()  # _route_session: the call was parked or failed


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
    retries: int = 0  # attempts re-sent after a failure
    recycled: int = 0  # workers retired while healthy (calls, lifetime, memory, generation; not idle)
    unresponsive: int = 0  # workers killed because heartbeats stopped
    sessions: int = 0  # live sessions
    breaker: str = "closed"  # the pool's circuit breaker
    open_breakers: tuple[str, ...] = ()  # targets whose breaker is not closed
    generation: int = 0

    def workers_in(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers if w.state is state)


class Pool:
    """An async pool of long-lived subprocess workers. Use as ``async with Pool(config) as pool``.

    ``Pool(config, **overrides)`` or ``Pool(**fields)``: keyword arguments are
    :class:`PoolConfig` fields. ``launcher`` replaces how worker processes are started and
    ``worker_factory`` the worker handle itself: ``poolkit.testing`` runs the same pool over
    in-process fake workers (bridge layer) and scripted workers (mock layer) this way.
    ``clock`` is what every time-based behaviour reads (see :mod:`poolkit._clock`); ``rng``
    draws the jitter of backoffs and recycling limits (seed it for reproducible tests).
    ``tracer_provider`` / ``meter_provider``: the OpenTelemetry providers to report to
    (default: the global ones, if an SDK is configured; docs/telemetry.md).
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        /,
        *,
        launcher: Launcher | None = None,
        worker_factory: WorkerFactory | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = PoolConfig(**overrides)
        elif not isinstance(config, PoolConfig):
            raise TypeError(
                f"config must be a PoolConfig, not {type(config).__name__} "
                "(or pass its fields as keywords: Pool(min_workers=2))"
            )
        elif overrides:
            # Only the fields the caller set: a full dump would mark every field as set and
            # change what defaults derive from (pipeline_limit keys on pipeline_depth being set).
            config = PoolConfig.model_validate({**config.model_dump(exclude_unset=True), **overrides})
        self.config = config
        self.name = config.name or f"pool{next(_pool_ids)}"
        self._thread: int | None = None  # the thread of the event loop that started it
        self._own_launcher = launcher is None  # a launcher the pool made, the pool closes
        # Each target's measured run time, shared by the workers' adaptive windows.
        self.call_costs: dict[str, float] = {}
        if launcher is None:
            if config.worker.start_method == "zygote":
                from ._zygote import ZygoteLauncher  # only pools that use it pay for the import

                launcher = ZygoteLauncher()
            else:
                launcher = SubprocessLauncher()
        self._launcher: Launcher = launcher
        self._worker_factory: WorkerFactory = worker_factory or Worker
        self._fsm = PoolStateMachine(self.name)
        self._fsm.on_change = self._on_pool_transition
        telemetry = config.telemetry
        self._tel = Telemetry(
            self.name,
            log_calls=telemetry.log_calls,
            traces=telemetry.traces,
            metrics=telemetry.metrics,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._saturated = False  # QueueSaturated was emitted; re-armed by an admission with room
        self._started_at = 0.0
        self._codec = proto.Codec.PICKLE if config.worker.codec == "pickle" else proto.Codec.JSON
        self._workers: dict[str, Worker] = {}
        self._worker_ids = itertools.count(1)
        self._sched: Scheduler[Worker] = Scheduler(config.pipeline_limit)
        self._queue: collections.deque[Call] = collections.deque()
        # Calls waiting for room in the queue (max_queue), first come first served: the pool
        # moves them into the queue itself as room frees (_notify_room).
        self._line: collections.deque[Call] = collections.deque()
        self._admitting = False  # _notify_room is moving calls from the line (no re-entry)
        self._changed: anyio.Event | None = None
        self._failure: PoolFailed | None = None
        self._consecutive_startup_failures = 0
        self._hard_closing = False
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._in_context = False
        self.task_group: anyio.abc.TaskGroup | None = None
        self._log = get_logger("poolkit.pool", pool=self.name)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._own_clock = clock is None
        # The event loop's own event type and clock, found at start (poolkit._native).
        self._event: Callable[[], _native.Event] = anyio.Event
        self._now: Callable[[], float] = anyio.current_time
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio's: calls wait on its futures
        self._names: dict[Any, str] = {}  # target -> what errors and events call it
        self._rng = rng if rng is not None else random.Random()
        # recovery
        self._breaker = CircuitBreaker("pool", config.breaker, self._on_breaker)
        self._target_breakers: dict[str, CircuitBreaker] = {}
        self._tripped: set[str] = set()  # targets whose breaker is not closed
        self._scale_settled = False  # _maybe_scale_up found nothing to do; reset on worker changes
        self._budget = RestartBudget(config.restart)
        self._consecutive_failures = 0  # worker failures with no call served in between
        self._last_worker_error: BaseException | None = None
        # sessions, recycling and timers
        self._sessions: dict[str | int, Binding] = {}
        self._session_waiting = 0  # calls waiting behind their session's current call
        self._generation = 0
        self._pending_spawns: list[float] = []  # clock times of delayed (backed-off) restarts
        self._wakeups: list[float] = []  # heap of clock times the housekeeper must wake at
        self._sleep: tuple[anyio.CancelScope, float] | None = None
        self._next_beat = math.inf
        self._session_due = math.inf
        self._idle_due = math.inf
        self._housekeeper_scope: anyio.CancelScope | None = None
        # counters for statistics()
        self._completed = 0
        self._failed = 0
        self._timed_out = 0
        self._cancelled = 0
        self._worker_starts = 0
        self._worker_crashes = 0
        self._startup_failures = 0
        self._retries = 0
        self._retrying = 0  # calls between attempts (in their backoff)
        self._recycled = 0
        self._unresponsive = 0

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
        runtime = sys.modules.get("poolkit.worker._runtime")
        if runtime is not None and getattr(runtime, "loading_parent_main", False):
            raise RuntimeError(
                "a pool was started while a poolkit worker imported your script to find a "
                "function in it: start the pool under 'if __name__ == \"__main__\":' (workers "
                "import the script, as multiprocessing's spawn does, and must not start pools)"
            )
        state = self._fsm.state
        if state is not PoolState.CREATED:
            if state is PoolState.STARTING or state is PoolState.RUNNING:
                raise RuntimeError(f"pool {self.name!r} is already started (enter it, or start it, once)")
            raise PoolClosed(self.name, state=state.value, detail="a pool runs once: create a new Pool")
        self._fsm.fire(PoolEvent.START)
        self._thread = threading.get_ident()
        self._event, self._now = _native.current()
        self._loop = _native.asyncio_loop()
        if self._own_clock and type(self.clock) is SystemClock:  # not replaced since
            self.clock = SystemClock(self._now)
        self._started_at = self._now()
        self._tel.start(self)
        self._exit_stack = contextlib.AsyncExitStack()
        self.task_group = await self._exit_stack.enter_async_context(anyio.create_task_group())
        self._housekeeper_scope = anyio.CancelScope()
        self.task_group.start_soon(self._housekeeper, name=f"poolkit housekeeper {self.name}")
        for _ in range(self.config.min_workers):
            self._spawn("start")
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
        now = anyio.current_time()
        self._emit(
            PoolStarted(pool=self.name, at=now, workers=self._count_ready(), duration=now - self._started_at)
        )

    async def aclose(self, *, drain: bool = True) -> None:
        """Close the pool. With ``drain``, admitted calls may finish (up to ``drain_timeout``);
        then workers are asked to exit, and killed if they do not within ``kill_grace``.
        Leaves no process behind. Safe to call twice, and from any task inside the pool's
        ``async with`` block (the block's exit then finishes the bookkeeping)."""
        try:
            await self._close(drain=drain)
        finally:  # even if the drain was cancelled: a task group left open corrupts the
            # caller's cancel scopes (the workers are stopped by then: _close's finally)
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
        closing_at = anyio.current_time()
        self._emit(
            PoolClosing(
                pool=self.name,
                at=closing_at,
                drain=drain,
                queued=self._pending(),
                in_flight=self._in_flight(),
            )
        )
        self._notify_room()
        try:
            if drain:
                with anyio.move_on_after(self.config.drain_timeout):
                    await self._wait_drained()
        finally:
            # Whatever happened to the drain (timeout, cancellation), the rest always runs:
            # nothing may be left running once aclose() returns or is cancelled.
            try:
                with anyio.CancelScope(shield=True):
                    await self._stop_workers()
                    close_launcher = getattr(self._launcher, "aclose", None)  # the zygote's, say
                    if close_launcher is not None and self._own_launcher:
                        await close_launcher()
            finally:  # a pool that stopped its workers, or failed to, is closed: never DRAINING
                # for good (a later aclose() would wait for CLOSED forever)
                if self._housekeeper_scope is not None:
                    self._housekeeper_scope.cancel()
                # The workers are gone, and every session's state with them: none is live now
                # (statistics().sessions reads 0). A handle's calls raise PoolClosed from here on.
                self._sessions.clear()
                self._fsm.fire(PoolEvent.CLOSED)
                self._notify_changed()
            with anyio.CancelScope(shield=True):
                # Callers whose calls the close just failed are runnable: let them settle (and
                # emit their CallFailed) before the stream's last event says the pool stopped.
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
            now = anyio.current_time()
            self._emit(
                PoolStopped(
                    pool=self.name,
                    at=now,
                    duration=now - closing_at,
                    completed=self._completed,
                    failed=self._failed + self._timed_out + self._cancelled,
                )
            )
            self._tel.stop()

    def _drained(self) -> bool:
        return not self._pending() and not self._in_flight() and not self._retrying

    async def _wait_drained(self) -> None:
        """Wait until no admitted call is queued, running or between attempts.

        One gap is invisible to those counts: a call that has just failed, whose caller's
        task is runnable but has not yet run to decide on a retry (which counts it as
        retrying before it awaits anything). So once drained, give runnable tasks two
        scheduling rounds (trio shuffles a round's order; a task woken before the first
        round has run by the end of the second), then look again."""
        while True:
            await self._wait_for(self._drained)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            if self._drained():
                return

    async def _exit_task_group(self) -> None:
        """Exit the workers' task group. Must run in the task (and cancel scope) that entered
        it, which is why it is separate from closing; every worker task has ended by now."""
        stack, self._exit_stack = self._exit_stack, None
        self._in_context = False
        if stack is not None:
            await stack.aclose()

    async def _stop_workers(self) -> None:
        self._hard_closing = True
        self._pending_spawns.clear()
        for call in self._queued_calls():
            call.fail(PoolClosed(self.name, phase=Phase.QUEUED, detail="closed before the call was sent"))
        self._queue.clear()
        for worker in self._workers.values():
            worker.parked.clear()
        for binding in self._sessions.values():
            self._session_waiting -= len(binding.waiting)
            binding.waiting.clear()
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
        self,
        target: str | Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        session: str | int | PoolSession | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``target(*args, **kwargs)`` in a worker and return its result.

        ``target``: ``"pkg.mod:func"``, a method name of the configured handler, or (pickle
        codec) a module-level callable, sent by reference. ``timeout`` (default: the config's
        ``default_timeout``) is one deadline for queue wait, run and any retries.
        ``idempotent=True`` says running the call twice is harmless, so a call that failed
        after it may have started (its worker crashed, hung or ran out of memory) is retried
        on another worker; a call that never reached a worker is retried either way
        (``config.retry``, docs/recovery.md). ``session``: a key or a :meth:`session` handle;
        the call goes to that session's worker and the target receives ``session=``.
        To pass the target keyword arguments named ``timeout``, ``idempotent`` or
        ``session``, wrap it with ``functools.partial``.

        Raises a :class:`~poolkit.PoolError` subclass saying what went wrong and how far the
        call got; cancelling the caller removes or stops the call (see ``docs/errors.md``).
        """
        call = self._make_call(target, args, kwargs, timeout, idempotent=idempotent, session=session)
        # Encoded now: let the arguments go rather than keep them (a GC-tracked tuple at least)
        # alive in this frame while the call is in hand (docs/performance.md item 21).
        del args, kwargs
        if self._line or not self._has_room():  # (_admit, inline: this runs once per call)
            self._join_line(call)  # no room: the pool queues it when room frees (item 20)
        else:
            self._saturated = False
            self._enqueue(call)
        if call.session is not None:
            return await self._result(call, None)
        # A plain call's first attempt waits right here, and only a failed one goes on to
        # _result (retries, errors): a coroutine less per call, and one GC-tracked object less
        # per call in hand (docs/performance.md item 18). _result's loop does the same wait.
        try:
            if call.deadline is None:
                await call.wait()
            else:
                with anyio.CancelScope(deadline=call.deadline):
                    await call.wait()
        except BaseException:
            if not call.ended:
                self._caller_left(call)
            raise
        value, error = self._settle(call)
        if error is None:
            self._succeeded(call)
            return value
        return await self._result(call, error)

    def session(self, key: str | int, *, mode: AffinityMode | None = None) -> PoolSession:
        """A handle on session ``key``: its calls run on one worker, in order, one at a time,
        and the target receives ``session=`` (state it keeps between them). ``mode``
        (default ``config.sessions.mode``) says what happens when that worker is busy or gone:
        see :class:`~poolkit.SessionPolicy`. ``async with pool.session(key) as s:`` ends the
        session on exit, so the worker drops its state at once."""
        check_key(key)
        return PoolSession(self, key, check_mode(mode or self.config.sessions.mode))

    def end_session(self, key: str | int, *, _handle: PoolSession | None = None) -> None:
        """End session ``key`` now (after its calls in hand): the worker drops its state.
        A later call with the key starts a new, empty session. Unknown keys are ignored."""
        binding = self._sessions.get(key)
        if binding is None or (_handle is not None and _handle.binding is not binding):
            return
        if binding.idle:
            self._drop_session(binding, "closed")
        else:
            binding.closing = True

    def recycle_all(self) -> int:
        """Replace every worker, lazily and without failing a call: each finishes what it
        holds (and serves its sessions up to ``recycle.session_drain_timeout``) while its
        replacement starts. Returns the new generation number."""
        self._check_open()
        self._generation += 1
        for worker in list(self._workers.values()):
            if worker.generation < self._generation:
                self._retire(worker, "generation")
        return self._generation

    def map(
        self,
        target: str | Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        concurrency: int | None = None,
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = "auto",
    ) -> MapIterator:
        """Like ``map(target, *iterables)``: results in input order, streamed as they come.

        At most ``concurrency`` calls (default: 2 x workers x the pipeline limit, so that
        calls are already queued in the pool when a reply frees a worker; 4 x workers once
        inputs travel in chunks) are admitted at a time, so an endless iterable is fine. The
        first failing item raises its error and ends the iteration. Leaving early
        (``break``) is cheap: queued calls are withdrawn and running ones finish in their
        worker with their results discarded. A plain ``async for`` does that when it drops
        the iterator (CPython: at the ``break``); ``async with pool.map(...) as results:``
        says so explicitly and also covers an iterator kept in a variable.

        ``chunksize``: inputs per call. ``"auto"`` (default) starts with one and, once the
        workers' reported run times show an item takes well under 2 ms, sends as many per
        call as make about 2 ms of work (at most 4,096, and 256 KiB of request and reply):
        tiny items run many times faster, slow ones keep a call each. ``N`` fixes it; ``1``
        is a call per item always. In a chunk, ``timeout`` and retries apply to the chunk;
        a failing item still raises its own error after the results before it; a worker
        crash or a timeout fails the whole chunk; errors, events and breakers name it
        ``"<target> (map chunk)"``. Chunks need poolkit's worker runtime (``"auto"`` never
        chunks for ``command=`` workers; ``N > 1`` needs it).
        """
        return MapIterator(self, target, zip(*iterables, strict=False), concurrency, timeout, chunksize)

    def starmap(
        self,
        target: str | Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        /,
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = "auto",
    ) -> MapIterator:
        """Like :meth:`map`, but each item of ``iterable`` is the tuple of arguments."""
        return MapIterator(self, target, (tuple(args) for args in iterable), concurrency, timeout, chunksize)

    def _make_call(
        self,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        *,
        idempotent: bool = False,
        session: str | int | PoolSession | None = None,
        name: str | None = None,
    ) -> Call:
        """``name``: what errors, telemetry, breakers and run-time estimates call the target
        (default: ``target`` described); a map's chunks say whose chunk they are."""
        self._check_open()
        if name is None:
            # Named once per target, not per call (a Python call and an f-string each time);
            # the memo starts over past _MAX_NAMES, so targets made on the fly stay bounded.
            names = self._names
            try:
                name = names[target]
            except KeyError:
                name = describe_target(target)
                if len(names) >= _MAX_NAMES:
                    names.clear()
                names[target] = name
            except Exception:  # unhashable, or its __hash__/__eq__ raises: named each time
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
        binding: Binding | None = None
        request: list[Any] = [target, list(args), kwargs]
        if session is not None:
            binding = self._binding_for(session, name)
            request.append(binding.key)
        try:  # (one frame for all of it, not two: this runs once per call)
            try:
                payload = proto.encode_payload(request, self._codec)
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
            elif type(timeout) is not float or not timeout > 0:  # rare: ints, bools, NaN, junk
                timeout = _checked_timeout(timeout)
            if idempotent is not False and idempotent is not True:  # "no" would be truthy: a retry
                raise TypeError(f"idempotent must be True or False, not {idempotent!r}")
            deadline = self._now() + timeout if timeout is not None else None
            call = Call(
                name,
                payload,
                self._codec,
                timeout=timeout,
                deadline=deadline,
                idempotent=idempotent,
                event=self._event,
                loop=self._loop,
            )
            if self._breaker.state is not _CLOSED or (self._tripped and name in self._tripped):
                call.trials = self._check_breakers(name)
        except BaseException:
            if binding is not None:  # a session whose first call failed here leaves no record
                self._forget_unused(binding)
            raise
        call.session = binding
        return call

    def _check_breakers(self, name: str) -> tuple[CircuitBreaker, ...]:
        """Fail fast if the pool's or the target's breaker is open; in half-open, make this
        call the trial (returned, so its outcome closes or re-opens the breaker)."""
        now = self.clock.now()
        trials: list[CircuitBreaker] = []
        for breaker in (self._breaker, self._target_breakers.get(name)):
            if breaker is None or breaker.state is _CLOSED:
                continue
            if not breaker.allow(now):
                for taken in trials:
                    taken.release()
                raise CircuitOpen(
                    breaker.scope,
                    retry_after=breaker.retry_after(now),
                    failures=breaker.failures,
                    target=name,
                )
            if breaker.state is BreakerState.HALF_OPEN:
                trials.append(breaker)
        return tuple(trials)

    def _binding_for(self, session: str | int | PoolSession, name: str) -> Binding:
        handle = session if isinstance(session, PoolSession) else None
        if handle is not None:
            if handle.pool is not self:
                raise ValueError("this session handle belongs to another pool")
            if handle.closed:
                raise RuntimeError(f"session {handle.key!r} was closed; open a new one with pool.session()")
            key, mode = handle.key, handle.mode
        else:
            key, mode = check_key(session), self.config.sessions.mode
        binding = self._sessions.get(key)
        old = handle.binding if handle is not None else None
        rebinds = 0
        if old is not None and old is not binding and old.ended == "expired":
            # This handle's session expired (a session someone else started since under the
            # same key is not its state either).
            if mode != "hint":
                raise SessionLost(
                    "it expired (idle past sessions.ttl) and its state is gone",
                    key=key,
                    reason="expired",
                    target=name,
                )
            rebinds = old.rebinds + 1
            if binding is not None:
                binding.rebinds = max(binding.rebinds, rebinds)
        if binding is None:
            limit = self.config.sessions.max_sessions
            if len(self._sessions) >= limit:
                raise SessionUnavailable(
                    f"the pool already holds sessions.max_sessions={limit} sessions",
                    key=key,
                    reason="limit",
                    target=name,
                )
            binding = self._sessions[key] = Binding(key, mode, self.clock.now(), rebinds)
        if handle is not None:
            handle.binding = binding
        if binding.lost is not None and binding.mode != "hint":
            raise SessionLost(
                f"its worker is gone ({binding.lost}), and its state with it",
                key=key,
                reason=binding.lost,
                target=name,
            )
        if binding.mode == "strict_fail_fast" and not binding.idle:
            raise SessionUnavailable("busy with an earlier call", key=key, reason="busy", target=name)
        return binding

    def _forget_unused(self, binding: Binding) -> None:
        """A session whose first call never made it into the pool leaves no record behind."""
        if (
            binding.idle
            and binding.worker is None
            and binding.lost is None
            and self._sessions.get(binding.key) is binding
        ):
            del self._sessions[binding.key]

    def _check_open(self) -> None:
        if self._failure is not None and self._fsm.state is PoolState.FAILED:
            raise self._failure
        state = self._fsm.state
        if not state.accepts_calls:
            if state is PoolState.CREATED:
                raise PoolClosed(
                    self.name,
                    state="not started",
                    detail="use 'async with Pool(...) as pool:' or 'await pool.start()' first",
                )
            raise PoolClosed(self.name, detail=f"pool is {state.value}")
        if threading.get_ident() != self._thread:
            # Another thread, so another event loop: the pool's state belongs to the loop
            # that started it (on trio a call from elsewhere wedged a worker until its
            # heartbeat killed it; on asyncio it raced the loop unnoticed).
            raise RuntimeError(
                f"pool {self.name!r} belongs to the event loop (thread) that started it; "
                "from another thread use anyio.from_thread, or a SyncPool"
            )

    def _admit(self, call: Call) -> None:
        """Queue ``call`` now, or put it in the line of calls waiting for room (``max_queue``).
        Either way its caller next waits for the result: :meth:`_settle` tells a call that
        never left the line (its deadline passed there, or the pool closed) from one that ran.
        """
        if self._line or not self._has_room():
            self._join_line(call)
        else:
            self._saturated = False
            self._enqueue(call)

    def _join_line(self, call: Call) -> None:
        """No room in the queue: ``call`` waits in line, first come first served (or is
        rejected: ``queue_policy="reject"``). A caller that finds others already in line
        queues behind them even if room frees right now, so no early caller is starved by
        later ones racing for each freed slot.

        The pool moves calls from the line into the queue itself as room frees
        (:meth:`_notify_room`), so a caller in line waits once, for its result, like any
        other. It used to wait for a ticket and then queue its call itself: a second wake-up
        per call, a ticket, a future and a coroutine each, and 20,000 callers at once ran a
        third slower with half of them in line than with none (docs/performance.md item 20).
        """
        if not self._saturated:
            self._saturated = True
            self._emit(
                QueueSaturated(
                    pool=self.name,
                    at=anyio.current_time(),
                    depth=len(self._queue) + self._session_waiting,
                    limit=self.config.max_queue,
                    policy=self.config.queue_policy,
                )
            )
        if self.config.queue_policy == "reject":
            self._leave_line(call)
            raise QueueFull(self.name, self.config.max_queue)
        call.status = CallStatus.WAITING
        # The pool queues it from whichever task frees room; CallQueued (where its span starts,
        # a child of the caller's) and the call's log context must still be the caller's.
        call.context = contextvars.copy_context()
        self._line.append(call)

    def _leave_line(self, call: Call) -> None:
        """``call`` never got into the queue: rejected, its deadline passed in line, its
        caller left, or the pool stopped taking calls. It leaves no trace: not counted, no
        event (no CallQueued was emitted for it), no session record, no breaker trial."""
        if call.status is CallStatus.WAITING:
            call.status = CallStatus.ABANDONED
            try:
                self._line.remove(call)  # O(line), but only a call that gives up in line pays
            except ValueError:
                pass  # the pool took it out already (closing: _notify_room)
        self._end_trials(call, None)
        if call.session is not None:
            self._forget_unused(call.session)

    def _enqueue(self, call: Call, dispatch: bool = True) -> None:
        """Queue an admitted call (there is room: the caller found it and cleared
        ``_saturated``, or :meth:`_notify_room` took the call from the line) and dispatch
        (``dispatch=False``: the caller dispatches once for many)."""
        binding = call.session
        if binding is not None and binding.ended is not None:
            # The session ended while this call waited for room: it starts the key's next one
            # (never joins a dropped record, which would let the key run on two workers).
            binding = self._sessions.get(binding.key)
            if binding is None:
                binding = self._sessions[call.session.key] = Binding(
                    call.session.key, call.session.mode, self.clock.now()
                )
            call.session = binding
        if binding is None or binding.current is None:
            if binding is not None:
                binding.current = call
            self._queue.append(call)
        else:  # behind an earlier call of its session: waits its turn there
            binding.waiting.append(call)
            self._session_waiting += 1
        call.admitted_at = call.queued_at = self._now()
        tel = self._tel
        if tel.calls:
            tel.emit(
                CallQueued(
                    pool=self.name,
                    at=call.admitted_at,
                    call=call.seq,
                    target=call.target_name,
                    idempotent=call.idempotent,
                    session=binding.key if binding is not None else None,
                )
            )
            call.trace = tel.trace_block(call.seq)
            call.ext = proto.FLAG_TIMING if call.trace is None else proto.FLAG_TIMING | proto.FLAG_TRACE
        if dispatch:
            self._dispatch()

    async def _result(self, call: Call, error: PoolError | None = None) -> Any:
        """Wait for ``call`` to end, retrying it as the recovery table allows; return its
        value or raise its error. ``error``: the first attempt already ended with it (a plain
        call waits for its first attempt in :meth:`call` itself).

        Every path out of here (and out of :meth:`call`'s own first wait) settles the call
        exactly once in the statistics and the event stream (CallCompleted or CallFailed;
        CallRetried in between), which is what the harness's history checker verifies.
        """
        try:
            while True:
                if error is None:
                    # One attempt: wait for the call's event under its deadline (inline, not
                    # a coroutine of its own: item 15), then read how it ended.
                    try:
                        if call.deadline is None:
                            await call.wait()
                        else:
                            with anyio.CancelScope(deadline=call.deadline):
                                await call.wait()
                    except BaseException:
                        if not call.ended:
                            self._caller_left(call)
                        raise
                    value, error = self._settle(call)
                    if error is None:
                        self._succeeded(call)
                        return value
                self._end_trials(call, error)
                delay = self._retry_delay(call, error)
                if delay is None:
                    if error.kind is FailureKind.TIMEOUT or error.kind is FailureKind.QUEUE_TIMEOUT:
                        self._timed_out += 1
                    else:
                        self._failed += 1
                    if self._tel.calls:
                        self._emit_failed(
                            call, error.kind, getattr(error, "phase", Phase.QUEUED), str(error).split("\n")[0]
                        )
                    raise error
                await self._retry(call, error, delay)
                error = None  # the retry is queued: wait for it
        finally:
            if call.session is not None:
                self._session_release(call)

    def _caller_left(self, call: Call) -> None:
        """The caller was cancelled while its call was in hand: count, report, and remove or
        stop the call."""
        if call.status is CallStatus.WAITING:  # cancelled in line: it never got in
            self._leave_line(call)
            return
        self._cancelled += 1
        if self._tel.calls:
            self._emit_failed(call, FailureKind.CANCELLED, call.phase, "cancelled by the caller")
        self._abandon(call, stop_running=True)
        self._end_trials(call, None)

    def _settle(self, call: Call) -> tuple[Any, PoolError | None]:
        """How an attempt ended, once its event is set or its deadline passed: (value, None)
        or (None, error)."""
        worker = call.worker
        status = call.status
        if status is not CallStatus.DONE and status is not CallStatus.ABANDONED:  # not ended: the deadline
            if status is CallStatus.WAITING:  # still in line: its deadline passed, or the pool closed
                self._leave_line(call)
                self._check_open()
                self._timed_out += 1
                raise QueueTimeout(call.timeout or 0.0, phase=Phase.QUEUED, target=call.target_name)
            phase = call.phase
            kind = QueueTimeout if phase is Phase.QUEUED else CallTimeout
            error: PoolError = kind(
                call.timeout or 0.0,
                phase=phase,
                worker_id=worker.id if worker else None,
                pid=worker.pid if worker else None,
                target=call.target_name,
            )
            self._abandon(call, stop_running=True)
            return None, error
        if call.error is not None:
            if not isinstance(call.error, PoolError):
                raise call.error
            return None, call.error
        assert call.result is not None
        try:
            return proto.decode_payload(call.result, call.result_codec), None
        except (Exception, SystemExit) as exc:
            error = SerializationError(
                f"could not decode the result: {type(exc).__name__}: {exc}",
                side="parent",
                phase=Phase.RETURNING,
                worker_id=worker.id if worker else None,
                pid=worker.pid if worker else None,
                target=call.target_name,
            )
            error.__cause__ = exc
            return None, error

    def _succeeded(self, call: Call) -> None:
        """A call came back: count and report it; the worker and the target are healthy
        (breakers, restart pacing)."""
        self._consecutive_failures = 0
        breaker = self._breaker
        if breaker.failures or breaker.state is not _CLOSED:
            breaker.success()
        if self._target_breakers:
            target_breaker = self._target_breakers.get(call.target_name)
            if target_breaker is not None:
                target_breaker.success()
        call.trials = ()
        self._completed += 1
        if self._tel.calls:
            self._emit_completed(call)

    def _end_trials(self, call: Call, error: PoolError | None) -> None:
        """Feed a failed (or abandoned: ``error`` None) attempt to the breakers."""
        kind = error.kind if error is not None else None
        trips = kind is not None and RECOVERY[kind].trips_breaker
        if kind is not None and self.config.breaker.enabled and trips:
            breaker = self._target_breakers.get(call.target_name)
            if breaker is None:
                breaker = CircuitBreaker(call.target_name, self.config.breaker, self._on_breaker)
                self._target_breakers[call.target_name] = breaker
            breaker.failure(self.clock.now())
        elif kind in _VERDICT:  # the worker ran it and answered: a healthy worker
            breaker = self._target_breakers.get(call.target_name)
            if breaker is not None:
                breaker.success()
            if self._breaker.failures and self._breaker.state is _CLOSED:
                self._breaker.success()
            self._consecutive_failures = 0
        for breaker in call.trials:
            if kind in _VERDICT and breaker.state is not _CLOSED:
                breaker.success()
            elif not trips:  # no verdict (cancelled, timed out): let another trial go
                breaker.release()
            # a trip: the worker's exit (pool breaker) or the line above (target) recorded it
        call.trials = ()

    def _retry_delay(self, call: Call, error: PoolError) -> float | None:
        binding = call.session
        if binding is not None and binding.mode != "hint":
            return None  # a strict session's state went with its worker: SessionLost is next
        if self._hard_closing or self._failure is not None:
            return None
        return retry_delay(
            error,
            attempt=call.attempt,
            idempotent=call.idempotent,
            policy=self.config.retry,
            now=anyio.current_time(),
            deadline=call.deadline,
            rng=self._rng,
        )

    async def _retry(self, call: Call, error: PoolError, delay: float) -> None:
        """Back off (on the pool's clock, within the call's deadline), then queue the call
        again at the front: it was admitted long ago and keeps its place."""
        self._retries += 1
        worker = call.worker
        if self._tel.calls:
            self._emit(
                CallRetried(
                    pool=self.name,
                    at=anyio.current_time(),
                    call=call.seq,
                    target=call.target_name,
                    worker_id=worker.id if worker else None,
                    attempt=call.attempt + 1,
                    delay=delay,
                    kind=error.kind,
                )
            )
        call.retry()
        call.status = CallStatus.DONE  # between attempts: nothing to withdraw if cancelled
        self._retrying += 1
        try:
            if delay > 0:
                clock = self.clock
                with anyio.CancelScope(
                    deadline=call.deadline if call.deadline is not None else math.inf
                ) as scope:
                    await clock.sleep_until(clock.now() + delay)
                if scope.cancelled_caught:  # the deadline came first
                    raise QueueTimeout(call.timeout or 0.0, target=call.target_name)
        except BaseException as exc:
            if isinstance(exc, PoolError):
                self._timed_out += 1
                if self._tel.calls:
                    self._emit_failed(call, exc.kind, Phase.QUEUED, str(exc))
            else:
                self._cancelled += 1
                if self._tel.calls:
                    self._emit_failed(call, FailureKind.CANCELLED, Phase.QUEUED, "cancelled by the caller")
            raise
        finally:
            self._retrying -= 1
            self._notify_changed()
        if self._hard_closing or self._failure is not None:
            self._failed += 1
            closed = self._failure or PoolClosed(self.name, detail="closed before the retry was sent")
            if self._tel.calls:
                self._emit_failed(call, closed.kind, Phase.QUEUED, str(closed).split("\n")[0])
            raise closed
        call.status = CallStatus.QUEUED
        call.queued_at = anyio.current_time()
        if self._breaker.state is not _CLOSED or call.target_name in self._tripped:
            try:
                call.trials = self._check_breakers(call.target_name)
            except CircuitOpen as exc:
                self._failed += 1
                if self._tel.calls:
                    self._emit_failed(call, exc.kind, Phase.QUEUED, str(exc))
                raise
        self._queue.appendleft(call)
        self._ensure_workers(self.clock.now())  # a draining pool may have let its last worker go
        self._dispatch()

    def _withdraw(self, call: Call) -> None:
        """Settle a call whose caller will never wait for it (a map left early): one that
        ended is counted and reported as it ended; one still queued is withdrawn and one
        running is left to finish unobserved, both reported as cancelled. Every admitted call
        thus ends in exactly one CallCompleted or CallFailed (and its span ends)."""
        if call.status is CallStatus.DONE:
            if call.error is None:
                self._succeeded(call)
            else:
                error = call.error
                self._end_trials(call, error if isinstance(error, PoolError) else None)
                self._failed += 1
                if self._tel.calls:
                    kind = error.kind if isinstance(error, PoolError) else FailureKind.APPLICATION
                    self._emit_failed(
                        call, kind, getattr(error, "phase", Phase.QUEUED), str(error).split("\n")[0]
                    )
            return
        if call.status is CallStatus.ABANDONED:
            return
        if call.status is CallStatus.WAITING:  # still in line: it never got in
            self._leave_line(call)
            return
        self._cancelled += 1
        if self._tel.calls:
            self._emit_failed(call, FailureKind.CANCELLED, call.phase, "withdrawn: the map was closed early")
        self._abandon(call, stop_running=False)
        self._end_trials(call, None)

    def _emit_completed(self, call: Call) -> None:
        worker = call.worker
        now = anyio.current_time()
        self._emit(
            CallCompleted(
                pool=self.name,
                at=now,
                call=call.seq,
                target=call.target_name,
                worker_id=worker.id if worker else None,
                duration=now - call.admitted_at,
                attempt=call.attempt,
                run_time=call.run_ns / 1e9 if call.run_ns is not None else None,
                cpu_time=call.cpu_ns / 1e9 if call.cpu_ns is not None else None,
            )
        )

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
                attempt=call.attempt,
                run_time=call.run_ns / 1e9 if call.run_ns is not None else None,
                cpu_time=call.cpu_ns / 1e9 if call.cpu_ns is not None else None,
            )
        )

    # ---- events ------------------------------------------------------------------------------
    def subscribe(
        self, listener: Listener, *, types: tuple[type[Event], ...] | None = None
    ) -> Callable[[], None]:
        """Call ``listener(event)`` for every event this pool emits (of ``types`` only, if
        given); returns an unsubscribe function.

        Listeners run synchronously inside the pool's bookkeeping: they must be quick and must
        not call back into the pool. An exception in a listener is logged and ignored. Call
        events exist only while a subscriber could receive them: a listener for lifecycle
        ``types`` only leaves the call path as cheap as no listener (docs/telemetry.md).
        """
        return self._tel.subscribe(listener, types)

    def events(self, *, buffer: float = 10_000, types: tuple[type[Event], ...] | None = None) -> EventStream:
        """This pool's events as an async iterator: ``async with pool.events() as stream:
        async for event in stream``. Subscribed from this call on; ends after ``PoolStopped``.
        ``types``: only these event classes. ``buffer``: how far the consumer may fall
        behind; past it the iteration raises :class:`~poolkit.EventStreamOverflow` (after
        the events before the gap), never silently skips. ``types`` naming no call event
        leaves call events unbuilt, as for :meth:`subscribe`."""
        return EventStream(self._tel, buffer, types)

    def _emit(self, event: Event) -> None:
        self._tel.emit(event)

    def _on_pool_transition(self, transition: Transition[PoolState, PoolEvent]) -> None:
        self._emit(
            PoolStateChanged(
                pool=self.name,
                at=anyio.current_time(),
                from_state=transition.from_state,
                to_state=transition.to_state,
                reason=transition.reason or transition.event.value,
            )
        )

    @property
    def observes_calls(self) -> bool:
        return self._tel.calls

    def worker_state_changed(self, worker: Worker, transition: Transition[WorkerState, WorkerEvent]) -> None:
        self._scale_settled = False
        event = transition.event
        if not self._tel.calls and event is not WorkerEvent.SPAWNED and event is not WorkerEvent.HANDSHAKE:
            return  # READY <-> BUSY on every call: nothing to report, so nothing to compute
        at = anyio.current_time()
        if self._tel.calls:
            self._emit(
                WorkerStateChanged(
                    pool=self.name,
                    at=at,
                    worker_id=worker.id,
                    pid=worker.pid,
                    from_state=transition.from_state,
                    to_state=transition.to_state,
                    reason=transition.reason or transition.event.value,
                )
            )
        if event is WorkerEvent.SPAWNED:
            self._emit(
                WorkerSpawned(
                    pool=self.name, at=at, worker_id=worker.id, pid=worker.pid, reason=worker.spawn_reason
                )
            )
        elif event is WorkerEvent.HANDSHAKE:
            features = worker.handshake.get("features")
            self._emit(
                WorkerReady(
                    pool=self.name,
                    at=at,
                    worker_id=worker.id,
                    pid=worker.pid,
                    startup=at - worker.spawned_at,
                    features=tuple(str(f) for f in features) if isinstance(features, list) else (),
                )
            )

    def worker_output(self, worker: Worker, stream: str, line: str, call: int | None) -> None:
        self._emit(
            WorkerOutput(
                pool=self.name,
                at=anyio.current_time(),
                worker_id=worker.id,
                pid=worker.pid,
                stream=stream,
                line=line,
                call=call,
            )
        )

    def _abandon(self, call: Call, *, stop_running: bool) -> None:
        """The caller gave up on ``call``. Synchronous, so it is safe under cancellation."""
        status = call.status
        call.abandon()
        if status is CallStatus.QUEUED:
            try:
                self._queue.remove(call)
            except ValueError:  # not in the main queue: behind its session, or parked
                binding = call.session
                if binding is not None and call in binding.waiting:
                    binding.waiting.remove(call)
                    self._session_waiting -= 1
                for worker in self._workers.values():
                    if call in worker.parked:
                        worker.parked.remove(call)
            self._notify_room()
            self._notify_changed()  # a draining close may have been waiting for this call
        elif status is CallStatus.SENT and call.worker is not None:
            worker = call.worker
            if stop_running or worker.head() is not call:
                worker.cancel(call)

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        queue = self._queue
        sched = self._sched
        while queue:
            call = queue[0]
            if call.session is not None:
                routed = self._route_session(call)
                if routed is _BLOCK:
                    break
                queue.popleft()
                if routed is _HANDLED:
                    continue
                worker = cast(Worker, routed)
            else:
                picked = sched.pick()
                if picked is None:
                    break
                if call.avoid is not None and picked is call.avoid:
                    picked = sched.pick_other(picked) or picked
                worker = picked
                queue.popleft()
                if queue:
                    # A run: the least-loaded worker takes the plain calls at the head of the
                    # queue until it is as loaded as the next one (or full), then the scheduler
                    # hears of it once. Picking afresh for each call would choose it each time
                    # (item 22): after a read of ~30 replies, one worker has room for ~30.
                    self._dispatch_run(call, worker, sched.level_of_others(worker))
                    continue
            worker.submit(call)
            sched.update(worker, worker.load, worker.has_room)
            if self._tel.calls:
                self._emit_dispatched(call, worker)
        if self._line:  # room may come from a worker, not the queue (max_queue=0)
            self._notify_room()
        if queue:
            self._maybe_scale_up()

    def _dispatch_run(self, call: Call, worker: Worker, level: int) -> None:
        """Send ``call`` (taken off the queue) to ``worker``, then the plain calls behind it
        while ``worker`` has room and fewer than ``level`` calls (the lowest load of any other
        worker with room): the calls least-loaded picking would give it, one after another,
        with one scheduler update for all of them."""
        queue = self._queue
        tel = self._tel
        while True:
            worker.submit(call)
            if tel.calls:
                self._emit_dispatched(call, worker)
            if not queue or worker.load >= level or not worker.has_room:
                break
            call = queue[0]
            if call.session is not None or call.avoid is worker:
                break
            queue.popleft()
        self._sched.update(worker, worker.load, worker.has_room)

    def _emit_dispatched(self, call: Call, worker: Worker) -> None:
        now = anyio.current_time()
        self._emit(
            CallDispatched(
                pool=self.name,
                at=now,
                call=call.seq,
                target=call.target_name,
                worker_id=worker.id,
                attempt=call.attempt,
                queue_wait=now - call.queued_at,
            )
        )

    # ---- sessions ----------------------------------------------------------------------------
    def _route_session(self, call: Call) -> object:
        """Where the session call at the head of the queue goes: a worker, ``_BLOCK`` (wait
        for capacity: stop dispatching), or ``_HANDLED`` (failed, or parked on its worker)."""
        binding = call.session
        assert binding is not None
        worker = binding.worker
        depth = self.config.pipeline_depth
        if worker is not None:
            state = worker.state
            if state.serves_sessions and worker.load < depth:
                return worker
            if binding.mode == "strict_fail_fast":
                self._fail_queued(
                    call,
                    SessionUnavailable(
                        f"its worker {worker.id} is busy",
                        key=binding.key,
                        reason="busy",
                        target=call.target_name,
                    ),
                )
                return _HANDLED
            if not state.serves_sessions or binding.mode == "strict_queue":
                # strict_queue waits for its worker; a worker on its way out may still be
                # running a call of this session, so even a hint session waits for it to go
                # (never two workers at once), then moves.
                worker.parked.append(call)
                return _HANDLED
            other = self._sched.pick()  # hint: fall back to any worker with room
            if other is None or other is worker:
                return _BLOCK
            if len(other.sessions) >= self.config.sessions.max_per_worker:
                worker.parked.append(call)
                return _HANDLED
            self._rebind(binding, other, "busy")
            return other
        if binding.lost is not None and binding.mode != "hint":
            self._fail_queued(
                call,
                SessionLost(
                    f"its worker is gone ({binding.lost}), and its state with it",
                    key=binding.key,
                    reason=binding.lost,
                    target=call.target_name,
                ),
            )
            return _HANDLED
        target = self._worker_for_new_session()
        if target is None:
            if self._session_room_anywhere():
                return _BLOCK
            self._fail_queued(
                call,
                SessionUnavailable(
                    f"every worker holds sessions.max_per_worker={self.config.sessions.max_per_worker} sessions",
                    key=binding.key,
                    reason="limit",
                    target=call.target_name,
                ),
            )
            return _HANDLED
        if binding.lost is not None:
            self._rebind(binding, target, "worker_gone")
        else:
            self._bind(binding, target)
        return target

    def _worker_for_new_session(self) -> Worker | None:
        limit = self.config.sessions.max_per_worker
        worker = self._sched.pick()
        if worker is None or len(worker.sessions) < limit:
            return worker
        candidates = [w for w in self._sched.loads() if len(w.sessions) < limit]
        return min(candidates, key=lambda w: w.load) if candidates else None

    def _session_room_anywhere(self) -> bool:
        """Could some worker, now or once started, take another session?"""
        limit = self.config.sessions.max_per_worker
        live = [w for w in self._workers.values() if w.state in _LIVE]
        if len(live) < self.config.worker_limit or self._pending_spawns:
            return True
        return any(len(w.sessions) < limit for w in live)

    def _fail_queued(self, call: Call, error: PoolError) -> None:
        call.fail(error)

    def _bind(self, binding: Binding, worker: Worker) -> None:
        binding.worker = worker
        worker.sessions.add(binding.key)
        if self._tel.calls:
            self._emit(
                SessionBound(pool=self.name, at=anyio.current_time(), key=binding.key, worker_id=worker.id)
            )

    def _rebind(self, binding: Binding, worker: Worker, reason: str) -> None:
        """Move a hint session: its state on the old worker (if any) is dropped and lost."""
        old = binding.worker
        if old is not None:
            old.end_session(binding.key)
            self._session_left(old)
        binding.worker = worker
        binding.lost = None
        binding.rebinds += 1
        worker.sessions.add(binding.key)
        if self._tel.calls:
            self._emit(
                SessionRebound(
                    pool=self.name,
                    at=anyio.current_time(),
                    key=binding.key,
                    from_worker=old.id if old is not None else None,
                    worker_id=worker.id,
                    reason=reason,
                )
            )

    def _session_release(self, call: Call) -> None:
        """``call`` (its session's current one) is over: the next call of the session moves up."""
        binding = call.session
        assert binding is not None
        if binding.current is not call:
            return
        binding.current = None
        now = self.clock.now()
        binding.last_used = now
        if binding.waiting:
            nxt = binding.waiting.popleft()
            self._session_waiting -= 1
            binding.current = nxt
            self._queue.appendleft(nxt)
            self._dispatch()
        elif binding.closing:
            self._drop_session(binding, "closed")
        elif binding.worker is None and binding.lost is None:
            self._forget_unused(binding)  # refused before it was ever bound: nothing to keep
        elif self.config.sessions.ttl is not None and self._session_due == math.inf:
            self._session_due = now + self.config.sessions.ttl
            self._wake_at(self._session_due)
        self._notify_changed()

    def _drop_session(self, binding: Binding, reason: str) -> None:
        if self._sessions.get(binding.key) is binding:
            del self._sessions[binding.key]
        binding.ended = reason
        worker = binding.worker
        if worker is not None:
            worker.end_session(binding.key)
            self._session_left(worker)
        if reason == "expired":
            self._emit(
                SessionExpired(
                    pool=self.name,
                    at=anyio.current_time(),
                    key=binding.key,
                    worker_id=worker.id if worker is not None else None,
                    idle=self.clock.now() - binding.last_used,
                )
            )
        elif self._tel.calls:
            self._emit(
                SessionEnded(
                    pool=self.name,
                    at=anyio.current_time(),
                    key=binding.key,
                    worker_id=worker.id if worker is not None else None,
                    reason=reason,
                )
            )

    def _session_left(self, worker: Worker) -> None:
        """A session left ``worker``: a retiring worker may now stop, a surplus one may idle out."""
        if worker.sessions:
            return
        now = self.clock.now()
        if worker.state is WorkerState.RETIRING:
            self._progress_retiring(worker, now)
        elif not worker.load and self._idle_due == math.inf and len(self._workers) > self.config.min_workers:
            self._idle_due = max(now, worker.idle_since + self.config.idle_timeout)
            self._wake_at(self._idle_due)

    def _lose_sessions(self, worker: Worker, reason: str) -> None:
        """``worker`` is gone: the sessions bound to it lost their state."""
        for key in list(worker.sessions):
            binding = self._sessions.get(key)
            if binding is None or binding.worker is not worker:
                continue
            binding.worker = None
            binding.lost = reason
            self._emit(
                SessionStateLost(
                    pool=self.name, at=anyio.current_time(), key=key, worker_id=worker.id, reason=reason
                )
            )
            if binding.mode != "hint":  # strict: the calls in hand cannot run anywhere
                pending = list(binding.waiting)
                binding.waiting.clear()
                self._session_waiting -= len(pending)
                for waiting in pending:
                    waiting.fail(
                        SessionLost(
                            f"its worker {worker.id} is gone ({reason}), and its state with it",
                            key=key,
                            reason=reason,
                            target=waiting.target_name,
                        )
                    )
        worker.sessions.clear()
        self._notify_room()  # failed waiting calls freed queue room: wake a caller waiting for it

    def _expire_sessions(self, now: float) -> None:
        ttl = self.config.sessions.ttl
        self._session_due = math.inf
        if ttl is None:
            return
        due = math.inf
        for binding in list(self._sessions.values()):
            if not binding.idle:
                continue
            expires = binding.last_used + ttl
            if expires <= now:
                self._drop_session(binding, "expired")
            else:
                due = min(due, expires)
        if due < math.inf:
            self._session_due = due
            self._wake_at(due)

    def _has_room(self) -> bool:
        return (
            len(self._queue) + self._session_waiting < self.config.max_queue or self._sched.pick() is not None
        )

    def _notify_room(self) -> None:
        """Move calls from the line into the queue, first in line first, while there is room
        (if the pool stopped accepting calls, wake every one: :meth:`_settle` raises why).

        The moves are synchronous, so no newcomer can slip in ahead of the line, and the
        queue is dispatched once for all of them. With no queue slot (``max_queue=0``, or a
        full queue) an idle worker is room for one call: it is queued and dispatched at once,
        and the moves stop when a call so queued stays queued (a session call at the head
        may block dispatch), so the queue never grows past ``max_queue`` by more than one.
        """
        line = self._line
        if not line or self._admitting:
            return
        if not self._fsm.state.accepts_calls:
            while line:
                line.popleft()._wake()  # still WAITING: its caller's _settle raises why
            return
        queue, sched, limit = self._queue, self._sched, self.config.max_queue
        self._admitting = True  # (the dispatches below call back here)
        try:
            while line:
                moved = False
                while line and len(queue) + self._session_waiting < limit:
                    call = line.popleft()
                    call.status = CallStatus.QUEUED
                    call.context.run(self._enqueue, call, False)
                    moved = True
                if moved:
                    self._dispatch()  # which may free queue room: look again
                    continue
                if sched.pick() is None:
                    break
                call = line.popleft()
                call.status = CallStatus.QUEUED
                call.context.run(self._enqueue, call)
                if call.status is CallStatus.QUEUED:
                    break
        finally:
            self._admitting = False

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
        # Runs on every dispatch that leaves calls queued: a saturated pool at its worker
        # limit answers with one flag test until a worker changes state.
        if self._scale_settled or self._fsm.state is not PoolState.RUNNING:
            return
        live = [w for w in self._workers.values() if w.state in _LIVE]
        if len(live) >= self.config.worker_limit:
            self._scale_settled = True
            return
        starting = sum(1 for w in live if w.state in (WorkerState.SPAWNING, WorkerState.STARTING))
        starting += len(self._pending_spawns)
        room = self.config.worker_limit - len(live) - len(self._pending_spawns)
        want = min(room, len(self._queue) - starting * self.config.pipeline_depth)
        for _ in range(max(0, want)):
            self._spawn("scale_up")

    def _spawn(self, reason: str) -> None:
        assert self.task_group is not None
        worker = self._worker_factory(
            self, self.config, self._launcher, f"{self.name}-w{next(self._worker_ids)}"
        )
        worker.generation = self._generation
        worker.spawn_reason = reason
        worker.spawned_at = anyio.current_time()
        self._workers[worker.id] = worker
        self._worker_starts += 1
        self.task_group.start_soon(worker.run, name=f"poolkit worker {worker.id}")

    def _ensure_workers(
        self, now: float, *, after_failure: BaseException | None = None, reason: str = "min_workers"
    ) -> None:
        """Start workers up to ``min_workers`` (or one, for a draining pool with calls left).

        After a worker failure, replacements are paced (``restart_delay``; held while the
        pool's breaker is open) and counted against the restart budget: past it, the pool
        fails rather than crash-loop.
        """
        if self._hard_closing or self._failure is not None:
            return
        state = self._fsm.state
        active = sum(1 for w in self._workers.values() if w.state in _LIVE) + len(self._pending_spawns)
        if state in (PoolState.STARTING, PoolState.RUNNING):
            need = self.config.min_workers - active
        elif state is PoolState.DRAINING and self._pending() and active == 0:
            need = 1
        else:
            need = 0
        if need <= 0:
            return
        delay = 0.0
        if after_failure is not None:
            policy = self.config.restart
            if not self._budget.spend(now):
                self._break(
                    PoolFailed(
                        self.name,
                        self._budget.used,
                        after_failure,
                        reason=f"more than restart.max_restarts={policy.max_restarts} worker restarts "
                        f"within {policy.window:g}s",
                    )
                )
                return
            delay = restart_delay(self._consecutive_failures, policy, self._rng)
            if self._breaker.state is BreakerState.OPEN:
                delay = max(delay, self._breaker.retry_after(now))
        if after_failure is not None:
            reason = "replace"
        for _ in range(need):
            if delay <= 0:
                self._spawn(reason)
            else:
                self._pending_spawns.append(now + delay)
                self._wake_at(now + delay)

    def _retire(self, worker: Worker, reason: str) -> None:
        """Recycle a healthy worker: it takes no new work (but its sessions' calls), a
        replacement starts, and it stops once idle (sessions: up to their drain bound)."""
        if worker.state is WorkerState.RETIRING or not worker.fsm.can(WorkerEvent.RETIRE):
            return
        now = self.clock.now()
        worker.retire_reason = reason
        worker.fsm.fire(WorkerEvent.RETIRE, reason)
        self._sched.remove(worker)
        worker.retire_deadline = now + (self.config.recycle.session_drain_timeout if worker.sessions else 0.0)
        if reason != "idle":
            self._recycled += 1
        self._emit(
            WorkerRecycled(pool=self.name, at=anyio.current_time(), worker_id=worker.id, reason=reason)
        )
        self._ensure_workers(now, reason="recycle")
        self._progress_retiring(worker, now)

    def _progress_retiring(self, worker: Worker, now: float) -> None:
        if worker.state is not WorkerState.RETIRING or worker.load:
            return
        if worker.sessions and now < worker.retire_deadline:
            self._wake_at(worker.retire_deadline)
            return
        worker.shutdown()
        # A teardown() or on_close that never returns must not keep it forever.
        worker.stop_deadline = now + self.config.kill_grace + _SHUTDOWN_GRACE
        self._wake_at(worker.stop_deadline)

    # ---- WorkerOwner callbacks (synchronous) -----------------------------------------------
    def worker_ready(self, worker: Worker) -> None:
        self._consecutive_startup_failures = 0
        now = self.clock.now()
        worker.ready_at = worker.idle_since = worker.last_heard = now
        recycle = self.config.recycle
        if recycle.max_calls is not None:
            worker.max_calls = max(1, round(recycle.max_calls * (1 - self._rng.uniform(0, recycle.jitter))))
        if recycle.max_lifetime is not None:
            worker.max_lifetime = recycle.max_lifetime * (1 - self._rng.uniform(0, recycle.jitter))
            self._wake_at(now + worker.max_lifetime)
        self._sched.update(worker, worker.load, worker.has_room)
        if worker.generation < self._generation:  # recycle_all() ran while it was starting
            self._retire(worker, "generation")
        self._dispatch()
        self._notify_changed()

    def worker_capacity(self, worker: Worker) -> None:
        load = worker.load
        self._sched.update(worker, load, worker.has_room)
        if worker.parked and load < self.config.pipeline_depth:
            self._unpark(worker)
        state = worker.fsm.state
        if state is WorkerState.RETIRING:
            self._progress_retiring(worker, self.clock.now())
        elif state is WorkerState.STOPPING and worker.kill_reason and worker.failure is None:
            # Killed for its caller's sake (timeout, cancellation), not for a fault: start the
            # replacement now rather than when the process is gone. A call stuck in C code
            # may ignore SIGTERM, and the pool must not be a worker short for kill_grace.
            self._ensure_workers(self.clock.now(), reason="replace")
        elif worker.calls_completed >= worker.max_calls and state.accepts_calls:
            self._retire(worker, "calls")
        if not load and not worker.load:  # (unparking may have sent it calls)
            now = worker.idle_since = self.clock.now()
            if self._idle_due == math.inf and len(self._workers) > self.config.min_workers:
                self._idle_due = now + self.config.idle_timeout
                self._wake_at(self._idle_due)
        if self._queue or self._line:
            self._dispatch()
        if self._changed is not None:
            self._notify_changed()

    def worker_pong(self, worker: Worker) -> None:
        rss = worker.rss
        if rss is None:
            return
        recycle = self.config.recycle
        limit = recycle.memory_limit
        if limit is not None and rss > limit:
            self._log.info("worker over memory_limit", worker_id=worker.id, rss=rss, limit=limit)
            worker.kill(
                f"rss {rss} over memory_limit {limit}",
                fault=lambda call: WorkerMemoryExceeded(
                    rss=rss,
                    limit=limit,
                    phase=Phase.RUNNING,
                    worker_id=worker.id,
                    pid=worker.pid,
                    target=call.target_name,
                ),
                failure=FailureKind.RESOURCE_EXHAUSTED,
            )
        elif recycle.max_memory is not None and rss > recycle.max_memory and worker.state.accepts_calls:
            self._retire(worker, "memory")

    def _unpark(self, worker: Worker) -> None:
        """Session calls waiting for ``worker`` go back to the front of the queue."""
        parked = worker.parked
        while parked:
            call = parked.pop()
            if call.status is CallStatus.QUEUED:
                self._queue.appendleft(call)

    def worker_exited(
        self, worker: Worker, requeue: list[Call], startup_error: WorkerStartupError | None
    ) -> None:
        self._sched.remove(worker)
        self._workers.pop(worker.id, None)
        now = self.clock.now()
        failure = None if self._hard_closing else worker.failure
        if startup_error is not None and not self._hard_closing:
            self._startup_failures += 1
            self._consecutive_startup_failures += 1
            self._last_worker_error = startup_error
            self._log.info(
                "worker failed to start", worker_id=worker.id, error=str(startup_error).splitlines()[0]
            )
            # Only the failure that reaches the limit breaks the pool. Starts already in flight
            # then (min_workers above the limit, a scale-up) may fail too: they count in
            # statistics().startup_failures, but must not replace the PoolFailed, whose count
            # would then exceed the limit it reports.
            if (
                self._failure is None
                and self._consecutive_startup_failures >= self.config.max_startup_failures
            ):
                self._break(PoolFailed(self.name, self._consecutive_startup_failures, startup_error))
        elif worker.state is WorkerState.FAILED and not self._hard_closing:
            self._worker_crashes += 1  # logged by the log sink, from WorkerExited
        if failure is not None:
            self._consecutive_failures += 1
            if failure is FailureKind.UNRESPONSIVE:
                self._unresponsive += 1
            if self.config.breaker.enabled and self._failure is None:
                self._breaker.failure(now)
        if worker.sessions:
            reason = failure.value if failure is not None else (worker.retire_reason or "stopped")
            self._lose_sessions(worker, "recycled" if worker.retire_reason and failure is None else reason)
        code = worker.returncode
        exit_code = code if code is None or code >= 0 else None
        signal = -code if code is not None and code < 0 else None
        at = anyio.current_time()
        expected = failure is None and worker.state is WorkerState.STOPPED
        self._emit(
            WorkerExited(
                pool=self.name,
                at=at,
                worker_id=worker.id,
                pid=worker.pid,
                returncode=code,
                expected=expected,
                failure=failure,
                cause=crash_cause(exit_code, signal),
                exit_code=exit_code,
                signal=signal,
                reason=worker.kill_reason or ("stopped" if expected else "exited"),
            )
        )
        if self._tel.calls:
            for call in requeue:
                call.queued_at = at
                self._emit(
                    CallRequeued(
                        pool=self.name, at=at, call=call.seq, target=call.target_name, worker_id=worker.id
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
        if worker.parked:
            self._unpark(worker)
        if failure is not None:
            error: BaseException = startup_error or self._worker_failure(worker, failure)
            if startup_error is None:
                self._last_worker_error = error
            self._ensure_workers(now, after_failure=error)
        else:
            replaced = worker.kill_reason or not expected
            self._ensure_workers(now, reason="replace" if replaced else "min_workers")
        self._dispatch()
        self._notify_changed()

    @staticmethod
    def _worker_failure(worker: Worker, failure: FailureKind) -> PoolError:
        """What a worker's death looked like, for PoolFailed.cause when the budget runs out."""
        code = worker.returncode
        error = WorkerCrashed(
            exit_code=code if code is None or code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            stderr_tail=worker.stderr_tail,
            phase=Phase.RUNNING,
            worker_id=worker.id,
            pid=worker.pid,
        )
        if failure is not FailureKind.CRASHED:
            error.add_note(f"the pool killed it: {failure.value}")
        return error

    def _break(self, failure: PoolFailed) -> None:
        """Workers cannot be kept alive: stop trying, fail what waits, refuse new calls."""
        self._failure = failure
        self._pending_spawns.clear()
        if self._fsm.can(PoolEvent.BROKEN):
            self._fsm.fire(PoolEvent.BROKEN, str(failure).splitlines()[0])
        # Logged (ERROR) by the log sink, from the FAILED transition's PoolStateChanged.
        for call in self._queued_calls():
            call.fail(failure)
        self._queue.clear()
        for worker in self._workers.values():
            worker.parked.clear()
        for binding in self._sessions.values():
            self._session_waiting -= len(binding.waiting)
            binding.waiting.clear()
        self._notify_room()

    def _on_breaker(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if breaker is not self._breaker:
            if new is _CLOSED:
                self._tripped.discard(breaker.scope)
            else:
                self._tripped.add(breaker.scope)
        self._emit(
            BreakerStateChanged(
                pool=self.name,
                at=anyio.current_time(),
                scope=breaker.scope,
                from_state=old.value,
                to_state=new.value,
                failures=breaker.failures,
            )
        )

    # ---- time: the housekeeper ---------------------------------------------------------------
    def _wake_at(self, when: float) -> None:
        """Make the housekeeper run at ``when`` (on the pool's clock) at the latest."""
        heapq.heappush(self._wakeups, when)
        sleep = self._sleep
        if sleep is not None and when < sleep[1]:
            sleep[0].cancel()

    async def _housekeeper(self) -> None:
        """Sleep on the clock until the next thing is due, do it, repeat. Never raises
        (a bug here is logged, not allowed to take the pool down)."""
        assert self._housekeeper_scope is not None
        clock = self.clock
        interval = self.config.heartbeat_interval
        with self._housekeeper_scope:
            if interval is not None:
                self._next_beat = clock.now() + interval
            while True:
                due = min(self._next_beat, self._wakeups[0] if self._wakeups else math.inf)
                with anyio.CancelScope() as scope:
                    self._sleep = (scope, due)
                    await clock.sleep_until(due)
                self._sleep = None
                now = clock.now()
                while self._wakeups and self._wakeups[0] <= now:
                    heapq.heappop(self._wakeups)
                try:
                    self._housekeep(now)
                except Exception as exc:  # a bug in poolkit: log it, keep the pool serving
                    self._log.exception("housekeeping failed", error=repr(exc))
                await anyio.lowlevel.checkpoint()

    def _housekeep(self, now: float) -> None:
        if self._fsm.state is PoolState.CLOSED or self._hard_closing:
            return
        interval = self.config.heartbeat_interval
        if interval is not None and now >= self._next_beat:
            # Woken much later than planned (the event loop was blocked, or a test advanced
            # a manual clock by a lot): nobody had a chance to answer, so only ask this round.
            late = now - self._next_beat > interval
            self._heartbeat(now, interval, judge=not late)
            self._next_beat = now + interval
        if self._pending_spawns:
            due = [t for t in self._pending_spawns if t <= now]
            if due:
                self._pending_spawns = [t for t in self._pending_spawns if t > now]
                for _ in due:
                    if not self._hard_closing and self._failure is None:
                        self._spawn("replace")
        if now >= self._session_due:
            self._expire_sessions(now)
        if now >= self._idle_due:
            self._retire_idle(now)
        for worker in list(self._workers.values()):
            state = worker.state
            if state.accepts_calls and now - worker.ready_at >= worker.max_lifetime:
                self._retire(worker, "lifetime")
            elif state is WorkerState.RETIRING:
                self._progress_retiring(worker, now)
            elif state is WorkerState.STOPPING and now >= worker.stop_deadline:
                worker.kill("retired worker did not exit after shutdown")
        self._dispatch()

    def _heartbeat(self, now: float, interval: float, *, judge: bool) -> None:
        limit = interval * self.config.heartbeat_misses
        for worker in list(self._workers.values()):
            if worker.state not in _HEARTBEAT:
                continue
            silent = now - worker.last_heard
            if judge and silent > limit:
                self._log.info("worker unresponsive", worker_id=worker.id, pid=worker.pid, silent_for=silent)
                worker.kill(
                    f"no heartbeat reply for {silent:.3g}s",
                    fault=_unresponsive(worker, silent, interval),
                    failure=FailureKind.UNRESPONSIVE,
                )
            else:
                worker.ping()

    def _retire_idle(self, now: float) -> None:
        """Workers above ``min_workers`` idle for ``idle_timeout`` are retired, oldest idle first."""
        self._idle_due = math.inf
        timeout = self.config.idle_timeout
        active = [w for w in self._workers.values() if w.state.accepts_calls]
        excess = len(active) - self.config.min_workers
        if excess <= 0:
            return
        due = math.inf
        for worker in sorted(active, key=lambda w: w.idle_since):
            if excess <= 0:
                break
            if worker.load or worker.sessions:
                continue
            if now - worker.idle_since >= timeout:
                self._retire(worker, "idle")
                excess -= 1
            else:
                due = min(due, worker.idle_since + timeout)
        if excess > 0 and due < math.inf:
            self._idle_due = due
            self._wake_at(due)

    # ---- introspection -----------------------------------------------------------------------
    def _count_ready(self) -> int:
        return sum(1 for w in self._workers.values() if w.state.accepts_calls)

    def _in_flight(self) -> int:
        return sum(w.in_flight for w in self._workers.values())

    def _pending(self) -> int:
        """Admitted calls not yet sent: queued, behind their session, or parked."""
        return len(self._queue) + self._session_waiting + sum(len(w.parked) for w in self._workers.values())

    def _queued_calls(self) -> list[Call]:
        calls = list(self._queue)
        for binding in self._sessions.values():
            calls.extend(binding.waiting)
        for worker in self._workers.values():
            calls.extend(worker.parked)
        return [call for call in calls if call.status is CallStatus.QUEUED]

    def statistics(self) -> PoolStatistics:
        workers = tuple(
            WorkerInfo(w.id, w.pid, w.state, w.in_flight, w.calls_completed) for w in self._workers.values()
        )
        return PoolStatistics(
            name=self.name,
            state=self._fsm.state,
            workers=workers,
            queued=self._pending(),
            in_flight=sum(w.in_flight for w in workers),
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            worker_starts=self._worker_starts,
            worker_crashes=self._worker_crashes,
            startup_failures=self._startup_failures,
            waiting=len(self._line),
            retries=self._retries,
            recycled=self._recycled,
            unresponsive=self._unresponsive,
            sessions=len(self._sessions),
            breaker=self._breaker.state.value,
            open_breakers=tuple(
                name for name, b in self._target_breakers.items() if b.state is not BreakerState.CLOSED
            ),
            generation=self._generation,
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


def _checked_timeout(timeout: object) -> float:
    """A call's ``timeout`` as seconds, or a clear error: a number > 0 (``math.inf`` is no
    deadline). NaN would pass a ``<= 0`` check and then fail deep in the event loop, after the
    call was sent (killing its worker), and a bool is a mistake, not one second."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout > 0:  # also NaN
        raise ValueError(f"timeout must be > 0, got {timeout!r}")
    return float(timeout)


def _unresponsive(worker: Worker, silent: float, interval: float) -> Callable[[Call], PoolError]:
    def fault(call: Call) -> PoolError:
        return WorkerUnresponsive(
            silent_for=silent,
            interval=interval,
            phase=Phase.RUNNING,
            worker_id=worker.id,
            pid=worker.pid,
            target=call.target_name,
        )

    return fault
