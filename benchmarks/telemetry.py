"""What telemetry costs a pool's callers: off, a subscriber, an OpenTelemetry SDK (issue 5).

    python benchmarks/telemetry.py [--quick] [--rounds N] [--no-pin] [--output PATH | --no-save]

Configurations, measured side by side in one run (``--configs`` picks some):

* ``off``: no subscriber, no SDK (no providers passed; the global ones are the API's defaults).
  The baseline of every ratio.
* ``noemit``: ``off`` with the pool's ``Telemetry.emit`` replaced by a no-op. Not something a
  user can configure: an ablation, the floor. A ratio above 1 would be what ``off`` still pays
  for the events it emits with nobody observing (lifecycle events, logged).
* ``subscriber``: one no-op ``pool.subscribe(lambda e: None)``.
* ``sdk``: ``tracer_provider`` = SDK TracerProvider with a BatchSpanProcessor over an exporter
  that counts and discards spans; ``meter_provider`` = SDK MeterProvider with an
  InMemoryMetricReader.
* ``sdk+log``: ``sdk`` plus ``TelemetryPolicy(log_calls=True)``, structlog not configured (the
  DEBUG entries are built and dropped by the stdlib level filter: an application that did not
  turn poolkit's debug logging on).

Layers: ``subprocess`` (2 real worker processes: what users see) and ``bridge`` (2 in-process
fake workers speaking the real protocol: everything runs on the parent's CPU, so it shows the
parent-side cost most clearly; half the calls of the subprocess layer). Workloads:
``call x64`` (``await pool.call(operator.neg, i)`` from 64 tasks), ``map`` (``pool.map``, a call
per input, default concurrency) and ``call x1`` (one task, call after call: the workers go idle between
calls).

Method (benchmarks/README.md says why): every measurement gets a fresh pool and fresh SDK
providers, started and warmed up outside the timed region; each round runs every
configuration once per layer, in an order rotated each round; medians over rounds, min-max,
and the median of per-round ratios to ``off``. With two or more CPUs the parent is pinned to
one CPU and the workers to another (``--no-pin`` to not).

The check-cost section isolates what ``off`` pays (flag tests and events per call, counted on
an instrumented pool, times what one flag test and one lifecycle event cost) and what each
configuration's sinks cost per call (a call's events fed straight to a Telemetry).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import gc
import json
import operator
import os
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from poolkit import (
    CallCompleted,
    CallDispatched,
    CallQueued,
    Event,
    Pool,
    PoolConfig,
    TelemetryPolicy,
    WorkerState,
    WorkerStateChanged,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is a namespace package under ROOT
    sys.path.insert(0, str(ROOT))

from benchmarks import _machine  # noqa: E402
from benchmarks._machine import loadavg  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "telemetry.json"
CONFIGS = ("off", "noemit", "subscriber", "sdk", "sdk+log")
LAYERS = ("subprocess", "bridge")
BRIDGE_SCALE = 0.5  # the bridge layer runs this fraction of the calls (it is steadier)
# The trivial target, a callable sent by reference. A C function rather than one defined here,
# so workers never import this script (saves ~0.3 s per pool, and no worker loads the SDK).
TARGET = operator.neg


# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "call" or "map"
    calls: int
    tasks: int = 1

    def scaled(self, factor: float) -> Workload:
        return dataclasses.replace(self, calls=max(self.tasks, int(self.calls * factor)))


@dataclasses.dataclass(frozen=True)
class Pinning:
    parent: int  # the CPU the parent (and its threads) runs on
    workers: tuple[int, ...]  # each worker's CPU


@dataclasses.dataclass(frozen=True)
class Params:
    rounds: int
    workers: int
    backend: str
    pin: Pinning | None
    configs: tuple[str, ...]
    layers: tuple[str, ...]
    workloads: tuple[Workload, ...]  # the subprocess layer's; the bridge runs BRIDGE_SCALE of each
    sink_cycles: int  # calls fed to each sink setup (time_sinks)
    count_calls: int  # calls per workload on the instrumented pool (count_per_call)

    def workloads_for(self, layer: str) -> tuple[Workload, ...]:
        if layer == "bridge":
            return tuple(w.scaled(BRIDGE_SCALE) for w in self.workloads)
        return self.workloads


def make_params(args: argparse.Namespace) -> Params:
    scale = 0.2 if args.quick else 1.0
    calls = args.calls or int(10_000 * scale)
    return Params(
        rounds=args.rounds or (3 if args.quick else 5),
        workers=2,
        backend=args.backend,
        pin=None if args.no_pin else pin_plan(2),
        configs=tuple(c for c in CONFIGS if c in args.configs),
        layers=tuple(args.layers),
        workloads=(
            Workload(f"call x{args.tasks}", "call", calls, args.tasks),
            Workload("map", "map", calls // 2),
            Workload("call x1", "call", max(100, calls // 8), 1),
        ),
        sink_cycles=500 if args.quick else 4_000,
        count_calls=1_000 if args.quick else 3_000,
    )


# --------------------------------------------------------------------------- CPU pinning
def pin_plan(workers: int) -> Pinning | None:
    """The parent on one CPU, the workers on the others; None without two CPUs to pin to.

    On a 2-core machine the parent (the bottleneck) otherwise shares a core with a worker in
    some pools and not in others: identical runs come out at ~10k or ~21k calls/s, a
    bimodal noise far larger than the differences measured here."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    rest = cpus[1:]
    return Pinning(cpus[0], tuple(rest[i % len(rest)] for i in range(workers)))


def pin_workers(pool: Pool, pin: Pinning) -> None:
    for worker, cpu in zip(pool.statistics().workers, pin.workers, strict=False):
        if worker.pid is not None:
            os.sched_setaffinity(worker.pid, {cpu})


# --------------------------------------------------------------------------- configurations
class Sdk:
    """Fresh SDK providers for one measurement.

    Spans go through a BatchSpanProcessor (what production uses: ending a span enqueues it,
    a background thread exports) to an exporter that counts and discards them, so the figure
    is poolkit's instrumentation plus the SDK's own bookkeeping, not an exporter's I/O. Its
    queue holds every span of a measurement: at the default 2048 the SDK drops spans at these
    rates, which would flatter the figure. (SimpleSpanProcessor would export inline on the
    event loop, which nobody does in production; InMemorySpanExporter would grow all run.)
    """

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class DiscardExporter(SpanExporter):
            def __init__(self) -> None:
                self.spans = 0

            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                self.spans += len(spans)
                return SpanExportResult.SUCCESS

        self.exporter = DiscardExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.exporter, max_queue_size=1 << 16))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finish(self) -> dict[str, int]:
        """Flush, shut down, and say what reached the SDK (spans exported, calls counted)."""
        counted = 0
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "poolkit.calls":
                        counted += sum(int(getattr(p, "value", 0)) for p in metric.data.data_points)
        self.tracer_provider.shutdown()  # flushes the batch processor
        self.meter_provider.shutdown()
        return {"spans_exported": self.exporter.spans, "calls_counted": counted}


def make_pool(layer: str, config: str, workers: int, sdk: Sdk | None) -> Pool:
    launcher: Any = None
    if layer == "bridge":
        from poolkit.testing import BridgeLauncher  # imports pytest: only when needed

        launcher = BridgeLauncher()
    cfg = PoolConfig(
        name=f"bench-{layer}-{config}",
        min_workers=workers,
        kill_grace=0.2,
        telemetry=TelemetryPolicy(log_calls=config == "sdk+log"),
    )
    return Pool(
        cfg,
        launcher=launcher,
        tracer_provider=sdk.tracer_provider if sdk is not None else None,
        meter_provider=sdk.meter_provider if sdk is not None else None,
    )


def _drop(event: Event) -> None:
    return None


def configure(pool: Pool, config: str) -> None:
    """After start: add the subscriber / the no-op emit, then check that the pool is observed
    exactly as the configuration says (reads private attributes: a benchmark measuring the
    wrong thing would be worse than one that pokes)."""
    tel = pool._tel
    if config == "subscriber":
        pool.subscribe(lambda e: None)
    elif config == "noemit":
        tel.emit = _drop  # type: ignore[method-assign]
    want = {
        "off": (False, False, False),
        "noemit": (False, False, False),
        "subscriber": (True, False, False),
        "sdk": (True, True, True),
        "sdk+log": (True, True, True),
    }[config]
    got = (tel.calls, tel.traces is not None, tel.metrics is not None)
    if got != want:
        raise SystemExit(f"{config}: pool telemetry is (calls, traces, metrics) = {got}, expected {want}")


# --------------------------------------------------------------------------- workloads
async def run_calls(pool: Pool, calls: int, tasks: int) -> None:
    per_task, extra = divmod(calls, tasks)

    async def caller(count: int) -> None:
        for i in range(count):
            await pool.call(TARGET, i)

    async with anyio.create_task_group() as tg:
        for t in range(tasks):
            tg.start_soon(caller, per_task + (t < extra))


async def run_map(pool: Pool, calls: int) -> None:
    n = 0
    async for _ in pool.map(TARGET, range(calls), chunksize=1):  # per-call costs: no chunks
        n += 1
    assert n == calls


def workload_runner(pool: Pool, w: Workload) -> Callable[[], Awaitable[None]]:
    if w.kind == "map":
        return lambda: run_map(pool, w.calls)
    return lambda: run_calls(pool, w.calls, w.tasks)


async def warm_up(pool: Pool, tasks: int) -> None:
    """Every worker has run calls of every workload's shape before anything is timed."""
    await run_calls(pool, 4 * tasks, tasks)
    await run_map(pool, 64)
    await run_calls(pool, 16, 1)


@dataclasses.dataclass
class Measurement:
    elapsed: dict[str, float]  # workload name -> wall seconds
    cpu: dict[str, float]  # workload name -> the parent's CPU seconds (all its threads)
    sanity: dict[str, int]


async def measure(layer: str, config: str, params: Params, workloads: Sequence[Workload]) -> Measurement:
    sdk = Sdk() if config.startswith("sdk") else None
    pool = make_pool(layer, config, params.workers, sdk)
    elapsed: dict[str, float] = {}
    cpu: dict[str, float] = {}
    async with pool:
        if params.pin is not None and layer == "subprocess":
            pin_workers(pool, params.pin)
        configure(pool, config)
        await warm_up(pool, max(w.tasks for w in workloads))
        for w in workloads:
            run = workload_runner(pool, w)
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            await run()
            elapsed[w.name] = time.perf_counter() - t0
            cpu[w.name] = time.process_time() - c0
        completed = pool.statistics().completed
    sanity = {"completed": completed}
    if sdk is not None:
        sanity.update(sdk.finish())
        if sanity["spans_exported"] != completed or sanity["calls_counted"] != completed:
            print(f"  warning: {layer}/{config}: {sanity} (expected every completed call)", file=sys.stderr)
    return Measurement(elapsed, cpu, sanity)


# --------------------------------------------------------------------------- check cost
def counting_telemetry(pool: Pool) -> Any:
    """Replace ``pool``'s Telemetry (before start) with one that counts flag tests and emits."""
    from poolkit._telemetry import Telemetry

    class CountingTelemetry(Telemetry):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.checks = 0
            self.events: collections.Counter[str] = collections.Counter()
            super().__init__(*args, **kwargs)

        @property
        def calls(self) -> bool:
            self.checks += 1
            return bool(self.__dict__["_calls_flag"])

        @calls.setter
        def calls(self, value: bool) -> None:
            self.__dict__["_calls_flag"] = value

        def emit(self, event: Event) -> None:
            self.events[type(event).__name__] += 1
            super().emit(event)

    policy = pool.config.telemetry
    tel = CountingTelemetry(
        pool.name, log_calls=policy.log_calls, traces=policy.traces, metrics=policy.metrics
    )
    pool._tel = tel
    return tel


async def count_per_call(layer: str, params: Params, w: Workload) -> dict[str, Any]:
    pool = make_pool(layer, "off", params.workers, None)
    tel = counting_telemetry(pool)
    async with pool:
        if params.pin is not None and layer == "subprocess":
            pin_workers(pool, params.pin)
        configure(pool, "off")
        await warm_up(pool, w.tasks)
        tel.checks = 0
        tel.events.clear()
        await workload_runner(pool, w)()
        checks, events = tel.checks, dict(tel.events)
    return {
        "layer": layer,
        "workload": w.name,
        "calls": w.calls,
        "flag_tests_per_call": checks / w.calls,
        "events_per_call": sum(events.values()) / w.calls,
        "events": events,
    }


def time_unit_costs() -> dict[str, float]:
    """ns per ``if self._tel.calls:`` (the pool's test, ``self`` a local as in the pool), us per
    WorkerStateChanged built and emitted with nothing observing (what ``off`` pays each time a
    worker goes busy or idle: it goes to the log sink, which drops it at DEBUG)."""
    pool = make_pool("subprocess", "off", 1, None)  # never started: no process
    number, repeat = 1_000_000, 7
    g: dict[str, Any] = {"p": pool}
    flag = min(timeit.repeat("if s._tel.calls: pass", setup="s = p", globals=g, number=number, repeat=repeat))
    empty = min(timeit.repeat("pass", setup="s = p", globals=g, number=number, repeat=repeat))
    g = {"t": pool._tel, "W": WorkerStateChanged, "R": WorkerState.READY, "B": WorkerState.BUSY}
    build = "W(pool='bench', at=0.0, worker_id='w1', pid=1, from_state=R, to_state=B, reason='dispatch')"
    n = 20_000
    event = min(timeit.repeat(f"t.emit({build})", globals=g, number=n, repeat=repeat))
    built = min(timeit.repeat(build, globals=g, number=n, repeat=repeat))
    return {
        "flag_test_ns": max(0.0, flag - empty) / number * 1e9,
        "lifecycle_event_us": event / n * 1e6,
        "lifecycle_event_build_us": built / n * 1e6,
    }


SINK_SETUPS: dict[str, dict[str, Any]] = {
    "subscriber": {"subscriber": True},
    "traces": {"sdk": True, "metrics": False},
    "metrics": {"sdk": True, "traces": False},
    "sdk": {"sdk": True},
    "sdk+log": {"sdk": True, "log_calls": True},
}


def time_sinks(cycles: int) -> dict[str, float]:
    """us per call of the parent's telemetry work alone, by configuration: a successful call's
    events (CallQueued, CallDispatched, CallCompleted) built and emitted and its trace block
    packed, straight into a Telemetry set up as the pool sets up its own."""
    from poolkit._telemetry import Telemetry

    pool = make_pool("subprocess", "off", 1, None)  # never started: the metric gauges' owner
    target = "_operator:neg"
    out: dict[str, float] = {}
    for name, setup in SINK_SETUPS.items():
        best = float("inf")
        for _ in range(5):
            sdk = Sdk() if setup.get("sdk") else None
            tel = Telemetry(
                "bench",
                log_calls=setup.get("log_calls", False),
                traces=setup.get("traces", True),
                metrics=setup.get("metrics", True),
                tracer_provider=sdk.tracer_provider if sdk is not None else None,
                meter_provider=sdk.meter_provider if sdk is not None else None,
            )
            if sdk is None:  # the global providers are the API's: this finds nothing
                tel.subscribe(lambda e: None)
            tel.start(pool)
            assert tel.calls
            gc.collect()
            t0 = time.perf_counter()
            for i in range(cycles):
                tel.emit(CallQueued(pool="bench", at=0.0, call=i, target=target))
                tel.trace_block(i)
                tel.emit(CallDispatched(pool="bench", at=0.0, call=i, target=target, worker_id="w1"))
                tel.emit(
                    CallCompleted(
                        pool="bench",
                        at=0.0,
                        call=i,
                        target=target,
                        worker_id="w1",
                        duration=1e-4,
                        run_time=1e-5,
                        cpu_time=1e-5,
                    )
                )
            best = min(best, time.perf_counter() - t0)
            tel.stop()
            if sdk is not None:
                sdk.finish()
        out[name] = best / cycles * 1e6
    return out


# --------------------------------------------------------------------------- statistics
def summarize(samples: list[float]) -> dict[str, float]:
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "q1": q1,
        "q3": q3,
    }


def machine_info() -> dict[str, Any]:
    from opentelemetry import metrics, trace

    dists = ("poolkit", "anyio", "structlog", "opentelemetry-api", "opentelemetry-sdk", "trio")
    return {
        **_machine.machine_info(dists),
        "global_tracer_provider": type(trace.get_tracer_provider()).__qualname__,
        "global_meter_provider": type(metrics.get_meter_provider()).__qualname__,
    }


# --------------------------------------------------------------------------- main
@dataclasses.dataclass
class Raw:
    """What the event loop measured."""

    walls: dict[tuple[str, str, str], list[float]]  # (layer, workload, config) -> calls/s per round
    cpus: dict[tuple[str, str, str], list[float]]  # same -> parent CPU us per call per round
    sanity: list[dict[str, Any]]
    rounds_load: list[list[float]]
    counts: list[dict[str, Any]]


async def collect(params: Params, started: float) -> Raw:
    # One unrecorded run per layer with every sink on, small: first imports and first spans. (Each
    # measurement warms its own pool up too.)
    for layer in params.layers:
        await measure(layer, "sdk+log", params, [w.scaled(0.05) for w in params.workloads_for(layer)])
    raw = Raw(collections.defaultdict(list), collections.defaultdict(list), [], [], [])
    for r in range(params.rounds):
        k = r % len(params.configs)
        order = params.configs[k:] + params.configs[:k]
        for layer in params.layers:
            for config in order:
                m = await measure(layer, config, params, params.workloads_for(layer))
                for w in params.workloads_for(layer):
                    raw.walls[layer, w.name, config].append(w.calls / m.elapsed[w.name])
                    raw.cpus[layer, w.name, config].append(m.cpu[w.name] / w.calls * 1e6)
                raw.sanity.append({"round": r, "layer": layer, "config": config, **m.sanity})
        raw.rounds_load.append(loadavg())
        print(f"  round {r + 1}/{params.rounds} ({time.perf_counter() - started:.0f} s, load {loadavg()})")
    print("  check cost ...")
    for layer in params.layers:
        for w in params.workloads_for(layer):
            raw.counts.append(
                await count_per_call(layer, params, w.scaled(min(1.0, params.count_calls / w.calls)))
            )
    return raw


def results_of(params: Params, raw: Raw) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for layer in params.layers:
        for w in params.workloads_for(layer):
            base = raw.walls[layer, w.name, "off"]
            for config in params.configs:
                rates = raw.walls[layer, w.name, config]
                paired = [x / b for x, b in zip(rates, base, strict=True)]
                cpu = raw.cpus[layer, w.name, config]
                results.append(
                    {
                        "layer": layer,
                        "workload": w.name,
                        "config": config,
                        "calls": w.calls,
                        "tasks": w.tasks,
                        "unit": "calls/s",
                        "samples": [round(x, 1) for x in rates],
                        **{k: round(v, 1) for k, v in summarize(rates).items()},
                        "paired_ratios_vs_off": [round(x, 4) for x in paired],
                        "ratio_vs_off": round(statistics.median(paired), 4),
                        "overhead_us_per_call": round(
                            1e6 / statistics.median(rates) - 1e6 / statistics.median(base), 2
                        ),
                        "parent_cpu_us_per_call": {
                            "samples": [round(x, 2) for x in cpu],
                            **{k: round(v, 2) for k, v in summarize(cpu).items()},
                        },
                    }
                )
    return results


def estimate_off(results: list[dict[str, Any]], counts: list[dict[str, Any]], unit: dict[str, float]) -> None:
    """Add to each count what ``off`` pays per call: flag tests and events times their unit costs."""
    medians = {(e["layer"], e["workload"]): float(e["median"]) for e in results if e["config"] == "off"}
    for c in counts:
        per_call_us = 1e6 / medians[c["layer"], c["workload"]]
        cost_us = (
            c["flag_tests_per_call"] * unit["flag_test_ns"] / 1e3
            + c["events_per_call"] * unit["lifecycle_event_us"]
        )
        c["off_wall_us_per_call"] = round(per_call_us, 2)
        c["estimated_off_telemetry_us_per_call"] = round(cost_us, 3)
        c["estimated_off_share"] = round(cost_us / per_call_us, 4)


def main() -> None:
    args = parse_args()
    params = make_params(args)
    info = machine_info()
    started = time.perf_counter()
    load_start = loadavg()
    pin = params.pin
    if pin is not None:
        os.sched_setaffinity(0, {pin.parent})  # threads started later (the SDK's exporter) inherit it
    pinned = f"parent on CPU {pin.parent}, workers on {list(pin.workers)}" if pin else "no"
    print(
        f"poolkit telemetry benchmark: {params.rounds} rounds; configs {', '.join(params.configs)}; "
        f"{params.workers} workers; {info['cpu_count']} CPUs; Python {info['python']}; {params.backend}; "
        f"pinned: {pinned}; load {load_start}"
    )
    raw = anyio.run(collect, params, started, backend=params.backend)
    unit = time_unit_costs()
    sinks = time_sinks(params.sink_cycles)
    results = results_of(params, raw)
    estimate_off(results, raw.counts, unit)

    print_table(results)
    print_check_cost(unit, sinks, raw.counts)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s, load {loadavg()}")
    if args.no_save:
        return
    report = {
        "benchmark": "telemetry",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "parameters": {
            **dataclasses.asdict(params),
            "bridge_scale": BRIDGE_SCALE,
            "target": "operator.neg",
            "span_processor": "BatchSpanProcessor(max_queue_size=65536) over a discarding exporter",
            "metric_reader": "InMemoryMetricReader",
        },
        "load_average": {"start": load_start, "rounds": raw.rounds_load, "end": loadavg()},
        "duration_s": round(elapsed, 1),
        "results": results,
        "check_cost": {"unit_costs": unit, "sink_us_per_call": sinks, "off_per_call": raw.counts},
        "sanity": raw.sanity,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'layer':<10} {'workload':<8} {'config':<10} {'calls/s':>7} {'min-max':>15} "
        f"{'vs off [min-max]':>21} {'+us/call':>8} {'cpu us/call':>11}"
    )
    last = None
    for e in results:
        if last is not None and (e["layer"], e["workload"]) != last:
            print()
        last = (e["layer"], e["workload"])
        paired = e["paired_ratios_vs_off"]
        ratio = (
            f"{e['ratio_vs_off']:.3f} [{min(paired):.2f}-{max(paired):.2f}]" if e["config"] != "off" else ""
        )
        extra = f"{e['overhead_us_per_call']:+.1f}" if e["config"] != "off" else ""
        print(
            f"{e['layer']:<10} {e['workload']:<8} {e['config']:<10} {e['median']:>7,.0f} "
            f"{e['min']:>7,.0f}-{e['max']:<7,.0f} {ratio:>21} {extra:>8} "
            f"{e['parent_cpu_us_per_call']['median']:>11.1f}"
        )


def print_check_cost(unit: dict[str, float], sinks: dict[str, float], counts: list[dict[str, Any]]) -> None:
    print()
    print(
        f"check cost: one flag test {unit['flag_test_ns']:.1f} ns; one lifecycle event built and emitted "
        f"with nobody listening {unit['lifecycle_event_us']:.2f} us ({unit['lifecycle_event_build_us']:.2f} us "
        f"of it building it)"
    )
    print("what off pays per call (counted on an instrumented pool):")
    print(f"  {'layer':<10} {'workload':<8} {'tests':>5} {'events':>6} {'est. us':>7} {'of a call':>9}")
    for c in counts:
        print(
            f"  {c['layer']:<10} {c['workload']:<8} {c['flag_tests_per_call']:>5.2f} {c['events_per_call']:>6.3f} "
            f"{c['estimated_off_telemetry_us_per_call']:>7.3f} {100 * c['estimated_off_share']:>8.2f}%"
        )
    print(
        "sink work per call, parent side (3 call events + trace block, no pool): "
        + ", ".join(f"{k} {v:.1f} us" for k, v in sinks.items())
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the calls, 3 rounds (~20 s)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 5, --quick 3)")
    parser.add_argument(
        "--calls", type=int, default=0, help="calls of the concurrent workload (default 10000)"
    )
    parser.add_argument("--tasks", type=int, default=64, help="tasks of the concurrent workload")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--no-pin", action="store_true", help="do not pin the parent and workers to CPUs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if "off" not in args.configs:
        parser.error("--configs must include off (the baseline)")
    return args


if __name__ == "__main__":
    main()
