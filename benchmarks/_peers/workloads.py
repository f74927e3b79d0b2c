"""The workloads, written once per family of system: sync (submit + callback), async
(awaited calls), lean (the raw pipe's throughput loops). runner.py picks one and runs it.

Every function returns a JSON-able dict of what it measured. Times are ``time.perf_counter``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from benchmarks._peers import common, rawpipe
from benchmarks._peers.async_pools import AsyncPool
from benchmarks._peers.catalog import System
from benchmarks._peers.sync_pools import SyncPool
from benchmarks._peers.work import RELEASE, block, echo, getpid, hang, rendezvous

KIB = bytes(range(256)) * 4
TASKS = 64  # poolkit.x64: tasks making the calls
PAYLOADS: dict[str, Callable[[int], Any]] = {
    "int": lambda i: i,
    "1KiB": lambda i: KIB,
}
Spec = dict[str, Any]
Log = list[tuple[float, str, bool, Any]]  # (time, role, ok, value): the recovery scenario's calls


def items_for(payload: str, n: int) -> list[Any]:
    make = PAYLOADS[payload]
    return [make(i) for i in range(n)]


def _pin(spec: Spec) -> list[int]:
    """Pin as spec["pin"] says (the parent's threads on one CPU, every descendant on the
    others); return the descendants, whose CPU time the measurement reads."""
    pids = common.descendants()
    pin = spec.get("pin")
    if pin:
        common.pin(pin["parent"], pin["workers"], pids)
    return pids


def _timed(pids: list[int], calls: int, run: Callable[[], Any]) -> dict[str, Any]:
    gc.collect()
    cpu0, wcpu0 = common.own_cpu(), common.cpu_of(pids)
    t0 = time.perf_counter()
    run()
    return _rates(calls, time.perf_counter() - t0, common.own_cpu() - cpu0, common.cpu_of(pids) - wcpu0)


async def _timed_async(pids: list[int], calls: int, run: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    gc.collect()
    cpu0, wcpu0 = common.own_cpu(), common.cpu_of(pids)
    t0 = time.perf_counter()
    await run()
    return _rates(calls, time.perf_counter() - t0, common.own_cpu() - cpu0, common.cpu_of(pids) - wcpu0)


def _rates(calls: int, elapsed: float, cpu: float, workers_cpu: float) -> dict[str, Any]:
    """What a timed batch of calls comes to; CPU is the parent's (all its threads) and the
    worker processes' (10 ms ticks), per call."""
    return {
        "calls": calls,
        "seconds": round(elapsed, 5),
        "calls_per_s": round(calls / elapsed, 1),
        "parent_cpu_us_per_call": round(cpu / calls * 1e6, 2),
        "workers_cpu_us_per_call": round(workers_cpu / calls * 1e6, 2),
    }


def _check(results: Sequence[Any], items: Sequence[Any]) -> None:
    if list(results) != list(items):
        raise RuntimeError("results differ from the inputs echoed")


# --------------------------------------------------------------------------- sync family
def sync_calls(pool: SyncPool, fn: Callable[..., Any], items: Sequence[Any], timeout: float) -> list[Any]:
    """Submit every call at once; wait for all. Results in input order."""
    n = len(items)
    results: list[Any] = [None] * n
    finished = threading.Event()
    count = itertools.count(1)
    errors: list[Any] = []

    def make_done(i: int) -> Callable[[bool, Any], None]:
        def done(ok: bool, value: Any) -> None:
            if ok:
                results[i] = value
            else:
                errors.append(value)
            if next(count) == n:
                finished.set()

        return done

    for i, x in enumerate(items):
        pool.submit(fn, (x,), make_done(i))
    if not finished.wait(timeout):
        raise TimeoutError(f"{n} calls not done after {timeout} s")
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {common.jsonable(errors[0])}")
    return results


def sync_call(
    pool: SyncPool, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float
) -> tuple[bool, Any]:
    box: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def done(ok: bool, value: Any) -> None:
        box.append((ok, value))
        finished.set()

    pool.submit(fn, args, done)
    if not finished.wait(timeout):
        return False, TimeoutError(f"no answer in {timeout} s")
    return box[0]


def sync_throughput(pool: SyncPool, system: System, spec: Spec) -> dict[str, Any]:
    pool.start(spec["workers"])
    try:
        warm = items_for("int", spec["warmup"])
        run: Callable[[list[Any]], list[Any]]
        if system.api == "map":
            run = lambda xs: pool.map(echo, xs)  # noqa: E731
        else:
            run = lambda xs: sync_calls(pool, echo, xs, spec["call_timeout"])  # noqa: E731
        _check(run(warm), warm)
        pids = _pin(spec)
        out: dict[str, Any] = {"worker_processes": len(pids), "describe": pool.describe()}
        for payload in spec["payloads"]:
            items = items_for(payload, spec["calls"])
            out[payload] = _timed(pids, len(items), functools.partial(run, items))
        return out
    finally:
        pool.close()


def sync_latency(pool: SyncPool, system: System, spec: Spec) -> dict[str, Any]:
    pool.start(spec["workers"])
    try:
        _check(sync_calls(pool, echo, list(range(200)), spec["call_timeout"]), list(range(200)))
        _pin(spec)
        rate, warm = spec["rate"], int(spec["rate"] * spec["latency_warmup"])
        n = warm + int(rate * spec["duration"])
        lat = [math.nan] * n
        lag = [0.0] * n
        failed: list[Any] = []
        finished = threading.Event()
        count = itertools.count(1)

        def make_done(i: int, intended: float) -> Callable[[bool, Any], None]:
            def done(ok: bool, value: Any) -> None:
                if ok:
                    lat[i] = time.perf_counter() - intended
                else:
                    failed.append(value)
                if next(count) == n:
                    finished.set()

            return done

        precise = common.precise_sleeps()
        gc.collect()
        start = time.perf_counter() + 0.05
        for i in range(n):
            intended = start + i / rate
            common.sleep_until(intended)
            lag[i] = time.perf_counter() - intended
            pool.submit(echo, (i,), make_done(i, intended))
        done_in_time = finished.wait(spec["call_timeout"])
        return _latency_result(lat, lag, failed, warm, n, precise, done_in_time, pool.describe())
    finally:
        pool.close()


def _latency_result(
    lat: list[float],
    lag: list[float],
    failed: list[Any],
    warm: int,
    n: int,
    precise: bool,
    done_in_time: bool,
    describe: dict[str, Any],
) -> dict[str, Any]:
    measured = [x for x in lat[warm:] if not math.isnan(x)]
    return {
        "sent": n - warm,
        "completed": len(measured),
        "failed": len(failed),
        "all_done": done_in_time,
        "latency_us": common.percentiles_us(measured),
        "send_lag_us": common.percentiles_us(lag[warm:]),
        "timer_slack_1ns": precise,
        "describe": describe,
    }


def _wait_pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear in {timeout} s (the call never started)")
        time.sleep(0.001)
    return _read_pid(path)


def _read_pid(path: Path) -> int:
    return int(path.read_text(encoding="ascii"))


def _touch(path: Path) -> None:
    path.touch()


def sync_recovery(pool: SyncPool, system: System, spec: Spec) -> dict[str, Any]:
    """A worker is SIGKILLed while it runs a call (the victim), while another worker is held
    busy (the blocker) and ``others`` getpid calls wait behind them. Measured: how long until a
    call is answered by a new worker process, and how every call in hand ended."""
    tmp = spec["tmpdir"]
    pool.start(spec["workers"])
    try:
        for _ in range(2 * spec["workers"]):
            ok, value = sync_call(pool, getpid, (), spec["call_timeout"])
            if not ok:
                raise RuntimeError(f"warm-up call failed: {value!r}")
        log: Log = []
        lock = threading.Lock()

        def recorder(role: str) -> Callable[[bool, Any], None]:
            def done(ok: bool, value: Any) -> None:
                with lock:
                    log.append((time.perf_counter(), role, ok, value))

            return done

        pool.submit(hang, (tmp,), recorder("victim"))
        victim = _wait_pid(Path(tmp, "hang.pid"), 10)
        pool.submit(block, (tmp,), recorder("blocker"))
        _wait_pid(Path(tmp, "block.pid"), 10)
        known = set(common.descendants())
        for _ in range(spec["others"]):
            pool.submit(getpid, (), recorder("other"))
        time.sleep(0.05)
        t_kill = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        _poll(lambda: _answered(log, known, spec["others"]), spec["recovery_wait"])
        Path(tmp, RELEASE).touch()
        _poll(lambda: len(log) >= 2 + spec["others"], spec["settle_wait"])
        with lock:
            out = summarize_recovery(list(log), t_kill, known, spec["others"])
        if out["replacement_ms"] is None and pool.recreate:
            out.update(_probe_recreated(pool, t_kill, known, time.perf_counter() + spec["recovery_wait"]))
        out["describe"] = pool.describe()
        return out
    finally:
        Path(tmp, RELEASE).touch()
        pool.close()


def _probe_recreated(pool: SyncPool, t_kill: float, known: set[int], deadline: float) -> dict[str, Any]:
    """The library's own way back from a broken pool (loky: get_reusable_executor() again), then
    getpid calls until one comes from a new process (or ``deadline``)."""
    while time.perf_counter() < deadline:
        try:
            pool.recover()
            ok, value = sync_call(pool, getpid, (), max(0.1, deadline - time.perf_counter()))
        except Exception:
            ok, value = False, None
        if ok and value not in known:
            return {
                "replacement_ms": round((time.perf_counter() - t_kill) * 1e3, 2),
                "replacement_via": pool.recreate,
            }
        time.sleep(0.001)
    return {}


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _answered(log: Log, known: set[int], others: int) -> bool:
    """A new worker answered one of the other calls, or every other call has ended."""
    return _replacement(log, known) is not None or sum(1 for e in list(log) if e[1] == "other") >= others


def _replacement(log: Log, known: set[int]) -> float | None:
    times = [t for t, role, ok, value in list(log) if role == "other" and ok and value not in known]
    return min(times) if times else None


def summarize_recovery(log: Log, t_kill: float, known: set[int], others: int) -> dict[str, Any]:
    def outcome(role: str) -> tuple[str, float | None]:
        for t, r, ok, value in log:
            if r == role:
                return ("ok" if ok else f"failed: {type(value).__name__}"), round((t - t_kill) * 1e3, 2)
        return "lost", None

    victim, detect_ms = outcome("victim")
    blocker, _ = outcome("blocker")
    other = [(t, ok, value) for t, r, ok, value in log if r == "other"]
    failures: dict[str, int] = {}
    for _t, ok, value in other:
        if not ok:
            failures[type(value).__name__] = failures.get(type(value).__name__, 0) + 1
    oks = [t for t, ok, _v in other if ok]
    replacement = _replacement(log, known)
    return {
        "victim": victim,
        "detect_ms": detect_ms,
        "blocker": blocker,
        "others": others,
        "others_ok": len(oks),
        "others_failed": sum(failures.values()),
        "others_failures": failures,
        "others_lost": others - len(other),
        "first_ok_ms": round((min(oks) - t_kill) * 1e3, 2) if oks else None,
        "replacement_ms": round((replacement - t_kill) * 1e3, 2) if replacement is not None else None,
        "replacement_via": "pool" if replacement is not None else None,
        "resent": None,
    }


def sync_startup(pool: SyncPool, system: System, spec: Spec) -> dict[str, Any]:
    workers, rv = spec["workers"], Path(spec["tmpdir"], "rendezvous")
    rv.mkdir()
    gc.collect()
    before = common.status_kib("self", ("VmRSS", "Threads"))
    t0 = time.perf_counter()
    pool.start(workers)
    try:
        ok, value = sync_call(pool, echo, (1,), spec["call_timeout"])
        t_first = time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"first call failed: {common.jsonable(value)}")
        log: list[tuple[float, bool, Any]] = []

        def done(ok: bool, value: Any) -> None:
            log.append((time.perf_counter(), ok, value))

        calls = workers * spec["rendezvous_per_worker"]
        for _ in range(calls):
            pool.submit(rendezvous, (str(rv), workers), done)
        _poll(lambda: len(log) >= calls, spec["call_timeout"])
        return _startup_result(t0, t_first, log, calls, before, workers, pool.describe())
    finally:
        pool.close()


def _startup_result(
    t0: float,
    t_first: float,
    log: list[tuple[float, bool, Any]],
    calls: int,
    before: dict[str, int],
    workers: int,
    describe: dict[str, Any],
) -> dict[str, Any]:
    met = [t for t, ok, value in log if ok and value[1]]
    pids = {value[0] for _t, ok, value in log if ok}
    time.sleep(0.5)  # at rest
    gc.collect()
    after = common.status_kib("self", ("VmRSS", "Threads"))
    others = [p for p in common.descendants() if p not in pids]
    return {
        "first_result_ms": round(t_first * 1e3, 2),
        "all_ready_ms": round((min(met) - t0) * 1e3, 2) if met else None,
        "rendezvous_calls": calls,
        "rendezvous_settled": len(log),
        "worker_pids_seen": len(pids),
        "parent_before_kib": before,
        "parent_after_kib": after,
        "parent_growth_per_worker_kib": round((after.get("VmRSS", 0) - before.get("VmRSS", 0)) / workers, 1),
        "workers_kib": [common.memory_of(p) for p in sorted(pids)],
        "helpers_kib": [common.memory_of(p) for p in others],
        "describe": describe,
    }


# --------------------------------------------------------------------------- async family
async def async_calls(pool: AsyncPool, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
    """One task per call, all started at once (``asyncio.gather``); results in input order.

    Not an anyio task group: its ``start_soon`` costs ~40 us of the loop's CPU per task, and
    with an in-process stand-in that answers every call at once, 20,000 calls through a task
    group ran at ~15k calls/s against ~51k through ``gather`` (docs/performance.md, item 16).
    The harness would have been the figure. Every async row runs on asyncio, so every one
    gets the same cheaper tasks.
    """
    return list(await asyncio.gather(*(pool.call(fn, x) for x in items)))


async def async_tasks(pool: AsyncPool, fn: Callable[..., Any], items: Sequence[Any], tasks: int) -> list[Any]:
    """``tasks`` tasks, each making its share of the calls one after another."""
    results: list[Any] = [None] * len(items)

    async def caller(start: int) -> None:
        for i in range(start, len(items), tasks):
            results[i] = await pool.call(fn, items[i])

    async with anyio.create_task_group() as tg:
        for t in range(min(tasks, len(items))):
            tg.start_soon(caller, t)
    return results


async def async_throughput(pool: AsyncPool, system: System, spec: Spec) -> dict[str, Any]:
    async with pool:
        run: Callable[[list[Any]], Awaitable[list[Any]]]
        if system.api == "map":
            run = lambda xs: pool.map(echo, xs)  # noqa: E731
        elif system.api == "tasks":
            run = lambda xs: async_tasks(pool, echo, xs, TASKS)  # noqa: E731
        else:
            run = lambda xs: async_calls(pool, echo, xs)  # noqa: E731
        warm = items_for("int", spec["warmup"])
        _check(await run(warm), warm)
        pids = _pin(spec)
        out: dict[str, Any] = {"worker_processes": len(pids), "describe": pool.describe()}
        for payload in spec["payloads"]:
            items = items_for(payload, spec["calls"])
            out[payload] = await _timed_async(pids, len(items), functools.partial(run, items))
        return out


async def async_latency(pool: AsyncPool, system: System, spec: Spec) -> dict[str, Any]:
    """Open loop: at each intended send time the call is started from the event loop, woken
    by a kernel timer (a timerfd it watches, :func:`common.periodic_timer_fd`): one wake-up
    of the calling thread per call, as the sync systems' sender thread has, and as a request
    arriving on a socket gives an async server. The asyncio loop cannot time the sends with
    its own timers: epoll rounds its timeouts up to the next millisecond.

    Without a timerfd (not Linux), a sender thread wakes at each intended time and hands the
    call to the loop (``call_soon_threadsafe``): a second wake-up per call, which every async
    row then carries (docs/performance.md item 24)."""
    async with pool:
        warm_items = list(range(200))
        _check(await async_calls(pool, echo, warm_items), warm_items)
        _pin(spec)
        loop = asyncio.get_running_loop()
        rate, warm = spec["rate"], int(spec["rate"] * spec["latency_warmup"])
        n = warm + int(rate * spec["duration"])
        lat = [math.nan] * n
        lag = [0.0] * n
        failed: list[Any] = []
        precise: list[bool] = []
        settled = 0
        tasks: list[asyncio.Task[None]] = []

        async def one(i: int, intended: float) -> None:
            nonlocal settled
            try:
                await pool.call(echo, i)
            except Exception as exc:
                failed.append(exc)
            else:
                lat[i] = time.perf_counter() - intended
            settled += 1

        def start_call(i: int, intended: float) -> None:
            lag[i] = time.perf_counter() - intended
            # An asyncio task, not the task group's start_soon: an anyio task costs ~40 us
            # more to start, which every async row's latency would carry (item 16).
            tasks.append(loop.create_task(one(i, intended)))

        gc.collect()
        start = time.perf_counter() + 0.05
        timer = common.periodic_timer_fd(start, 1 / rate)
        if timer is not None:
            precise.append(True)  # a timerfd has no timer slack
            await _timer_sends(loop, timer, n, start, rate, start_call)
        else:
            context = contextvars.copy_context()  # the loop thread's: anyio finds its backend there

            def sender() -> None:
                precise.append(common.precise_sleeps())
                for i in range(n):
                    intended = start + i / rate
                    common.sleep_until(intended)
                    loop.call_soon_threadsafe(start_call, i, intended, context=context)

            await anyio.to_thread.run_sync(sender)
        all_done = await _apoll(lambda: settled >= n, spec["call_timeout"])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out = _latency_result(
            lat, lag, failed, warm, n, bool(precise and precise[0]), all_done, pool.describe()
        )
        out["send_timer"] = "timerfd" if timer is not None else "thread"
        return out


async def _timer_sends(
    loop: asyncio.AbstractEventLoop,
    timer: int,
    n: int,
    start: float,
    rate: float,
    start_call: Callable[[int, float], None],
) -> None:
    """Start call ``i`` at ``start + i / rate`` for i < n, from the loop's read callback of
    ``timer`` (a periodic timerfd from ``start``). Every call whose time has come is started
    when the loop wakes, so an expiry the loop was too busy to see is caught up, not lost."""
    done = loop.create_future()
    sent = 0

    def tick() -> None:
        nonlocal sent
        try:
            os.read(timer, 8)
        except BlockingIOError:
            return  # woken with nothing expired: wait for the next
        now = time.perf_counter()
        while sent < n and start + sent / rate <= now:
            start_call(sent, start + sent / rate)
            sent += 1
        if sent >= n and not done.done():
            done.set_result(None)

    loop.add_reader(timer, tick)
    try:
        await done
    finally:
        loop.remove_reader(timer)
        os.close(timer)


async def _apoll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``predicate`` (polled every 2 ms: what it watches is written by calls and files,
    not events; the times measured are taken where things happen, not here)."""
    with anyio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.002)
        return True
    return False


async def _await_pid(path: Path, timeout: float) -> int:
    if not await _apoll(path.exists, timeout):
        raise TimeoutError(f"{path.name} did not appear in {timeout} s (the call never started)")
    return _read_pid(path)


async def async_recovery(pool: AsyncPool, system: System, spec: Spec) -> dict[str, Any]:
    """sync_recovery's scenario, with awaited calls."""
    tmp = spec["tmpdir"]
    async with pool:
        for _ in range(2 * spec["workers"]):
            await pool.call(getpid)
        pool.watch_resends()
        log: Log = []

        async def run(role: str, fn: Callable[..., Any], *args: Any) -> None:
            try:
                value = await pool.call(fn, *args)
            except Exception as exc:
                log.append((time.perf_counter(), role, False, exc))
            else:
                log.append((time.perf_counter(), role, True, value))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "victim", hang, tmp)
                victim = await _await_pid(Path(tmp, "hang.pid"), 10)
                tg.start_soon(run, "blocker", block, tmp)
                await _await_pid(Path(tmp, "block.pid"), 10)
                known = set(common.descendants())
                for _ in range(spec["others"]):
                    tg.start_soon(run, "other", getpid)
                await anyio.sleep(0.05)
                t_kill = time.perf_counter()
                os.kill(victim, signal.SIGKILL)
                await _apoll(lambda: _answered(log, known, spec["others"]), spec["recovery_wait"])
                _touch(Path(tmp, RELEASE))
                await _apoll(lambda: len(log) >= 2 + spec["others"], spec["settle_wait"])
                out = summarize_recovery(list(log), t_kill, known, spec["others"])
                tg.cancel_scope.cancel()  # whatever is still pending is lost
        finally:
            _touch(Path(tmp, RELEASE))
        out["resent"] = pool.resent()
        out["describe"] = pool.describe()
        return out


async def async_startup(pool: AsyncPool, system: System, spec: Spec) -> dict[str, Any]:
    workers, rv = spec["workers"], Path(spec["tmpdir"], "rendezvous")
    os.mkdir(rv)
    gc.collect()
    before = common.status_kib("self", ("VmRSS", "Threads"))
    t0 = time.perf_counter()
    async with pool:
        await pool.call(echo, 1)
        t_first = time.perf_counter() - t0
        log: list[tuple[float, bool, Any]] = []

        async def one() -> None:
            try:
                value = await pool.call(rendezvous, str(rv), workers)
            except Exception as exc:
                log.append((time.perf_counter(), False, exc))
            else:
                log.append((time.perf_counter(), True, value))

        calls = workers * spec["rendezvous_per_worker"] * (17 if system.library == "aiomp" else 1)
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(one)
            with anyio.move_on_after(spec["call_timeout"]):
                await _apoll(lambda: len(log) >= calls, spec["call_timeout"])
            tg.cancel_scope.cancel()
        await anyio.lowlevel.checkpoint()
        return await anyio.to_thread.run_sync(
            _startup_result, t0, t_first, log, calls, before, workers, pool.describe()
        )


# --------------------------------------------------------------------------- lean (raw pipe)
def lean_throughput(system: System, spec: Spec) -> dict[str, Any]:
    children = [rawpipe.Child() for _ in range(spec["workers"])]
    try:
        rawpipe.wait_ready(children)
        loop = rawpipe.pipelined if system.name == "raw.pipelined" else rawpipe.one_in_flight
        warm = items_for("int", spec["warmup"])
        loop(children, echo, warm)
        pids = _pin(spec)
        out: dict[str, Any] = {"worker_processes": len(pids), "describe": {"loop": loop.__name__}}
        for payload in spec["payloads"]:
            items = items_for(payload, spec["calls"])
            out[payload] = _timed(pids, len(items), functools.partial(loop, children, echo, items))
        return out
    finally:
        for c in children:
            c.close()
