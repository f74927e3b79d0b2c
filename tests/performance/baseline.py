"""Build the gate's baseline from several runs: each benchmark's fastest run.

    python tests/performance/baseline.py --storage tests/performance/baseline RUN.json [RUN.json ...]

Each RUN.json is a ``pytest tests/performance -m benchmark --benchmark-json=RUN.json`` of the same
code (``nox -s perf -- --save-baseline`` makes three). For every benchmark this keeps the entry
of the run whose median is lowest, drops the raw samples, notes every run's median in the
entry's ``extra_info`` (``baseline_medians``), and writes the result where pytest-benchmark's
``--benchmark-compare`` finds it: ``STORAGE/<machine id>/0001_baseline.json`` (replacing any
``*_baseline.json`` there).

Why the fastest: noise from other programs only ever slows a run down, so the fastest of a few
runs is the closest to what the code costs on a quiet machine, and a single run taken while the
machine was busy (one run of the gate came out up to 3.2x slower on the pool benchmarks while
another benchmark ran) cannot become the baseline. The gate's threshold was chosen from the
largest ratio between two runs' medians (tests/performance/README.md), which bounds a run
against the fastest of several just as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pytest_benchmark.utils import get_machine_id

NAME = "0001_baseline.json"


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for bench in run["benchmarks"]:
            by_name.setdefault(bench["fullname"], []).append(bench)
    merged = dict(runs[0])
    merged["benchmarks"] = []
    for entries in by_name.values():
        best = dict(min(entries, key=lambda b: float(b["stats"]["median"])))
        best["stats"] = {k: v for k, v in best["stats"].items() if k != "data"}
        best["extra_info"] = {
            **best.get("extra_info", {}),
            "baseline_medians": [float(b["stats"]["median"]) for b in entries],
        }
        merged["benchmarks"].append(best)
    merged["baseline"] = {"runs": len(runs), "rule": "each benchmark's run with the lowest median"}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="pytest-benchmark storage directory")
    parser.add_argument("runs", nargs="+", type=Path, help="--benchmark-json files of the same code")
    args = parser.parse_args()
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in args.runs]
    target = args.storage / get_machine_id()  # type: ignore[no-untyped-call]  # unannotated upstream
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("[0-9][0-9][0-9][0-9]_baseline.json"):
        old.unlink()
    out = target / NAME
    out.write_text(json.dumps(merge(runs), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out} from {len(runs)} runs")


if __name__ == "__main__":
    main()
