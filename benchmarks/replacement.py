"""Worker replacement after a SIGKILL, and memory at rest: start_method "exec" vs "zygote" (issue 6).

    python benchmarks/replacement.py [--quick] [--rounds N] [--backend B] [--output PATH | --no-save]

Issue 6's target: "after a SIGKILL the replacement worker serves its first call within 50 ms on
an idle machine. Consider a pre-forked template process (a zygote ...) so a replacement is a
fork, not a fresh interpreter; measure both." Both start methods, side by side in one run.

The scenario (the recovery scenario of benchmarks/peers.py, so the figures compare with its
table): a fresh pool of 2 workers, warmed up (every worker has answered calls); one worker is
made busy with a call that never ends (the victim), the other with another (the blocker, so
the surviving worker cannot answer), ``--others`` ``os.getpid`` calls wait behind them; then
the victim is SIGKILLed. Measured from the kill (``time.perf_counter`` in the parent):

* ``replacement_ms``: the first ``os.getpid`` answered by a process that did not exist before
  the kill: the issue's figure;
* ``failed_ms``: the victim's call failed (WorkerCrashed), which the pool does once it has
  the dead worker's exit status;
* ``spawned_ms``: the replacement process exists (its launch returned a pid: WorkerSpawned);
* ``ready_ms``: the replacement sent READY (WorkerReady). ``ready_ms - spawned_ms`` is the new
  process's own start: an interpreter and its imports for exec, the runtime's setup in a
  forked child for zygote.

And before the scenario, at rest (after warm-up, Linux /proc): each worker's RSS, PSS and USS
(private pages: what the worker costs on its own), and the zygote's, which the pool pays once.
``start_ms``: ``Pool(...)`` entered to both workers ready (the zygote's own start included).

Method: a fresh pool per sample; each round runs both start methods, in an order alternated
every round (load drift spreads over both); medians over rounds, min-max, and the median of
the per-round ratios zygote/exec. Not pinned to CPUs, unlike the throughput benchmarks: a
replacement inherits its CPU affinity from whoever forks it (the pool for exec, the zygote for
zygote), so pinning the pool and workers apart would put the two methods' replacements on
different CPUs by construction; and this scenario keeps the CPUs idle (the victim and blocker
sleep), so there is no placement noise to remove. Check ``uptime`` first: the figure is for
an idle machine. Targets are C functions (``time.sleep``, ``os.getpid``): no worker ever
imports this script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks._peers: run as a script, the repository root is not on the path
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import loadavg, machine_info  # noqa: E402
from benchmarks._peers import common  # noqa: E402

from poolkit import (  # noqa: E402
    Event,
    Pool,
    WorkerCrashed,
    WorkerExited,
    WorkerReady,
    WorkerSpawned,
    WorkerSpec,
    WorkerState,
)

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "replacement.json"
METHODS = ("exec", "zygote")
FIGURES = ("replacement_ms", "failed_ms", "spawned_ms", "ready_ms", "start_ms")
MEMORY = ("worker_rss_kib", "worker_pss_kib", "worker_uss_kib", "zygote_rss_kib", "zygote_uss_kib")


# --------------------------------------------------------------------------- /proc
def _status_rss_kib(pid: int) -> int | None:
    return common.status_kib(pid, ("VmRSS",)).get("VmRSS")


def _rollup_kib(pid: int) -> dict[str, int]:
    """PSS and USS from smaps_rollup, KiB ({} if unreadable): the peer benchmark's reading."""
    rollup = common.rollup_kib(pid)
    return {"pss": rollup["Pss"], "uss": rollup["Uss"]} if rollup else {}


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _memory(pids: Sequence[int], zygote: int | None) -> dict[str, float | None]:
    def median(values: list[int | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    rollups = [_rollup_kib(p) for p in pids]
    out: dict[str, float | None] = {
        "worker_rss_kib": median([_status_rss_kib(p) for p in pids]),
        "worker_pss_kib": median([r.get("pss") for r in rollups]),
        "worker_uss_kib": median([r.get("uss") for r in rollups]),
        "zygote_rss_kib": None,
        "zygote_uss_kib": None,
    }
    if zygote is not None:
        out["zygote_rss_kib"] = _status_rss_kib(zygote)
        out["zygote_uss_kib"] = _rollup_kib(zygote).get("uss")
    return out


# --------------------------------------------------------------------------- one sample
async def _until(predicate: Any, timeout: float) -> None:
    """Poll ``predicate`` every millisecond (a pool state no event announces), for ``timeout`` s."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polled: the pool's state, not an event of ours
            await anyio.sleep(0.001)


async def sample(method: str, others: int, wait: float) -> dict[str, Any]:
    """One fresh pool, one SIGKILL; the figures of the module docstring (ms from the kill)."""
    marks: dict[str, float] = {}
    t_kill = 0.0

    def on_event(event: Event) -> None:
        if not t_kill:
            return
        name = {WorkerExited: "exited", WorkerSpawned: "spawned", WorkerReady: "ready"}.get(type(event))
        if name is not None and name not in marks:
            marks[name] = time.perf_counter()

    started = time.perf_counter()
    pool = Pool(min_workers=2, worker=WorkerSpec(start_method=method))  # type: ignore[arg-type]
    async with pool:
        start_ms = (time.perf_counter() - started) * 1e3
        launcher = pool._launcher
        try:
            for _ in range(8):
                await pool.call(os.getpid)
            pids = [w.pid for w in pool.statistics().workers if w.pid is not None]
            zygote = _ppid(pids[0]) if method == "zygote" else None
            memory = _memory(pids, zygote)
            pool.subscribe(on_event, types=(WorkerExited, WorkerSpawned, WorkerReady))
            log: list[tuple[float, str, bool, Any]] = []

            known = set(pids)
            replaced = anyio.Event()

            async def run(role: str, fn: Any, *args: Any) -> None:
                try:
                    value = await pool.call(fn, *args)
                except Exception as exc:
                    log.append((time.perf_counter(), role, False, exc))
                else:
                    log.append((time.perf_counter(), role, True, value))
                    if role == "other" and value not in known:
                        replaced.set()

            def busy() -> list[int]:
                return [w.pid for w in pool.statistics().workers if w.state is WorkerState.BUSY and w.pid]

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "victim", time.sleep, 3600)
                await _until(lambda: len(busy()) == 1, 10)
                (victim,) = busy()
                tg.start_soon(run, "blocker", time.sleep, 3600)
                await _until(lambda: len(busy()) == 2, 10)
                for _ in range(others):
                    tg.start_soon(run, "other", os.getpid)
                await anyio.sleep(0.05)  # the calls are running/queued (as in peers.py)
                t_kill = time.perf_counter()
                os.kill(victim, signal.SIGKILL)
                with anyio.move_on_after(wait):
                    await replaced.wait()
                tg.cancel_scope.cancel()
        finally:
            await pool.aclose(drain=False)
            close = getattr(launcher, "aclose", None)
            if close is not None:
                await close()

    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - t_kill) * 1e3, 2)

    first_new = [t for t, r, ok, v in log if r == "other" and ok and v not in known]
    victim_end = [(t, ok, v) for t, r, ok, v in log if r == "victim"]
    return {
        "method": method,
        "start_ms": round(start_ms, 2),
        "replacement_ms": ms(min(first_new)) if first_new else None,
        "failed_ms": ms(victim_end[0][0]) if victim_end else None,
        "victim": (
            "WorkerCrashed(signal=9)"
            if victim_end and isinstance(victim_end[0][2], WorkerCrashed) and victim_end[0][2].signal == 9
            else repr(victim_end[0][2])[:100]
            if victim_end
            else "lost"
        ),
        "exited_ms": ms(marks.get("exited")),
        "spawned_ms": ms(marks.get("spawned")),
        "ready_ms": ms(marks.get("ready")),
        **memory,
    }


# --------------------------------------------------------------------------- statistics
def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def results_of(samples: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per figure: each method's median [min-max], and the median of per-round zygote/exec ratios."""
    out: dict[str, Any] = {}
    for figure in (*FIGURES, *MEMORY):
        row: dict[str, Any] = {}
        for method in METHODS:
            values = [
                s[figure] for rnd in samples for s in rnd if s["method"] == method and s[figure] is not None
            ]
            row[method] = summarize(values) if values else None
        ratios = []
        for rnd in samples:
            by = {s["method"]: s.get(figure) for s in rnd}
            base, other = by.get("exec"), by.get("zygote")
            if base and other is not None:
                ratios.append(other / base)
        row["ratio_zygote_exec"] = round(statistics.median(ratios), 3) if ratios else None
        out[figure] = row
    return out


# --------------------------------------------------------------------------- main
async def collect(args: argparse.Namespace) -> tuple[list[list[dict[str, Any]]], list[list[float]]]:
    for method in METHODS:  # unrecorded: first imports, page cache
        await sample(method, args.others, args.wait)
    rounds: list[list[dict[str, Any]]] = []
    loads: list[list[float]] = []
    for i in range(args.rounds):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        rounds.append([await sample(method, args.others, args.wait) for method in order])
        loads.append(loadavg())
        line = "  ".join(f"{s['method']} {s['replacement_ms']} ms" for s in rounds[-1])
        print(f"round {i + 1}/{args.rounds}: {line}  load {loads[-1]}", flush=True)
    return rounds, loads


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'figure':<16} {'exec median [min-max]':>26} {'zygote median [min-max]':>26} {'zygote/exec':>11}")
    for figure, row in results.items():
        cells = []
        for method in METHODS:
            s = row[method]
            cells.append(f"{s['median']:>9.1f} [{s['min']:.1f}-{s['max']:.1f}]" if s else "-")
        ratio = row["ratio_zygote_exec"]
        print(f"{figure:<16} {cells[0]:>26} {cells[1]:>26} {ratio if ratio is not None else '-':>11}")


def main() -> None:
    args = parse_args()
    if args.quick:
        args.rounds = args.rounds or 5
    args.rounds = args.rounds or 15
    info = machine_info(("poolkit", "anyio", "trio"))
    info["bytecode_compiled"] = common.compile_bytecode()
    load_start = loadavg()
    print(
        f"poolkit replacement benchmark: {args.rounds} rounds; exec vs zygote; 2 workers; {args.others} "
        f"calls waiting; {info['cpu_count']} CPUs; Python {info['python']}; {args.backend}; load {load_start}"
    )
    started = time.perf_counter()
    rounds, loads = anyio.run(collect, args, backend=args.backend)
    results = results_of(rounds)
    print_table(results)
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s, load {loadavg()}")
    if args.no_save:
        return
    report = {
        "benchmark": "replacement",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "parameters": {"rounds": args.rounds, "workers": 2, "others": args.others, "backend": args.backend},
        "load_average": {"start": load_start, "rounds": loads, "end": loadavg()},
        "duration_s": round(elapsed, 1),
        "results": results,
        "samples": rounds,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds (~10 s)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 15, --quick 5)")
    parser.add_argument("--others", type=int, default=8, help="getpid calls waiting at the kill")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a replacement")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
