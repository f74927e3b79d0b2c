"""Load SLA: open-loop load on 2 real worker processes, judged by relative properties.

Built on the harness (``run_load``, ``LoadProfile``, ``FaultInjector``): every call has an
intended send time fixed in advance and its latency counts from then, so queueing anywhere is
measured. Each test warms the pool up (every worker has imported the targets and served
calls), offers its load, and asserts:

* zero lost calls: every planned call was sent and ended exactly once, with a value or a typed
  error, and the only failures are the ones the test causes (asserted on every attempt);
* throughput: calls answered per second of the run at least 95% of the offered rate;
* latency: p99 at most ``P99_OVER_P50`` times p50 (both from the intended send time).

The last two are judged on the best of a few runs (``best_of``): noise from other processes
only ever slows a run down, so a real regression misses every attempt while a stall from a
neighbour misses one. Durations: ``POOLKIT_LOAD_SCALE=short`` (default, CI) or ``full``
(``nox -s perf``: 5 minutes sustained). tests/performance/README.md says how the bounds were
chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial

import anyio
import pytest

from performance._sla import (
    RATE,
    LoadScale,
    answered_rate,
    assert_accounted,
    best_of,
    latency_of,
    load_scale,
    sla_problems,
    summary,
)
from poolkit import (
    CallCompleted,
    CallFailed,
    CallRequeued,
    CallRetried,
    Event,
    FailureKind,
    Pool,
    RemoteError,
    WorkerState,
)
from poolkit.testing import (
    CallOutcome,
    CrashReport,
    FaultInjector,
    Isolation,
    LatencySummary,
    Layer,
    LoadProfile,
    LoadReport,
    Operation,
    ensure_pool_ready,
    plan_load,
    pool_for,
    run_load,
    scaled,
    targets,
    wait_until,
)

SCALE = load_scale()
# pytest-timeout's limit (pyproject: 120 s) is too short for the full scale's 5-minute run (twice
# if its first attempt misses): a little more than the longest test's own deadline.
_LONGEST = max(
    SCALE.ramp + SCALE.hold,
    SCALE.sustained,
    SCALE.spike_before + SCALE.spike_width + SCALE.spike_after,
    SCALE.mixed,
    SCALE.faults,
)
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.load,
    pytest.mark.xdist_group("processes"),
    pytest.mark.timeout(scaled(SCALE.attempts * (_LONGEST + 10) + 120)),
]
WORKERS = 2
ECHO = [Operation(targets.echo, (1,))]
MIXED = [
    Operation(targets.echo, (1,), weight=4, idempotent=True, name="echo int"),
    Operation(targets.echo, (b"x" * 1024,), weight=2, name="echo 1 KiB"),
    Operation(targets.echo, (b"x" * 65536,), weight=1, name="echo 64 KiB"),
    Operation(targets.add, (1, 2, 3), weight=1, name="add"),
    Operation(targets.echo, ("deadline",), weight=1, timeout=30.0, name="echo with timeout"),
    Operation(targets.sleep, (0.001,), weight=1, name="async sleep 1 ms"),
    Operation(targets.fail, ("injected",), weight=1, name="fail"),
]
# Half idempotent, half not; each call sleeps 0.5 ms in the worker, so a worker is busy a
# quarter of the time at 1,000 calls/s (half while the other is being replaced): a kill often
# lands on a running call, and one worker alone still keeps up.
RECOVERY_MARGIN = 0.1  # seconds after a recovery still excluded from the latency bound
FAULT_OPS = [
    Operation(targets.sleep, (0.0005,), idempotent=True, name="idempotent"),
    Operation(targets.sleep, (0.0005,), name="not idempotent"),
]


def _pool(isolation: Isolation) -> Pool:
    return pool_for(Layer.SUBPROCESS, min_workers=WORKERS, tag=isolation.tag)


async def _warm_up(pool: Pool, operations: Sequence[Operation]) -> None:
    """Every worker ready, has imported the targets and served each kind of call."""
    await ensure_pool_ready(pool)
    for op in operations:
        for _ in range(2 * WORKERS):
            if op.target is targets.fail:
                with pytest.raises(RemoteError):
                    await pool.call(op.target, *op.args, timeout=op.timeout)
            else:
                await pool.call(op.target, *op.args, timeout=op.timeout)
    await run_load(pool, LoadProfile.constant(200, 0.3), operations, seed="warm-up")


def _deadline(profile: LoadProfile, attempts: int) -> float:
    return scaled(attempts * (profile.duration + 10) + 30)


def _describe(report: LoadReport) -> str:
    return str(report)


def _expected_failures(
    profile: LoadProfile, operations: Sequence[Operation], seed: str
) -> dict[FailureKind, int]:
    failing = sum(p.operation.target is targets.fail for p in plan_load(profile, operations, seed=seed))
    return {FailureKind.APPLICATION: failing} if failing else {}


async def _measure(
    pool: Pool,
    profile: LoadProfile,
    scale: LoadScale,
    operations: Sequence[Operation] = ECHO,
    *,
    seed: str,
    problems: Callable[[LoadReport], list[str]] = sla_problems,
) -> LoadReport:
    """Offer ``profile`` (best of ``scale.attempts``) after a warm-up; assert correctness every time."""
    expected = _expected_failures(profile, operations, seed)

    async def attempt() -> LoadReport:
        report = await run_load(pool, profile, operations, seed=seed)
        assert_accounted(report, expected)
        return report

    await _warm_up(pool, operations)
    return await best_of(scale.attempts, attempt, problems, _describe, summary)


async def test_ramp_to_1000_per_second(poolkit_isolation: Isolation) -> None:
    """A ramp from 0 to 1,000 calls/s, then 1,000/s: every call answered, none lost, the pool
    keeps up with the offered load and p99 stays within the bound of p50."""
    profile = LoadProfile.ramp(0, RATE, SCALE.ramp).then(LoadProfile.constant(RATE, SCALE.hold))
    with anyio.fail_after(_deadline(profile, SCALE.attempts)):
        async with _pool(poolkit_isolation) as pool:
            report = await _measure(pool, profile, SCALE, seed="ramp")
    assert report.completed == report.offered
    t0 = _start(report)
    held = [o for o in report.outcomes if o.intended - t0 >= SCALE.ramp]
    assert len(held) == pytest.approx(RATE * SCALE.hold, abs=1)  # the plan did reach 1,000/s


async def test_sustained_1000_per_second(poolkit_isolation: Isolation) -> None:
    """1,000 calls/s held (3 s in CI, 5 minutes in ``nox -s perf``): every call answered, the
    same two workers throughout (no restart), and no drift: the median latency of the run's
    last fifth is within 3x that of its first fifth."""
    profile = LoadProfile.sustained(RATE, SCALE.sustained)

    def problems(report: LoadReport) -> list[str]:
        fifth = SCALE.sustained / 5
        t0 = _start(report)
        first = latency_of(o for o in report.outcomes if o.intended - t0 < fifth)
        last = latency_of(o for o in report.outcomes if o.intended - t0 >= 4 * fifth)
        drift = [] if last.p50 <= 3 * first.p50 else [f"drift: first fifth {first.row()}, last {last.row()}"]
        return sla_problems(report) + drift

    with anyio.fail_after(_deadline(profile, SCALE.attempts)):
        async with _pool(poolkit_isolation) as pool:
            await ensure_pool_ready(pool)
            pids = sorted(w.pid for w in pool.statistics().workers if w.pid is not None)
            report = await _measure(pool, profile, SCALE, seed="sustained", problems=problems)
            after = sorted(w.pid for w in pool.statistics().workers if w.pid is not None)
    assert report.completed == report.offered
    assert after == pids and len(pids) == WORKERS
    assert "WorkerExited" not in report.monitor.counts


def _start(report: LoadReport) -> float:
    """The run's time zero: the intended send time of its first call (always at 0 + t0)."""
    return min(o.intended for o in report.outcomes)


async def test_spike_to_five_times_the_rate(poolkit_isolation: Isolation) -> None:
    """A burst of 5x the base rate: no call is lost or fails, the pool answers at least 95% of
    the offered rate over the run, and after the burst's backlog has drained, p99 is back within
    the bound of the p50 before the burst."""
    s = SCALE
    duration = s.spike_before + s.spike_width + s.spike_after
    profile = LoadProfile.spike(
        s.spike_base, 5 * s.spike_base, at=s.spike_before, width=s.spike_width, duration=duration
    )
    recovered_from = s.spike_before + s.spike_width + s.spike_settle

    def judged(report: LoadReport) -> LatencySummary:
        """p99 after the spike (its backlog drained) with the p50 before it: the pool is back
        to its unloaded self."""
        t0 = _start(report)
        before = latency_of(o for o in report.outcomes if o.intended - t0 < s.spike_before)
        after = latency_of(o for o in report.outcomes if o.intended - t0 >= recovered_from)
        return dataclasses.replace(after, p50=before.p50)

    async def attempt() -> LoadReport:
        report = await run_load(pool, profile, ECHO, seed="spike")
        assert_accounted(report)
        return report

    with anyio.fail_after(_deadline(profile, s.attempts)):
        async with _pool(poolkit_isolation) as pool:
            await _warm_up(pool, ECHO)
            report = await best_of(
                s.attempts,
                attempt,
                lambda r: sla_problems(r, judged(r)),
                _describe,
                lambda r: summary(r, judged(r)),
            )
    t0 = _start(report)
    in_spike = [
        o for o in report.outcomes if s.spike_before <= o.intended - t0 < s.spike_before + s.spike_width
    ]
    assert len(in_spike) == pytest.approx(5 * s.spike_base * s.spike_width, abs=1)


async def test_mixed_operations(poolkit_isolation: Isolation) -> None:
    """1,000 calls/s of seven kinds (small, 1 KiB and 64 KiB payloads, an async target, a call
    with a deadline, one target that raises): each kind's calls all end, the raising one's as
    APPLICATION errors and the others' with their value; throughput and p99 as for one kind."""
    profile = LoadProfile.constant(RATE, SCALE.mixed)
    with anyio.fail_after(_deadline(profile, SCALE.attempts)):
        async with _pool(poolkit_isolation) as pool:
            report = await _measure(pool, profile, SCALE, MIXED, seed="mixed")
    assert set(report.operations) == {op.label for op in MIXED}
    for label, stats in report.operations.items():
        assert stats.offered > 0, label
        if label == "fail":
            assert (stats.completed, stats.failed) == (0, stats.offered)
        else:
            assert (stats.completed, stats.failed) == (stats.offered, 0), label


@dataclasses.dataclass
class _FaultRun:
    report: LoadReport
    crashes: list[CrashReport]
    recoveries: list[tuple[float, float]]  # (kill, pool ready again) on the loop's clock
    failed: list[CallFailed]
    retried: list[CallRetried]
    requeued: list[CallRequeued]

    def steady(self) -> list[CallOutcome]:
        """The calls intended outside every recovery (kill to ready again, + RECOVERY_MARGIN)."""
        return [
            o
            for o in self.report.outcomes
            if not any(start <= o.intended <= end + RECOVERY_MARGIN for start, end in self.recoveries)
        ]

    def recovery_times(self) -> list[float]:
        return [round(end - start, 3) for start, end in self.recoveries]

    def problems(self) -> list[str]:
        """Throughput over the whole run; the latency bound on the calls outside recoveries."""
        return sla_problems(self.report, latency_of(self.steady()))


async def test_worker_sigkill_under_load(poolkit_isolation: Isolation) -> None:
    """Workers SIGKILLed one at a time under 1,000 calls/s (2 in CI, 5 in ``nox -s perf``): no
    call is lost; only calls running on a killed worker fail, as CRASHED, at most one per kill,
    and never an idempotent one (the pool retries those elsewhere); the pool is back to two
    workers after each kill; throughput over the run as without faults, and so is p99 outside
    the recoveries (from a kill until the replacement is ready: starting an interpreter takes
    CPU from the parent on 2 cores, so latency during a recovery says more about the machine)."""
    s = SCALE
    profile = LoadProfile.constant(RATE, s.faults)
    offered = len(profile.schedule())

    async def attempt() -> _FaultRun:
        failed: list[CallFailed] = []
        retried: list[CallRetried] = []
        requeued: list[CallRequeued] = []
        answered = 0

        def on_event(event: Event) -> None:
            nonlocal answered
            if isinstance(event, CallCompleted | CallFailed):
                answered += 1
            if isinstance(event, CallFailed):
                failed.append(event)
            elif isinstance(event, CallRetried):
                retried.append(event)
            elif isinstance(event, CallRequeued):
                requeued.append(event)

        crashes: list[CrashReport] = []
        recoveries: list[tuple[float, float]] = []
        reports: list[LoadReport] = []
        faults = FaultInjector(pool)

        async def load() -> None:
            reports.append(await run_load(pool, profile, FAULT_OPS, seed="faults"))

        unsubscribe = pool.subscribe(on_event)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                for k in range(1, s.kills + 1):
                    due = math.floor(k * offered / (s.kills + 1))
                    await wait_until(
                        partial(_reached, lambda: answered, due), pool=pool, timeout=s.faults + 30
                    )
                    await wait_until(lambda: any(w.load for w in pool.workers()), pool=pool)
                    killed_at = anyio.current_time()
                    crashes.append(await faults.crash(how="sigkill"))
                    await ensure_pool_ready(pool)
                    recoveries.append((killed_at, anyio.current_time()))
        finally:
            unsubscribe()
        [report] = reports
        run = _FaultRun(report, crashes, recoveries, failed, retried, requeued)
        _assert_only_killed_calls_failed(run)
        return run

    with anyio.fail_after(_deadline(profile, s.attempts)):
        async with _pool(poolkit_isolation) as pool:
            await _warm_up(pool, FAULT_OPS)
            run = await best_of(
                s.attempts,
                attempt,
                _FaultRun.problems,
                _describe_faults,
                lambda r: f"{summary(r.report, latency_of(r.steady()))}; recoveries {r.recovery_times()} s",
            )
            await ensure_pool_ready(pool)
            assert pool.statistics().workers_in(WorkerState.READY) == WORKERS
    # The kills hit calls: some failed, were retried or were requeued (not a vacuous pass).
    assert len(run.failed) + len(run.retried) + len(run.requeued) >= 1, _describe_faults(run)


def _reached(count: Callable[[], int], due: int) -> bool:
    return count() >= due


def _assert_only_killed_calls_failed(run: _FaultRun) -> None:
    report = run.report
    killed = {c.worker_id for c in run.crashes}
    assert [c.returncode for c in run.crashes] == [-9] * len(run.crashes)
    failed_kinds = dict(report.failed)
    assert set(failed_kinds) <= {FailureKind.CRASHED}, _describe_faults(run)
    assert report.failed_total <= len(run.crashes), _describe_faults(run)
    assert report.lost == 0 and report.sent == report.offered == len(report.outcomes), report
    assert report.completed + report.failed_total == report.offered, report
    failed_ops = [o.operation for o in report.outcomes if o.kind is not None]
    assert set(failed_ops) <= {"not idempotent"}, _describe_faults(run)
    crashed = all(e.worker_id in killed and e.kind is FailureKind.CRASHED for e in run.failed)
    assert crashed, _describe_faults(run)
    assert all(e.worker_id in killed for e in run.retried), _describe_faults(run)
    assert all(e.worker_id in killed for e in run.requeued), _describe_faults(run)


def _describe_faults(run: _FaultRun) -> str:
    return "\n".join(
        [
            str(run.report),
            f"kills: {[(c.worker_id, c.pid, c.returncode) for c in run.crashes]}",
            f"failed: {[(e.call, e.worker_id, e.kind.value, e.phase.value) for e in run.failed]}",
            f"retried: {[(e.call, e.worker_id, e.attempt) for e in run.retried]}",
            f"requeued: {len(run.requeued)}; answered {answered_rate(run.report):.1f}/s",
            f"recoveries (s): {run.recovery_times()}",
            f"latency outside recoveries: {latency_of(run.steady()).row()}",
        ]
    )
