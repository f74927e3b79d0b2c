"""The systems measured, the workloads each can run, and why the others are "n/a"."""

from __future__ import annotations

import dataclasses

WORKLOADS = ("throughput", "latency", "recovery", "startup", "stuck")  # startup also measures memory
BASELINE = "poolkit"  # every ratio is against this system, same round


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    library: str  # the adapter (sync_pools.SYNC_POOLS / async_pools.ASYNC_POOLS key)
    family: str  # "async" (awaited calls), "sync" (submit + callback), "lean" (raw throughput loops)
    api: str  # "call" (each call submitted on its own), "tasks" (64 tasks, call after call), "map"
    what: str  # how the calls are made, for the docs and the table legend
    na: dict[str, str]  # workload -> why this system does not run it

    def runs(self, workload: str) -> bool:
        return workload not in self.na


_MAP_ONLY = "a batch API (inputs up front): the library's per-call row has this figure"
_SAME_POOL = "same pool as the library's per-call row"
_RAW_ASYNC = "a yardstick for the async rows' latency and throughput; raw.pipelined has this figure"
_NOT_OPEN_LOOP = "takes all its inputs up front: open-loop arrivals go through the per-call API"


def _map_na() -> dict[str, str]:
    return {"latency": _NOT_OPEN_LOOP, "recovery": _SAME_POOL, "startup": _SAME_POOL, "stuck": _SAME_POOL}


SYSTEMS: tuple[System, ...] = (
    System(
        "poolkit",
        "poolkit",
        "async",
        "call",
        "`await pool.call(fn, x)`, one task per call, all started at once",
        {},
    ),
    System(
        "poolkit.x64",
        "poolkit",
        "async",
        "tasks",
        "`await pool.call(fn, x)` from 64 tasks, each call after call",
        {
            "latency": "open-loop arrivals are one task per call: the poolkit row",
            "recovery": _SAME_POOL,
            "startup": _SAME_POOL,
            "stuck": _SAME_POOL,
        },
    ),
    System(
        "poolkit.map",
        "poolkit",
        "async",
        "map",
        "`async for r in pool.map(fn, xs)` (defaults: adaptive chunks)",
        _map_na(),
    ),
    System(
        "poolkit.map1",
        "poolkit.percall",
        "async",
        "map",
        "`async for r in pool.map(fn, xs, chunksize=1)`: a call per input",
        _map_na(),
    ),
    System(
        "poolkit.map256",
        "poolkit.chunked",
        "async",
        "map",
        "`async for r in pool.map(fn, xs, chunksize=256)`: inputs 256 to a call",
        _map_na(),
    ),
    System(
        "poolkit.zygote",
        "poolkit.zygote",
        "async",
        "call",
        'the `poolkit` row with `WorkerSpec(start_method="zygote")`: workers forked from a warm template',
        {"latency": "the start method changes how workers start; the `poolkit` row has the latency"},
    ),
    System(
        "raw.pipelined",
        "raw",
        "lean",
        "call",
        "raw pipe, many calls in flight per child (one thread, non-blocking pipes)",
        {
            "recovery": "raw.one has the raw pipe's recovery figure (one call in flight per child)",
            "stuck": "raw.one has the raw pipe's stuck-call figure (one call in flight per child)",
        },
    ),
    System(
        "raw.one",
        "raw1",
        "lean",
        "call",
        "raw pipe, one call in flight per child",
        {"latency": "raw.pipelined has the raw pipe's latency", "startup": _SAME_POOL},
    ),
    System(
        "raw.async",
        "raw.async",
        "async",
        "call",
        "the raw pipe's children from asyncio: `await` on a bare future, replies in the loop's read callback",
        {"recovery": _RAW_ASYNC, "startup": _RAW_ASYNC, "stuck": _RAW_ASYNC},
    ),
    System(
        "raw.async.x64",
        "raw.async",
        "async",
        "tasks",
        "the `raw.async` client from 64 tasks, each call after call: the yardstick for `poolkit.x64`",
        {
            "latency": "open-loop arrivals are one task per call: the raw.async row",
            "recovery": _RAW_ASYNC,
            "startup": _RAW_ASYNC,
            "stuck": _RAW_ASYNC,
        },
    ),
    System("ppe", "ppe", "sync", "call", "`ProcessPoolExecutor.submit` + done callback", {}),
    System("mp", "mp", "sync", "call", "`multiprocessing.Pool.apply_async` + callback", {}),
    System("mp.map", "mp", "sync", "map", "`multiprocessing.Pool.map` (default chunksize)", _map_na()),
    System("loky", "loky", "sync", "call", "`get_reusable_executor().submit` + done callback", {}),
    System("pebble", "pebble", "sync", "call", "`ProcessPool.schedule` + done callback", {}),
    System("aiomp", "aiomp", "async", "call", "`await pool.apply(afn, (x,))`, one task per call", {}),
    System("aiomp.map", "aiomp", "async", "map", "`await pool.map(afn, xs)`", _map_na()),
    System("mpire", "mpire", "sync", "call", "`WorkerPool.apply_async` + callback (keep_alive)", {}),
    System("mpire.map", "mpire", "sync", "map", "`WorkerPool.map` (default chunking, keep_alive)", _map_na()),
    System(
        "anyio",
        "anyio",
        "async",
        "call",
        "`await to_process.run_sync(fn, x, limiter=CapacityLimiter(N))`",
        {},
    ),
)

BY_NAME = {s.name: s for s in SYSTEMS}
