"""poolkit demo: a real pool of worker processes doing real work, with its figures.

    python examples/demo.py [--workers N] [--backend asyncio|trio]

What it shows, in order:
1. start a pool of worker processes and time it;
2. thousands of small calls from many concurrent tasks (throughput, latency percentiles);
3. CPU-bound work spread across the workers with ``pool.map`` (speed-up over one process);
4. a worker killed by SIGKILL mid-call: only that call fails, with a typed error, and the
   pool replaces the worker;
5. a call stuck past its deadline: a typed timeout at the deadline, the worker replaced;
6. what the pool's event stream said about those two failures (``pool.events``, subscribed
   to worker lifecycle events only, so the calls above stay free of telemetry work);
7. the pool's statistics and repr, then a clean close that leaves no process behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import time

import anyio

from poolkit import (
    CallTimeout,
    Pool,
    PoolConfig,
    WorkerCrashed,
    WorkerExited,
    WorkerReady,
    WorkerSpawned,
)


def square(x: int) -> int:
    return x * x


def hash_chain(seed: int, rounds: int = 150_000) -> str:
    """Real CPU work: iterate SHA-256 ``rounds`` times."""
    digest = seed.to_bytes(8, "little")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def stuck() -> None:
    time.sleep(3600)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(workers: int) -> None:
    print(f"poolkit demo: {workers} worker processes, {os.cpu_count()} CPUs")

    t0 = time.perf_counter()
    async with Pool(PoolConfig(name="demo", min_workers=workers, kill_grace=0.2)) as pool:
        pids = [w.pid for w in pool.statistics().workers]
        print(f"[1] started {workers} workers (pids {pids}) in {1000 * (time.perf_counter() - t0):.0f} ms")

        # 2. many small calls from concurrent tasks
        n, tasks = 20_000, 32
        latencies: list[float] = []

        async def caller(count: int) -> None:
            for i in range(count):
                start = time.perf_counter()
                assert await pool.call(square, i) == i * i
                latencies.append(time.perf_counter() - start)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(caller, n // tasks)
        elapsed = time.perf_counter() - t0
        print(
            f"[2] {len(latencies)} calls from {tasks} tasks in {elapsed:.2f} s: "
            f"{len(latencies) / elapsed:,.0f} calls/s; latency p50 {1e6 * _pct(latencies, 0.5):.0f} us, "
            f"p99 {1e6 * _pct(latencies, 0.99):.0f} us"
        )

        # 3. CPU-bound work with map, compared with running it here in one process
        jobs = 4 * workers
        t0 = time.perf_counter()
        local = [hash_chain(i) for i in range(2)]
        per_job = (time.perf_counter() - t0) / 2
        t0 = time.perf_counter()
        results = [r async for r in pool.map(hash_chain, range(jobs))]
        elapsed = time.perf_counter() - t0
        assert results[:2] == local
        print(
            f"[3] map: {jobs} SHA-256 chains in {elapsed:.2f} s "
            f"(one process would take ~{per_job * jobs:.2f} s: {per_job * jobs / elapsed:.1f}x)"
        )

        # 4. a worker dies mid-call (the event stream records what follows: step 6)
        lifecycle = pool.events(types=(WorkerExited, WorkerSpawned, WorkerReady))
        t0 = time.perf_counter()
        try:
            await pool.call(die)
        except WorkerCrashed as exc:
            print(f"[4] crash isolated: {type(exc).__name__}: {exc}")
        value = await pool.call(square, 12)
        print(f"    next call answered {value} after {1000 * (time.perf_counter() - t0):.0f} ms")

        # 5. a call past its deadline
        t0 = time.perf_counter()
        try:
            await pool.call(stuck, timeout=0.5)
        except CallTimeout as exc:
            print(f"[5] timeout after {time.perf_counter() - t0:.2f} s: {exc}")
        print(f"    pool still serving: square(9) = {await pool.call(square, 9)}")

        # 6. the same two failures, as the event stream told them
        async with lifecycle:
            pass
        print("[6] events:")
        for event in lifecycle:
            if isinstance(event, WorkerExited):
                why = event.failure.value if event.failure else event.reason
                detail = f"exited ({event.cause}): {why}"
            elif isinstance(event, WorkerSpawned):
                detail = f"spawned, pid {event.pid} (reason: {event.reason})"
            else:
                assert isinstance(event, WorkerReady)
                detail = f"ready after {1000 * event.startup:.0f} ms"
            print(f"    {event.worker_id} {detail}")

        stats = pool.statistics()
        print(
            f"[7] statistics: {stats.completed} ok, {stats.failed} failed, {stats.timed_out} timed out, "
            f"{stats.worker_starts} worker starts, {stats.worker_crashes} crashes"
        )
        print(f"    {pool!r}")
        pids = [w.pid for w in stats.workers]
    print(f"    closed: {pool!r}")
    alive = [p for p in pids if p is not None and _alive(p)]
    print(f"    worker processes left behind: {len(alive)}")
    if alive:
        raise SystemExit(f"orphans: {alive}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.workers, backend=args.backend)
