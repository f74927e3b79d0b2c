"""Run-to-run spread of the benchmark gate: how far apart identical runs' medians land.

    python tests/performance/spread.py RUN.json [RUN.json ...] [--baseline BASE.json]

Each RUN.json is a ``pytest tests/performance -m benchmark --benchmark-json=RUN.json`` of the
same code. For every benchmark it prints the median of each run (ms or us; ``--stat min`` for the
minimum), the spread of those (max / min - 1) and, against ``--baseline`` (default: the first run), the worst slowdown
of a run's median, which is what ``--benchmark-compare-fail=median:X%`` compares. The gate's X
must sit above the worst of these with margin (tests/performance/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def medians(path: Path, stat: str = "median") -> dict[str, float]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return {b["fullname"].split("::", 1)[1]: float(b["stats"][stat]) for b in data["benchmarks"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument(
        "--baseline", type=Path, help="compare each run with this one (default: the first run)"
    )
    parser.add_argument("--stat", default="median", choices=["median", "min", "mean"], help="default: median")
    args = parser.parse_args()
    runs = [medians(p, args.stat) for p in args.runs]
    base = medians(args.baseline, args.stat) if args.baseline else runs[0]
    names = sorted(set.intersection(*(set(r) for r in runs)) & set(base))
    width = max(len(n) for n in names)
    print(f"{'benchmark'.ljust(width)}  {args.stat + ' of each run':<48}  spread  worst vs base")
    worst_all = 0.0
    for name in names:
        values = [r[name] for r in runs]
        unit, scale = ("ms", 1e3) if statistics.median(values) >= 1e-3 else ("us", 1e6)
        shown = " ".join(f"{v * scale:.2f}" for v in values)
        spread = max(values) / min(values) - 1
        worst = max(v / base[name] - 1 for v in values)
        worst_all = max(worst_all, worst)
        print(f"{name.ljust(width)}  {shown + ' ' + unit:<48}  {spread:6.1%}  {worst:+6.1%}")
    print(f"worst slowdown of any run's {args.stat} against the baseline: {worst_all:+.1%}")


if __name__ == "__main__":
    main()
