"""Does dispatch stay flat as the pool grows? The cost per dispatch at N workers over 2 (issue 6).

    python benchmarks/scheduler_scaling.py [--quick] [--rounds N] [--workers 2 16 256] [--pin]
                                           [--output PATH | --no-save]

Issue 6: "Scheduler cost per dispatch flat as the pool grows: at 256 workers (bridge layer,
in-memory) at most 1.5x the cost at 2 workers." Three measurements per worker count, in one run:

* ``scheduler``: the pure decision (``poolkit._scheduler.Scheduler``) in a steady state, as the
  pool drives it: per call, a ``pick`` and an ``update`` for the dispatch and an ``update`` for
  the completion, with as many calls in flight as workers (half the capacity at depth 2).
  Nanoseconds per call.
* ``dispatch``: a bridge pool with N workers runs the workload; ``Pool._dispatch`` (every state
  change ends in it; it pops queued calls, asks the scheduler, submits to workers) is wrapped in
  a timer, and its total time is divided by the calls dispatched. Nanoseconds per call. This is
  the figure the target is about. The wrapper's two clock reads are in every configuration.
* ``call``: the same workload's wall time per call (the whole parent-side cost on the bridge
  layer, where fake workers share the parent's CPU), for context: more workers also means
  smaller write batches per worker, which is not the scheduler.

Workload: ``--calls`` (default 4,000) trivial calls from ``--tasks`` (default 512) tasks, so the
queue is long at 2 workers and every one of 256 workers has calls.

Method (benchmarks/README.md): a fresh pool per sample, started and warmed up outside the timed
region; rounds interleave the worker counts in an order rotated each round; medians over rounds,
min-max, and the median of the per-round ratios to the smallest worker count (paired within a
round, so slow drift cancels). Not pinned by default: everything is in one process, so there is
no parent/worker placement to fix (the reason telemetry.py pins), and on a shared 2-core machine
a pinned process cannot move away from a CPU another program is busy on (``--pin`` pins it to
the first CPU anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import operator
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from poolkit import Pool
from poolkit._scheduler import Scheduler
from poolkit.testing import Layer, ensure_pool_ready, pool_for

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is a namespace package under ROOT
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import loadavg, machine_info  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "scheduler_scaling.json"
MEASURES = ("scheduler", "dispatch", "call")
TARGET = operator.neg  # a C function sent by reference: workers import nothing for it
TARGET_RATIO = 1.5  # issue 6: at 256 workers at most 1.5x the cost at 2


@dataclasses.dataclass(frozen=True)
class Params:
    rounds: int
    workers: tuple[int, ...]
    calls: int
    tasks: int
    cycles: int  # scheduler cycles per sample
    backend: str
    pin: int | None  # the CPU the process runs on


# --------------------------------------------------------------------------- the scheduler alone
class _Handle:
    __slots__ = ()


def time_scheduler(workers: int, cycles: int, depth: int = 2) -> float:
    """Nanoseconds per call of the scheduler's work in a steady state (see the module doc)."""
    sched: Scheduler[_Handle] = Scheduler(depth)
    load: dict[_Handle, int] = {}
    for _ in range(workers):
        h = _Handle()
        load[h] = 0
        sched.update(h, 0)
    ring: list[_Handle] = []
    for _ in range(workers):
        w = sched.pick()
        assert w is not None
        load[w] += 1
        sched.update(w, load[w])
        ring.append(w)
    head = 0
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(cycles):
        w = sched.pick()
        assert w is not None
        n = load[w] = load[w] + 1
        sched.update(w, n)
        done = ring[head]
        ring[head] = w
        head = (head + 1) % workers
        n = load[done] = load[done] - 1
        sched.update(done, n)
    return (time.perf_counter_ns() - start) / cycles


# --------------------------------------------------------------------------- dispatch in a pool
async def run_calls(pool: Pool, calls: int, tasks: int) -> None:
    async def caller(count: int) -> None:
        for i in range(count):
            await pool.call(TARGET, i)

    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(caller, calls // tasks + (1 if k < calls % tasks else 0))


async def time_pool(workers: int, params: Params) -> dict[str, float]:
    """A fresh bridge pool of ``workers``: ns in ``_dispatch`` per dispatched call, and wall us per call."""
    async with pool_for(Layer.BRIDGE, min_workers=workers) as pool:
        await ensure_pool_ready(pool, timeout=120)
        await run_calls(pool, max(4 * workers, params.tasks), params.tasks)  # warm-up: every worker served
        inner = pool._dispatch
        spent = 0

        def timed_dispatch() -> None:
            nonlocal spent
            t = time.perf_counter_ns()
            inner()
            spent += time.perf_counter_ns() - t

        before = pool.statistics().completed
        gc.collect()
        pool._dispatch = timed_dispatch  # type: ignore[method-assign]
        start = time.perf_counter()
        try:
            await run_calls(pool, params.calls, params.tasks)
        finally:
            wall = time.perf_counter() - start
            pool._dispatch = inner  # type: ignore[method-assign]
        stats = pool.statistics()
        dispatched = stats.completed - before  # each call dispatched once: no fault, no retry
        if dispatched != params.calls or stats.failed:
            raise RuntimeError(f"{dispatched} calls completed of {params.calls}, {stats.failed} failed")
    return {"dispatch": spent / dispatched, "call": wall / params.calls * 1e6}


# --------------------------------------------------------------------------- rounds
async def collect(params: Params) -> tuple[dict[tuple[str, int], list[float]], list[list[float]]]:
    await time_pool(params.workers[0], dataclasses.replace(params, calls=params.tasks))  # first imports
    samples: dict[tuple[str, int], list[float]] = {(m, w): [] for m in MEASURES for w in params.workers}
    loads: list[list[float]] = []
    started = time.perf_counter()
    for r in range(params.rounds):
        k = r % len(params.workers)
        for workers in params.workers[k:] + params.workers[:k]:
            samples["scheduler", workers].append(time_scheduler(workers, params.cycles))
            measured = await time_pool(workers, params)
            samples["dispatch", workers].append(measured["dispatch"])
            samples["call", workers].append(measured["call"])
        loads.append(loadavg())
        print(f"  round {r + 1}/{params.rounds} ({time.perf_counter() - started:.0f} s, load {loadavg()})")
    return samples, loads


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def results_of(params: Params, samples: dict[tuple[str, int], list[float]]) -> list[dict[str, Any]]:
    base_workers = params.workers[0]
    results = []
    for measure in MEASURES:
        base = samples[measure, base_workers]
        for workers in params.workers:
            values = samples[measure, workers]
            paired = [v / b for v, b in zip(values, base, strict=True)]
            results.append(
                {
                    "measure": measure,
                    "workers": workers,
                    "unit": "us/call" if measure == "call" else "ns/call",
                    "samples": [round(v, 2) for v in values],
                    **{k: round(v, 2) for k, v in summarize(values).items()},
                    f"paired_ratios_vs_{base_workers}": [round(x, 4) for x in paired],
                    "ratio": round(statistics.median(paired), 4),
                    "ratio_min": round(min(paired), 4),
                    "ratio_max": round(max(paired), 4),
                }
            )
    return results


def print_table(params: Params, results: list[dict[str, Any]]) -> None:
    base = params.workers[0]
    print()
    print(
        f"{'measure':<10} {'workers':>7} {'median':>10} {'min-max':>19} {'vs ' + str(base) + ' [min-max]':>22}"
    )
    last = None
    for e in results:
        if last is not None and e["measure"] != last:
            print()
        last = e["measure"]
        unit = e["unit"].split("/")[0]
        print(
            f"{e['measure']:<10} {e['workers']:>7} {e['median']:>7.2f} {unit:<2} "
            f"{e['min']:>8.2f}-{e['max']:<9.2f} {e['ratio']:>8.3f} [{e['ratio_min']:.2f}-{e['ratio_max']:.2f}]"
        )
    top = max(params.workers)
    dispatch = next(e for e in results if e["measure"] == "dispatch" and e["workers"] == top)
    verdict = "holds" if dispatch["ratio"] <= TARGET_RATIO else "MISSED"
    print(
        f"\ntarget: dispatch at {top} workers <= {TARGET_RATIO}x the cost at {base}: "
        f"{dispatch['ratio']:.3f}x ({verdict})"
    )


# --------------------------------------------------------------------------- machine
def pin_cpu(pin: bool) -> int | None:
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0] if len(cpus) >= 2 else None


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, half the calls (~15 s)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 7, --quick 3)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 16, 64, 256], help="the first is the base"
    )
    parser.add_argument("--calls", type=int, default=0, help="calls per pool sample (default 4000)")
    parser.add_argument("--tasks", type=int, default=512, help="calling tasks")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--pin", action="store_true", help="pin the process to the first CPU")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    params = Params(
        rounds=args.rounds or (3 if args.quick else 7),
        workers=tuple(args.workers),
        calls=args.calls or (2_000 if args.quick else 4_000),
        tasks=args.tasks,
        cycles=100_000 if args.quick else 300_000,
        backend=args.backend,
        pin=pin_cpu(args.pin),
    )
    if params.pin is not None:
        os.sched_setaffinity(0, {params.pin})
    info = machine_info(("poolkit", "anyio", "trio"))
    load_start = loadavg()
    started = time.perf_counter()
    print(
        f"poolkit scheduler scaling: {params.rounds} rounds; workers {list(params.workers)}; "
        f"{params.calls} calls from {params.tasks} tasks per pool sample; {info['cpu_count']} CPUs; "
        f"Python {info['python']}; {params.backend}; pinned to CPU: {params.pin}; load {load_start}"
    )
    samples, loads = anyio.run(collect, params, backend=params.backend)
    results = results_of(params, samples)
    print_table(params, results)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s, load {loadavg()}")
    if args.no_save:
        return
    report = {
        "benchmark": "scheduler_scaling",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "parameters": {**dataclasses.asdict(params), "layer": "bridge", "target": "operator.neg"},
        "load_average": {"start": load_start, "rounds": loads, "end": loadavg()},
        "duration_s": round(elapsed, 1),
        "target": {"measure": "dispatch", "max_ratio": TARGET_RATIO},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
