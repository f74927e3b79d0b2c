"""poolkit side by side with its peers, in one run (issue 6): throughput, latency, recovery,
startup and memory.

    python benchmarks/peers.py [--quick] [--only NAME ...] [--rounds N] [--no-pin]
                               [--output PATH | --no-save]
    python benchmarks/peers.py --markdown [JSON ...] # the tables of a saved run, as markdown
    python benchmarks/peers.py --docs [JSON ...]     # ... put in docs/performance.md

Systems (``--only`` takes system and workload names, mixed; a name also selects the systems
named after it: ``poolkit`` is poolkit, poolkit.x64 and poolkit.map): poolkit (``await
pool.call`` from a task per call; ``poolkit.x64``: 64 tasks; ``poolkit.map``: its defaults,
adaptive chunks; ``poolkit.map1``: a call per input; ``poolkit.map256``), the raw-pipe reference
(``raw.pipelined``, ``raw.one``: a hand-written client and child exchanging length-prefixed
frames, the practical limit), concurrent.futures.ProcessPoolExecutor (``ppe``),
multiprocessing.Pool (``mp``: apply_async; ``mp.map``), loky, pebble, aiomultiprocess
(``aiomp``: apply; ``aiomp.map``), mpire (apply_async; ``mpire.map``) and anyio.to_process
(``anyio``). benchmarks/_peers/catalog.py lists them with what each runs and why not the rest.

Workloads: ``throughput`` (20,000 trivial calls submitted at once; small int and 1 KiB
payloads; 2 and 8 workers), ``latency`` (open loop, 1,000 calls/s for 10 s, measured from
each call's intended send time; 2 workers), ``recovery`` (a worker SIGKILLed mid-call: time to
the first call a new worker answers, and how every call in hand ended; 2 workers),
``startup`` (pools of 2 and 16 workers: first result, all workers running user code; then the
memory at rest: worker RSS/PSS/USS, parent growth), ``stuck`` (a call stuck in C code, ignoring
signals, with a 0.5 s timeout: when its caller is answered, when two workers serve calls at
once again, whether the stuck process is gone after the pool's close; 2 workers;
benchmarks/_peers/stuck.py).

Method (benchmarks/README.md says why): each measurement runs in a fresh process of its own
(``benchmarks/_peers/runner.py``) with a time limit, so a hung peer is killed with its process
tree and recorded as failed, and no system inherits another's state. Rounds are interleaved:
every round runs every selected system once per workload and size, in an order rotated each
round. Reported: medians over rounds, min-max, and the median of the per-round ratios to
poolkit (paired within a round). Throughput and latency pin the parent to one CPU and the
workers to the others (``--no-pin`` to not). ``--markdown`` and ``--docs`` take several saved
runs: each later one adds (or replaces) the workloads it ran, and the header names every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks._peers: run as a script, the repository root is not on the path
    sys.path.insert(0, str(ROOT))

from benchmarks import _machine  # noqa: E402
from benchmarks._machine import loadavg  # noqa: E402
from benchmarks._peers import common  # noqa: E402
from benchmarks._peers.catalog import BASELINE, BY_NAME, SYSTEMS, WORKLOADS  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "peers.json"
PEER_DISTS = ("poolkit", "anyio", "loky", "pebble", "aiomultiprocess", "mpire", "cloudpickle")
CHUNKED = ("mp.map", "mpire.map")  # maps that send many items per message: not per-call dispatch


# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class Params:
    rounds: dict[str, int]  # workload -> rounds
    systems: tuple[str, ...]
    workloads: tuple[str, ...]
    throughput_workers: tuple[int, ...]
    latency_workers: tuple[int, ...]
    recovery_workers: tuple[int, ...]
    startup_workers: tuple[int, ...]
    stuck_workers: tuple[int, ...]
    calls: int
    warmup: int
    payloads: tuple[str, ...]
    rate: float
    duration: float
    latency_warmup: float
    others: int  # recovery: calls waiting behind the victim and the blocker
    stuck_timeout: float  # stuck: the stuck call's timeout, seconds
    pin: dict[str, Any] | None  # {"parent": cpu, "workers": [cpu, ...]}
    pinned_workloads: tuple[str, ...]

    def sizes(self, workload: str) -> tuple[int, ...]:
        return {
            "throughput": self.throughput_workers,
            "latency": self.latency_workers,
            "recovery": self.recovery_workers,
            "startup": self.startup_workers,
            "stuck": self.stuck_workers,
        }[workload]


def make_params(args: argparse.Namespace) -> Params:
    systems, workloads = select(args.only)
    quick = args.quick
    rounds = (
        {"throughput": 2, "latency": 1, "recovery": 2, "startup": 1, "stuck": 1}
        if quick
        else {"throughput": 3, "latency": 3, "recovery": 5, "startup": 3, "stuck": 3}
    )
    if args.rounds:
        rounds = dict.fromkeys(rounds, args.rounds)
    return Params(
        rounds=rounds,
        systems=systems,
        workloads=workloads,
        throughput_workers=tuple(args.throughput_workers or ((2,) if quick else (2, 8))),
        latency_workers=tuple(args.latency_workers or (2,)),
        recovery_workers=(2,),
        startup_workers=(2, 16),
        stuck_workers=(2,),
        calls=args.calls or (5_000 if quick else 20_000),
        warmup=1_000 if quick else 2_000,
        payloads=("int", "1KiB"),
        rate=args.rate,
        duration=args.duration or (3.0 if quick else 10.0),
        latency_warmup=0.5 if quick else 1.0,
        others=8,
        stuck_timeout=0.5,
        pin=None if args.no_pin else pin_plan(),
        pinned_workloads=("throughput", "latency"),
    )


def select(only: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--only names: workloads, and systems; a name also selects the systems named after it
    (``poolkit``: poolkit and poolkit.map; ``raw``: raw.pipelined and raw.one)."""
    workloads = [w for w in only if w in WORKLOADS]
    names: list[str] = []
    for name in only:
        if name in WORKLOADS:
            continue
        matched = [s.name for s in SYSTEMS if s.name == name or s.name.startswith(name + ".")]
        if not matched:
            known = ", ".join([*WORKLOADS, *BY_NAME])
            raise SystemExit(f"--only: unknown name {name!r} (workloads and systems: {known})")
        names.extend(matched)
    systems = tuple(s.name for s in SYSTEMS if not names or s.name in names)
    return systems, tuple(w for w in WORKLOADS if not workloads or w in workloads)


def pin_plan() -> dict[str, Any] | None:
    """The parent on the first CPU, the workers on the others; None without two CPUs.

    On 2 cores, unpinned, the scheduler sometimes puts the parent (the bottleneck for most
    systems on trivial calls) on a core with a worker and sometimes not: runs of one system
    differ by more than the systems do (benchmarks/README.md)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {"parent": cpus[0], "workers": cpus[1:]}


def spec_for(params: Params, system: str, workload: str, workers: int) -> dict[str, Any]:
    return {
        "system": system,
        "workload": workload,
        "workers": workers,
        "calls": params.calls,
        "warmup": params.warmup,
        "payloads": list(params.payloads),
        "rate": params.rate,
        "duration": params.duration,
        "latency_warmup": params.latency_warmup,
        "others": params.others,
        "recovery_wait": 10.0,
        "settle_wait": 3.0,
        "rendezvous_per_worker": 2,
        "call_timeout": 120.0,
        # stuck (benchmarks/_peers/stuck.py): the stuck call's timeout and how long it would
        # sleep; the capacity probes' hold and window (from the answer); the bounds on the
        # warm-up, the answer and the pool's close; how long the stuck process may outlive it
        "stuck_timeout": params.stuck_timeout,
        "stuck_seconds": 60.0,
        "probe_hold": 0.01,
        "capacity_wait": 3.0,
        "warm_limit": 10.0,
        "answer_wait": 10.0,
        "close_wait": 5.0,
        "gone_wait": 3.0,
        "pin": params.pin if workload in params.pinned_workloads else None,
    }


def time_limit(params: Params, workload: str, workers: int) -> float:
    if workload == "latency":
        return params.duration + params.latency_warmup + 90
    if workload == "throughput":
        return 60 + params.calls / 1_000 * 4  # the slowest peers do ~5k calls/s, twice
    return 90.0


# --------------------------------------------------------------------------- running
def run_one(spec: dict[str, Any], limit: float) -> dict[str, Any]:
    """One runner process; its result, or a failure saying why there is none."""
    tmp = Path(tempfile.mkdtemp(prefix="peersbench-"))
    spec = {**spec, "tmpdir": str(tmp / "work")}
    (tmp / "work").mkdir()
    out, log = tmp / "result.json", tmp / "output.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    started = time.perf_counter()
    result: dict[str, Any]
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._peers.runner", json.dumps(spec), str(out)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            common.kill_tree([*common.descendants(proc.pid), proc.pid])
            proc.wait()
            timed_out = True
    # Whatever the runner left behind was re-parented to us (we are a subreaper): kill it.
    leftovers = common.clean_up()
    if timed_out:
        result = {"ok": False, "error": f"timed out after {limit:.0f} s: killed with its processes"}
    elif out.exists():
        result = json.loads(out.read_text(encoding="utf-8"))
    else:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        result = {"ok": False, "error": f"no result (exit code {proc.returncode}): {tail}"}
    if not result.get("ok"):
        result["output_tail"] = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    result["wall_s"] = round(time.perf_counter() - started, 2)
    result["left_behind"] = leftovers
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def plan(params: Params) -> list[tuple[int, str, int, str]]:
    """(round, workload, workers, system) in run order: round by round; within a round,
    workload by workload and size by size, the systems in an order rotated each round."""
    order: list[tuple[int, str, int, str]] = []
    for r in range(max(params.rounds[w] for w in params.workloads)):
        for workload in params.workloads:
            if r >= params.rounds[workload]:
                continue
            systems = [s for s in params.systems if BY_NAME[s].runs(workload)]
            if not systems:
                continue
            k = r % len(systems)
            rotated = systems[k:] + systems[:k]
            for workers in params.sizes(workload):
                order.extend((r, workload, workers, s) for s in rotated)
    return order


def collect(params: Params, started: float) -> tuple[list[dict[str, Any]], list[list[float]]]:
    samples: list[dict[str, Any]] = []
    loads: list[list[float]] = []
    todo = plan(params)
    last_round = -1
    for i, (r, workload, workers, system) in enumerate(todo):
        if r != last_round:
            if last_round >= 0:
                loads.append(loadavg())
                print(
                    f"  round {last_round + 1} done ({time.perf_counter() - started:.0f} s, load {loadavg()})"
                )
            last_round = r
        result = run_one(spec_for(params, system, workload, workers), time_limit(params, workload, workers))
        sample = {
            "round": r,
            "position": i,
            **result,
            "system": system,
            "workload": workload,
            "workers": workers,
        }
        samples.append(sample)
        status = "ok" if result.get("ok") else f"FAILED: {str(result.get('error'))[:200]}"
        print(
            f"  [{i + 1}/{len(todo)}] r{r + 1} {workload:<10} {system:<14} x{workers:<2} {result['wall_s']:>5.1f} s  {status}"
        )
    loads.append(loadavg())
    print(f"  round {last_round + 1} done ({time.perf_counter() - started:.0f} s, load {loadavg()})")
    return samples, loads


# --------------------------------------------------------------------------- statistics
def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ok(samples: list[dict[str, Any]], workload: str, system: str, workers: int) -> list[dict[str, Any]]:
    return [
        s
        for s in samples
        if s["workload"] == workload and s["system"] == system and s["workers"] == workers and s.get("ok")
    ]


def _failures(samples: list[dict[str, Any]], workload: str, system: str, workers: int) -> list[str]:
    return [
        str(s.get("error"))[:300]
        for s in samples
        if s["workload"] == workload and s["system"] == system and s["workers"] == workers and not s.get("ok")
    ]


def _paired(
    samples: list[dict[str, Any]],
    workload: str,
    system: str,
    workers: int,
    value: Callable[[dict[str, Any]], float | None],
) -> list[float]:
    """Per-round ratios value(system) / value(poolkit), rounds where both have a value."""
    base = {s["round"]: value(s) for s in _ok(samples, workload, BASELINE, workers)}
    out: list[float] = []
    for s in _ok(samples, workload, system, workers):
        v, b = value(s), base.get(s["round"])
        if v is not None and b:
            out.append(v / b)
    return out


def _cell(values: list[float], digits: int = 1) -> dict[str, Any] | None:
    if not values:
        return None
    return {k: round(v, digits) for k, v in spread(values).items()} | {"n": len(values)}


def summarize(params: Params, samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    summary: dict[str, list[dict[str, Any]]] = {w: [] for w in params.workloads}
    for workload in params.workloads:
        for workers in params.sizes(workload):
            for name in params.systems:
                system = BY_NAME[name]
                row: dict[str, Any] = {"system": name, "workers": workers, "what": system.what}
                if not system.runs(workload):
                    row["na"] = system.na[workload]
                else:
                    ok = _ok(samples, workload, name, workers)
                    row["failures"] = _failures(samples, workload, name, workers)
                    row.update(SUMMARIZERS[workload](params, samples, name, workers, ok))
                summary[workload].append(row)
    return summary


def _throughput(
    params: Params, samples: list[dict[str, Any]], name: str, workers: int, ok: list[dict[str, Any]]
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for payload in params.payloads:

        def rate(s: dict[str, Any], payload: str = payload) -> float | None:
            return float(s[payload]["calls_per_s"]) if payload in s else None

        rates = [v for v in map(rate, ok) if v is not None]
        ratios = _paired(samples, "throughput", name, workers, rate)
        row[payload] = {
            "calls_per_s": _cell(rates, 0),
            "samples": rates,
            "ratio_vs_poolkit": round(statistics.median(ratios), 3) if ratios else None,
            "paired_ratios": [round(x, 3) for x in ratios],
            "parent_cpu_us_per_call": _cell(
                [s[payload]["parent_cpu_us_per_call"] for s in ok if payload in s], 1
            ),
            "workers_cpu_us_per_call": _cell(
                [s[payload]["workers_cpu_us_per_call"] for s in ok if payload in s], 1
            ),
        }
    return row


def _latency(
    params: Params, samples: list[dict[str, Any]], name: str, workers: int, ok: list[dict[str, Any]]
) -> dict[str, Any]:
    row: dict[str, Any] = {"sent": sum(s["sent"] for s in ok), "completed": sum(s["completed"] for s in ok)}
    row["failed"] = sum(s["failed"] for s in ok)
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        values = [s["latency_us"][key] for s in ok if s["latency_us"]]
        row[key] = _cell(values, 0)
        row[f"{key}_samples"] = values
        ratios = _paired(samples, "latency", name, workers, functools.partial(_percentile, key))
        row[f"{key}_ratio_vs_poolkit"] = round(statistics.median(ratios), 3) if ratios else None
    row["send_lag_p50_us"] = _cell([s["send_lag_us"]["p50"] for s in ok], 0)
    row["send_lag_p99_us"] = _cell([s["send_lag_us"]["p99"] for s in ok], 0)
    return row


def _percentile(key: str, sample: dict[str, Any]) -> float | None:
    value = sample["latency_us"].get(key)
    return float(value) if value is not None else None


def _recovery(
    params: Params, samples: list[dict[str, Any]], name: str, workers: int, ok: list[dict[str, Any]]
) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [float(s[key]) for s in ok if s.get(key) is not None]

    outcomes = {
        "victim": sorted({s["victim"] for s in ok}),
        "blocker": sorted({s["blocker"] for s in ok}),
        "others_ok": sum(s["others_ok"] for s in ok),
        "others_failed": sum(s["others_failed"] for s in ok),
        "others_lost": sum(s["others_lost"] for s in ok),
        "others": sum(s["others"] for s in ok),
        "others_failures": sorted({k for s in ok for k in s["others_failures"]}),
        "resent": sum(s["resent"] for s in ok if s.get("resent") is not None)
        if any(s.get("resent") is not None for s in ok)
        else None,
        "replacement_via": sorted({s["replacement_via"] for s in ok if s.get("replacement_via")}),
        "runs_without_replacement": sum(1 for s in ok if s.get("replacement_ms") is None),
    }
    ratios = _paired(samples, "recovery", name, workers, lambda s: s.get("replacement_ms"))
    return {
        "replacement_ms": _cell(values("replacement_ms")),
        "replacement_samples": values("replacement_ms"),
        "replacement_ratio_vs_poolkit": round(statistics.median(ratios), 3) if ratios else None,
        "detect_ms": _cell(values("detect_ms")),
        "runs": len(ok),
        **outcomes,
    }


def _startup(
    params: Params, samples: list[dict[str, Any]], name: str, workers: int, ok: list[dict[str, Any]]
) -> dict[str, Any]:
    def kib(field: str, who: str) -> list[float]:
        return [float(w[field]) for s in ok for w in s[who] if field in w]

    first = [s["first_result_ms"] for s in ok]
    ready = [s["all_ready_ms"] for s in ok if s.get("all_ready_ms") is not None]
    growth = [s["parent_after_kib"]["VmRSS"] - s["parent_before_kib"]["VmRSS"] for s in ok]
    return {
        "first_result_ms": _cell(first),
        "first_result_samples": first,
        "all_ready_ms": _cell(ready),
        "all_ready_samples": ready,
        "all_ready_ratio_vs_poolkit": _median_or_none(
            _paired(samples, "startup", name, workers, lambda s: s.get("all_ready_ms"))
        ),
        "worker_rss_kib": _cell(kib("VmRSS", "workers_kib"), 0),
        "worker_pss_kib": _cell(kib("Pss", "workers_kib"), 0),
        "worker_uss_kib": _cell(kib("Uss", "workers_kib"), 0),
        "parent_growth_kib": _cell([float(g) for g in growth], 0),
        "parent_threads_after": _cell([float(s["parent_after_kib"].get("Threads", 0)) for s in ok], 0),
        "helper_processes": _cell([float(len(s["helpers_kib"])) for s in ok], 0),
        "helpers_rss_kib": _cell([float(sum(h.get("VmRSS", 0) for h in s["helpers_kib"])) for s in ok], 0),
        "start_method": ok[0]["describe"].get("start_method") if ok else None,
    }


def _median_or_none(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _stuck(
    params: Params, samples: list[dict[str, Any]], name: str, workers: int, ok: list[dict[str, Any]]
) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [float(s[key]) for s in ok if s.get(key) is not None]

    def runs(key: str) -> int:
        return sum(1 for s in ok if s.get(key))

    return {
        "give_up": ok[0]["give_up"] if ok else None,
        "timeout_s": ok[0]["timeout_s"] if ok else params.stuck_timeout,
        "capacity_wait_s": ok[0].get("capacity_wait_s") if ok else None,
        "answers": sorted({s["answer"] for s in ok}),
        "late_outcomes": sorted({x for s in ok for x in s.get("late_outcome", [])}),
        "answered_ms": _cell(values("answered_ms")),
        "answered_samples": values("answered_ms"),
        "answered_ratio_vs_poolkit": _median_or_none(
            _paired(samples, "stuck", name, workers, lambda s: s.get("answered_ms"))
        ),
        "capacity_ms": _cell(values("capacity_ms")),
        "capacity_samples": values("capacity_ms"),
        "capacity_after_answer_ms": _cell(values("capacity_after_answer_ms")),
        "capacity_after_answer_samples": values("capacity_after_answer_ms"),
        "runs_without_capacity": sum(1 for s in ok if s.get("capacity_ms") is None),
        "self_reported_ms": _cell(values("self_reported_ms")),
        "stuck_dead_ms": _cell(values("stuck_dead_ms")),
        "runs_stuck_never_died": sum(1 for s in ok if s.get("stuck_dead_ms") is None),
        "runs_alive_after_close": runs("stuck_alive_after_close"),
        "orphans": runs("orphan"),
        "close_ms": _cell(values("close_ms")),
        "close_hung": runs("close_hung"),
        "runs": len(ok),
    }


SUMMARIZERS: dict[
    str, Callable[[Params, list[dict[str, Any]], str, int, list[dict[str, Any]]], dict[str, Any]]
] = {
    "throughput": _throughput,
    "latency": _latency,
    "recovery": _recovery,
    "startup": _startup,
    "stuck": _stuck,
}


def memory_slopes(summary: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Parent RSS growth split into a fixed part and a per-worker part, from the pools of 2
    and of 16: (growth(16) - growth(2)) / 14 per worker."""
    rows = summary.get("startup", [])
    by = {(r["system"], r["workers"]): r for r in rows if "na" not in r and r.get("parent_growth_kib")}
    out = []
    for name in dict.fromkeys(r["system"] for r in rows):
        small, big = by.get((name, 2)), by.get((name, 16))
        if small is None or big is None:
            continue
        g2, g16 = small["parent_growth_kib"]["median"], big["parent_growth_kib"]["median"]
        per_worker = (g16 - g2) / 14
        out.append(
            {
                "system": name,
                "parent_growth_2_kib": g2,
                "parent_growth_16_kib": g16,
                "parent_per_worker_kib": round(per_worker, 1),
                "parent_fixed_kib": round(g2 - 2 * per_worker, 0),
            }
        )
    return out


# --------------------------------------------------------------------------- targets
# The raw.async row in the same calling shape as each per-call poolkit row.
_THROUGHPUT_YARDSTICK = {"poolkit": "raw.async", "poolkit.x64": "raw.async.x64"}


def targets(summary: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures (ratios in the same run)."""
    out: list[dict[str, Any]] = []

    def row(target: str, measured: str, met: bool | None, note: str = "") -> None:
        out.append({"target": target, "measured": measured, "met": met, "note": note})

    tp = {r["system"]: r for r in summary.get("throughput", []) if r["workers"] == 2 and "na" not in r}

    def rate(name: str, payload: str = "int") -> float | None:
        cell = tp.get(name, {}).get(payload, {}).get("calls_per_s")
        return float(cell["median"]) if cell else None

    for mine in ("poolkit", "poolkit.x64", "poolkit.map", "poolkit.map1", "poolkit.map256"):
        mine_rate = rate(mine)
        if mine_rate is None:
            continue
        peers: dict[str, float] = {}
        chunked: dict[str, float] = {}
        for name in tp:
            value = rate(name)
            if value is None or name.startswith(("poolkit", "raw.")):
                continue
            (chunked if name in CHUNKED else peers)[name] = value
        if peers:
            best = max(peers, key=peers.__getitem__)
            ratio = mine_rate / peers[best]
            row(
                f"throughput, 2 workers, int: `{mine}` ahead of every peer (per-call APIs)",
                f"{mine_rate:,.0f} calls/s; best peer {best} {peers[best]:,.0f}: x{ratio:.2f}",
                ratio > 1,
            )
        if chunked:
            best = max(chunked, key=chunked.__getitem__)
            row(
                f"throughput, 2 workers, int: `{mine}` ahead of the chunked maps too",
                f"{best} {chunked[best]:,.0f} calls/s: x{mine_rate / chunked[best]:.2f}",
                mine_rate > chunked[best],
                "many items per message: no per-call result, timeout or failure",
            )
        raw = rate("raw.pipelined")
        if raw:
            row(
                f"throughput, 2 workers, int: `{mine}` at least half of raw pipe pipelined",
                f"{mine_rate:,.0f} / {raw:,.0f} = {mine_rate / raw:.2f}",
                mine_rate / raw >= 0.5,
            )
        yard_name = _THROUGHPUT_YARDSTICK.get(mine)
        yard_rate = rate(yard_name) if yard_name else None
        if yard_rate:
            row(
                f"throughput, 2 workers, int: `{mine}` against the asyncio yardstick ({yard_name})",
                f"{mine_rate:,.0f} / {yard_rate:,.0f} = {mine_rate / yard_rate:.2f}"
                + (f"; {yard_name} itself is {yard_rate / raw:.2f} of raw pipe pipelined" if raw else ""),
                None,
                "for scale, not a target: the least an awaited call costs, in the same shape",
            )

    lat = {r["system"]: r for r in summary.get("latency", []) if r["workers"] == 2 and "na" not in r}
    mine_row, raw_row = lat.get("poolkit"), lat.get("raw.pipelined")
    for key in ("p50", "p99"):
        if mine_row and raw_row and mine_row.get(key) and raw_row.get(key):
            m, r = mine_row[key]["median"], raw_row[key]["median"]
            row(
                f"latency at 1,000 calls/s: {key} within 1.2x of raw pipe",
                f"{m:,.0f} / {r:,.0f} us = {m / r:.2f}",
                m / r <= 1.2,
            )
        yard = lat.get("raw.async")
        if mine_row and yard and mine_row.get(key) and yard.get(key):
            m, y = mine_row[key]["median"], yard[key]["median"]
            row(
                f"latency at 1,000 calls/s: {key} against the asyncio yardstick (raw.async)",
                f"{m:,.0f} / {y:,.0f} us = {m / y:.2f}",
                None,
                "for scale, not a target: the same children from asyncio, through the same harness",
            )
        if mine_row and mine_row.get(key):
            m = mine_row[key]["median"]
            lat_peers: dict[str, float] = {
                n: r[key]["median"]
                for n, r in lat.items()
                if n != "poolkit" and not n.startswith("raw.") and r.get(key) is not None
            }
            if lat_peers:
                best = min(lat_peers, key=lat_peers.__getitem__)
                row(
                    f"latency at 1,000 calls/s: {key} below every peer's",
                    f"{m:,.0f} us; lowest peer {best} {lat_peers[best]:,.0f} us",
                    m < lat_peers[best],
                )

    rec = {r["system"]: r for r in summary.get("recovery", []) if "na" not in r}
    pk = rec.get("poolkit")
    if pk and pk.get("runs"):
        only_victim = (
            all(v.startswith("failed") for v in pk["victim"])
            and pk["blocker"] == ["ok"]
            and pk["others_failed"] == 0
            and pk["others_lost"] == 0
        )
        row(
            "recovery: only the killed call fails",
            f"victim {', '.join(pk['victim'])}; blocker {', '.join(pk['blocker'])}; others "
            f"{pk['others_ok']}/{pk['others']} ok, {pk['others_failed']} failed, {pk['others_lost']} lost"
            + (f", {pk['resent']} re-sent" if pk.get("resent") is not None else ""),
            only_victim,
        )
        if pk.get("replacement_ms"):
            ms = pk["replacement_ms"]["median"]
            row(
                "recovery: the replacement serves its first call within 50 ms",
                f"{ms:.0f} ms (from the SIGKILL)",
                ms <= 50,
            )
    zy = rec.get("poolkit.zygote")
    if zy and zy.get("replacement_ms"):
        ms = zy["replacement_ms"]["median"]
        row(
            "recovery: the replacement serves its first call within 50 ms (start_method='zygote')",
            f"{ms:.0f} ms (from the SIGKILL)",
            ms <= 50,
        )

    start = {(r["system"], r["workers"]): r for r in summary.get("startup", []) if "na" not in r}
    s16 = start.get(("poolkit", 16))
    if s16 and s16.get("all_ready_ms"):
        ms = s16["all_ready_ms"]["median"]
        row("startup: 16 workers ready to serve in under 1 s", f"{ms:.0f} ms", ms < 1000)
    s2 = start.get(("poolkit", 2))
    if s2 and s2.get("worker_rss_kib"):
        kib = s2["worker_rss_kib"]["median"]
        uss = s2["worker_uss_kib"]["median"] if s2.get("worker_uss_kib") else None
        row(
            "memory: worker RSS at rest under 20 MiB",
            f"VmRSS {kib / 1024:.1f} MiB" + (f" (USS {uss / 1024:.1f} MiB)" if uss else ""),
            kib < 20 * 1024,
        )
    answered_target = "a call stuck in C code (ignoring signals) is answered within its timeout + 100 ms"
    capacity_target = "... and the pool's capacity is back within another 100 ms"
    stuck = {r["system"]: r for r in summary.get("stuck", []) if "na" not in r}.get("poolkit")
    if stuck and stuck.get("answered_ms"):
        timeout_ms = stuck["timeout_s"] * 1e3
        ms = stuck["answered_ms"]["median"]
        row(
            answered_target,
            f"{ms:,.0f} ms [{stuck['answered_ms']['min']:,.0f}-{stuck['answered_ms']['max']:,.0f}] "
            f"for a {timeout_ms:,.0f} ms timeout: +{ms - timeout_ms:,.0f} ms; {', '.join(stuck['answers'])}",
            ms - timeout_ms <= 100,
        )
        after = stuck["capacity_after_answer_ms"]
        missing = stuck["runs_without_capacity"]
        row(
            capacity_target,
            (f"{_fmt(after)} ms after the answer (two workers serving at once)" if after else "never")
            + (
                f"; {missing}/{stuck['runs']} runs: not within {stuck['capacity_wait_s']:g} s"
                if missing
                else ""
            ),
            bool(after) and not missing and after["median"] <= 100,
        )
    else:
        row(answered_target, "not in this run (`--only stuck`)", None)
        row(capacity_target, "not in this run (`--only stuck`)", None)
    for target, where in (
        (
            "scheduler cost per dispatch at 256 workers at most 1.5x that at 2",
            "benchmarks/scheduler_scaling.py (bridge layer)",
        ),
        ("telemetry off costs nothing measurable", "benchmarks/telemetry.py (docs/telemetry.md)"),
    ):
        row(target, where, None)
    return out


# --------------------------------------------------------------------------- output
def _fmt(cell: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    if not cell:
        return "-"
    return f"{fmt.format(cell['median'])} [{fmt.format(cell['min'])}-{fmt.format(cell['max'])}]"


def _ratio(x: float | None) -> str:
    return f"x{x:.2f}" if x is not None else ""


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table: the stdout report and docs/performance.md."""
    summary = report["summary"]
    out: list[tuple[str, list[str], list[list[str]]]] = []
    payloads = report["parameters"]["payloads"]
    ran = report["parameters"]["workloads"]
    for workers in report["parameters"]["throughput_workers"] if "throughput" in ran else ():
        rows = []
        for r in summary.get("throughput", []):
            if r["workers"] != workers:
                continue
            if "na" in r:
                continue  # listed in the n/a table
            cells: list[str] = []
            for p in payloads:
                cells += [_fmt(r[p]["calls_per_s"]), _ratio(r[p]["ratio_vs_poolkit"])]
            cpu = r[payloads[0]]
            cells.append(
                f"{_fmt(cpu['parent_cpu_us_per_call'], '{:.1f}').split(' ')[0]} / "
                f"{_fmt(cpu['workers_cpu_us_per_call'], '{:.1f}').split(' ')[0]}"
                if cpu["parent_cpu_us_per_call"]
                else "-"
            )
            cells.append("; ".join(r["failures"])[:120])
            rows.append([r["system"], *cells])
        header = ["system"]
        for p in payloads:
            header += [f"{p} calls/s [min-max]", "x poolkit"]
        header += ["cpu us/call parent / workers (int)", "failures"]
        if not any(row[-1] for row in rows):  # no failures: no column
            header, rows = header[:-1], [row[:-1] for row in rows]
        out.append(
            (f"Throughput: {report['parameters']['calls']:,} calls at once, {workers} workers", header, rows)
        )

    for workers in report["parameters"]["latency_workers"] if "latency" in ran else ():
        rows = []
        for r in summary.get("latency", []):
            if r["workers"] != workers:
                continue
            if "na" in r:
                continue  # listed in the n/a table
            rows.append(
                [
                    r["system"],
                    _fmt(r["p50"]),
                    _ratio(r["p50_ratio_vs_poolkit"]),
                    _fmt(r["p90"]),
                    _fmt(r["p99"]),
                    _ratio(r["p99_ratio_vs_poolkit"]),
                    _fmt(r["p99.9"]),
                    _fmt(r["max"]),
                    f"{r['completed']}/{r['sent']} done, {r['failed']} failed"
                    + (f"; {'; '.join(r['failures'])[:100]}" if r["failures"] else ""),
                ]
            )
        header = [
            "system",
            "p50 us",
            "x poolkit",
            "p90 us",
            "p99 us",
            "x poolkit",
            "p99.9 us",
            "max us",
            "calls",
        ]
        title = (
            f"Latency: open loop {report['parameters']['rate']:,.0f} calls/s for {report['parameters']['duration']:.0f} s, "
            f"{workers} workers (from the intended send time; median [min-max] over rounds)"
        )
        out.append((title, header, rows))

    rows = []
    for r in summary.get("recovery", []):
        if "na" in r:
            continue  # listed in the n/a table
        how = (
            ", ".join(r["replacement_via"])
            if r["replacement_via"] and r["replacement_via"] != ["pool"]
            else ""
        )
        missing = (
            f"{r['runs_without_replacement']}/{r['runs']} runs: none" if r["runs_without_replacement"] else ""
        )
        others = f"{r['others_ok']} ok, {r['others_failed']} failed, {r['others_lost']} lost of {r['others']}"
        if r.get("resent") is not None:
            others += f"; {r['resent']} re-sent"
        rows.append(
            [
                r["system"],
                _fmt(r["replacement_ms"]) if r["replacement_ms"] else (missing or "-"),
                _ratio(r["replacement_ratio_vs_poolkit"]),
                _fmt(r["detect_ms"], "{:.1f}"),
                ", ".join(r["victim"]) or "-",
                ", ".join(r["blocker"]) or "-",
                "; ".join(
                    x
                    for x in (
                        others,
                        how,
                        missing if r["replacement_ms"] else "",
                        "; ".join(r["failures"])[:80],
                    )
                    if x
                ),
            ]
        )
    header = [
        "system",
        "first call by a new worker, ms",
        "x poolkit",
        "victim failed after, ms",
        "victim",
        "blocker",
        "other calls",
    ]
    if "recovery" in ran:
        out.append(("Recovery: a worker SIGKILLed mid-call, 2 workers", header, rows))

    if "stuck" in ran:
        out.append(_stuck_table(summary.get("stuck", [])))

    for workers in report["parameters"]["startup_workers"] if "startup" in ran else ():
        rows = []
        for r in summary.get("startup", []):
            if r["workers"] != workers:
                continue
            if "na" in r:
                continue  # listed in the n/a table
            mem = [r.get(k) for k in ("worker_rss_kib", "worker_pss_kib", "worker_uss_kib")]
            rows.append(
                [
                    r["system"],
                    _fmt(r["first_result_ms"]),
                    _fmt(r["all_ready_ms"]),
                    _ratio(r["all_ready_ratio_vs_poolkit"]),
                    " / ".join(f"{m['median'] / 1024:.1f}" if m else "-" for m in mem),
                    f"{r['parent_growth_kib']['median'] / 1024:.1f}" if r["parent_growth_kib"] else "-",
                    (
                        f"{r['helper_processes']['median']:.0f} ({r['helpers_rss_kib']['median'] / 1024:.0f} MiB)"
                        if r["helper_processes"] and r["helper_processes"]["median"]
                        else "0"
                    ),
                    f"{r['start_method'] or ''}"
                    + (f"; {'; '.join(r['failures'])[:80]}" if r["failures"] else ""),
                ]
            )
        header = [
            "system",
            "first result ms",
            "all running user code ms",
            "x poolkit",
            "worker MiB RSS / PSS / USS",
            "parent +MiB",
            "helper processes",
            "start method",
        ]
        out.append((f"Startup and memory at rest: pool of {workers}", header, rows))

    slopes = report.get("memory_slopes", [])
    if slopes:
        rows = [
            [
                s["system"],
                f"{s['parent_growth_2_kib'] / 1024:.1f}",
                f"{s['parent_growth_16_kib'] / 1024:.1f}",
                f"{s['parent_per_worker_kib']:.0f}",
                f"{s['parent_fixed_kib'] / 1024:.1f}",
            ]
            for s in slopes
        ]
        header = ["system", "parent +MiB, pool of 2", "pool of 16", "KiB per worker", "fixed MiB"]
        out.append(("Parent memory: fixed cost and cost per worker (medians)", header, rows))

    na: dict[tuple[str, str], list[str]] = {}
    for workload in ran:
        for r in summary.get(workload, []):
            if "na" in r:
                workloads = na.setdefault((r["system"], r["na"]), [])
                if workload not in workloads:
                    workloads.append(workload)
    order = [s.name for s in SYSTEMS]
    rows = [
        [system, ", ".join(workloads), reason]
        for (system, reason), workloads in sorted(na.items(), key=lambda item: order.index(item[0][0]))
    ]
    if rows:
        out.append(("Not run (n/a)", ["system", "workloads", "why"], rows))

    rows = [
        [t["target"], t["measured"], {True: "met", False: "not met", None: "-"}[t["met"]], t["note"]]
        for t in report.get("targets", [])
    ]
    out.append(("Targets (issue 6), this run", ["target", "measured", "result", "note"], rows))
    return out


def _stuck_table(summary: list[dict[str, Any]]) -> tuple[str, list[str], list[list[str]]]:
    rows = []
    timeout = None
    for r in summary:
        if "na" in r:
            continue  # listed in the n/a table
        timeout = timeout or r["timeout_s"]
        n = r["runs"]
        none = f"{r['runs_without_capacity']}/{n} runs: not in {r['capacity_wait_s'] or 0:g} s"
        stuck_process = [
            f"died after {_fmt(r['stuck_dead_ms'])} ms" if r["stuck_dead_ms"] else "",
            f"{r['runs_stuck_never_died']}/{n} runs: never died" if r["runs_stuck_never_died"] else "",
            f"{r['runs_alive_after_close']}/{n} runs: alive after close"
            if r["runs_alive_after_close"]
            else "",
            f"{r['orphans']}/{n} runs: orphaned" if r["orphans"] else "",
            f"{r['close_hung']}/{n} runs: close hung" if r["close_hung"] else "",
        ]
        answer = ", ".join(r["answers"]) or "-"
        if r["late_outcomes"]:
            answer += f"; then {', '.join(r['late_outcomes'])}"
        rows.append(
            [
                r["system"],
                _fmt(r["answered_ms"]),
                answer,
                _fmt(r["capacity_ms"]) if r["capacity_ms"] else none if n else "-",
                _fmt(r["capacity_after_answer_ms"]),
                "; ".join(x for x in stuck_process if x) or "-",
                f"{_fmt(r['close_ms'])}" if r["close_ms"] else "-",
                (r["give_up"] or "") + (f"; {'; '.join(r['failures'])[:80]}" if r["failures"] else ""),
            ]
        )
    header = [
        "system",
        "answered, ms",
        "answer",
        "capacity back, ms",
        "after the answer, ms",
        "the stuck process",
        "close, ms",
        "how the caller gives up",
    ]
    title = (
        f"Stuck call: a call stuck in C code, ignoring signals, with a {(timeout or 0.5) * 1e3:,.0f} ms "
        "timeout, 2 workers (from the submit; capacity back: calls running on 2 workers at once)"
    )
    return title, header, rows


def print_tables(report: dict[str, Any]) -> None:
    for title, header, rows in tables(report):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
        print()
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip())
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several saved runs: the first, with each later run's workloads added
    (or replacing the first's); ``extra_runs`` says which run measured which workloads."""
    base: dict[str, Any] = json.loads(json.dumps(reports[0]))  # a copy
    for other in reports[1:]:
        ran = other["parameters"]["workloads"]
        for workload in ran:
            base["summary"][workload] = other["summary"][workload]
            base["samples"] = [s for s in base["samples"] if s["workload"] != workload]
        base["samples"] += [s for s in other["samples"] if s["workload"] in ran]
        base["parameters"] = {**other["parameters"], **base["parameters"]}  # sizes of the new ones
        base["parameters"]["workloads"] = [
            w for w in WORKLOADS if w in base["parameters"]["workloads"] or w in ran
        ]
        base["extra_runs"] = [
            *[r for r in base.get("extra_runs", []) if not set(r["workloads"]) <= set(ran)],
            {
                "workloads": ran,
                **{k: other[k] for k in ("created", "command", "machine", "load_average", "duration_s")},
            },
        ]
    return base


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    m = report["machine"]
    load = report["load_average"]
    during = ", ".join(f"{x[0]:.1f}" for x in load["rounds"])
    lines.append(
        f"Run of {report['created']}: poolkit `src/` at `{m['poolkit_src_commit']}`, {m['cpu_count']} CPUs, "
        f"Python {m['python']}, `{report['command']}`, {report['duration_s'] / 60:.0f} min. Load average "
        f"(1 min) {load['start'][0]:.1f} at the start, {during} after each round (the benchmark's own "
        "parent and workers account for about 2 of it)."
    )
    for extra in report.get("extra_runs", []):
        m, load = extra["machine"], extra["load_average"]
        lines.append(
            f"The {', '.join(extra['workloads'])} figures: run of {extra['created']}, poolkit `src/` at "
            f"`{m['poolkit_src_commit']}`, `{extra['command']}`, {extra['duration_s'] / 60:.0f} min, load "
            f"average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end."
        )
    for title, header, rows in tables(report):
        lines += ["", f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |")
    return "\n".join(lines) + "\n"


DOCS = ROOT / "docs" / "performance.md"
_BLOCKS = {
    "results": ("<!-- results: begin (python benchmarks/peers.py --docs) -->", "<!-- results: end -->"),
    "targets": ("<!-- targets: begin (python benchmarks/peers.py --docs) -->", "<!-- targets: end -->"),
}


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    """Replace the generated blocks of docs/performance.md (the result tables; the targets
    table) with this report's. The prose around them is not touched: reread it."""
    results, _, targets = markdown(report).partition("**Targets (issue 6), this run**")
    text = path.read_text(encoding="utf-8")
    for name, body in (("results", results.strip()), ("targets", targets.strip())):
        begin, end = _BLOCKS[name]
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise SystemExit(f"{path}: no {begin} ... {end} block to replace")
        text = text[: start + len(begin)] + "\n" + body + "\n" + text[stop:]
    path.write_text(text, encoding="utf-8")
    print(f"updated the result and target tables of {path}")


# --------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    return {
        **_machine.machine_info(PEER_DISTS),
        "poolkit_src_commit": _machine.src_commit(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    if args.markdown is not None or args.docs is not None:
        paths = [Path(p) for p in (args.markdown or args.docs or [args.output])]
        saved = combine([json.loads(p.read_text(encoding="utf-8")) for p in paths])
        saved["targets"] = targets(saved["summary"])  # as this version of the script states them
        if args.docs is not None:
            update_docs(saved)
        else:
            print(markdown(saved), end="")
        return
    params = make_params(args)
    common.become_subreaper()
    info = machine_info()
    info["bytecode_compiled"] = common.compile_bytecode()
    started = time.perf_counter()
    load_start = loadavg()
    pin = params.pin
    pinned = f"parent on CPU {pin['parent']}, workers on {pin['workers']}" if pin else "no"
    todo = plan(params)
    print(
        f"poolkit peer benchmark: {len(todo)} measurements; rounds {params.rounds}; systems {', '.join(params.systems)}; "
        f"{info['cpu_count']} CPUs; Python {info['python']}; poolkit src {info['poolkit_src_commit']}; "
        f"pinned ({', '.join(params.pinned_workloads)}): {pinned}; load {load_start}"
    )
    samples, loads = collect(params, started)
    summary = summarize(params, samples)
    report: dict[str, Any] = {
        "benchmark": "peers",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "parameters": dataclasses.asdict(params),
        "load_average": {"start": load_start, "rounds": loads, "end": loadavg()},
        "duration_s": round(time.perf_counter() - started, 1),
        "na": {s.name: s.na for s in SYSTEMS if s.na},
        "summary": summary,
        "memory_slopes": memory_slopes(summary),
        "targets": [],
        "samples": samples,
    }
    report["targets"] = targets(summary)
    print_tables(report)
    print(f"\ntotal {report['duration_s']:.0f} s, load {loadavg()}")
    if args.no_save:
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, rounds and sizes (~3.5 min)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="systems, libraries, workloads")
    parser.add_argument(
        "--rounds", type=int, default=0, help="rounds of every workload (default: see --help)"
    )
    parser.add_argument("--calls", type=int, default=0, help="throughput calls (default 20000, --quick 5000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: calls per second")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="latency: seconds (default 10, --quick 3)"
    )
    parser.add_argument("--throughput-workers", type=int, nargs="+", help="pool sizes (default 2 8)")
    parser.add_argument("--latency-workers", type=int, nargs="+", help="pool sizes (default 2)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the parent and workers to CPUs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--no-save", action="store_true", help="print the tables only")
    parser.add_argument(
        "--markdown",
        nargs="*",
        default=None,
        metavar="JSON",
        help="print the markdown tables of saved reports (default: the --output file) and exit; "
        "each later report adds or replaces the workloads it ran",
    )
    parser.add_argument(
        "--docs",
        nargs="*",
        default=None,
        metavar="JSON",
        help="put the tables of saved reports (default: the --output file) in docs/performance.md and exit",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
