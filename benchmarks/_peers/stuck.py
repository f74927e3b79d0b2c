"""The stuck workload: a call stuck in C code, ignoring signals, given a timeout.

One call of ``work.stuck`` (every catchable signal blocked, SIGTERM and SIGINT ignored, asleep
in C: only SIGKILL ends it) with a timeout of ``stuck_timeout`` seconds, given the system's own
way (``give_up`` in the adapters: poolkit's ``timeout=``, pebble's ``schedule(timeout=)``,
mpire's ``task_timeout``, ``anyio.fail_after`` around anyio's ``run_sync(cancellable=True)``
and aiomultiprocess's ``apply``; the others have no per-call timeout, so the caller stops
waiting at the deadline and does what the library allows: cancel the future, kill the raw
child, or nothing). Measured from the submit,
on a pool whose every worker has run user code first (a rendezvous):

* *answered*: when the caller had its answer, and what it was;
* *capacity back*: the first instant at which probe calls (``work.probe``: hold a worker 10 ms,
  return its pid and the start and end times, on the one monotonic clock all processes share)
  were running in as many distinct processes as the pool has workers, none of them the stuck
  one. Probing starts when the caller has its answer, with one prober per worker, each making
  its calls one after another. Probes are how a caller sees the pool's capacity, whatever the
  library counts internally; a replacement that became ready while every prober was waiting on
  the other worker is seen when the next probe is sent, within one hold (10 ms);
* *the stuck process*: when it died, whether it was alive when the pool's close returned, and
  whether it outlived the close by ``gone_wait`` seconds (an orphan: the runner kills it).

The pool's close is part of the scenario (a pool that cannot close is a finding): it runs with
a bound of ``close_wait`` seconds, and a close still running then is recorded as hung.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from benchmarks._peers import common
from benchmarks._peers.async_pools import AsyncPool
from benchmarks._peers.catalog import System
from benchmarks._peers.sync_pools import SyncPool
from benchmarks._peers.work import probe, rendezvous, stuck

Spec = dict[str, Any]
Probe = tuple[int, float, float]  # pid, start, end (time.perf_counter, in the worker)


class Capacity:
    """Probe results, and the first instant probes were running in ``workers`` distinct
    processes other than the stuck one (``at``; None until then)."""

    def __init__(self, stuck_pid: int, workers: int) -> None:
        self.stuck_pid = stuck_pid
        self.workers = workers
        self.probes: list[Probe] = []
        self.failures: dict[str, int] = {}
        self.unanswered = 0  # probes still out when the window closed
        self.at: float | None = None
        self._lock = threading.Lock()

    def add(self, result: Probe) -> None:
        with self._lock:
            self.probes.append(result)
            if self.at is None:
                self.at = _first_full(self.probes, self.stuck_pid, self.workers)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            name = type(exc).__name__
            self.failures[name] = self.failures.get(name, 0) + 1

    def gone_unanswered(self) -> None:
        with self._lock:
            self.unanswered += 1

    def result(self, t0: float, t_answer: float) -> dict[str, Any]:
        with self._lock:
            at = self.at
            return {
                "capacity_ms": _ms(at - t0) if at is not None else None,
                "capacity_after_answer_ms": _ms(at - t_answer) if at is not None else None,
                "probes": len(self.probes),
                "probe_pids": len({p for p, _s, _e in self.probes}),
                "probes_on_stuck_pid": sum(1 for p, _s, _e in self.probes if p == self.stuck_pid),
                "probe_failures": dict(self.failures),
                "probes_unanswered": self.unanswered,
            }


def _first_full(probes: list[Probe], exclude: int, workers: int) -> float | None:
    """The earliest start of a probe at which probes covered ``workers`` distinct pids (not
    ``exclude``): a sweep over the starts and ends, in time order (ends first on a tie)."""
    events = sorted(
        [(s, 1, pid) for pid, s, _e in probes if pid != exclude]
        + [(e, 0, pid) for pid, _s, e in probes if pid != exclude]
    )
    running: dict[int, int] = {}
    for t, is_start, pid in events:
        running[pid] = running.get(pid, 0) + (1 if is_start else -1)
        if is_start and sum(1 for n in running.values() if n > 0) >= workers:
            return t
    return None


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


def _what(exc: BaseException) -> str:
    """An answer, for the tables: the exception's type (and poolkit's phase, if it has one)."""
    phase = getattr(getattr(exc, "phase", None), "value", None)
    return type(exc).__name__ + (f" ({phase})" if phase else "")


def _stuck_pid(tmp: str, timeout: float) -> int:
    path = Path(tmp, "stuck.pid")
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stuck call did not start in {timeout} s")
        time.sleep(0.0005)
    return int(path.read_text(encoding="ascii"))


def _after_close(watch: common.DeathWatch, t0: float, spec: Spec) -> dict[str, Any]:
    # Checked here and now: the watch polls every millisecond and may not have seen a death
    # that happened just before the close returned (it reported "alive after close" for a
    # process the pool had already reaped).
    alive_at_close = common.pid_alive(watch.pid)
    gone = watch.wait(spec["gone_wait"])
    watch.stop()
    return {
        "stuck_dead_ms": _ms(watch.died - t0) if watch.died is not None else None,
        "stuck_alive_after_close": alive_at_close,
        "orphan": not gone,
    }


# --------------------------------------------------------------------------- sync family
def _sync_warm(pool: SyncPool, tmp: str, workers: int, limit: float) -> None:
    """Every worker runs user code: a rendezvous of one call per worker."""
    rv = Path(tmp, "warm")
    rv.mkdir()
    results: list[tuple[bool, Any]] = []
    done = threading.Event()

    def settle(ok: bool, value: Any) -> None:
        results.append((ok, value))
        if len(results) == workers:
            done.set()

    for _ in range(workers):
        pool.submit(rendezvous, (str(rv), workers, limit), settle)
    if not done.wait(limit + 5) or not all(ok and value[1] for ok, value in results):
        raise RuntimeError(f"warm-up: {workers} workers did not all run a call: {results!r}")


def _sync_probe(pool: SyncPool, hold: float, timeout: float) -> tuple[bool, Any] | None:
    """One probe call; (ok, value), or None if it was not answered within ``timeout``."""
    box: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def done(ok: bool, value: Any) -> None:
        box.append((ok, value))
        finished.set()

    pool.submit(probe, (hold,), done)
    return box[0] if finished.wait(timeout) else None


def _close_guarded(close: Callable[[], None], limit: float) -> dict[str, Any]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            close()
        except Exception as exc:
            errors.append(exc)

    t = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True, name="close")
    thread.start()
    thread.join(limit)
    return {
        "close_ms": _ms(time.perf_counter() - t),
        "close_hung": thread.is_alive(),
        "close_error": common.jsonable(errors[0]) if errors else None,
    }


def sync_stuck(pool: SyncPool, system: System, spec: Spec) -> dict[str, Any]:
    tmp, workers, timeout = spec["tmpdir"], spec["workers"], spec["stuck_timeout"]
    pool.start(workers)
    out: dict[str, Any] = {
        "give_up": pool.give_up,
        "timeout_s": timeout,
        "capacity_wait_s": spec["capacity_wait"],
    }
    watch: common.DeathWatch | None = None
    t0 = 0.0
    try:
        _sync_warm(pool, tmp, workers, spec["warm_limit"])
        box: list[tuple[float, bool, Any]] = []
        answered = threading.Event()

        def done(ok: bool, value: Any) -> None:
            box.append((time.perf_counter(), ok, value))
            answered.set()

        t0 = time.perf_counter()
        give_up = pool.submit_timed(stuck, (tmp, spec["stuck_seconds"]), timeout, done)
        stuck_pid = _stuck_pid(tmp, spec["answer_wait"])
        watch = common.DeathWatch(stuck_pid)
        if give_up is None:  # the library's own timeout
            if not answered.wait(spec["answer_wait"]):
                raise TimeoutError(f"no answer {spec['answer_wait']} s after the call's timeout")
            t_answer, ok, value = box[0]
            out["answer"] = "returned" if ok else _what(value)
        else:  # the caller stops waiting at the deadline
            if answered.wait(max(0.0, t0 + timeout - time.perf_counter())):
                raise RuntimeError(f"the stuck call ended before its timeout: {box[0][1:]!r}")
            t_answer = time.perf_counter()
            give_up()
            out["answer"] = "TimeoutError (the caller's)"
        out["answered_ms"] = _ms(t_answer - t0)
        cap = Capacity(stuck_pid, workers)
        until = t_answer + spec["capacity_wait"]

        def prober() -> None:
            while cap.at is None and (left := until - time.perf_counter()) > 0:
                try:
                    got = _sync_probe(pool, spec["probe_hold"], left)
                except Exception as exc:  # the pool refuses calls (broken)
                    got = (False, exc)
                if got is None:
                    cap.gone_unanswered()
                elif got[0]:
                    cap.add(got[1])
                else:
                    cap.failed(got[1])
                    time.sleep(0.005)

        probers = [threading.Thread(target=prober, daemon=True) for _ in range(workers)]
        for t in probers:
            t.start()
        for t in probers:
            t.join(spec["capacity_wait"] + 1)
        out.update(cap.result(t0, t_answer))
        out["processes_at_end"] = len(common.descendants())  # workers, helpers, the stuck one
        out["late_outcome"] = [
            ("returned" if ok else _what(value)) for _t, ok, value in box[1 if give_up is None else 0 :]
        ]
        out["describe"] = pool.describe()
    finally:
        out.update(_close_guarded(pool.close, spec["close_wait"]))
    if watch is not None:
        out.update(_after_close(watch, t0, spec))
    return out


# --------------------------------------------------------------------------- async family
async def _async_warm(pool: AsyncPool, tmp: str, workers: int, limit: float) -> None:
    """Every worker runs user code: a rendezvous of one call per worker (aiomultiprocess: 17,
    since each of its workers takes up to 16 calls at once from one shared queue)."""
    rv = os.path.join(tmp, "warm")
    os.mkdir(rv)
    results: list[Any] = []

    async def one() -> None:
        results.append(await pool.call(rendezvous, rv, workers, limit))

    with anyio.fail_after(limit + 5):
        async with anyio.create_task_group() as tg:
            for _ in range(workers * (17 if pool.library == "aiomp" else 1)):
                tg.start_soon(one)
    if not all(met for _pid, met in results):
        raise RuntimeError(f"warm-up: {workers} workers did not all run a call: {results!r}")


async def async_stuck(pool: AsyncPool, system: System, spec: Spec) -> dict[str, Any]:
    tmp, workers, timeout = spec["tmpdir"], spec["workers"], spec["stuck_timeout"]
    out: dict[str, Any] = {
        "give_up": pool.give_up,
        "timeout_s": timeout,
        "capacity_wait_s": spec["capacity_wait"],
    }
    watch: common.DeathWatch | None = None
    t0 = 0.0
    await pool.__aenter__()
    try:
        await _async_warm(pool, tmp, workers, spec["warm_limit"])
        box: list[tuple[float, BaseException | None]] = []
        answered = anyio.Event()

        async def caller() -> None:
            try:
                await pool.call_timed(stuck, tmp, spec["stuck_seconds"], timeout=timeout)
            except Exception as exc:
                box.append((time.perf_counter(), exc))
            else:
                box.append((time.perf_counter(), None))
            answered.set()

        async with anyio.create_task_group() as tg:
            t0 = time.perf_counter()
            tg.start_soon(caller)
            stuck_pid = await anyio.to_thread.run_sync(_stuck_pid, tmp, spec["answer_wait"])
            watch = common.DeathWatch(stuck_pid)
            with anyio.move_on_after(timeout + spec["answer_wait"]):
                await answered.wait()
            if not box:
                tg.cancel_scope.cancel()
                raise TimeoutError(f"no answer {spec['answer_wait']} s after the call's timeout")
        t_answer, error = box[0]
        out["answer"] = "returned" if error is None else _what(error)
        out["answered_ms"] = _ms(t_answer - t0)
        out["states_at_answer"] = pool.worker_states()
        cap = Capacity(stuck_pid, workers)
        until = t_answer + spec["capacity_wait"]
        live_back: list[float] = []

        async def prober() -> None:
            while cap.at is None and (left := until - time.perf_counter()) > 0:
                with anyio.move_on_after(left) as scope:
                    try:
                        cap.add(await pool.call(probe, spec["probe_hold"]))
                    except Exception as exc:
                        cap.failed(exc)
                        await anyio.sleep(0.005)
                if scope.cancelled_caught:
                    cap.gone_unanswered()

        async def self_count() -> None:
            """When the system's own count of workers able to take calls is back (poolkit)."""
            while not live_back and time.perf_counter() < until:
                live = pool.live_workers()
                if live is None:
                    return
                if live >= workers:
                    live_back.append(time.perf_counter())
                    return
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(self_count)
            for _ in range(workers):
                tg.start_soon(prober)
        out.update(cap.result(t0, t_answer))
        out["self_reported_ms"] = _ms(live_back[0] - t0) if live_back else None
        out["processes_at_end"] = len(common.descendants())  # workers, helpers, the stuck one
        out["describe"] = pool.describe()
    finally:
        # The close is bounded from inside the pool's context (a cancel scope cannot wrap the
        # exit of one that holds a task group); a close still running at the bound is left
        # behind, and the runner's exit kills what it left.
        t = time.perf_counter()
        with anyio.move_on_after(spec["close_wait"]) as scope:
            try:
                await pool.aclose()
            except Exception as exc:
                out["close_error"] = common.jsonable(exc)
        out["close_ms"] = _ms(time.perf_counter() - t)
        out["close_hung"] = scope.cancelled_caught
        if not scope.cancelled_caught:
            await pool.__aexit__(None, None, None)
    if watch is not None:
        out.update(await anyio.to_thread.run_sync(_after_close, watch, t0, spec))
    return out
