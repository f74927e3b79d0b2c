"""Adapters for the peers driven from a thread: submit a call, get a completion callback.

Each adapter starts the library's pool the way its documentation shows, with ``workers``
processes and otherwise default settings (the exceptions are said where they are made), and
turns its handle (a Future, an AsyncResult) into ``done(ok, value_or_exception)``, called from
whichever thread the library completes calls on. ``submit_timed`` gives a call a timeout the
library's own way, where it has one (the stuck workload; ``give_up`` says how, for the tables).
The peers are imported by name (``importlib``), so this module type-checks without them
installed.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.metadata
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from benchmarks._peers.rawpipe import RawPool

Done = Callable[[bool, Any], None]
GiveUp = Callable[[], object]  # what the caller does at the deadline; its result is ignored


class SyncPool(Protocol):
    library: str
    recreate: str | None  # how a broken pool is replaced, if the library has a way (recover())
    give_up: str  # how a caller gives up on a call after its timeout (the stuck workload)

    def start(self, workers: int) -> None: ...

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None: ...

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        """Submit with a per-call timeout. None: the library enforces it (``done`` gets its
        error when it gives up). Otherwise the caller stops waiting at the deadline itself and
        calls what this returns (cancel the future, kill the child, or nothing)."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]: ...

    def recover(self) -> None:
        """Get a working pool after this one broke (only when ``recreate`` is set)."""

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _settle(done: Done) -> Callable[[concurrent.futures.Future[Any]], None]:
    def callback(future: concurrent.futures.Future[Any]) -> None:
        try:
            value = future.result()
        except BaseException as exc:
            done(False, exc)
        else:
            done(True, value)

    return callback


def _nothing() -> None:
    return None


class _Base:
    library = ""
    recreate: str | None = None
    give_up = "the caller stops waiting at the deadline; nothing stops the call"
    workers = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        raise NotImplementedError

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        self.submit(fn, args, done)
        return _nothing

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def recover(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"start_method": multiprocessing.get_start_method()}


class Ppe(_Base):
    """concurrent.futures.ProcessPoolExecutor(max_workers=N), submit()."""

    library = "ppe"
    give_up = "`future.result(timeout)`, then `future.cancel()`: a running call cannot be cancelled"

    def start(self, workers: int) -> None:
        self.ex = concurrent.futures.ProcessPoolExecutor(max_workers=workers)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.ex.submit(fn, *args).add_done_callback(_settle(done))

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        future = self.ex.submit(fn, *args)
        future.add_done_callback(_settle(done))
        return future.cancel

    def close(self) -> None:
        self.ex.shutdown(wait=False, cancel_futures=True)


class Mp(_Base):
    """multiprocessing.Pool(processes=N): apply_async() with callbacks, or map() (its default
    chunksize: ceil(len / (4 * N)) items per message)."""

    library = "mp"
    give_up = "`AsyncResult.get(timeout)`: nothing stops the call"

    def start(self, workers: int) -> None:
        self.workers = workers
        self.pool = multiprocessing.Pool(processes=workers)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.pool.apply_async(
            fn, args, callback=lambda v: done(True, v), error_callback=lambda e: done(False, e)
        )

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "map_chunksize": "ceil(len / (4 * workers))"}


class Loky(_Base):
    """loky.get_reusable_executor(max_workers=N), submit(). A worker's death breaks the
    executor; the next get_reusable_executor() returns a new one (its documented recovery)."""

    library = "loky"
    recreate: str | None = "loky.get_reusable_executor() again"
    give_up = "`future.result(timeout)`, then `future.cancel()`: a running call cannot be cancelled"

    def start(self, workers: int) -> None:
        self.loky = importlib.import_module("loky")
        self.workers = workers
        self.ex = self.loky.get_reusable_executor(max_workers=workers)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.ex.submit(fn, *args).add_done_callback(_settle(done))

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        future: concurrent.futures.Future[Any] = self.ex.submit(fn, *args)
        future.add_done_callback(_settle(done))
        return future.cancel

    def recover(self) -> None:
        self.ex = self.loky.get_reusable_executor(max_workers=self.workers)

    def close(self) -> None:
        self.ex.shutdown(wait=True, kill_workers=True)

    def describe(self) -> dict[str, Any]:
        return {"start_method": "loky (fork + exec)", "version": _version("loky")}


class Pebble(_Base):
    """pebble.ProcessPool(max_workers=N), schedule()."""

    library = "pebble"
    give_up = "`schedule(timeout=)`: pebble stops the worker and fails the future"

    def start(self, workers: int) -> None:
        self.pool = importlib.import_module("pebble").ProcessPool(max_workers=workers)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.pool.schedule(fn, args=args).add_done_callback(_settle(done))

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        self.pool.schedule(fn, args=args, timeout=timeout).add_done_callback(_settle(done))
        return None

    def close(self) -> None:
        self.pool.stop()
        self.pool.join(timeout=5)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": _version("pebble")}


class Mpire(_Base):
    """mpire.WorkerPool(n_jobs=N, keep_alive=True): apply_async() with callbacks, or map()
    (its default chunking). keep_alive: without it every map() starts and stops the workers,
    which a throughput figure for a running pool should not include."""

    library = "mpire"
    give_up = "`apply_async(task_timeout=)`: mpire signals the worker (SIGUSR1) and fails the call"

    def start(self, workers: int) -> None:
        self.pool = importlib.import_module("mpire").WorkerPool(n_jobs=workers, keep_alive=True)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.pool.apply_async(
            fn, args, callback=lambda v: done(True, v), error_callback=lambda e: done(False, e)
        )

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        self.pool.apply_async(
            fn,
            args,
            callback=lambda v: done(True, v),
            error_callback=lambda e: done(False, e),
            task_timeout=timeout,
        )
        return None

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return list(self.pool.map(fn, items, progress_bar=False))

    def close(self) -> None:
        self.pool.terminate()

    def describe(self) -> dict[str, Any]:
        return {"start_method": "fork (mpire default)", "version": _version("mpire"), "keep_alive": True}


class Raw(_Base):
    """The raw-pipe reference (rawpipe.RawPool): pipelined (no bound on calls in flight per
    child) or one in flight per child."""

    library = "raw"
    give_up = "the caller stops waiting at the deadline and SIGKILLs the child; a new one starts"

    def __init__(self, depth: int | None) -> None:
        self.depth = depth

    def start(self, workers: int) -> None:
        self.pool = RawPool(self.depth)
        self.pool.start(workers)

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self.pool.submit(fn, args, done)

    def submit_timed(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float, done: Done
    ) -> GiveUp | None:
        self.pool.submit(fn, args, done)
        return lambda: self.pool.abandon(done)

    def close(self) -> None:
        self.pool.close()

    def describe(self) -> dict[str, Any]:
        return {"start_method": "subprocess.Popen (fresh interpreter)", "depth": self.depth}


SYNC_POOLS: dict[str, Callable[[], SyncPool]] = {
    "ppe": Ppe,
    "mp": Mp,
    "loky": Loky,
    "pebble": Pebble,
    "mpire": Mpire,
    "raw": lambda: Raw(None),
    "raw1": lambda: Raw(1),
}
