"""One measurement in a process of its own: ``python -m benchmarks._peers.runner SPEC OUTPUT``.

benchmarks/peers.py starts one runner per (system, workload, worker count, round), with a time
limit: a peer that hangs is killed with its whole process tree and the sample is recorded as
failed, and no system inherits another's imports, threads, heap or worker processes. SPEC is a
JSON object (see peers.py ``spec_for``); the result is written as JSON to OUTPUT.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
from benchmarks._peers import common, stuck, workloads
from benchmarks._peers.async_pools import ASYNC_POOLS
from benchmarks._peers.catalog import BY_NAME, System
from benchmarks._peers.sync_pools import SYNC_POOLS

# The modules whose import a system needs, imported (and timed) before anything is measured:
# every row's startup then counts starting the pool, not importing its library.
MODULES: dict[str, tuple[str, ...]] = {
    "poolkit": ("poolkit._pool",),  # poolkit re-exports lazily: this is what `Pool` loads
    "poolkit.zygote": ("poolkit._pool", "poolkit._zygote"),
    "poolkit.chunked": ("poolkit._pool",),
    "poolkit.percall": ("poolkit._pool",),
    "aiomp": ("aiomultiprocess",),
    "anyio": ("anyio.to_process",),
    "ppe": ("concurrent.futures.process",),
    "mp": ("multiprocessing.pool",),
    "loky": ("loky",),
    "pebble": ("pebble",),
    "mpire": ("mpire",),
    "raw": ("subprocess",),
    "raw1": ("subprocess",),
    "raw.async": ("asyncio",),
}
SYNC = {
    "throughput": workloads.sync_throughput,
    "latency": workloads.sync_latency,
    "recovery": workloads.sync_recovery,
    "startup": workloads.sync_startup,
    "stuck": stuck.sync_stuck,
}
ASYNC = {
    "throughput": workloads.async_throughput,
    "latency": workloads.async_latency,
    "recovery": workloads.async_recovery,
    "startup": workloads.async_startup,
    "stuck": stuck.async_stuck,
}


def run(system: System, spec: dict[str, Any]) -> dict[str, Any]:
    workload = spec["workload"]
    t0 = time.perf_counter()
    for module in MODULES[system.library]:
        importlib.import_module(module)
    import_ms = round((time.perf_counter() - t0) * 1e3, 1)
    if system.family == "lean" and workload == "throughput":
        out = workloads.lean_throughput(system, spec)
    elif system.family in ("sync", "lean"):
        out = SYNC[workload](SYNC_POOLS[system.library](), system, spec)
    else:
        pool = ASYNC_POOLS[system.library](spec["workers"])
        out = anyio.run(ASYNC[workload], pool, system, spec, backend="asyncio")
    return {"import_ms": import_ms, **out}


def main() -> None:
    spec = json.loads(sys.argv[1])
    output = Path(sys.argv[2])
    system = BY_NAME[spec["system"]]
    result: dict[str, Any] = {"system": system.name, "workload": spec["workload"], "workers": spec["workers"]}
    try:
        result.update(run(system, spec))
        result["ok"] = True
    except BaseException as exc:
        result["ok"] = False
        result["error"] = common.jsonable(exc)
        result["traceback"] = traceback.format_exc()[-2000:]
    output.write_text(json.dumps(result), encoding="utf-8")
    common.kill_tree(common.descendants())  # a pool that did not clean up must not outlive us
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no atexit hooks: a broken peer's exit handler must not hang the benchmark


if __name__ == "__main__":
    main()
