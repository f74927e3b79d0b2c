"""Recovery: the one table from failure kind to what the pool does about it, and the
mechanisms it names (retry backoff, circuit breakers, the restart budget).

Everything here is pure: no I/O, no awaits, time passed in by the caller (DESIGN.md rules 2
and 3), so each rule is unit-tested by feeding it states and reading its answers.

How the pool uses it, in order, when a call fails (``Pool._result``):

1. ``RECOVERY[error.kind]`` says whether the kind may be retried at all, whether the worker
   is replaced, and whether the failure counts against the circuit breakers;
2. :func:`retry_delay` decides this call's retry: the kind allows it, the call is safe to
   run again (it never reached a worker, or the caller said ``idempotent=True``), attempts
   remain, and the backoff ends before the call's deadline;
3. the breakers (:class:`CircuitBreaker`) of the pool and of the call's target record the
   outcome; while open they fail new calls fast with ``CircuitOpen``.

Worker replacement is paced by :func:`restart_delay` and bounded by :class:`RestartBudget`:
past it the pool fails (``PoolFailed``) instead of crash-looping. docs/recovery.md shows
the table; a unit test checks that the doc and this module agree.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType

from ._config import BreakerPolicy, RestartPolicy, RetryPolicy
from ._errors import FailureKind, PoolError

__all__ = [
    "RECOVERY",
    "Blame",
    "BreakerState",
    "CircuitBreaker",
    "Recovery",
    "RestartBudget",
    "RetryRule",
    "restart_delay",
    "retry_delay",
]


class RetryRule(enum.Enum):
    NEVER = "never"  # retrying cannot help (or the deadline is spent)
    IF_SAFE = "if_safe"  # if the call never reached a worker, or the caller said idempotent


class Blame(enum.Enum):
    CALL = "call"  # this call's arguments or code: the worker is fine
    WORKER = "worker"  # the worker process broke: it is replaced
    POOL = "pool"  # the pool's state (closed, full, breaker open): the call never left


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    retry: RetryRule
    blame: Blame
    replace_worker: bool  # the worker is gone or is killed, and a replacement started
    trips_breaker: bool  # counts as a failure for the pool's and the target's breakers
    why: str


_R = Recovery
_NEVER, _SAFE = RetryRule.NEVER, RetryRule.IF_SAFE
_K = FailureKind

#: THE recovery table. Every FailureKind has exactly one row (a unit test checks it).
RECOVERY: Mapping[FailureKind, Recovery] = MappingProxyType(
    {
        _K.CRASHED: _R(_SAFE, Blame.WORKER, True, True, "the process died; another worker may succeed"),
        _K.UNRESPONSIVE: _R(_SAFE, Blame.WORKER, True, True, "heartbeats stopped; the worker is killed"),
        _K.PROTOCOL: _R(_SAFE, Blame.WORKER, True, True, "corrupt stream; the worker is killed"),
        _K.RESOURCE_EXHAUSTED: _R(_SAFE, Blame.WORKER, True, True, "over its memory limit; killed"),
        _K.TIMEOUT: _R(
            _NEVER, Blame.CALL, True, False, "the deadline is spent; a running call's worker is killed"
        ),
        _K.QUEUE_TIMEOUT: _R(
            _NEVER, Blame.POOL, False, False, "the deadline passed before a worker was free"
        ),
        _K.APPLICATION: _R(_NEVER, Blame.CALL, False, False, "the target raised; it would raise again"),
        _K.SERIALIZATION: _R(_NEVER, Blame.CALL, False, False, "the same bytes would fail the same way"),
        _K.PAYLOAD_TOO_LARGE: _R(_NEVER, Blame.CALL, False, False, "the same payload is as large next time"),
        _K.STARTUP: _R(_NEVER, Blame.WORKER, True, True, "no call is lost; restarted with backoff"),
        _K.QUEUE_FULL: _R(_NEVER, Blame.POOL, False, False, "backpressure: the caller decides"),
        _K.POOL_CLOSED: _R(_NEVER, Blame.POOL, False, False, "the pool is closing"),
        _K.POOL_FAILED: _R(_NEVER, Blame.POOL, False, False, "the restart budget is spent"),
        _K.CIRCUIT_OPEN: _R(_NEVER, Blame.POOL, False, False, "failing fast while the breaker is open"),
        _K.SESSION_UNAVAILABLE: _R(_NEVER, Blame.POOL, False, False, "strict_fail_fast asked not to wait"),
        _K.SESSION_LOST: _R(_NEVER, Blame.WORKER, False, False, "the state is gone; the caller must know"),
        _K.CANCELLED: _R(
            _NEVER, Blame.CALL, True, False, "the caller gave up; a running call's worker is killed"
        ),
    }
)


def retry_delay(
    error: PoolError,
    *,
    attempt: int,
    idempotent: bool,
    policy: RetryPolicy,
    now: float,
    deadline: float | None,
    rng: random.Random,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` of a call that failed with ``error``,
    or None if it must not be retried. ``attempt`` counts from 1 (the first try)."""
    rule = RECOVERY[error.kind].retry
    if rule is RetryRule.NEVER or attempt >= policy.max_attempts:
        return None
    phase = getattr(error, "phase", None)
    may_have_run = phase is None or phase.may_have_run
    if may_have_run and not idempotent:
        return None
    cap = min(policy.backoff_max, policy.backoff_initial * policy.backoff_multiplier ** (attempt - 1))
    delay = rng.uniform(0.0, cap) if policy.jitter == "full" else cap
    if deadline is not None and now + delay >= deadline:
        return None
    return delay


def restart_delay(consecutive: int, policy: RestartPolicy, rng: random.Random) -> float:
    """Backoff before replacing a worker, after ``consecutive`` failures with no call served
    in between: the first replacement is immediate, then full jitter over a doubling cap."""
    if consecutive <= 1:
        return 0.0
    cap = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (consecutive - 2))
    return rng.uniform(cap / 2, cap)


class RestartBudget:
    """At most ``max_restarts`` worker replacements within any ``window`` seconds."""

    __slots__ = ("_policy", "_times")

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._times: collections.deque[float] = collections.deque()

    def spend(self, now: float) -> bool:
        """Record a replacement at ``now``; False if that goes over the budget."""
        times = self._times
        while times and times[0] <= now - self._policy.window:
            times.popleft()
        times.append(now)
        return len(times) <= self._policy.max_restarts

    @property
    def used(self) -> int:
        return len(self._times)


class BreakerState(enum.Enum):
    CLOSED = "closed"  # calls flow; failures in a row are counted
    OPEN = "open"  # calls fail fast until the cool-down ends
    HALF_OPEN = "half_open"  # one trial call at a time: success closes, failure re-opens


class CircuitBreaker:
    """A circuit breaker over consecutive failures, on an injected clock.

    ``allow(now)`` asks whether a call may go ahead (in HALF_OPEN it hands out one trial at
    a time: the caller must end it with :meth:`success`, :meth:`failure` or :meth:`release`).
    ``on_change(breaker, old, new)`` is called on every state change (the pool emits events).
    """

    __slots__ = ("_policy", "failures", "on_change", "open_until", "reset_timeout", "scope", "state", "trial")

    def __init__(
        self,
        scope: str,
        policy: BreakerPolicy,
        on_change: Callable[[CircuitBreaker, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.scope = scope
        self._policy = policy
        self.state = BreakerState.CLOSED
        self.failures = 0  # in a row
        self.open_until = 0.0
        self.reset_timeout = policy.reset_timeout
        self.trial = False  # a half-open trial call is out
        self.on_change = on_change

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old is not new and self.on_change is not None:
            self.on_change(self, old, new)

    def allow(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return False
            self._move(BreakerState.HALF_OPEN)
        if self.trial:
            return False
        self.trial = True
        return True

    def retry_after(self, now: float) -> float:
        return max(0.0, self.open_until - now)

    def success(self) -> None:
        """A call ended without the kind of failure this breaker counts."""
        self.failures = 0
        self.trial = False
        if self.state is not BreakerState.CLOSED:
            self.reset_timeout = self._policy.reset_timeout
            self._move(BreakerState.CLOSED)

    def failure(self, now: float) -> None:
        self.failures += 1
        self.trial = False
        if self.state is BreakerState.HALF_OPEN:
            self.reset_timeout = min(self.reset_timeout * 2, self._policy.max_reset_timeout)
            self._open(now)
        elif self.state is BreakerState.CLOSED and self.failures >= self._policy.failure_threshold:
            self._open(now)

    def release(self) -> None:
        """A trial call ended without a verdict (cancelled): let another trial go."""
        self.trial = False

    def _open(self, now: float) -> None:
        self.open_until = now + self.reset_timeout
        self._move(BreakerState.OPEN)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.scope} {self.state.value} failures={self.failures}>"
