"""The history checker itself: clean histories pass, and each kind of violation is reported
(fabricated histories), with the scenario's seed in every message; the retry check at each
level, with each excuse for a call the pool rightly did not retry. Plus live runs (bridge and
mock layers) proving the caller records link to the pool's events, retries included, on both
backends."""

from __future__ import annotations

import functools

import anyio
import pytest

from poolkit import (
    CallTimeout,
    CircuitOpen,
    FailureKind,
    Phase,
    PoolClosed,
    PoolError,
    PoolState,
    ProtocolError,
    RemoteError,
    SessionLost,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerUnresponsive,
)
from poolkit._events import CallCompleted, CallFailed, CallQueued, PoolStateChanged
from poolkit.testing import MockScript, crashes, pool_for, runs, scaled, targets
from poolkit.testing._chaos import (
    NO_VALUE,
    CallRecord,
    EventTrail,
    Failed,
    History,
    Ok,
    Outcome,
    Recovery,
    RetryCheck,
    assert_history_ok,
    check_history,
)

pytestmark = [pytest.mark.chaos]


def _completed(seq: int) -> CallCompleted:
    return CallCompleted(pool="p", at=1.0, call=seq, target="t", worker_id="w1", duration=0.1)


def _failed(seq: int, kind: FailureKind, phase: Phase = Phase.RUNNING, at: float = 1.0) -> CallFailed:
    return CallFailed(
        pool="p",
        at=at,
        call=seq,
        target="t",
        worker_id="w1",
        kind=kind,
        phase=phase,
        error="e",
        duration=0.1,
    )


def _add(
    history: History,
    seq: int | None,
    *outcomes: Outcome,
    expect: object = NO_VALUE,
    terminals: tuple[CallCompleted | CallFailed, ...] | None = None,
    idempotent: bool = True,
    requeued: int = 0,
    retried: tuple[FailureKind, ...] = (),
    timeout: float | None = None,
    ended_at: float = 1.0,
    session_mode: str | None = None,
    pool_down: bool = False,
) -> CallRecord:
    record = CallRecord(
        len(history.records) + 1,
        "t",
        expect,
        idempotent,
        0.0,
        seq=seq,
        outcomes=list(outcomes),
        timeout=timeout,
        session="s" if session_mode else None,
        session_mode=session_mode,
    )
    history.records.append(record)
    if seq is not None:
        if terminals is None:
            terminals = tuple(
                _completed(seq)
                if isinstance(o, Ok)
                else _failed(seq, o.kind or FailureKind.APPLICATION, o.phase or Phase.RUNNING, at=ended_at)
                for o in outcomes[:1]
            )
        history.trails[seq] = EventTrail(
            seq,
            "t",
            queued_at=0.0,
            terminals=list(terminals),
            record=record,
            requeued=requeued,
            retried=list(retried),
            pool_down=pool_down,
        )
    return record


def _crashed(phase: Phase = Phase.RUNNING) -> Failed:
    return Failed.from_exception(
        WorkerCrashed(exit_code=None, signal=9, phase=phase, worker_id="w1", target="t")
    )


def _fault(kind: FailureKind, phase: Phase = Phase.RUNNING) -> Failed:
    """A worker-fault failure of ``kind`` as its caller sees it."""
    where = {"phase": phase, "worker_id": "w1", "target": "t"}
    errors: dict[FailureKind, PoolError] = {
        FailureKind.CRASHED: WorkerCrashed(exit_code=None, signal=9, phase=phase, worker_id="w1", target="t"),
        FailureKind.UNRESPONSIVE: WorkerUnresponsive(silent_for=11.0, interval=5.0, **where),
        FailureKind.PROTOCOL: ProtocolError("bad checksum", phase=phase, worker_id="w1", target="t"),
        FailureKind.RESOURCE_EXHAUSTED: WorkerMemoryExceeded(rss=2**30, limit=2**29, **where),
    }
    return Failed.from_exception(errors[kind])


def _clean() -> History:
    history = History("fabricated", 4242, allowed_kinds={FailureKind.CRASHED})
    history.recording = True
    _add(history, 101, Ok("a"), expect="a")
    _add(history, 102, Ok("b"), expect="b", requeued=1)  # its worker died before it ran
    _add(history, 103, _crashed(), idempotent=False)  # running when its worker died: not retried
    _add(history, 104, Ok("c"), expect="c", retried=(FailureKind.CRASHED,))  # succeeded on a retry
    _add(history, 105, _crashed(), retried=(FailureKind.CRASHED, FailureKind.CRASHED))  # 3 attempts
    history.recovery = Recovery(15.0, 0.4)
    history.orphans = []
    return history


def test_a_clean_history_passes() -> None:
    history = _clean()
    assert check_history(history, require_recovery=True, require_orphan_check=True) == []
    assert_history_ok(history)
    summary = history.summary()
    # 102 was requeued and succeeded; 104 and 105 were retried, and only 104 succeeded.
    assert (summary.requeued, summary.requeued_ok) == (1, 1), summary
    assert (summary.retried, summary.retried_ok) == (2, 1), summary
    assert "requeued 1 (then ok: 1), retried 2 (then ok: 1)" in str(summary)


def test_duplicate_result_is_reported() -> None:
    history = _clean()
    _add(history, 4, Ok("a"), expect="a")  # a second caller got the first caller's unique value
    problems = check_history(history)
    assert any("'a' delivered 2 times" in p for p in problems), problems
    assert all("seed=4242" in p for p in problems)


def test_value_delivered_twice_to_one_caller_is_reported() -> None:
    history = _clean()
    _add(history, 4, Ok("d"), Ok("d"), expect="d")
    problems = check_history(history)
    assert any("got 2 outcomes" in p for p in problems), problems
    assert any("delivered 2 times" in p for p in problems), problems


def test_misdelivered_result_is_reported() -> None:
    history = _clean()
    _add(history, 4, Ok("x"), expect="d")
    assert any("delivered to the wrong caller" in p for p in check_history(history))


def test_lost_call_is_reported_on_both_sides() -> None:
    history = _clean()
    _add(history, 4, terminals=())  # queued, never ended; the caller never got anything
    problems = check_history(history)
    assert any("never got an outcome: lost call" in p for p in problems), problems
    assert any("queued but never ended" in p for p in problems), problems


def test_call_ended_twice_in_the_events_is_reported() -> None:
    history = _clean()
    _add(history, 4, Ok("d"), expect="d", terminals=(_completed(4), _failed(4, FailureKind.CRASHED)))
    assert any("ended 2 times in the events" in p for p in check_history(history))


def test_caller_and_events_disagreeing_is_reported() -> None:
    history = _clean()
    _add(history, 4, Ok("d"), expect="d", terminals=(_failed(4, FailureKind.CRASHED),))
    assert any("disagree" in p for p in check_history(history))


def test_untyped_failure_is_reported() -> None:
    history = _clean()
    _add(history, 4, Failed.from_exception(RuntimeError("boom")))
    problems = check_history(history)
    assert any("untyped failure builtins.RuntimeError: boom" in p for p in problems), problems


def test_wrong_failure_kind_is_reported() -> None:
    history = _clean()  # a SIGKILL scenario: CRASHED only
    _add(history, 4, Failed.from_exception(CallTimeout(0.5, phase=Phase.RUNNING, target="t")))
    problems = check_history(history)
    assert any("kind timeout" in p and "can cause: crashed" in p for p in problems), problems
    assert check_history(history, allowed_kinds={FailureKind.CRASHED, FailureKind.TIMEOUT}) == []


def test_result_without_admission_is_reported() -> None:
    history = _clean()
    _add(history, None, Ok("d"), expect="d")
    assert any("never queued the call" in p for p in check_history(history))


def test_retry_strictness_levels() -> None:
    """SAFE reports a worker-fault failure of a call that certainly had not run (idempotent or
    not: the pool retries those either way); STRICT adds idempotent calls that failed while
    running, and requeued idempotent calls that did not succeed; OFF checks nothing. Each call
    is reported once. STRICT is the default."""
    history = _clean()
    _add(history, 6, _crashed(Phase.SENT))  # idempotent, certainly never ran, yet failed
    _add(history, 7, _crashed(Phase.SENT), idempotent=False)  # never ran: retried even so
    _add(history, 8, _crashed())  # idempotent, one attempt, not retried
    _add(history, 9, _crashed(), requeued=1)  # requeued, then crashed while running: once
    _add(history, 10, Failed.from_exception(PoolClosed("p", phase=Phase.QUEUED)), requeued=1)
    history.allowed_kinds.add(FailureKind.POOL_CLOSED)
    safe = check_history(history, retries=RetryCheck.SAFE)
    assert len(safe) == 2 and all("although it had certainly not run" in p for p in safe), safe
    assert check_history(history, retries="off") == []
    strict = check_history(history, retries="strict")
    assert check_history(history) == strict
    assert len(strict) == 5, strict
    assert sum("although it is idempotent: it was not retried" in p for p in strict) == 2, strict
    # a requeued call failing with pool_closed while the pool was up: the requeue lost it
    assert any("call 10" in p and "requeued 1 time(s) but did not succeed" in p for p in strict), strict
    assert all("after 1 attempt(s)" in p for p in strict), strict


@pytest.mark.parametrize(
    "kind",
    [FailureKind.CRASHED, FailureKind.UNRESPONSIVE, FailureKind.PROTOCOL, FailureKind.RESOURCE_EXHAUSTED],
)
def test_every_worker_fault_kind_must_be_retried(kind: FailureKind) -> None:
    """Crashed, unresponsive, protocol and memory-limit failures are all retry candidates: an
    idempotent call lost to one with attempts left is reported; with none left, it is not."""
    history = History("fabricated", 7, allowed_kinds={kind})
    _add(history, 1, _fault(kind))
    _add(history, 2, _fault(kind), retried=(kind, kind))
    [problem] = check_history(history)
    assert f"caller #1 (t, call 1) failed with {kind.value} in phase running after 1 attempt(s)" in problem


def test_retries_exhausted_follow_the_pools_max_attempts() -> None:
    """The attempt limit is the pool's ``retry.max_attempts`` (copied by History.record)."""
    history = History("fabricated", 7, allowed_kinds={FailureKind.CRASHED})
    _add(history, 1, _crashed(), retried=(FailureKind.CRASHED,))  # 2 attempts
    assert check_history(history) != []  # the default policy allows 3
    history.max_attempts = 2
    assert check_history(history) == []
    pool = pool_for("mock", retry={"max_attempts": 5, "backoff_max": 0.25}, default_timeout=9.0)
    with history.record(pool):
        pass
    assert (history.max_attempts, history.backoff_max, history.default_timeout) == (5, 0.25, 9.0)
    assert check_history(history) != []


def test_a_deadline_too_close_for_a_backoff_excuses_the_retry() -> None:
    """A call with a timeout that failed with less than ``retry.backoff_max`` of it left may
    rightly not be retried (the backoff could pass the deadline); with more left, it is
    reported."""
    history = History("fabricated", 7, allowed_kinds={FailureKind.CRASHED})
    _add(history, 1, _crashed(), timeout=5.0, ended_at=4.0)  # 1 s left < backoff_max 2 s
    _add(history, 2, _crashed(), timeout=5.0, ended_at=1.0)  # 4 s left: room for any backoff
    [problem] = check_history(history)
    assert "caller #2" in problem, problem
    history.backoff_max = 0.5
    assert len(check_history(history)) == 2


def test_strict_sessions_and_a_closing_pool_excuse_the_retry() -> None:
    """Strict-mode session calls are never retried (their state went with the worker; the
    calls behind fail with SessionLost, which is no violation after a requeue); nor are calls
    that failed once the pool was closing or had failed. A hint session call is retried like
    any other."""
    kinds = {FailureKind.CRASHED, FailureKind.SESSION_LOST, FailureKind.POOL_CLOSED}
    history = History("fabricated", 7, allowed_kinds=kinds)
    lost = Failed.from_exception(SessionLost("its worker is gone", key="s", reason="crashed"))
    _add(history, 1, _crashed(), session_mode="strict_queue")
    _add(history, 2, lost, requeued=1, session_mode="strict_fail_fast")
    _add(history, 3, _crashed(), pool_down=True)
    _add(history, 4, Failed.from_exception(PoolClosed("p", phase=Phase.QUEUED)), requeued=1, pool_down=True)
    _add(history, 5, _crashed(), session_mode="hint")
    _add(history, 6, lost, requeued=1, session_mode="hint")
    problems = check_history(history)
    assert len(problems) == 2, problems
    assert "caller #5" in problems[0] and "caller #6" in problems[1], problems


def test_a_requeued_call_may_end_by_its_own_outcome() -> None:
    """After a requeue, the call's own outcome (the target raised, the deadline passed, the
    caller cancelled) and a breaker failing it fast are no violation."""
    history = History("fabricated", 7, allowed_kinds=set(FailureKind))
    remote = RemoteError("builtins.ValueError", "bad", "", phase=Phase.RUNNING, target="t")
    _add(history, 1, Failed.from_exception(remote), requeued=1)
    _add(history, 2, Failed.from_exception(CallTimeout(0.5, phase=Phase.RUNNING, target="t")), requeued=1)
    _add(history, 3, Failed.from_exception(CircuitOpen("pool", retry_after=1.0, failures=5)), requeued=1)
    assert check_history(history) == []


def test_the_pool_state_when_a_call_ends_is_recorded() -> None:
    """A call ending after the pool left RUNNING (closing, failed) is marked ``pool_down``."""
    history = History("fabricated", 7)
    for seq in (1, 2):
        history._on_event(CallQueued(pool="p", at=0.0, call=seq, target="t"))
    history._on_event(_failed(1, FailureKind.CRASHED))
    history._on_event(
        PoolStateChanged(
            pool="p", at=1.0, from_state=PoolState.RUNNING, to_state=PoolState.FAILED, reason="budget"
        )
    )
    history._on_event(_failed(2, FailureKind.CRASHED))
    assert (history.trails[1].pool_down, history.trails[2].pool_down) == (False, True)


def test_recovery_and_orphans_are_reported() -> None:
    history = _clean()
    history.recovery = Recovery(15.0, None, "timed out")
    history.orphans = [12345]
    problems = check_history(history)
    assert any("not back at its size within 15s" in p for p in problems), problems
    assert any("outlived the pool: [12345]" in p for p in problems), problems
    bare = History("bare", 1)
    assert len(check_history(bare, require_recovery=True, require_orphan_check=True)) == 2


def test_assert_history_ok_lists_every_violation_and_the_seed() -> None:
    history = _clean()
    _add(history, 4, Failed.from_exception(RuntimeError("boom")))
    _add(history, 5, terminals=())
    history.fault("SIGKILL w1")
    with pytest.raises(AssertionError) as info:
        assert_history_ok(history)
    text = str(info.value)
    assert "POOLKIT_CHAOS_SEED=4242" in text and "untyped failure" in text and "lost call" in text
    assert "faults: SIGKILL w1" in text


@pytest.mark.anyio
async def test_records_link_to_events_on_a_live_pool(anyio_backend: str) -> None:
    """A real (bridge-layer) run: each caller's record is linked to its CallQueued sequence
    number, a crash gives one CRASHED failure on both sides, and the history is clean."""
    history = History("live", 7, allowed_kinds={FailureKind.CRASHED})
    async with pool_for("bridge", min_workers=2) as pool:
        with history.record(pool):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    token = f"tok{i}"
                    tg.start_soon(functools.partial(history.call, pool, targets.echo, token, expect=token))
                tg.start_soon(lambda: history.call(pool, targets.crash, idempotent=False))
    assert all(r.seq is not None for r in history.records)
    assert check_history(history) == []
    summary = history.summary()
    assert summary.ok == 20 and summary.failed == {"crashed": 1}, summary


@pytest.mark.anyio
async def test_retried_calls_are_recorded_on_a_live_pool(anyio_backend: str) -> None:
    """A real (mock-layer) run with retries: an idempotent call whose worker crashes under it
    is retried (``CallRetried`` in its trail) and succeeds; a non-idempotent one fails
    CRASHED; an idempotent call that crashes every attempt fails after ``max_attempts``. The
    history is clean at STRICT, and the summary counts the call that succeeded on a retry."""
    script = MockScript()
    script.on("poolkit.testing.targets:add").respond(crashes(), runs())  # the first attempt dies
    history = History("live-retries", 8, allowed_kinds={FailureKind.CRASHED})
    pool = pool_for("mock", script=script, min_workers=2, retry={"backoff_initial": 0.001})
    with anyio.fail_after(scaled(10)):
        async with pool:
            with history.record(pool):
                ok = await history.call(pool, targets.add, 20, 22, expect=42)
                once = await history.call(pool, targets.crash, idempotent=False)
                always = await history.call(pool, targets.crash)
    assert ok.outcome == Ok(42)
    assert isinstance(once.outcome, Failed) and once.outcome.kind is FailureKind.CRASHED
    assert isinstance(always.outcome, Failed) and always.outcome.kind is FailureKind.CRASHED
    assert [len(history.trails[r.seq].retried) for r in (ok, once, always) if r.seq is not None] == [1, 0, 2]
    assert check_history(history, retries=RetryCheck.STRICT) == []
    summary = history.summary()
    assert (summary.retried, summary.retried_ok, summary.failed) == (2, 1, {"crashed": 2}), summary
