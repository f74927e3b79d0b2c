"""Fast calls mixed with slow ones: what the adaptive pipeline window does to the fast calls'
latency tail, against a fixed pipeline depth (issue 6; docs/architecture.md).

    python benchmarks/mixed.py [--quick] [--rounds N] [--seconds S] [--output PATH | --no-save]

A pool of 2 real workers; ``--tasks`` (default 32) tasks call a trivial target back to back,
while one task calls a slow target (``time.sleep(0.05)``) every 250 ms. A deeper pipeline
helps the fast calls' throughput and median, but any fast call sent to a worker behind a slow
call waits for it, while the other worker may idle: that shows in the fast calls' p99.9. Each
configuration runs for ``--seconds`` (default 4):

* ``depth2``: ``PoolConfig(pipeline_depth=2)``, a fixed depth (no adaptation);
* ``adaptive``: the defaults (depth 2, adapting up to 32 while the held work is expected to take
  under 1 ms, from each target's measured run time).

Method (benchmarks/README.md): every sample in a fresh process with a fresh pool, started and
warmed up outside the timed region; rounds interleave the configurations in an order rotated
each round; medians over rounds with min-max, and ratios to ``depth2`` as the median of the
per-round ratios. Not pinned: the workers must be free to run on either CPU, as in production.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "mixed.json"
CONFIGS = ("depth2", "adaptive")
FAST = "operator:pos"  # a C function: the worker imports nothing for it
SLOW = "time:sleep"


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def _sample(config: str, seconds: float, tasks: int) -> dict[str, Any]:
    import anyio

    from poolkit import Pool, PoolConfig

    fields: dict[str, Any] = {"min_workers": 2}
    if config == "depth2":
        fields["pipeline_depth"] = 2
    fast: list[float] = []
    slow = 0
    async with Pool(PoolConfig(**fields)) as pool:
        for i in range(200):  # warm up: targets imported, estimates made
            await pool.call(FAST, i)
        await pool.call(SLOW, 0.05)
        stop = time.perf_counter() + seconds

        async def fast_caller() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                await pool.call(FAST, 1)
                fast.append(time.perf_counter() - start)

        async def slow_caller() -> None:
            nonlocal slow
            while time.perf_counter() < stop:
                await pool.call(SLOW, 0.05)
                slow += 1
                await anyio.sleep(0.2)

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(fast_caller)
            tg.start_soon(slow_caller)
        elapsed = time.perf_counter() - began
    fast.sort()
    return {
        "config": config,
        "fast_per_s": len(fast) / elapsed,
        "p50_ms": _quantile(fast, 0.5) * 1e3,
        "p99_ms": _quantile(fast, 0.99) * 1e3,
        "p999_ms": _quantile(fast, 0.999) * 1e3,
        "max_ms": fast[-1] * 1e3,
        "fast_calls": len(fast),
        "slow_calls": slow,
    }


def _run_one(config: str, seconds: float, tasks: int) -> dict[str, Any]:
    """One sample in a fresh process (the parent's state never carries over)."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", config, "--seconds", str(seconds), "--tasks", str(tasks)],
        capture_output=True,
        text=True,
        timeout=120 + seconds,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


FIELDS = ("fast_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms")


def _cell(summary: dict[str, Any], field: str, fmt: str) -> str:
    c = summary[field]
    return f"{c['median']:{fmt}} [{c['min']:{fmt}}-{c['max']:{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5, --quick 3)")
    parser.add_argument("--seconds", type=float, default=None, help="per sample (default 4, --quick 2)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    if args.one:
        import anyio

        print(json.dumps(anyio.run(_sample, args.one, seconds, args.tasks)))
        return
    rounds = args.rounds or (3 if args.quick else 5)
    samples: list[dict[str, Any]] = []
    began = time.time()
    print(
        f"mixed: {rounds} rounds of {seconds:g} s, {args.tasks} fast tasks + one 50 ms call every 250 ms; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for r in range(rounds):
        order = CONFIGS[r % 2 :] + CONFIGS[: r % 2]
        for config in order:
            sample = _run_one(config, seconds, args.tasks)
            sample["round"] = r
            samples.append(sample)
            print(
                f"  round {r + 1} {config:9s} {sample['fast_per_s']:8,.0f} fast/s  p99.9 {sample['p999_ms']:.2f} ms"
            )
    summary: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        mine = [s for s in samples if s["config"] == config]
        summary[config] = {
            f: {
                "median": statistics.median(s[f] for s in mine),
                "min": min(s[f] for s in mine),
                "max": max(s[f] for s in mine),
            }
            for f in FIELDS
        }
        ratios = []
        for r in range(rounds):
            base = next(s for s in samples if s["round"] == r and s["config"] == "depth2")
            this = next(s for s in samples if s["round"] == r and s["config"] == config)
            ratios.append({f: this[f] / base[f] for f in FIELDS})
        summary[config]["vs_depth2"] = {f: statistics.median(x[f] for x in ratios) for f in FIELDS}
    print(f"\n{'config':9s} {'fast calls/s':>22s} {'p50 ms':>16s} {'p99 ms':>16s} {'p99.9 ms':>18s}")
    for config in CONFIGS:
        s = summary[config]
        cells = [_cell(s, "fast_per_s", ",.0f"), _cell(s, "p50_ms", ".2f"), _cell(s, "p99_ms", ".2f")]
        print(
            f"{config:9s} {cells[0]:>22s} {cells[1]:>16s} {cells[2]:>16s} {_cell(s, 'p999_ms', '.2f'):>18s}   "
            f"x{s['vs_depth2']['fast_per_s']:.2f} calls/s, x{s['vs_depth2']['p999_ms']:.2f} p99.9 vs depth2"
        )
    if not args.no_save:
        report = {
            "benchmark": "mixed",
            "created": datetime.datetime.fromtimestamp(began, datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "parameters": {
                "rounds": rounds,
                "seconds": seconds,
                "tasks": args.tasks,
                "slow": "time.sleep(0.05) every 250 ms",
            },
            "load_end": os.getloadavg(),
            "samples": samples,
            "summary": summary,
        }
        args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
