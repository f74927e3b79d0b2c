"""Session affinity: the pool's record of one session, and the handle callers hold.

A session is a key (``str`` or ``int``) whose calls go to one worker, one at a time, in the
order they were made, so the worker can keep state for it between calls (the target
receives ``session=``, a :class:`poolkit.worker.Session` it may store things on).

The pool keeps one :class:`Binding` per live session: which worker holds its state, the
call of it that is in the pool's hands now (``current``: queued, parked waiting for its
worker, or running) and the ones waiting behind it. Only ``current`` ever moves, which is
what keeps a session's calls in order and never on two workers at once.
"""

from __future__ import annotations

import collections
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._config import AffinityMode

if TYPE_CHECKING:
    from ._call import Call
    from ._pool import Pool
    from ._worker import Worker

__all__ = ["AffinityMode", "Binding", "PoolSession", "check_key"]

_MODES = ("hint", "strict_queue", "strict_fail_fast")


def check_key(key: object) -> str | int:
    """Session keys travel in frames (JSON for SESSION_END), so they are str or int."""
    if type(key) is bool or not isinstance(key, (str, int)):
        raise TypeError(f"a session key must be a str or an int, not {type(key).__name__}")
    return key


def check_mode(mode: str) -> AffinityMode:
    if mode not in _MODES:
        raise ValueError(f"session mode must be one of {', '.join(_MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


class Binding:
    """The pool's record of one live session (see the module docstring)."""

    __slots__ = (
        "closing",
        "current",
        "ended",
        "key",
        "last_used",
        "lost",
        "mode",
        "rebinds",
        "waiting",
        "worker",
    )

    def __init__(self, key: str | int, mode: AffinityMode, now: float, rebinds: int = 0) -> None:
        self.key = key
        self.mode: AffinityMode = mode
        self.worker: Worker | None = None  # the worker holding this session's state
        self.current: Call | None = None  # the one call of this session the pool is moving
        self.waiting: collections.deque[Call] = collections.deque()  # behind ``current``
        self.last_used = now
        self.lost: str | None = None  # why the state is gone (worker crashed, recycled, ...)
        self.rebinds = rebinds  # times a hint session moved, losing its state
        self.ended: str | None = None  # closed | expired, once dropped from the pool
        self.closing = False  # end as soon as the calls in hand are done

    @property
    def idle(self) -> bool:
        return self.current is None and not self.waiting

    def __repr__(self) -> str:
        where = self.worker.id if self.worker is not None else "unbound"
        return f"<Binding {self.key!r} {self.mode} on {where}>"


class PoolSession:
    """A session handle from :meth:`Pool.session`: calls made through it share one worker.

    ``rebinds`` counts how many times a ``hint`` session was moved to another worker (its
    state was lost each time); ``worker_id`` is the worker holding its state now. Close it
    (``async with``, or :meth:`aclose`) to let the worker drop the state at once instead of
    at the TTL.
    """

    def __init__(self, pool: Pool, key: str | int, mode: AffinityMode) -> None:
        self.pool = pool
        self.key = key
        self.mode: AffinityMode = mode
        self.binding: Binding | None = None
        self.closed = False

    async def call(
        self,
        target: Any,
        /,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """:meth:`Pool.call` within this session (the target receives ``session=``)."""
        return await self.pool.call(
            target, *args, timeout=timeout, idempotent=idempotent, session=self, **kwargs
        )

    @property
    def worker_id(self) -> str | None:
        binding = self.binding
        return binding.worker.id if binding is not None and binding.worker is not None else None

    @property
    def rebinds(self) -> int:
        return self.binding.rebinds if self.binding is not None else 0

    @property
    def lost(self) -> str | None:
        """Why this session's state is gone (strict modes then raise SessionLost), or None."""
        binding = self.binding
        if binding is None:
            return None
        return binding.lost or (binding.ended if binding.ended not in (None, "closed") else None)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.end_session(self.key, _handle=self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<PoolSession {self.key!r} {self.mode} worker={self.worker_id} rebinds={self.rebinds}>"
