"""Routing decisions: which worker takes the next call. Pure: no I/O, no awaits.

The pool tells the scheduler each worker's load (calls in flight) and whether it can take
calls; the scheduler answers "least loaded worker with room", or None. Workers are kept in
buckets by load, so a decision costs O(pipeline depth), not O(workers): dispatch stays flat
as the pool grows (a later issue holds it to that at 256 workers). ``_low`` remembers the
lowest bucket that may hold a worker, so a pick usually looks at one bucket, not up to
``depth`` of them: with the adaptive window (depth 32) and busy workers the scan cost ~180
bytecodes per call, the most of any step (docs/performance.md item 16).

Within a bucket the oldest entry wins, which spreads calls round-robin over idle workers
instead of hammering the first one.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Scheduler"]

_W = TypeVar("_W", bound=Hashable)


class Scheduler(Generic[_W]):
    __slots__ = ("_buckets", "_depth", "_low", "_where")

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._depth = depth
        # _buckets[n] holds the available workers with n calls in flight (dicts keep order).
        self._buckets: list[dict[_W, None]] = [{} for _ in range(depth)]
        self._where: dict[_W, int] = {}
        self._low = 0  # every bucket below this one is empty

    @property
    def depth(self) -> int:
        return self._depth

    def __len__(self) -> int:
        """Number of workers that can take at least one more call."""
        return len(self._where)

    def __contains__(self, worker: object) -> bool:
        return worker in self._where

    def update(self, worker: _W, load: int, available: bool = True) -> None:
        """Record ``worker``'s current load; ``available=False`` takes it out of rotation."""
        old = self._where.pop(worker, None)
        if old is not None:
            del self._buckets[old][worker]
        if available and load < self._depth:
            self._buckets[load][worker] = None
            self._where[worker] = load
            if load < self._low:
                self._low = load

    def remove(self, worker: _W) -> None:
        self.update(worker, 0, available=False)

    def pick(self) -> _W | None:
        """The least-loaded available worker, or None when every worker is full."""
        if not self._where:
            return None
        buckets, low = self._buckets, self._low
        while not buckets[low]:  # ends: some worker is available, so some bucket holds one
            low += 1
        self._low = low
        return next(iter(buckets[low]))

    def level_of_others(self, worker: _W) -> int:
        """The lowest load of an available worker other than ``worker`` (``depth`` if there
        is none): ``worker``, just picked as the least loaded, is the pick for every call
        until its load reaches this level."""
        buckets = self._buckets
        for load in range(self._low, self._depth):
            bucket = buckets[load]
            if bucket and (len(bucket) > 1 or worker not in bucket):
                return load
        return self._depth

    def pick_other(self, avoid: _W) -> _W | None:
        """The least-loaded available worker other than ``avoid`` (a retry goes elsewhere)."""
        for bucket in self._buckets[self._low :]:
            for worker in bucket:
                if worker != avoid:
                    return worker
        return None

    def loads(self) -> dict[_W, int]:
        """Snapshot for tests and statistics."""
        return dict(self._where)
