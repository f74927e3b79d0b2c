"""The recovery rules, as pure functions and objects (``poolkit._recovery``): the table from
failure kind to what the pool does, retry backoff, restart pacing and budget, and the circuit
breaker, fed states and times by hand. No pool and no event loop: every answer is checked
against the rule as documented (docs in ``_config`` and the module docstring)."""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit import (
    RECOVERY,
    Blame,
    BreakerPolicy,
    BreakerState,
    CallError,
    CallTimeout,
    CircuitOpen,
    FailureKind,
    PayloadTooLarge,
    Phase,
    PoolClosed,
    PoolError,
    PoolFailed,
    ProtocolError,
    QueueFull,
    QueueTimeout,
    Recovery,
    RemoteError,
    RestartPolicy,
    RetryPolicy,
    RetryRule,
    SerializationError,
    SessionLost,
    SessionUnavailable,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerStartupError,
    WorkerUnresponsive,
)
from poolkit._errors import CallCancelled, crash_cause
from poolkit._recovery import CircuitBreaker, RestartBudget, restart_delay, retry_delay

K = FailureKind
SAFE, NEVER = RetryRule.IF_SAFE, RetryRule.NEVER

#: The table as the API documents it: (retry, blame, replace_worker, trips_breaker) per kind.
EXPECTED: dict[FailureKind, tuple[RetryRule, Blame, bool, bool]] = {
    K.CRASHED: (SAFE, Blame.WORKER, True, True),
    K.UNRESPONSIVE: (SAFE, Blame.WORKER, True, True),
    K.PROTOCOL: (SAFE, Blame.WORKER, True, True),
    K.RESOURCE_EXHAUSTED: (SAFE, Blame.WORKER, True, True),
    K.TIMEOUT: (NEVER, Blame.CALL, True, False),
    K.QUEUE_TIMEOUT: (NEVER, Blame.POOL, False, False),
    K.APPLICATION: (NEVER, Blame.CALL, False, False),
    K.SERIALIZATION: (NEVER, Blame.CALL, False, False),
    K.PAYLOAD_TOO_LARGE: (NEVER, Blame.CALL, False, False),
    K.STARTUP: (NEVER, Blame.WORKER, True, True),
    K.QUEUE_FULL: (NEVER, Blame.POOL, False, False),
    K.POOL_CLOSED: (NEVER, Blame.POOL, False, False),
    K.POOL_FAILED: (NEVER, Blame.POOL, False, False),
    K.CIRCUIT_OPEN: (NEVER, Blame.POOL, False, False),
    K.SESSION_UNAVAILABLE: (NEVER, Blame.POOL, False, False),
    K.SESSION_LOST: (NEVER, Blame.WORKER, False, False),
    K.CANCELLED: (NEVER, Blame.CALL, True, False),
}

IF_SAFE_KINDS = [k for k, row in EXPECTED.items() if row[0] is SAFE]
NEVER_KINDS = [k for k, row in EXPECTED.items() if row[0] is NEVER]

_KW: dict[str, Any] = {"phase": Phase.RUNNING, "worker_id": "w1", "pid": 7, "target": "m:f"}

#: One real error of each kind, built as the pool builds it.
ERRORS: dict[FailureKind, Callable[[Phase], PoolError]] = {
    K.CRASHED: lambda p: WorkerCrashed(exit_code=None, signal=9, **{**_KW, "phase": p}),
    K.UNRESPONSIVE: lambda p: WorkerUnresponsive(silent_for=3.0, interval=1.0, **{**_KW, "phase": p}),
    K.PROTOCOL: lambda p: ProtocolError("bad frame", **{**_KW, "phase": p}),
    K.RESOURCE_EXHAUSTED: lambda p: WorkerMemoryExceeded(rss=2, limit=1, **{**_KW, "phase": p}),
    K.TIMEOUT: lambda p: CallTimeout(1.0, **{**_KW, "phase": p}),
    K.QUEUE_TIMEOUT: lambda p: QueueTimeout(1.0, phase=p),
    K.APPLICATION: lambda p: RemoteError("builtins.ValueError", "x", "", **{**_KW, "phase": p}),
    K.SERIALIZATION: lambda p: SerializationError("x", side="worker", **{**_KW, "phase": p}),
    K.PAYLOAD_TOO_LARGE: lambda p: PayloadTooLarge(2048, 1024, **{**_KW, "phase": p}),
    K.STARTUP: lambda p: WorkerStartupError("w1", pid=7, reason="boom"),
    K.QUEUE_FULL: lambda p: QueueFull("pool", 1),
    K.POOL_CLOSED: lambda p: PoolClosed("pool", phase=p),
    K.POOL_FAILED: lambda p: PoolFailed("pool", 3, None),
    K.CIRCUIT_OPEN: lambda p: CircuitOpen("m:f", retry_after=1.0, failures=5, phase=p),
    K.SESSION_UNAVAILABLE: lambda p: SessionUnavailable("busy", key="k", reason="busy", phase=p),
    K.SESSION_LOST: lambda p: SessionLost("gone", key="k", reason="crashed", phase=p),
    K.CANCELLED: lambda p: CallCancelled("cancelled", phase=p),
}

NO_JITTER = RetryPolicy(max_attempts=10, backoff_initial=0.1, backoff_max=1.0, jitter="none")


def delay_for(
    kind: FailureKind,
    phase: Phase,
    *,
    idempotent: bool = False,
    attempt: int = 1,
    policy: RetryPolicy = NO_JITTER,
    now: float = 0.0,
    deadline: float | None = None,
    seed: int = 0,
) -> float | None:
    return retry_delay(
        ERRORS[kind](phase),
        attempt=attempt,
        idempotent=idempotent,
        policy=policy,
        now=now,
        deadline=deadline,
        rng=random.Random(seed),
    )


# ---- the table -----------------------------------------------------------------------------------
def test_recovery_has_exactly_one_row_per_failure_kind() -> None:
    """RECOVERY maps every FailureKind, and nothing else, to one Recovery; it is read-only."""
    assert set(RECOVERY) == set(FailureKind)
    assert len(RECOVERY) == len(FailureKind)
    assert all(isinstance(row, Recovery) for row in RECOVERY.values())
    assert all(row.why for row in RECOVERY.values())
    with pytest.raises(TypeError):
        RECOVERY[K.CRASHED] = RECOVERY[K.TIMEOUT]  # type: ignore[index]


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda k: k.value)
def test_recovery_row_matches_the_documented_rule(kind: FailureKind) -> None:
    """Each row says what the API documents: retry rule, blame, worker replaced, breaker tripped."""
    row = RECOVERY[kind]
    assert (row.retry, row.blame, row.replace_worker, row.trips_breaker) == EXPECTED[kind]


def test_if_safe_kinds_are_exactly_the_worker_faults() -> None:
    """Only a worker breaking under the call (crash, hang, protocol, memory) may be retried."""
    assert {k for k, row in RECOVERY.items() if row.retry is SAFE} == {
        K.CRASHED,
        K.UNRESPONSIVE,
        K.PROTOCOL,
        K.RESOURCE_EXHAUSTED,
    }


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda k: k.value)
def test_each_kind_has_its_error_class(kind: FailureKind) -> None:
    """Every kind is raised as an error whose ``kind`` is that kind (the table's key)."""
    error = ERRORS[kind](Phase.QUEUED)
    assert error.kind is kind
    assert isinstance(error, PoolError)


# ---- retry_delay ---------------------------------------------------------------------------------
@pytest.mark.parametrize("idempotent", [False, True])
@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
@pytest.mark.parametrize("kind", NEVER_KINDS, ids=lambda k: k.value)
def test_never_kinds_are_never_retried(kind: FailureKind, phase: Phase, idempotent: bool) -> None:
    """A NEVER kind is not retried, whatever its phase and even if the caller said idempotent."""
    assert delay_for(kind, phase, idempotent=idempotent) is None


@pytest.mark.parametrize("phase", [Phase.QUEUED, Phase.SENT], ids=lambda p: p.value)
@pytest.mark.parametrize("kind", IF_SAFE_KINDS, ids=lambda k: k.value)
def test_if_safe_kind_that_never_ran_is_retried_without_idempotent(kind: FailureKind, phase: Phase) -> None:
    """A call that certainly never started (QUEUED, SENT) is retried, idempotent or not."""
    assert delay_for(kind, phase, idempotent=False) == pytest.approx(0.1)
    assert delay_for(kind, phase, idempotent=True) == pytest.approx(0.1)


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.RETURNING], ids=lambda p: p.value)
@pytest.mark.parametrize("kind", IF_SAFE_KINDS, ids=lambda k: k.value)
def test_if_safe_kind_that_may_have_run_is_retried_only_if_idempotent(
    kind: FailureKind, phase: Phase
) -> None:
    """A call that may have run (RUNNING, RETURNING) is retried only when idempotent=True."""
    assert delay_for(kind, phase, idempotent=False) is None
    assert delay_for(kind, phase, idempotent=True) == pytest.approx(0.1)


class _PhaselessCrash(PoolError):
    """A CRASHED error without a ``phase`` attribute."""

    kind = K.CRASHED


def test_error_without_a_phase_counts_as_may_have_run() -> None:
    """An error carrying no phase is treated as possibly run: retried only if idempotent."""
    error = _PhaselessCrash("no phase")
    common: dict[str, Any] = {"attempt": 1, "policy": NO_JITTER, "now": 0.0, "deadline": None}
    assert retry_delay(error, idempotent=False, rng=random.Random(0), **common) is None
    assert retry_delay(error, idempotent=True, rng=random.Random(0), **common) == pytest.approx(0.1)


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_attempt_limit(max_attempts: int) -> None:
    """Attempt n (counting from 1) may be followed by another only while n < max_attempts."""
    policy = RetryPolicy(max_attempts=max_attempts, backoff_initial=0.1, jitter="none")
    for attempt in range(1, max_attempts + 2):
        delay = delay_for(K.CRASHED, Phase.SENT, attempt=attempt, policy=policy)
        assert (delay is not None) == (attempt < max_attempts), attempt


def test_no_retry_whose_backoff_would_reach_the_deadline() -> None:
    """A retry is refused when now + delay reaches the call's deadline, allowed when it ends before."""

    def at(deadline: float | None) -> float | None:
        return delay_for(K.CRASHED, Phase.SENT, now=100.0, deadline=deadline)

    assert at(None) == pytest.approx(0.1)
    assert at(100.2) == pytest.approx(0.1)
    assert at(100.1) is None
    assert at(100.05) is None
    assert at(99.0) is None


def test_jitter_none_is_the_exact_capped_exponential() -> None:
    """Without jitter, attempt n waits min(backoff_max, initial * multiplier ** (n - 1))."""
    policy = RetryPolicy(
        max_attempts=10, backoff_initial=0.1, backoff_max=1.0, backoff_multiplier=3.0, jitter="none"
    )
    delays = [delay_for(K.CRASHED, Phase.QUEUED, attempt=n, policy=policy) for n in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])


def test_backoff_multiplier_one_is_constant() -> None:
    """backoff_multiplier=1 gives the same delay for every attempt."""
    policy = RetryPolicy(max_attempts=6, backoff_initial=0.25, backoff_multiplier=1.0, jitter="none")
    assert [delay_for(K.PROTOCOL, Phase.SENT, attempt=n, policy=policy) for n in range(1, 6)] == [0.25] * 5


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 6])
def test_full_jitter_is_uniform_between_zero_and_the_cap(attempt: int) -> None:
    """With full jitter every delay lies in [0, cap] for the attempt, and over many seeds the
    delays cover that range (not clustered at one end)."""
    policy = RetryPolicy(max_attempts=10, backoff_initial=0.1, backoff_max=1.0, jitter="full")
    cap = min(1.0, 0.1 * 2.0 ** (attempt - 1))
    delays = [delay_for(K.CRASHED, Phase.SENT, attempt=attempt, policy=policy, seed=s) for s in range(500)]
    values = [d for d in delays if d is not None]
    assert len(values) == 500
    assert all(0.0 <= d <= cap for d in values)
    assert min(values) < 0.05 * cap
    assert max(values) > 0.95 * cap
    mean = sum(values) / len(values)
    assert 0.4 * cap < mean < 0.6 * cap


def test_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """The jitter comes from the rng passed in: the same seed gives the same delay."""
    policy = RetryPolicy(backoff_initial=0.1, jitter="full")
    first = delay_for(K.CRASHED, Phase.SENT, policy=policy, seed=42)
    assert first == delay_for(K.CRASHED, Phase.SENT, policy=policy, seed=42)
    assert first is not None and 0 <= first <= 0.1


def test_jittered_delay_that_would_reach_the_deadline_is_refused() -> None:
    """The deadline check applies to the drawn (jittered) delay."""
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=1.0, jitter="full")
    for seed in range(50):
        drawn = delay_for(K.CRASHED, Phase.SENT, policy=policy, seed=seed)
        assert drawn is not None
        limited = delay_for(K.CRASHED, Phase.SENT, policy=policy, seed=seed, now=10.0, deadline=10.5)
        assert limited == (drawn if drawn < 0.5 else None)


def test_zero_backoff_retries_at_once() -> None:
    """backoff_initial=0 retries without waiting (full jitter of a zero cap is zero)."""
    policy = RetryPolicy(backoff_initial=0.0, jitter="full")
    assert delay_for(K.CRASHED, Phase.SENT, policy=policy) == 0.0


# ---- restart_delay and the budget ----------------------------------------------------------------
def test_first_restart_is_immediate() -> None:
    """After one failure (or none in a row) the replacement starts at once."""
    policy = RestartPolicy(backoff_initial=0.5, backoff_max=10.0)
    for seed in range(20):
        assert restart_delay(0, policy, random.Random(seed)) == 0.0
        assert restart_delay(1, policy, random.Random(seed)) == 0.0


def test_restart_delay_is_bounded_by_a_doubling_cap() -> None:
    """Failure n >= 2 in a row waits within [cap/2, cap], cap = min(max, initial * 2 ** (n - 2));
    the cap grows with n until backoff_max."""
    policy = RestartPolicy(backoff_initial=0.1, backoff_max=1.0)
    for consecutive in range(2, 10):
        cap = min(1.0, 0.1 * 2.0 ** (consecutive - 2))
        delays = [restart_delay(consecutive, policy, random.Random(s)) for s in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), consecutive
        assert max(delays) > 0.9 * cap and min(delays) < 0.6 * cap
    assert restart_delay(50, policy, random.Random(0)) <= 1.0


def test_restart_budget_allows_max_restarts_per_window() -> None:
    """max_restarts replacements fit in a window; one more inside it is over the budget."""
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=10.0))
    assert [budget.spend(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert budget.used == 3
    assert budget.spend(3.0) is False


def test_restart_budget_window_slides() -> None:
    """Replacements older than the window stop counting: the budget refills as time passes."""
    budget = RestartBudget(RestartPolicy(max_restarts=2, window=10.0))
    assert budget.spend(0.0) and budget.spend(5.0)
    assert budget.spend(10.0)  # the one at 0.0 is exactly window old: out of the window
    assert budget.used == 2
    assert not budget.spend(14.9)  # 5.0, 10.0 and 14.9 are within 10 s
    assert budget.spend(30.0)  # all old ones gone
    assert budget.used == 1


# ---- the circuit breaker -------------------------------------------------------------------------
Change = tuple[str, BreakerState, BreakerState]


def breaker(
    threshold: int = 3, reset: float = 5.0, max_reset: float = 60.0
) -> tuple[CircuitBreaker, list[Change]]:
    changes: list[Change] = []

    def on_change(b: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        changes.append((b.scope, old, new))

    policy = BreakerPolicy(failure_threshold=threshold, reset_timeout=reset, max_reset_timeout=max_reset)
    return CircuitBreaker("m:f", policy, on_change), changes


B = BreakerState


def state(cb: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call (each read is fresh, also for the type checker)."""
    return cb.state


def test_breaker_opens_at_the_threshold_of_failures_in_a_row() -> None:
    """Closed, it allows everything; threshold failures in a row open it (one callback)."""
    cb, changes = breaker(threshold=3)
    assert state(cb) is B.CLOSED and cb.allow(0.0)
    cb.failure(1.0)
    cb.failure(2.0)
    assert state(cb) is B.CLOSED and cb.allow(2.0)
    cb.failure(3.0)
    assert state(cb) is B.OPEN
    assert cb.open_until == 8.0
    assert changes == [("m:f", B.CLOSED, B.OPEN)]


def test_breaker_success_resets_the_count() -> None:
    """A success between failures starts the count again: failures must be in a row."""
    cb, changes = breaker(threshold=2)
    cb.failure(0.0)
    cb.success()
    cb.failure(1.0)
    assert state(cb) is B.CLOSED and cb.failures == 1
    cb.failure(2.0)
    assert state(cb) is B.OPEN
    assert changes == [("m:f", B.CLOSED, B.OPEN)]


def test_open_breaker_rejects_until_reset_timeout() -> None:
    """Open, it rejects every call until open_until; retry_after counts down to it."""
    cb, _ = breaker(threshold=1, reset=5.0)
    cb.failure(10.0)
    for t in (10.0, 12.0, 14.999):
        assert not cb.allow(t)
        assert state(cb) is B.OPEN
    assert cb.retry_after(12.0) == pytest.approx(3.0)
    assert cb.retry_after(20.0) == 0.0


def test_half_open_allows_exactly_one_trial() -> None:
    """After reset_timeout the first allow() moves to half-open and is the trial; others are
    rejected while the trial is out."""
    cb, changes = breaker(threshold=1, reset=5.0)
    cb.failure(0.0)
    assert cb.allow(5.0)
    assert state(cb) is B.HALF_OPEN
    assert not cb.allow(5.0)
    assert not cb.allow(100.0)
    assert changes == [("m:f", B.CLOSED, B.OPEN), ("m:f", B.OPEN, B.HALF_OPEN)]


def test_trial_success_closes_and_resets_the_timeout() -> None:
    """A successful trial closes the breaker; the next opening uses reset_timeout again."""
    cb, changes = breaker(threshold=1, reset=5.0)
    cb.failure(0.0)
    assert cb.allow(5.0)
    cb.failure(5.0)  # trial failed: open for 10
    assert cb.allow(15.0)
    cb.success()
    assert state(cb) is B.CLOSED and cb.failures == 0
    assert cb.allow(15.0) and cb.allow(15.0)
    cb.failure(20.0)
    assert cb.open_until == 25.0
    assert changes[-2:] == [("m:f", B.HALF_OPEN, B.CLOSED), ("m:f", B.CLOSED, B.OPEN)]


def test_trial_failure_reopens_with_a_doubled_timeout_capped() -> None:
    """Each failed trial re-opens the breaker for twice as long, up to max_reset_timeout."""
    cb, changes = breaker(threshold=1, reset=5.0, max_reset=30.0)
    now = 0.0
    cb.failure(now)
    timeouts = []
    for _ in range(5):
        now = cb.open_until
        assert not cb.allow(now - 0.001)
        assert cb.allow(now)
        cb.failure(now)
        assert state(cb) is B.OPEN
        timeouts.append(cb.open_until - now)
    assert timeouts == [10.0, 20.0, 30.0, 30.0, 30.0]
    assert changes.count(("m:f", B.HALF_OPEN, B.OPEN)) == 5


def test_release_lets_another_trial_go() -> None:
    """A trial ended without a verdict (release) leaves the breaker half-open and lets the next
    caller be the trial."""
    cb, _ = breaker(threshold=1, reset=1.0)
    cb.failure(0.0)
    assert cb.allow(1.0)
    assert not cb.allow(1.0)
    cb.release()
    assert state(cb) is B.HALF_OPEN
    assert cb.allow(1.0)
    assert not cb.allow(1.0)


def test_breaker_without_callback() -> None:
    """on_change is optional."""
    cb = CircuitBreaker("pool", BreakerPolicy(failure_threshold=1))
    cb.failure(0.0)
    assert state(cb) is B.OPEN
    assert "pool" in repr(cb) and "open" in repr(cb)


Op = tuple[str, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["allow", "success", "failure", "release"]), st.just(0.0)),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=40.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, threshold=st.integers(1, 4), reset=st.floats(0.5, 10.0), max_reset=st.floats(10.0, 50.0))
def test_breaker_properties_over_random_sequences(
    ops: list[Op], threshold: int, reset: float, max_reset: float
) -> None:
    """Whatever the sequence of allow/success/failure/release and time passing: half-open never
    has two trials out at once, open never allows before open_until, the cool-down stays within
    [reset_timeout, max_reset_timeout], and the callbacks form one chain of real changes."""
    cb, changes = breaker(threshold=threshold, reset=reset, max_reset=max_reset)
    now = 0.0
    trial_out = False  # a trial granted and not yet ended by success/failure/release
    for op, dt in ops:
        if op == "advance":
            now += dt
        elif op == "allow":
            before, until = state(cb), cb.open_until
            allowed = cb.allow(now)
            if before is B.OPEN and now < until:
                assert not allowed and state(cb) is B.OPEN
            if state(cb) is B.HALF_OPEN and allowed:
                assert not trial_out, "two trials out at once in half-open"
                trial_out = True
            if before is B.CLOSED:
                assert allowed
        else:
            getattr(cb, op)(*([now] if op == "failure" else []))
            trial_out = False
        assert reset <= cb.reset_timeout <= max_reset
        if state(cb) is B.OPEN:
            assert cb.open_until - now <= max_reset + 1e-9
        if state(cb) is B.CLOSED:
            assert cb.failures < threshold
    previous = B.CLOSED
    for _, old, new in changes:
        assert old is previous and old is not new
        previous = new
    assert previous is state(cb)


# ---- crash causes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exit_code", "signum", "cause"),
    [
        (None, int(signal.SIGSEGV), "segfault"),
        (None, int(signal.SIGBUS), "segfault"),
        (None, int(signal.SIGABRT), "abort"),
        (None, int(signal.SIGKILL), "killed"),
        (None, int(signal.SIGTERM), "terminated"),
        (None, int(signal.SIGINT), "signal"),
        (None, int(signal.SIGUSR1), "signal"),
        (139, None, "segfault"),
        (128 + int(signal.SIGBUS), None, "segfault"),
        (134, None, "abort"),
        (137, None, "killed"),
        (143, None, "terminated"),
        (130, None, "signal"),
        (1, None, "exit"),
        (2, None, "exit"),
        (128, None, "exit"),  # 128 + 0 is not a signal
        (200, None, "exit"),  # 128 + 72: beyond any signal number
        (255, None, "exit"),
        (0, None, "clean"),
        (None, None, "unknown"),
        (1, int(signal.SIGKILL), "killed"),  # a signal wins over an exit code
    ],
)
def test_crash_cause(exit_code: int | None, signum: int | None, cause: str) -> None:
    """crash_cause names signal deaths, shell-style 128+n codes as their signal, and exits."""
    assert crash_cause(exit_code, signum) == cause


@pytest.mark.parametrize(
    ("exit_code", "signum", "cause", "text"),
    [
        (None, 11, "segfault", "killed by SIGSEGV: a segmentation fault"),
        (None, 6, "abort", "killed by SIGABRT: aborted"),
        (None, 9, "killed", "killed by SIGKILL: from the kernel's out-of-memory killer"),
        (137, None, "killed", "exit code 137: SIGKILL"),
        (139, None, "segfault", "exit code 139: a segmentation fault"),
        (1, None, "exit", "worker process died (exit code 1)"),
        (None, 15, "terminated", "worker process died (killed by SIGTERM)"),
        (None, None, "unknown", "worker process died (exit status unknown)"),
    ],
)
def test_worker_crashed_message_and_cause(
    exit_code: int | None, signum: int | None, cause: str, text: str
) -> None:
    """WorkerCrashed carries exit_code, signal and cause, and says in words how the worker died."""
    err = WorkerCrashed(exit_code=exit_code, signal=signum, **_KW)
    assert (err.exit_code, err.signal, err.cause) == (exit_code, signum, cause)
    assert err.kind is K.CRASHED
    assert text in str(err)
    assert "w1" in str(err) and "m:f" in str(err)
    assert not err.retry_safe


def test_worker_crashed_quotes_the_last_stderr_line() -> None:
    """The crash message ends with the last line of the worker's stderr."""
    err = WorkerCrashed(exit_code=1, signal=None, stderr_tail="first\nFatal Python error: oops\n", **_KW)
    assert str(err).endswith("last stderr: Fatal Python error: oops")
    assert err.stderr_tail.startswith("first")


def test_queue_timeout_is_a_call_timeout_that_never_left() -> None:
    """QueueTimeout is a CallTimeout (and TimeoutError) with phase QUEUED, safe to retry."""
    err = QueueTimeout(2.0, target="m:f")
    assert isinstance(err, CallTimeout) and isinstance(err, TimeoutError) and isinstance(err, CallError)
    assert err.phase is Phase.QUEUED and err.retry_safe
    assert err.kind is K.QUEUE_TIMEOUT and CallTimeout(1.0, phase=Phase.RUNNING).kind is K.TIMEOUT
