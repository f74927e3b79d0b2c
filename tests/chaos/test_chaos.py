"""Chaos scenarios on real worker processes, each judged by the history checker.

Every scenario drives a few hundred concurrent calls (echo of a unique token, or a sleep of a
unique duration) while it injects its faults, and records both the pool's event stream and
what each caller got. ``assert_history_ok`` then proves: every admitted call ended exactly
once and the events agree with the callers; no value was delivered twice or to the wrong
caller; every failure is a typed PoolError of a kind the faults can cause; the pool recovered
every call the faults hit (``RetryCheck.STRICT``: the calls are idempotent, so a call whose
worker died under it was retried, and a call pipelined behind it requeued, until it succeeded
or its attempts ran out); the pool was back at ``min_workers`` within 15 s of the last fault;
no worker process outlived the pool.

The seed is fixed (``POOLKIT_CHAOS_SEED`` overrides it) and is in every failure message.
Both backends run: each scenario takes a second or two, the whole module well under a minute.
"""

from __future__ import annotations

import pytest

from poolkit import FailureKind
from poolkit.testing import Isolation
from poolkit.testing._chaos import History, RetryCheck, assert_history_ok, chaos_seed, run_scenario

pytestmark = [pytest.mark.anyio, pytest.mark.chaos, pytest.mark.xdist_group("processes")]

SEED = chaos_seed()


async def _run(name: str, isolation: Isolation) -> History:
    history = await run_scenario(name, seed=SEED, tag=isolation.tag)
    assert_history_ok(history, retries=RetryCheck.STRICT, require_recovery=True, require_orphan_check=True)
    return history


async def test_kill_majority(poolkit_isolation: Isolation) -> None:
    """60% of five workers SIGKILLed at once under load: the calls those workers were running
    are retried elsewhere (they are idempotent), the calls pipelined behind them are requeued,
    so nothing fails; the pool refills and nothing is left running."""
    history = await _run("kill_majority", poolkit_isolation)
    summary = history.summary()
    assert not summary.failed, summary
    assert summary.retried + summary.requeued >= 1, summary  # the kills hit calls in flight


async def test_cascading_failure(poolkit_isolation: Isolation) -> None:
    """Six workers killed one after another, faster than replacements start: every call still
    ends exactly once, failures are CRASHED only, and the pool recovers."""
    await _run("cascading_failure", poolkit_isolation)


async def test_thundering_herd(poolkit_isolation: Isolation) -> None:
    """300 callers released at once by one anyio.Event against a queue of 32: admission waits
    for room and every call succeeds exactly once (no fault, so no failure is allowed)."""
    history = await _run("thundering_herd", poolkit_isolation)
    assert history.summary().ok == 300


async def test_slow_worker(poolkit_isolation: Isolation) -> None:
    """One worker's stream made slow (FaultInjector.slow): the others keep serving, the slow
    worker's calls finish late, and nothing fails."""
    history = await _run("slow_worker", poolkit_isolation)
    assert not history.summary().failed


async def test_memory_leak(poolkit_isolation: Isolation) -> None:
    """Workers grow their RSS by 16 MiB three times (checked in /proc): the pool keeps serving
    and nothing fails."""
    history = await _run("memory_leak", poolkit_isolation)
    assert not history.summary().failed


async def test_corrupt_messages(poolkit_isolation: Isolation) -> None:
    """Three frames corrupted on the wire (one flipped bit each): exactly the three attempts they
    carried fail with ProtocolError, their workers are replaced, and the calls (idempotent)
    succeed on a retry elsewhere: nothing fails."""
    history = await _run("corrupt_messages", poolkit_isolation)
    assert history.summary().failed == {}
    retried = [kind for trail in history.trails.values() for kind in trail.retried]
    assert retried == [FailureKind.PROTOCOL] * 3


async def test_combined(poolkit_isolation: Isolation) -> None:
    """Herd, simultaneous kills, deadlines, a stopped worker, memory growth, a corrupt frame
    and a cascade in one run: the same invariants hold throughout."""
    await _run("combined", poolkit_isolation)
