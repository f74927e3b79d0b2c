"""PoolMonitor (events, counts, gauges, exact percentiles) and the open-loop load generator
(schedules, operation mix, latency from the intended send time, error injection)."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from poolkit import (
    CallCompleted,
    CallDispatched,
    CallFailed,
    CallQueued,
    Event,
    FailureKind,
    Pool,
    PoolStateChanged,
    RemoteError,
    WorkerExited,
    WorkerState,
    WorkerStateChanged,
)
from poolkit.testing import (
    LatencySummary,
    Layer,
    LoadProfile,
    MockScript,
    Operation,
    PoolFactory,
    PoolMonitor,
    crashes,
    ensure_pool_ready,
    percentile,
    plan_load,
    pool_for,
    returns,
    run_load,
    scaled,
    targets,
    wait_until,
)
from poolkit.testing import _load as load_module

pytestmark = pytest.mark.anyio

LAYERS = pytest.mark.poolkit_layers("mock", "bridge")


def assert_gauges_match(monitor: PoolMonitor, pool: Pool) -> None:
    stats = pool.statistics()
    assert (monitor.queued, monitor.in_flight) == (stats.queued, stats.in_flight)
    for state in WorkerState:
        assert monitor.workers_in(state) == stats.workers_in(state), state


# ---------------------------------------------------------------------------- percentiles
def test_percentile_is_exact_nearest_rank() -> None:
    """percentile() is the nearest-rank percentile: always a data value, no interpolation."""
    data = [float(v) for v in range(1, 1001)]  # 1..1000, shuffled order must not matter
    shuffled = data[::-1]
    assert percentile(shuffled, 50) == 500.0
    assert percentile(shuffled, 90) == 900.0
    assert percentile(shuffled, 99) == 990.0
    assert percentile(shuffled, 99.9) == 999.0
    assert percentile(shuffled, 100) == 1000.0
    assert percentile(shuffled, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 51) == 3.0
    assert percentile([7.5], 99.9) == 7.5
    summary = LatencySummary.of(shuffled)
    assert (summary.count, summary.min, summary.p50, summary.p999, summary.max) == (1000, 1, 500, 999, 1000)
    assert summary.mean == 500.5
    assert LatencySummary.of([]).count == 0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 100.5)


@given(
    st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=200),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_is_monotone_and_bounded(values: list[float], q1: float, q2: float) -> None:
    """percentile(values, q) is a member of values, within [min, max], monotone in q, and at
    least q percent of the values are <= it."""
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    assert p_lo <= p_hi
    assert min(values) <= p_lo and p_hi <= max(values)
    assert p_lo in values
    assert sum(v <= p_hi for v in values) * 100 >= hi * len(values) - 1e-6


# ---------------------------------------------------------------------------- monitor
@LAYERS
async def test_monitor_counts_and_gauges_match_statistics(poolkit_pool_factory: PoolFactory) -> None:
    """Counts and gauges derived from events agree with pool.statistics(): while calls are
    queued and in flight, and after they all ended (completed and failed by kind)."""
    async with poolkit_pool_factory(min_workers=2, pipeline_depth=1) as pool:
        with PoolMonitor(pool) as monitor, anyio.fail_after(scaled(20)):
            assert monitor.workers_in(WorkerState.READY) == 2  # taken from the pool on subscribing

            async def call(target: Callable[..., Any], *args: Any) -> None:
                with contextlib.suppress(RemoteError):
                    await pool.call(target, *args)

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(call, targets.sleep, 0.3)
                await wait_until(
                    lambda: monitor.in_flight == 2 and monitor.queued == 3,
                    pool=pool,
                    describe="2 calls in flight, 3 queued",
                )
                assert_gauges_match(monitor, pool)
                assert monitor.workers_in(WorkerState.BUSY) == 2
                for _ in range(3):
                    tg.start_soon(call, targets.fail, "injected")
            stats = pool.statistics()
            assert (monitor.queued, monitor.in_flight) == (0, 0)
            assert_gauges_match(monitor, pool)
            assert monitor.count(CallQueued) == monitor.count(CallDispatched) == 8
            assert monitor.count(CallCompleted) == stats.completed == 5
            assert monitor.count(CallFailed) == stats.failed == 3
            assert monitor.failures(FailureKind.APPLICATION) == monitor.failures() == 3
            # a call counts in flight until its caller settles it, which can be after its worker
            # took the next one: the peak may exceed workers x pipeline depth
            assert monitor.summary().max_in_flight >= 2
            assert monitor.summary().max_queued >= 3
            assert len(monitor.events_of(CallFailed)) == 3
            assert all(e.kind is FailureKind.APPLICATION for e in monitor.events_of(CallFailed))
            assert len(monitor.latencies) == 8
            assert monitor.percentile(100) >= 0.3  # the calls that queued behind 0.3 s ones
            assert monitor.percentile(0) == min(monitor.latencies)


@pytest.mark.parametrize("layer", [Layer.MOCK, Layer.BRIDGE], ids=lambda layer: layer.value)
async def test_monitor_sees_a_pool_lifecycle(layer: Layer) -> None:
    """Subscribed before start, the monitor sees every worker start and exit: after close no
    worker is live and WorkerExited events equal worker_starts."""
    pool = pool_for(layer, min_workers=2)
    with PoolMonitor(pool) as monitor, anyio.fail_after(scaled(20)):
        async with pool:
            await ensure_pool_ready(pool)
            assert_gauges_match(monitor, pool)
            assert await pool.call(targets.echo, 1) == 1
    assert monitor.workers() == {}
    assert monitor.count(WorkerExited) == pool.statistics().worker_starts == 2
    assert [e.to_state.value for e in monitor.events_of(PoolStateChanged)] == [
        "starting",
        "running",
        "draining",
        "closed",
    ]
    assert monitor.count() == len(monitor.events)
    assert monitor.count(Event) >= monitor.count(WorkerStateChanged) > 0


@LAYERS
async def test_monitor_maxlen_bounds_events_not_counts(poolkit_pool_factory: PoolFactory) -> None:
    """maxlen keeps only the last events; counts and latencies still cover all of them. The
    async context manager unsubscribes on exit."""
    async with poolkit_pool_factory() as pool:
        async with PoolMonitor(pool, maxlen=3) as monitor:
            with anyio.fail_after(scaled(10)):
                for i in range(10):
                    assert await pool.call(targets.echo, i) == i
        assert not monitor.active
        assert len(monitor.events) == len(monitor) == 3
        assert monitor.count(CallQueued) == 10
        assert monitor.latency().count == 10
        before = monitor.count()
        await pool.call(targets.echo, "unobserved")
        assert monitor.count() == before
        text = str(monitor.summary())
        assert "CallCompleted" in text and "p99.9=" in text and "in flight" in text


# ---------------------------------------------------------------------------- schedules
def test_constant_schedule_is_evenly_spaced() -> None:
    """constant(rate, duration) intends floor(rate*duration) calls at k/rate; sustained is the same."""
    times = LoadProfile.constant(200, 1).schedule()
    assert len(times) == 200
    assert times == pytest.approx([k / 200 for k in range(200)])
    assert LoadProfile.sustained(200, 1).schedule() == times
    assert LoadProfile.constant(0, 1).schedule() == ()


def test_ramp_schedule_follows_the_integral_of_the_rate() -> None:
    """ramp(0 -> 100/s over 1 s): the k-th call is due when the expected count 50 t^2 reaches k;
    the gaps shrink as the rate rises, and a down-ramp mirrors it."""
    profile = LoadProfile.ramp(0, 100, 1)
    assert profile.expected_calls == 50
    times = profile.schedule()
    assert times == pytest.approx([math.sqrt(k / 50) for k in range(50)])
    assert sum(t < 0.5 for t in times) == 13  # 50 * 0.5^2 = 12.5 calls due in the first half
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(g2 < g1 for g1, g2 in itertools.pairwise(gaps))
    assert profile.rate_at(0.25) == 25
    down = LoadProfile.ramp(100, 0, 1).schedule()
    assert len(down) == 50
    assert sum(t < 0.5 for t in down) == 38  # 100 t - 50 t^2 = 37.5 at t = 0.5


def test_spike_schedule_concentrates_calls_in_the_spike() -> None:
    """spike(10/s, 200/s at 0.5 s for 0.1 s, 1 s): 20 calls inside the spike, base rate elsewhere."""
    profile = LoadProfile.spike(10, 200, at=0.5, width=0.1, duration=1)
    assert (profile.rate_at(0.4), profile.rate_at(0.55), profile.rate_at(0.7)) == (10, 200, 10)
    times = profile.schedule()
    assert len(times) == 29 == profile.expected_calls
    assert sum(t < 0.5 for t in times) == 5
    assert sum(0.5 <= t < 0.6 for t in times) == 20
    assert sum(t >= 0.6 for t in times) == 4
    assert list(times) == sorted(times)
    joined = LoadProfile.constant(10, 1).then(LoadProfile.constant(100, 0.5))
    assert len(joined.schedule()) == 60 and joined.duration == 1.5
    with pytest.raises(ValueError, match="within"):
        LoadProfile.spike(10, 200, at=0.95, width=0.1, duration=1)
    with pytest.raises(ValueError, match="rate"):
        LoadProfile.constant(-1, 1)
    with pytest.raises(ValueError, match="weight"):
        Operation(targets.echo, weight=0)


def test_seeds_make_plans_reproducible() -> None:
    """The same seed gives the same Poisson send times and operation mix; another seed does not;
    the mix follows the weights; changing the mix does not move the send times."""
    profile = LoadProfile.constant(1000, 10)
    poisson = profile.schedule(seed=7, arrivals="poisson")
    assert poisson == profile.schedule(seed=7, arrivals="poisson")
    assert poisson != profile.schedule(seed=8, arrivals="poisson")
    assert abs(len(poisson) - 10_000) < 400  # 4 standard deviations
    ops = [Operation(targets.echo, (1,), weight=9), Operation(targets.fail, weight=1)]
    plan = plan_load(profile, ops, seed=7)
    assert plan == plan_load(profile, ops, seed=7)
    assert [p.operation for p in plan] != [p.operation for p in plan_load(profile, ops, seed=8)]
    share = sum(p.operation is ops[1] for p in plan) / len(plan)
    assert 0.08 < share < 0.12
    other_mix = plan_load(profile, [*ops, Operation(targets.add, (1, 2))], seed=7)
    assert [p.at for p in other_mix] == [p.at for p in plan]


# ---------------------------------------------------------------------------- run_load
@LAYERS
async def test_load_at_200_per_second_completes_everything(poolkit_pool_factory: PoolFactory) -> None:
    """200 calls/s for 1 s: every offered call is sent and completes, none is lost, latency is
    measured from the intended send time, and the scheduler lag is reported."""
    async with poolkit_pool_factory(min_workers=2) as pool:
        with anyio.fail_after(scaled(30)):
            report = await run_load(pool, LoadProfile.constant(200, 1), seed=1)
    assert (report.offered, report.sent, report.completed, report.failed_total, report.lost) == (
        200,
        200,
        200,
        0,
        0,
    )
    assert report.offered_rate == 200
    assert report.throughput > 100
    assert report.latency.count == 200 == report.pool_latency.count
    assert report.max_lag >= report.mean_lag >= 0
    assert [o.index for o in report.outcomes] == list(range(200))
    assert all(o.latency == o.ended - o.intended >= o.ended - o.sent for o in report.outcomes)
    assert report.monitor.counts["CallQueued"] == 200 == report.monitor.completed
    text = str(report)
    for label in ("offered", "lost", "throughput", "p99.9=", "scheduler lag", "seed=1"):
        assert label in text


async def test_open_loop_latency_includes_queueing_that_closed_loop_hides() -> None:
    """One worker serving 20 ms calls offered 100/s for 0.5 s (twice its capacity), with room
    for one queued call: latency from the intended send time grows with the backlog (p99 far
    above the service time), while a closed loop and the pool's own admission-to-end timing,
    both of which start the clock only once the pool takes the call, stay near it."""
    service = 0.02
    pool = pool_for(Layer.BRIDGE, min_workers=1, pipeline_depth=1, max_queue=1)
    async with pool:
        await ensure_pool_ready(pool)
        with anyio.fail_after(scaled(30)):
            report = await run_load(
                pool, LoadProfile.constant(100, 0.5), [Operation(targets.sleep, (service,))]
            )
            closed_loop: list[float] = []
            for _ in range(20):
                start = anyio.current_time()
                await pool.call(targets.sleep, service)
                closed_loop.append(anyio.current_time() - start)
    assert report.completed == 50 and report.lost == 0
    assert report.latency.p99 > 10 * service
    assert report.latency.p99 > 3 * report.pool_latency.p99
    assert percentile(closed_loop, 99) < 5 * service
    # The worker ends calls every 20 ms whatever order the blocked callers get in (admission
    # is not FIFO), so the mean from intended time is fixed by the backlog: about 0.26 s.
    assert report.latency.mean > 5 * service


def test_open_loop_latency_is_exact_under_a_mock_clock() -> None:
    """On trio's MockClock, time only moves when everything waits, so the run is exact: call k,
    intended at 10 k ms, ends when the single worker finishes it at 20 (k + 1) ms, so its
    latency is exactly 20 + 10 k ms, and the scheduler is never late."""

    async def main() -> None:
        async with pool_for(Layer.BRIDGE, min_workers=1, pipeline_depth=1) as pool:
            await ensure_pool_ready(pool)
            report = await run_load(pool, LoadProfile.constant(100, 0.5), [Operation(targets.sleep, (0.02,))])
        assert [o.latency for o in report.outcomes] == pytest.approx([0.02 + 0.01 * k for k in range(50)])
        assert report.max_lag == 0
        assert report.latency.max == pytest.approx(0.51)
        assert report.latency.p50 == pytest.approx(0.26)

    wall = time.monotonic()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert time.monotonic() - wall < scaled(5)


@LAYERS
async def test_injected_errors_are_counted_by_kind(poolkit_pool_factory: PoolFactory) -> None:
    """Operations whose target fails (an application error) or overruns its timeout fail with
    those kinds, exactly as many as the seeded plan drew; the rest complete; none is lost."""
    ops = [
        Operation(targets.echo, ("ok",), weight=8),
        Operation(targets.fail, ("injected",), weight=2),
        Operation(targets.hang, weight=1, timeout=0.05, name="hang"),
    ]
    profile = LoadProfile.constant(100, 0.5)
    plan = plan_load(profile, ops, seed=3)
    drawn = {op.label: sum(p.operation is op for p in plan) for op in ops}
    assert all(drawn.values())
    async with poolkit_pool_factory(min_workers=2, kill_grace=0.2) as pool:
        with anyio.fail_after(scaled(30)):
            report = await run_load(pool, profile, ops, seed=3)
    assert report.lost == 0
    assert report.failed == {
        FailureKind.APPLICATION: drawn[ops[1].label],
        FailureKind.TIMEOUT: drawn["hang"],
    }
    assert report.completed == drawn[ops[0].label]
    assert {label: s.offered for label, s in report.operations.items()} == drawn
    assert report.monitor.failures == report.failed
    assert "application: " in str(report) and "timeout: " in str(report)


@LAYERS
async def test_drain_timeout_cancels_what_is_still_open(poolkit_pool_factory: PoolFactory) -> None:
    """With drain_timeout, calls still open after the last send are cancelled: they are
    reported as CANCELLED failures, not lost."""
    async with poolkit_pool_factory(min_workers=1) as pool:
        with anyio.fail_after(scaled(20)):
            report = await run_load(
                pool, LoadProfile.constant(50, 0.1), [Operation(targets.hang)], seed=0, drain_timeout=0.1
            )
    assert report.offered == 5
    assert report.failed == {FailureKind.CANCELLED: 5}
    assert report.lost == 0


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
async def test_operations_pass_idempotent_to_the_pool(idempotent: bool) -> None:
    """An Operation's ``idempotent`` goes to ``pool.call``: a call whose worker crashes under it
    is retried by the pool (and completes) when the operation is idempotent, and fails with
    CRASHED when it is not."""
    script = MockScript()
    script.on("*:echo").respond(crashes(), returns("ok"))
    op = Operation(targets.echo, ("x",), idempotent=idempotent)
    async with pool_for(Layer.MOCK, min_workers=2, script=script) as pool:
        await ensure_pool_ready(pool)
        with anyio.fail_after(scaled(30)):
            report = await run_load(pool, LoadProfile.constant(10, 0.1), [op], seed=0)
    assert (report.offered, report.lost) == (1, 0)
    if idempotent:
        assert (report.completed, report.failed) == (1, {})
        assert report.monitor.counts["CallRetried"] == 1
    else:
        assert (report.completed, report.failed) == (0, {FailureKind.CRASHED: 1})
        assert "CallRetried" not in report.monitor.counts


async def test_run_load_keeps_counts_not_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_load's own monitor keeps no event objects (a long run would hold millions, and the
    garbage collector's passes over them would stall the loop under measurement), while the
    report's counts and latencies still cover every call."""
    monitors: list[PoolMonitor] = []

    class Recording(PoolMonitor):
        def __init__(self, pool: Pool, *, maxlen: int | None = None) -> None:
            super().__init__(pool, maxlen=maxlen)
            monitors.append(self)

    monkeypatch.setattr(load_module, "PoolMonitor", Recording)
    async with pool_for(Layer.MOCK, min_workers=1) as pool:
        await ensure_pool_ready(pool)
        with anyio.fail_after(scaled(30)):
            report = await run_load(pool, LoadProfile.constant(100, 0.2), seed=0)
    [monitor] = monitors
    assert len(monitor) == 0 and not monitor.events
    assert monitor.count(CallQueued) == 20 == report.monitor.completed
    assert report.monitor.latency.count == 20
