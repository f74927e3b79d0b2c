"""The history checker itself: clean histories pass, and each kind of violation is reported
(fabricated histories), with the scenario's seed in every message. Plus a live bridge-layer
run proving the caller records link to the pool's events on both backends."""

from __future__ import annotations

import functools

import anyio
import pytest

from poolkit import CallTimeout, FailureKind, Phase, WorkerCrashed
from poolkit._events import CallCompleted, CallFailed
from poolkit.testing import pool_for, targets
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


def _failed(seq: int, kind: FailureKind, phase: Phase = Phase.RUNNING) -> CallFailed:
    return CallFailed(
        pool="p",
        at=1.0,
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
) -> CallRecord:
    record = CallRecord(
        len(history.records) + 1, "t", expect, idempotent, 0.0, seq=seq, outcomes=list(outcomes)
    )
    history.records.append(record)
    if seq is not None:
        if terminals is None:
            terminals = tuple(
                _completed(seq)
                if isinstance(o, Ok)
                else _failed(seq, o.kind or FailureKind.APPLICATION, o.phase or Phase.RUNNING)
                for o in outcomes[:1]
            )
        history.trails[seq] = EventTrail(
            seq, "t", queued_at=0.0, terminals=list(terminals), record=record, requeued=requeued
        )
    return record


def _crashed(phase: Phase = Phase.RUNNING) -> Failed:
    return Failed.from_exception(
        WorkerCrashed(exit_code=None, signal=9, phase=phase, worker_id="w1", target="t")
    )


def _clean() -> History:
    history = History("fabricated", 4242, allowed_kinds={FailureKind.CRASHED})
    history.recording = True
    _add(history, 1, Ok("a"), expect="a")
    _add(history, 2, Ok("b"), expect="b", requeued=1)
    _add(history, 3, _crashed())
    history.recovery = Recovery(15.0, 0.4)
    history.orphans = []
    return history


def test_a_clean_history_passes() -> None:
    history = _clean()
    assert check_history(history, require_recovery=True, require_orphan_check=True) == []
    assert_history_ok(history)
    assert history.summary().retried_ok == 1


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
    history = _clean()
    _add(history, 4, _crashed(Phase.SENT))  # idempotent, certainly never ran, yet failed
    _add(history, 5, _crashed(), requeued=1)  # requeued, then crashed again while running
    _add(history, 6, _crashed(Phase.SENT), idempotent=False)
    safe = check_history(history, retries=RetryCheck.SAFE)
    assert len(safe) == 1 and "although a retry was safe" in safe[0], safe
    assert check_history(history, retries="off") == []
    strict = check_history(history, retries="strict")
    # caller 3 and 5 crashed while running (strict), 4 in a safe phase, 5 also after a requeue
    assert len(strict) == 4, strict


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
