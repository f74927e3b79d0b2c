"""Chaos scenarios and the history checker that judges them.

A scenario drives load through a pool (many concurrent callers, each with a value unique to
its call) while it injects faults: real SIGKILLs of real worker pids, a stalled worker, a
worker growing its memory, corrupted result frames. Everything that happens is written to a
:class:`History` from two sides:

* the pool's event stream (:meth:`Pool.subscribe`): ``CallQueued``, ``CallDispatched``,
  ``CallRequeued`` and the one terminal ``CallCompleted``/``CallFailed`` per call;
* the callers' own view: what each awaiting task got back (a value or an exception).

:func:`check_history` then verifies the properties a pool must keep whatever the faults:
every admitted call ended exactly once (in the events and for its caller, and the two
agree), no value was delivered twice or to the wrong caller, every failure is a typed
:class:`~poolkit.PoolError` of a kind the injected faults can cause, no call was lost to a
worker fault the pool should have recovered it from (:class:`RetryCheck`), the pool came back
to its size in a bounded time, and no worker process outlived the pool.

Faults are recovered from by the pool itself: a call whose worker died before it ran is
requeued, and an idempotent call (``History.call`` makes them idempotent unless told
otherwise) whose worker crashed, hung or broke the protocol while running it is retried
(``CallRetried``), so in every built-in scenario the checker runs at
:attr:`RetryCheck.STRICT`: such a call must end with a value, unless its retries ran out.

Every scenario takes a ``seed``: it decides which workers are hit, the call mix and the
tokens. The seed is in every assertion message; set ``POOLKIT_CHAOS_SEED`` to replay a run
(see :func:`chaos_seed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

import anyio

from .._config import RetryPolicy
from .._errors import FailureKind, Phase, PoolError
from .._events import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    CallRequeued,
    CallRetried,
    Event,
    PoolStateChanged,
)
from .._pool import Pool
from .._recovery import RECOVERY, Blame, RetryRule
from .._session import PoolSession
from .._state import PoolState, WorkerState
from . import targets
from ._faults import FaultError, FaultInjector
from ._isolation import tagged_processes
from ._layers import Layer, pool_for
from ._wait import WaitTimeout, scaled, timeout_factor, wait_until

__all__ = [
    "SCENARIOS",
    "SEED_ENV",
    "CallRecord",
    "EventTrail",
    "Failed",
    "History",
    "HistorySummary",
    "Ok",
    "Outcome",
    "Recovery",
    "RetryCheck",
    "Scenario",
    "assert_history_ok",
    "cascading_failure",
    "chaos_seed",
    "check_history",
    "combined",
    "corrupt_messages",
    "kill_majority",
    "memory_leak",
    "run_scenario",
    "slow_worker",
    "thundering_herd",
]

SEED_ENV: Final = "POOLKIT_CHAOS_SEED"
DEFAULT_SEED: Final = 20240607

_ECHO = "poolkit.testing.targets:echo"
_SLEEP = "poolkit.testing.targets:sleep"

#: Failure kinds a retry could cure: the worker failed, not the call or the caller (CRASHED,
#: UNRESPONSIVE, PROTOCOL, RESOURCE_EXHAUSTED): the kinds the recovery table retries.
_WORKER_FAULT_KINDS: Final = frozenset(k for k, r in RECOVERY.items() if r.retry is RetryRule.IF_SAFE)

#: Kinds that end a call whatever happened before (say, a requeue): the call's own outcome
#: (the target raised, its deadline passed, its caller cancelled it) or a circuit breaker
#: failing it fast. (POOL_CLOSED and POOL_FAILED are excused by the pool's state instead.)
_CALL_DECIDED_KINDS: Final = frozenset(
    {k for k, r in RECOVERY.items() if r.blame is Blame.CALL}
    | {FailureKind.QUEUE_TIMEOUT, FailureKind.CIRCUIT_OPEN}
)
_STRICT_SESSION_MODES: Final = frozenset({"strict_queue", "strict_fail_fast"})
_POOL_DOWN: Final = frozenset({PoolState.DRAINING, PoolState.FAILED, PoolState.CLOSED})


def chaos_seed(default: int = DEFAULT_SEED) -> int:
    """The seed for this run: ``POOLKIT_CHAOS_SEED`` if set (to replay a failure), else ``default``."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return default
    try:
        return int(raw, 0)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, got {raw!r}") from None


# ------------------------------------------------------------------------------------ outcomes
@dataclasses.dataclass(frozen=True, slots=True)
class Ok:
    """The caller got a value."""

    value: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    """The caller got an exception. ``kind`` and ``phase`` are None when it was not a PoolError
    (an untyped failure, which the checker reports)."""

    error_type: str
    kind: FailureKind | None
    phase: Phase | None
    message: str

    @property
    def typed(self) -> bool:
        return self.kind is not None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failed:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        message = (str(exc).splitlines() or [""])[0][:300]
        if isinstance(exc, PoolError):
            return cls(name, exc.kind, getattr(exc, "phase", Phase.QUEUED), message)
        if _is_cancellation(exc):
            return cls(name, FailureKind.CANCELLED, None, "cancelled")
        return cls(name, None, None, message)


Outcome = Ok | Failed


def _is_cancellation(exc: BaseException) -> bool:
    try:
        return isinstance(exc, anyio.get_cancelled_exc_class())
    except Exception:  # no event loop: a fabricated outcome
        return False


class _NoValue(enum.Enum):
    NO_VALUE = "no value"


NO_VALUE: Final = _NoValue.NO_VALUE


@dataclasses.dataclass(slots=True)
class CallRecord:
    """One call as its caller saw it. ``seq`` links it to the pool's events (``CallQueued.call``);
    it stays None for a call the pool refused before admitting it."""

    id: int  # scenario-local
    target: str
    expect: Any  # the value this call must return (unique per call), or NO_VALUE
    idempotent: bool
    intended_at: float  # when the caller set out to make the call
    seq: int | None = None
    queued_at: float | None = None  # admission (CallQueued.at)
    ended_at: float | None = None  # when the caller got its outcome
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    timeout: float | None = None  # the call's deadline, seconds after intended_at (None: none)
    session: str | int | None = None  # the session key, for session calls
    session_mode: str | None = None  # hint | strict_queue | strict_fail_fast

    @property
    def outcome(self) -> Outcome | None:
        return self.outcomes[0] if len(self.outcomes) == 1 else None


@dataclasses.dataclass(slots=True)
class EventTrail:
    """One call as the pool's events tell it."""

    seq: int
    target: str
    queued_at: float | None = None  # None: a terminal event arrived for a call never queued
    dispatched_to: list[str] = dataclasses.field(default_factory=list)
    requeued: int = 0
    retried: list[FailureKind] = dataclasses.field(default_factory=list)  # CallRetried: what failed
    terminals: list[CallCompleted | CallFailed] = dataclasses.field(default_factory=list)
    record: CallRecord | None = None
    pool_down: bool = False  # the pool was closing or had failed when the call ended

    @property
    def attempts(self) -> int:
        """Attempts made: the first one plus one per ``CallRetried``."""
        return 1 + len(self.retried)


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    """How long the pool took to be back at ``min_workers`` accepting workers after the faults."""

    bound: float
    took: float | None  # None: not within the bound
    detail: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class HistorySummary:
    calls: int
    ok: int
    failed: Mapping[str, int]  # by failure kind (or error type when untyped)
    not_admitted: int
    requeued: int  # calls requeued at least once (their worker died before they ran)
    retried: int  # calls retried at least once (CallRetried: an attempt failed, another was made)
    retried_ok: int  # of the ``retried`` calls, those that then completed
    other_calls: int  # calls seen in the events that no recorded caller made (fault injection)
    requeued_ok: int = 0  # of the ``requeued`` calls, those that then completed

    def __str__(self) -> str:
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "none"
        return (
            f"{self.calls} calls: {self.ok} ok, failed: {failed}, not admitted {self.not_admitted}, "
            f"requeued {self.requeued} (then ok: {self.requeued_ok}), "
            f"retried {self.retried} (then ok: {self.retried_ok}), "
            f"other calls {self.other_calls}"
        )


_recording: ContextVar[CallRecord | None] = ContextVar("poolkit_chaos_record", default=None)


# ------------------------------------------------------------------------------------- history
class History:
    """Everything one scenario run did: the callers' records, the pool's event trails, the
    faults injected, the recovery time and the processes left after close.

    ``allowed_kinds``: the failure kinds the scenario's faults can cause (a SIGKILL causes
    CRASHED, a deadline TIMEOUT, a corrupt frame PROTOCOL); the checker reports any other.

    ``max_attempts``, ``backoff_max`` and ``default_timeout`` are the pool's retry policy and
    default deadline, which the retry check needs; :meth:`record` copies them from the pool
    (a fabricated history keeps :class:`~poolkit.RetryPolicy`'s defaults and no deadline).
    """

    def __init__(self, scenario: str, seed: int, *, allowed_kinds: Collection[FailureKind] = ()) -> None:
        self.scenario = scenario
        self.seed = seed
        self.allowed_kinds: set[FailureKind] = set(allowed_kinds)
        self.records: list[CallRecord] = []
        self.trails: dict[int, EventTrail] = {}
        self.faults: list[str] = []
        self.violations: list[str] = []  # scenario-specific expectations that did not hold
        self.recovery: Recovery | None = None
        self.orphans: list[int] | None = None  # None: not checked
        self.faults_stopped_at: float | None = None
        self.recording = False
        policy = RetryPolicy()
        self.max_attempts = policy.max_attempts
        self.backoff_max = policy.backoff_max
        self.default_timeout: float | None = None
        self._pool_down = False
        self._ids = 0

    # ---- recording ----------------------------------------------------------------------
    @contextlib.contextmanager
    def record(self, pool: Pool) -> Iterator[History]:
        """Subscribe to ``pool``'s events for the duration of the block (and take the pool's
        retry policy and default deadline, for the retry check)."""
        self.max_attempts = pool.config.retry.max_attempts
        self.backoff_max = pool.config.retry.backoff_max
        self.default_timeout = pool.config.default_timeout
        self._pool_down = pool.state in _POOL_DOWN
        unsubscribe = pool.subscribe(self._on_event)
        self.recording = True
        try:
            yield self
        finally:
            unsubscribe()

    def _trail(self, seq: int, target: str) -> EventTrail:
        trail = self.trails.get(seq)
        if trail is None:
            trail = self.trails[seq] = EventTrail(seq, target)
        return trail

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CallQueued):
            trail = self._trail(event.call, event.target)
            trail.queued_at = event.at
            # Emitted synchronously in the caller's task, inside pool.call: the context
            # variable names the record being made there.
            record = _recording.get()
            if record is not None and record.seq is None and trail.record is None:
                record.seq = event.call
                record.queued_at = event.at
                trail.record = record
        elif isinstance(event, CallDispatched):
            self._trail(event.call, event.target).dispatched_to.append(event.worker_id)
        elif isinstance(event, CallRequeued):
            self._trail(event.call, event.target).requeued += 1
        elif isinstance(event, CallRetried):
            self._trail(event.call, event.target).retried.append(event.kind)
        elif isinstance(event, CallCompleted | CallFailed):
            trail = self._trail(event.call, event.target)
            trail.terminals.append(event)
            trail.pool_down = self._pool_down
        elif isinstance(event, PoolStateChanged):
            self._pool_down = event.to_state in _POOL_DOWN

    async def call(
        self,
        pool: Pool,
        target: str | Callable[..., Any],
        /,
        *args: Any,
        expect: Any = NO_VALUE,
        idempotent: bool = True,
        timeout: float | None = None,
        session: str | int | PoolSession | None = None,
    ) -> CallRecord:
        """Make one call through ``pool`` and record what this caller got; return the record
        (``.outcome``: :class:`Ok` or :class:`Failed`; ``.seq`` links it to the events).

        Never raises for a failed call (the failure is recorded); cancellation is recorded
        and re-raised. ``expect``: the value this call must return (unique per call, for the
        duplicate/misdelivery checks). ``idempotent`` (passed to :meth:`Pool.call`: the pool
        retries idempotent calls hit by worker faults): see :class:`RetryCheck`. ``session``:
        a session key or a :meth:`Pool.session` handle; the record keeps its mode (for a key,
        the pool's default ``sessions.mode``), which decides whether the call may be retried."""
        self._ids += 1
        name = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
        record = CallRecord(
            self._ids,
            name,
            expect,
            idempotent,
            anyio.current_time(),
            timeout=timeout if timeout is not None else self.default_timeout,
        )
        if isinstance(session, PoolSession):
            record.session, record.session_mode = session.key, session.mode
        elif session is not None:
            record.session, record.session_mode = session, pool.config.sessions.mode
        self.records.append(record)
        outcome: Outcome
        token = _recording.set(record)
        try:
            value = await pool.call(target, *args, timeout=timeout, idempotent=idempotent, session=session)
        except anyio.get_cancelled_exc_class() as exc:
            record.outcomes.append(Failed.from_exception(exc))
            record.ended_at = anyio.current_time()
            raise
        except Exception as exc:
            outcome = Failed.from_exception(exc)
        else:
            outcome = Ok(value)
        finally:
            _recording.reset(token)
        record.outcomes.append(outcome)
        record.ended_at = anyio.current_time()
        return record

    def fault(self, description: str) -> None:
        """Note an injected fault (shown in the checker's report)."""
        self.faults.append(description)

    def faults_done(self) -> None:
        """The faults have stopped: the recovery bound counts from here."""
        self.faults_stopped_at = anyio.current_time()

    def expect(self, condition: bool, message: str) -> None:
        """A scenario-specific expectation; a false one becomes a violation."""
        if not condition:
            self.violations.append(message)

    async def wait_recovered(self, pool: Pool, *, within: float = 15.0) -> None:
        """Wait (on the pool's events) until it runs ``min_workers`` workers that accept calls
        and none is starting; record how long that took after :meth:`faults_done`."""
        start = self.faults_stopped_at if self.faults_stopped_at is not None else anyio.current_time()
        target = pool.config.min_workers

        def recovered() -> bool:
            states = [w.state for w in pool.workers()]
            starting = sum(1 for s in states if s in (WorkerState.SPAWNING, WorkerState.STARTING))
            return sum(1 for s in states if s.accepts_calls) >= target and starting == 0

        bound = scaled(within)
        # wait_until scales its timeout itself: give it the unscaled time left of the bound
        left = max(0.0, within - (anyio.current_time() - start) / timeout_factor())
        try:
            await wait_until(recovered, timeout=left, describe=f"{target} workers accepting calls", pool=pool)
        except WaitTimeout as exc:
            self.recovery = Recovery(bound, None, str(exc).splitlines()[0])
        else:
            self.recovery = Recovery(bound, anyio.current_time() - start)

    def check_orphans(self, tag: str) -> None:
        """After the pool is closed: record the processes still carrying ``tag``."""
        self.orphans = tagged_processes(tag)

    # ---- reading ----------------------------------------------------------------------------
    def summary(self) -> HistorySummary:
        failed: Counter[str] = Counter()
        ok = not_admitted = 0
        for record in self.records:
            outcome = record.outcome
            if isinstance(outcome, Ok):
                ok += 1
            elif isinstance(outcome, Failed):
                failed[outcome.kind.value if outcome.kind else outcome.error_type] += 1
            if record.seq is None and record.outcomes:
                not_admitted += 1

        def completed(trail: EventTrail) -> bool:
            return any(isinstance(e, CallCompleted) for e in trail.terminals)

        # Each count is over its own calls (a call both requeued and retried is in both), so
        # "retried N (then ok: M)" always has M <= N.
        requeued = [t for t in self.trails.values() if t.requeued]
        retried = [t for t in self.trails.values() if t.retried]
        return HistorySummary(
            calls=len(self.records),
            ok=ok,
            failed=dict(failed),
            not_admitted=not_admitted,
            requeued=len(requeued),
            retried=len(retried),
            retried_ok=sum(1 for t in retried if completed(t)),
            other_calls=sum(1 for t in self.trails.values() if t.record is None),
            requeued_ok=sum(1 for t in requeued if completed(t)),
        )

    @property
    def ok_count(self) -> int:
        return sum(1 for r in self.records if r.outcomes and isinstance(r.outcomes[0], Ok))

    @property
    def ended_count(self) -> int:
        return sum(1 for r in self.records if r.outcomes)

    def __repr__(self) -> str:
        return f"<History {self.scenario} seed={self.seed}: {self.summary()}>"


# ------------------------------------------------------------------------------------- checker
class RetryCheck(enum.Enum):
    """How strictly :func:`check_history` holds the pool to its recovery promises.

    The pool recovers from worker faults on its own (``config.retry``, docs/recovery.md):

    * a call sent to a worker behind the running one certainly never ran: when that worker
      dies the call is requeued (``CallRequeued``) and sent elsewhere;
    * an attempt that failed with a worker-fault kind (CRASHED, UNRESPONSIVE, PROTOCOL,
      RESOURCE_EXHAUSTED) is retried (``CallRetried``, after a backoff) when the call is
      idempotent or never reached a worker, attempts remain (``retry.max_attempts``) and the
      deadline leaves room, except in a strict-mode session (its state went with the worker)
      and once the pool is closing or has failed.

    A call that completed after a requeue or a retry succeeded through recovery
    (:attr:`HistorySummary.requeued_ok`, :attr:`HistorySummary.retried_ok`).

    * ``OFF``: no check.
    * ``SAFE``: a call (idempotent or not) that failed with a worker-fault kind in a phase
      where it certainly had not run (QUEUED or SENT) is reported: the pool gave up a call
      it could have re-run at no risk.
    * ``STRICT`` (the default; every built-in scenario holds it): ``SAFE``, plus an
      idempotent call that failed with a worker-fault kind in any phase, plus an idempotent
      call that was requeued and did not end with a value.

    A worker-fault failure is accepted, at every level, when the pool rightly did not retry:

    * its retries ran out: ``CallRetried`` events for it + 1 >= ``retry.max_attempts``;
    * its deadline left no room: it had a timeout (its own or the pool's ``default_timeout``)
      and less than ``retry.backoff_max`` of it was left when it failed (the pool retries
      only if the backoff, at most ``backoff_max``, ends before the deadline; the check is
      lenient here rather than guess the backoff the pool drew);
    * it was a call of a strict-mode session (``strict_queue``, ``strict_fail_fast``);
    * the pool was closing or had failed when the call ended.

    A requeued call may also end, without a report, with a kind that is the call's own
    outcome or a decision above the worker: APPLICATION, SERIALIZATION, PAYLOAD_TOO_LARGE,
    TIMEOUT, QUEUE_TIMEOUT, CANCELLED (the target, the deadline or the caller decided),
    CIRCUIT_OPEN (a breaker did), SESSION_LOST / SESSION_UNAVAILABLE in a strict-mode
    session, or any kind once the pool was closing or had failed (POOL_CLOSED, POOL_FAILED:
    the pool's state, from ``PoolStateChanged``, decides, not the kind alone). Failures of
    kinds other than worker faults are never retry candidates.

    The check needs the pool's retry policy: :meth:`History.record` copies it
    (``History.max_attempts``, ``History.backoff_max``, ``History.default_timeout``).
    """

    OFF = "off"
    SAFE = "safe"
    STRICT = "strict"


def _retry_excuse(history: History, record: CallRecord, trail: EventTrail | None) -> str | None:
    """Why the pool rightly did not retry ``record``'s failed call (see :class:`RetryCheck`);
    None if it should have."""
    if record.session_mode in _STRICT_SESSION_MODES:
        return f"a {record.session_mode} session call"
    if trail is not None and trail.pool_down:
        return "the pool was closing or had failed"
    attempts = trail.attempts if trail is not None else 1
    if attempts >= history.max_attempts:
        return f"retries exhausted ({attempts} of retry.max_attempts={history.max_attempts})"
    if record.timeout is not None:
        failed_at = (
            trail.terminals[0].at if trail is not None and len(trail.terminals) == 1 else record.ended_at
        )
        if failed_at is not None:
            left = record.intended_at + record.timeout - failed_at
            if left < history.backoff_max:
                return f"{left:.3g}s left of its deadline (< retry.backoff_max={history.backoff_max:g})"
    return None


def check_history(
    history: History,
    *,
    allowed_kinds: Collection[FailureKind] | None = None,
    retries: RetryCheck | str = RetryCheck.STRICT,
    require_recovery: bool = False,
    require_orphan_check: bool = False,
) -> list[str]:
    """Every violation of the chaos properties in ``history``; an empty list means clean.

    ``allowed_kinds`` overrides ``history.allowed_kinds`` (what the scenario's faults can
    cause). ``retries``: see :class:`RetryCheck`. ``require_recovery`` /
    ``require_orphan_check``: report a scenario that never measured recovery
    (:meth:`History.wait_recovered`) or never looked for orphans (:meth:`History.check_orphans`).
    Messages carry the scenario name and seed, so a failure can be replayed.
    """
    allowed = set(history.allowed_kinds if allowed_kinds is None else allowed_kinds)
    retries = RetryCheck(retries)
    out: list[str] = []

    def report(message: str) -> None:
        out.append(f"[{history.scenario} seed={history.seed}] {message}")

    # 1. the pool's side: one terminal event per queued call
    for seq, trail in sorted(history.trails.items()):
        if trail.queued_at is None:
            report(f"call {seq} ({trail.target}) ended in the events but was never queued (CallQueued)")
        if not trail.terminals:
            report(
                f"call {seq} ({trail.target}) was queued but never ended: lost (no CallCompleted/CallFailed)"
            )
        elif len(trail.terminals) > 1:
            kinds = ", ".join(_describe_event(e) for e in trail.terminals)
            report(f"call {seq} ({trail.target}) ended {len(trail.terminals)} times in the events: {kinds}")

    # 2. the callers' side, and 3. both sides agree
    for record in history.records:
        who = f"caller #{record.id} ({record.target}, call {record.seq})"
        if not record.outcomes:
            report(f"{who} never got an outcome: lost call")
            continue
        if len(record.outcomes) > 1:
            report(f"{who} got {len(record.outcomes)} outcomes: {record.outcomes}")
        outcome = record.outcomes[0]
        if record.seq is None:
            if history.recording and isinstance(outcome, Ok):
                report(f"{who} got a value but the pool never queued the call")
            elif isinstance(outcome, Failed) and outcome.phase not in (None, Phase.QUEUED):
                report(f"{who} failed in phase {outcome.phase.value} without ever being queued")
        else:
            linked = history.trails.get(record.seq)
            terminal = linked.terminals[0] if linked is not None and len(linked.terminals) == 1 else None
            if terminal is not None:
                mismatch = _disagreement(outcome, terminal)
                if mismatch:
                    report(f"{who}: the caller and the events disagree: {mismatch}")
        if isinstance(outcome, Ok) and record.expect is not NO_VALUE and outcome.value != record.expect:
            report(
                f"{who} got {outcome.value!r}, expected {record.expect!r}: a result delivered to the wrong caller"
            )

    # 4. no result delivered twice
    seen: Counter[tuple[str, str]] = Counter()
    for record in history.records:
        if record.expect is NO_VALUE:
            continue
        for outcome in record.outcomes:
            if isinstance(outcome, Ok):
                seen[(type(outcome.value).__qualname__, repr(outcome.value))] += 1
    for (_, value), n in sorted(seen.items()):
        if n > 1:
            report(f"value {value} delivered {n} times (each call's value is unique)")

    # 5. failures are typed, and of kinds the faults can cause
    for record in history.records:
        for outcome in record.outcomes:
            if not isinstance(outcome, Failed):
                continue
            who = f"caller #{record.id} ({record.target}, call {record.seq})"
            if outcome.kind is None:
                report(f"{who} got an untyped failure {outcome.error_type}: {outcome.message}")
            elif outcome.kind not in allowed:
                names = ", ".join(sorted(k.value for k in allowed)) or "none"
                report(
                    f"{who} failed with kind {outcome.kind.value} ({outcome.error_type}: {outcome.message}); "
                    f"this scenario's faults can cause: {names}"
                )

    # 6. recovery of calls hit by worker faults: retries and requeues
    if retries is not RetryCheck.OFF:
        for record in history.records:
            final = record.outcome
            if not isinstance(final, Failed):
                continue
            who = f"caller #{record.id} ({record.target}, call {record.seq})"
            linked = history.trails.get(record.seq) if record.seq is not None else None
            attempts = f"after {linked.attempts} attempt(s)" if linked is not None else "(attempts unknown)"
            kind = final.kind.value if final.kind else "?"
            phase = final.phase.value if final.phase else "?"
            if final.kind in _WORKER_FAULT_KINDS:
                safe = final.phase in (Phase.QUEUED, Phase.SENT)
                if (safe or (record.idempotent and retries is RetryCheck.STRICT)) and (
                    _retry_excuse(history, record, linked) is None
                ):
                    why = "although it had certainly not run" if safe else "although it is idempotent"
                    report(f"{who} failed with {kind} in phase {phase} {attempts}, {why}: it was not retried")
                    continue
            if (
                retries is RetryCheck.STRICT
                and record.idempotent
                and linked is not None
                and linked.requeued
                and not _requeue_excused(history, record, linked, final)
            ):
                report(
                    f"{who} was requeued {linked.requeued} time(s) but did not succeed "
                    f"(failed with {kind} in phase {phase} {attempts})"
                )

    # 7. recovery and orphans
    if history.recovery is not None:
        if history.recovery.took is None:
            report(
                f"the pool was not back at its size within {history.recovery.bound:g}s after the faults: "
                f"{history.recovery.detail}"
            )
    elif require_recovery:
        report("recovery was not measured (History.wait_recovered)")
    if history.orphans:
        report(f"worker processes outlived the pool: {history.orphans}")
    elif history.orphans is None and require_orphan_check:
        report("orphan processes were not checked (History.check_orphans)")

    # 8. scenario-specific expectations
    for message in history.violations:
        report(message)
    return out


def _requeue_excused(history: History, record: CallRecord, trail: EventTrail, final: Failed) -> bool:
    kind = final.kind
    if kind is None:
        return False  # untyped: reported on its own, and no excuse here
    if kind in _CALL_DECIDED_KINDS or trail.pool_down:
        return True
    if kind in _WORKER_FAULT_KINDS:
        return _retry_excuse(history, record, trail) is not None
    strict = record.session_mode in _STRICT_SESSION_MODES
    return strict and kind in (FailureKind.SESSION_LOST, FailureKind.SESSION_UNAVAILABLE)


def assert_history_ok(history: History, **kwargs: Any) -> None:
    """:func:`check_history`, raising AssertionError with every violation, the faults injected,
    the summary and how to replay the run (``POOLKIT_CHAOS_SEED``)."""
    problems = check_history(history, **kwargs)
    if problems:
        lines = [
            f"chaos scenario {history.scenario!r} broke {len(problems)} invariant(s) "
            f"(seed={history.seed}; replay with {SEED_ENV}={history.seed})",
            *(f"  - {p}" for p in problems),
            f"  faults: {'; '.join(history.faults) or 'none'}",
            f"  summary: {history.summary()}",
        ]
        raise AssertionError("\n".join(lines))


def _describe_event(event: CallCompleted | CallFailed) -> str:
    if isinstance(event, CallCompleted):
        return "completed"
    return f"failed({event.kind.value}, {event.phase.value})"


def _disagreement(outcome: Outcome, event: CallCompleted | CallFailed) -> str:
    if isinstance(outcome, Ok):
        return (
            ""
            if isinstance(event, CallCompleted)
            else f"caller got a value, events say {_describe_event(event)}"
        )
    if isinstance(event, CallCompleted):
        return f"caller got {outcome.error_type}, events say completed"
    if outcome.kind is not None and outcome.kind is not event.kind:
        return f"caller got kind {outcome.kind.value}, events say {_describe_event(event)}"
    if outcome.phase is not None and outcome.phase is not event.phase:
        return f"caller got phase {outcome.phase.value}, events say {_describe_event(event)}"
    return ""


# ---------------------------------------------------------------------------------- load
@dataclasses.dataclass(frozen=True, slots=True)
class _Planned:
    target: str
    args: tuple[Any, ...]
    expect: Any


def _plan(
    rng: random.Random, scenario: str, n: int, *, sleep_share: float, max_sleep: float
) -> list[_Planned]:
    """``n`` calls of echo(token) and sleep(seconds), every return value unique by construction."""
    plan: list[_Planned] = []
    seconds_used: set[float] = set()
    for i in range(n):
        if rng.random() < sleep_share:
            seconds = round(rng.uniform(0.001, max_sleep), 4) + i * 1e-7
            while seconds in seconds_used:
                seconds += 1e-9
            seconds_used.add(seconds)
            plan.append(_Planned(_SLEEP, (seconds,), seconds))
        else:
            token = f"{scenario}:{rng.getrandbits(32):08x}:{i}"
            plan.append(_Planned(_ECHO, (token,), token))
    return plan


async def _drive(
    history: History,
    pool: Pool,
    plan: list[_Planned],
    *,
    concurrency: int,
    gate: anyio.Event | None = None,
    arrived: Callable[[], None] | None = None,
) -> None:
    """Run ``plan`` with at most ``concurrency`` callers at a time (all at once behind ``gate``)."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(item: _Planned) -> None:
        if gate is not None:
            if arrived is not None:
                arrived()
            await gate.wait()
        async with limiter:
            await history.call(pool, item.target, *item.args, expect=item.expect)

    async with anyio.create_task_group() as tg:
        for item in plan:
            tg.start_soon(one, item)


async def _progress(history: History, pool: Pool, fraction: float, total: int, what: str) -> None:
    """Wait (on events) until ``fraction`` of ``total`` calls have ended."""
    need = max(1, int(total * fraction))
    await wait_until(
        lambda: history.ended_count >= need, timeout=30, describe=f"{need} calls ended ({what})", pool=pool
    )


# --------------------------------------------------------------------------- process faults
def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _own_child(pid: int | None) -> bool:
    """True if ``pid`` is a live worker of this process: its child, or its grandchild through
    a zygote (``start_method="zygote"``). Never signal anything else (the bridge layer's fake
    pids are not processes at all)."""
    if pid is None:
        return False
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    parent = int(fields[1])
    if parent == os.getpid():
        return True
    grandparent = _stat(parent)
    return grandparent is not None and int(grandparent[1]) == os.getpid()


def _serving(pool: Pool) -> list[Any]:
    """Workers that completed their handshake and take calls, by id (deterministic order)."""
    return sorted((w for w in pool.workers() if w.state.accepts_calls), key=lambda w: w.id)


def _signal(pid: int | None, signum: int) -> bool:
    if not _own_child(pid):
        return False
    assert pid is not None
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _require_processes(pool: Pool, scenario: str) -> None:
    if not any(_own_child(w.pid) for w in pool.workers()):
        raise TypeError(
            f"chaos scenario {scenario!r} needs a pool of real worker processes (subprocess layer)"
        )


async def _kill_at_once(history: History, pool: Pool, rng: random.Random, share: float) -> list[str]:
    serving = _serving(pool)
    count = max(1, math.ceil(len(serving) * share))
    victims = rng.sample(serving, min(count, len(serving)))
    killed = [w.id for w in victims if _signal(w.pid, signal.SIGKILL)]
    history.fault(f"SIGKILL {len(killed)}/{len(serving)} workers at once: {', '.join(killed)}")
    return killed


async def _wait_gone(pool: Pool, worker_ids: Collection[str], what: str) -> None:
    ids = set(worker_ids)
    await wait_until(lambda: not ids & {w.id for w in pool.workers()}, timeout=15, describe=what, pool=pool)


# ------------------------------------------------------------------------------- scenarios
async def kill_majority(pool: Pool, *, seed: int, calls: int = 300, share: float = 0.6) -> History:
    """SIGKILL ``share`` (60%) of the workers at once, at a random point under load.

    Faults cause CRASHED only: the call each killed worker was running fails, the calls
    pipelined behind it are requeued, everything else succeeds; the pool refills.
    """
    _require_processes(pool, "kill_majority")
    rng = random.Random(seed)
    history = History("kill_majority", seed, allowed_kinds={FailureKind.CRASHED})
    plan = _plan(rng, history.scenario, calls, sleep_share=0.4, max_sleep=0.02)
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=4 * pool.config.min_workers))
            await _progress(history, pool, rng.uniform(0.15, 0.35), calls, "before the kill")
            killed = await _kill_at_once(history, pool, rng, share)
            await _wait_gone(pool, killed, "the killed workers to be reaped")
            history.faults_done()
        await history.wait_recovered(pool)
    history.expect(bool(killed), "no worker was killed")
    return history


async def cascading_failure(pool: Pool, *, seed: int, calls: int = 300, kills: int = 6) -> History:
    """Kill workers one after another, each as soon as the previous one is gone: faster than
    the pool restarts them (replacements are still starting when the next kill lands).

    Only workers that completed their handshake are killed (a worker killed while starting
    is a startup failure, which a pool rightly gives up on after ``max_startup_failures``).
    """
    _require_processes(pool, "cascading_failure")
    rng = random.Random(seed)
    # Six deaths in a row may open the pool's circuit breaker: failing fast is then correct.
    history = History(
        "cascading_failure", seed, allowed_kinds={FailureKind.CRASHED, FailureKind.CIRCUIT_OPEN}
    )
    plan = _plan(rng, history.scenario, calls, sleep_share=0.5, max_sleep=0.02)
    killed: list[str] = []
    overlapped = 0
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=4 * pool.config.min_workers))
            await _progress(history, pool, 0.1, calls, "before the first kill")
            for _ in range(kills):
                await wait_until(
                    lambda: any(w.id not in killed for w in _serving(pool)),
                    timeout=15,
                    describe="a serving worker to kill",
                    pool=pool,
                )
                # prefer a busy worker: a kill that hits a running call is the harder case
                candidates = [w for w in _serving(pool) if w.id not in killed]
                busy = [w for w in candidates if w.state is WorkerState.BUSY]
                victim = rng.choice(busy or candidates)
                if _signal(victim.pid, signal.SIGKILL):
                    killed.append(victim.id)
                    await _wait_gone(pool, [victim.id], f"killed worker {victim.id} to be reaped")
                    starting = sum(
                        1 for w in pool.workers() if w.state in (WorkerState.SPAWNING, WorkerState.STARTING)
                    )
                    overlapped += starting > 0
            history.fault(f"SIGKILL {len(killed)} workers in a row: {', '.join(killed)}")
            history.faults_done()
        await history.wait_recovered(pool)
    history.expect(len(killed) == kills, f"only {len(killed)} of {kills} kills landed")
    history.expect(overlapped > 0, "no kill landed while a replacement was still starting")
    return history


async def thundering_herd(pool: Pool, *, seed: int, calls: int = 300) -> History:
    """``calls`` callers wait on one ``anyio.Event`` and are released at once (with a queue
    smaller than the herd, admission waits for room). No fault: nothing may fail."""
    rng = random.Random(seed)
    history = History("thundering_herd", seed)
    plan = _plan(rng, history.scenario, calls, sleep_share=0.2, max_sleep=0.01)
    gate = anyio.Event()
    waiting = 0

    def arrived() -> None:
        nonlocal waiting
        waiting += 1

    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=calls, gate=gate, arrived=arrived))
            await wait_until(lambda: waiting == calls, timeout=10, describe=f"{calls} callers at the gate")
            history.fault(f"released {calls} callers at once (max_queue={pool.config.max_queue})")
            gate.set()
        history.faults_done()
        await history.wait_recovered(pool)
    return history


async def slow_worker(
    pool: Pool, *, seed: int, calls: int = 240, latency: float = 0.03, jitter: float = 0.01
) -> History:
    """One busy worker is made slow (``FaultInjector.slow``: every chunk to and from it is held
    ``latency`` +- ``jitter`` seconds, seeded) while the others serve a third of the load.
    Nothing may fail: the slow worker's calls finish late, the pool keeps serving meanwhile."""
    rng = random.Random(seed)
    history = History("slow_worker", seed)
    plan = _plan(rng, history.scenario, calls, sleep_share=0.3, max_sleep=0.01)
    faults = FaultInjector(pool)
    served_while_slow = 0
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=4 * pool.config.min_workers))
            await _progress(history, pool, 0.1, calls, "before the slowdown")
            victim = await _pick_busy(pool, rng)
            async with faults.slow(victim, latency=latency, jitter=jitter, seed=seed) as handle:
                history.fault(f"slow worker {victim.id}: {latency:g}s +- {jitter:g}s per chunk")
                before = history.ended_count
                # ... and until the slow worker's own traffic went through the tap: on a loaded
                # machine the others can serve a third of the load before it sends a byte
                await wait_until(
                    lambda: history.ended_count >= before + calls // 3 and bool(handle.records),
                    timeout=20,
                    describe="a third of the load served while one worker is slow, its traffic held",
                    pool=pool,
                )
                served_while_slow = history.ended_count - before
            history.fault(f"slow worker {victim.id} held {len(handle.records)} chunks")
            history.faults_done()
        await history.wait_recovered(pool)
    history.expect(served_while_slow >= calls // 3, f"only {served_while_slow} calls served while slow")
    history.expect(bool(handle.records), "the slow worker's stream saw no traffic while slow")
    return history


async def memory_leak(
    pool: Pool, *, seed: int, calls: int = 240, grow_mb: int = 16, grows: int = 3
) -> History:
    """Workers grow their RSS (``FaultInjector.grow_memory``: memory really allocated, touched
    and kept, checked in /proc) between ordinary calls; the pool keeps serving, nothing fails."""
    rng = random.Random(seed)
    history = History("memory_leak", seed)
    plan = _plan(rng, history.scenario, calls, sleep_share=0.3, max_sleep=0.01)
    faults = FaultInjector(pool)
    grown = 0
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=3 * pool.config.min_workers))
            for i in range(grows):
                await _progress(history, pool, (i + 1) / (grows + 2), calls, f"before growth {i + 1}")
                victim = rng.choice(_serving(pool))
                try:
                    rss = await faults.grow_memory(grow_mb, victim)
                except FaultError as exc:
                    history.expect(False, f"grow_memory on worker {victim.id} failed: {exc}")
                else:
                    grown += 1
                    history.fault(f"worker {victim.id} grew its RSS by {rss / 2**20:.0f} MiB")
            history.faults_done()
        await history.wait_recovered(pool)
    history.expect(grown == grows, f"only {grown} of {grows} memory growths landed")
    return history


async def _pick_busy(pool: Pool, rng: random.Random) -> Any:
    await wait_until(
        lambda: any(w.state is WorkerState.BUSY for w in pool.workers()), describe="a busy worker", pool=pool
    )
    return rng.choice([w for w in _serving(pool) if w.state is WorkerState.BUSY])


async def _corrupt_one(history: History, pool: Pool, faults: FaultInjector, rng: random.Random) -> None:
    """Flip one bit of the next frame from a worker (a busy one if any); wait until it is replaced.

    If the victim dies of something else first, the injector says so (FaultError: nothing was
    injected) and another worker is picked, up to three times.
    """
    for _ in range(3):
        await wait_until(lambda: bool(_serving(pool)), describe="a serving worker", pool=pool)
        busy = [w for w in _serving(pool) if w.state is WorkerState.BUSY]
        victim = rng.choice(busy or _serving(pool))
        try:
            await _corrupt_frame_from(history, pool, faults, rng, victim)
        except FaultError as exc:
            if not victim.state.is_terminal:
                raise
            history.fault(f"worker {victim.id} exited before a frame from it was corrupted: {exc}")
            continue
        await _wait_gone(pool, [victim.id], f"worker {victim.id} to be replaced after the corrupt frame")
        return
    history.expect(False, "three corruption victims in a row exited before a frame from them was corrupted")


async def _corrupt_frame_from(
    history: History, pool: Pool, faults: FaultInjector, rng: random.Random, victim: Any
) -> None:
    """Corrupt the next frame from ``victim``.

    The scenario's own load may have finished by now, so this step brings its own traffic:
    recorded echo calls with unique tokens keep coming until a frame from the victim has
    really been corrupted (a fault that waits for traffic that never comes injects nothing).
    """
    async with faults.corrupt(victim, mode="flip", frames=1, seed=rng.getrandbits(32)) as handle:
        history.fault(f"corrupt the next frame from worker {victim.id}")
        with anyio.fail_after(scaled(30)):  # the bound: traffic reaches every worker well before
            async with anyio.create_task_group() as tg:
                n = 0
                while not (handle.records or victim.state.is_terminal):
                    n += 1
                    token = f"{history.scenario}:corrupt-traffic:{rng.getrandbits(32):08x}:{n}"
                    tg.start_soon(lambda t=token: history.call(pool, _ECHO, t, expect=t))  # type: ignore[misc]
                    with anyio.move_on_after(0.05):
                        await wait_until(
                            lambda: bool(handle.records) or victim.state.is_terminal,
                            timeout=15,
                            describe=f"a frame from worker {victim.id} to be corrupted",
                            pool=pool,
                        )


async def corrupt_messages(pool: Pool, *, seed: int, calls: int = 240, corruptions: int = 3) -> History:
    """Corrupt one frame from a busy worker (``FaultInjector.corrupt``, one flipped bit on the
    wire), ``corruptions`` times under load.

    Each corrupted frame fails its checksum: the call running on that worker fails with
    ProtocolError (kind PROTOCOL), the worker is killed and replaced, calls pipelined behind
    it are requeued; nothing else fails.
    """
    rng = random.Random(seed)
    history = History("corrupt_messages", seed, allowed_kinds={FailureKind.PROTOCOL})
    plan = _plan(rng, history.scenario, calls, sleep_share=0.5, max_sleep=0.005)
    faults = FaultInjector(pool)
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _drive(history, pool, plan, concurrency=4 * pool.config.min_workers))
            for i in range(corruptions):
                await _progress(
                    history, pool, (i + 1) / (corruptions + 2), calls, f"before corruption {i + 1}"
                )
                await _corrupt_one(history, pool, faults, rng)
            history.faults_done()
        await history.wait_recovered(pool)
    # Each corrupted frame fails one attempt with PROTOCOL: the caller sees it, or (an
    # idempotent call) it is retried on another worker.
    protocol_failures = sum(
        1 for r in history.records if isinstance(r.outcome, Failed) and r.outcome.kind is FailureKind.PROTOCOL
    ) + sum(trail.retried.count(FailureKind.PROTOCOL) for trail in history.trails.values())
    history.expect(
        protocol_failures == corruptions,
        f"{corruptions} corrupted frames but {protocol_failures} ProtocolError(s) or protocol retries "
        "(expected one per frame)",
    )
    return history


async def combined(pool: Pool, *, seed: int, calls: int = 300) -> History:
    """Everything at once on real processes: a herd released at once, 40% of the workers
    SIGKILLed together, two hanging calls hitting their deadline (TIMEOUT: the worker running
    one is killed), a worker stopped (SIGSTOP) while the others serve, a worker growing its
    memory, a corrupted frame, then a cascade of two more kills."""
    _require_processes(pool, "combined")
    rng = random.Random(seed)
    history = History(
        "combined", seed, allowed_kinds={FailureKind.CRASHED, FailureKind.TIMEOUT, FailureKind.PROTOCOL}
    )
    plan = _plan(rng, history.scenario, calls, sleep_share=0.4, max_sleep=0.01)
    faults = FaultInjector(pool)
    gate = anyio.Event()
    with history.record(pool):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: _drive(history, pool, plan, concurrency=4 * pool.config.min_workers, gate=gate)
            )
            gate.set()
            history.fault(f"released {calls} callers at once")
            await _progress(history, pool, 0.1, calls, "before the kills")
            killed = await _kill_at_once(history, pool, rng, 0.4)
            await _wait_gone(pool, killed, "the killed workers to be reaped")
            for _ in range(2):
                tg.start_soon(lambda: history.call(pool, targets.hang, idempotent=False, timeout=0.3))
            history.fault("two hanging calls with a 0.3 s deadline")
            await _progress(history, pool, 0.3, calls, "before the stall")
            await wait_until(lambda: bool(_serving(pool)), describe="a serving worker", pool=pool)
            stalled = rng.choice(_serving(pool))
            async with faults.partition(stalled):
                history.fault(f"SIGSTOP worker {stalled.id}")
                before = history.ended_count
                await wait_until(
                    lambda: history.ended_count >= before + calls // 10,
                    timeout=20,
                    describe="the others to serve while one is stopped",
                    pool=pool,
                )
            # Another fault (a hanging call's deadline) may kill the chosen worker first: try another.
            errors: list[str] = []
            for _ in range(3):
                await wait_until(lambda: bool(_serving(pool)), describe="a serving worker", pool=pool)
                try:
                    rss = await faults.grow_memory(16, rng.choice(_serving(pool)))
                except FaultError as exc:
                    errors.append(str(exc))
                else:
                    history.fault(f"a worker grew its RSS by {rss / 2**20:.0f} MiB")
                    break
            else:
                history.expect(False, f"grow_memory failed three times: {errors}")
            await _corrupt_one(history, pool, faults, rng)
            await _progress(history, pool, 0.5, calls, "before the cascade")
            cascade: list[str] = []
            for _ in range(2):
                await wait_until(
                    lambda: any(w.id not in cascade for w in _serving(pool)),
                    describe="a worker to kill",
                    pool=pool,
                )
                victim = rng.choice([w for w in _serving(pool) if w.id not in cascade])
                if _signal(victim.pid, signal.SIGKILL):
                    cascade.append(victim.id)
                    await _wait_gone(pool, [victim.id], f"worker {victim.id} to be reaped")
            history.fault(f"SIGKILL in a row: {', '.join(cascade)}")
            history.faults_done()
        await history.wait_recovered(pool)
    # A hanging call ends by its deadline (TIMEOUT), or by a kill of its worker that lands first.
    hung = [r for r in history.records if r.target.endswith(":hang")]
    history.expect(
        len(hung) == 2
        and all(
            isinstance(r.outcome, Failed) and r.outcome.kind in (FailureKind.TIMEOUT, FailureKind.CRASHED)
            for r in hung
        ),
        f"the two hanging calls should fail by timeout (or a kill): {[r.outcome for r in hung]}",
    )
    return history


# --------------------------------------------------------------------------------- running
ScenarioFn = Callable[..., Awaitable[History]]


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario with the layer and pool configuration it is meant to run on."""

    name: str
    run: ScenarioFn
    layer: Layer
    config: Mapping[str, Any]


_SMALL = {"min_workers": 4, "pipeline_depth": 2, "kill_grace": 0.5}

SCENARIOS: Final[Mapping[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario("kill_majority", kill_majority, Layer.SUBPROCESS, {**_SMALL, "min_workers": 5}),
        Scenario("cascading_failure", cascading_failure, Layer.SUBPROCESS, _SMALL),
        Scenario("thundering_herd", thundering_herd, Layer.SUBPROCESS, {**_SMALL, "max_queue": 32}),
        Scenario("slow_worker", slow_worker, Layer.SUBPROCESS, {**_SMALL, "min_workers": 3}),
        Scenario("memory_leak", memory_leak, Layer.SUBPROCESS, {**_SMALL, "min_workers": 3}),
        Scenario("corrupt_messages", corrupt_messages, Layer.SUBPROCESS, _SMALL),
        Scenario("combined", combined, Layer.SUBPROCESS, {**_SMALL, "min_workers": 5}),
    )
}


async def run_scenario(
    scenario: Scenario | str,
    *,
    seed: int,
    tag: str,
    layer: Layer | str | None = None,
    timeout: float = 60.0,
    **overrides: Any,
) -> History:
    """Build the scenario's pool (on its layer, or ``layer``; worker processes tagged ``tag``),
    run the scenario, close the pool, then look for processes still carrying ``tag``.
    Returns the history for :func:`assert_history_ok`. ``overrides``: PoolConfig fields."""
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    pool = pool_for(layer or scenario.layer, tag=tag, **{**scenario.config, **overrides})
    with anyio.fail_after(scaled(timeout)):
        async with pool:
            history = await scenario.run(pool, seed=seed)
    history.check_orphans(tag)
    return history
