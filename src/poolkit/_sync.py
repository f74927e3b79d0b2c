"""A blocking facade over :class:`~poolkit.Pool` for code that is not async.

The pool runs in an event loop on a private thread (an anyio blocking portal); each method
is a blocking call into that loop. The workers are spawned from the portal's thread, which
lives exactly as long as the ``with`` block, so the workers' parent-death signal fires if
the whole process dies and not before.

Once the block has ended the portal is gone, so anything still holding the facade (a
``map`` generator not finished, another thread) gets :class:`~poolkit.PoolClosed`, the
error the async pool raises for a call after close, and never anyio's "portal is not
running".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from collections.abc import Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._config import AffinityMode, PoolConfig
from ._errors import PoolClosed
from ._map import MapIterator
from ._pool import Pool, PoolStatistics
from ._session import PoolSession
from ._transport import Launcher

__all__ = ["SyncPool", "SyncSession"]

_BACKENDS = ("asyncio", "trio")
_T = TypeVar("_T")


class SyncPool:
    """``with SyncPool(config) as pool: pool.call("math:factorial", 10)``.

    Same arguments as :class:`Pool`, plus ``backend`` ("asyncio" or "trio") for the private
    event loop. Methods may be called from any thread. Before the ``with`` block, calls raise
    RuntimeError (nothing runs yet); after it, :class:`~poolkit.PoolClosed`, as the async
    pool raises after close.

    Sessions: ``with pool.session("user-42") as s: s.call(target, ...)`` (a
    :class:`SyncSession`, the blocking counterpart of :meth:`Pool.session`, with its own
    ``mode`` if given), or by key: ``pool.call(target, ..., session="user-42")`` runs on that
    session's worker, in order, in the mode ``config.sessions.mode`` says, and
    :meth:`end_session` ends it (the worker drops its state at once instead of at the TTL).
    """

    def __init__(
        self,
        config: PoolConfig | None = None,
        /,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        launcher: Launcher | None = None,
        **overrides: Any,
    ) -> None:
        # Checked here, not on enter: anyio only finds out when it starts the loop thread,
        # far from the line that chose the backend.
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}; got {backend!r}")
        self._pool = Pool(config, launcher=launcher, **overrides)
        self._backend = backend
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._ended = False  # the with block has been left: calls now raise PoolClosed

    @property
    def pool(self) -> Pool:
        """The underlying async pool (for statistics and introspection)."""
        return self._pool

    def __enter__(self) -> Self:
        stack = contextlib.ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal(self._backend))
            stack.enter_context(self._portal.wrap_async_context_manager(self._pool))
        except BaseException:
            self._portal = None
            stack.close()
            raise
        self._stack = stack
        self._ended = False
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        self._ended = True
        try:
            if stack is not None:
                stack.__exit__(exc_type, exc, tb)
        finally:
            self._portal = None

    def _closed(self) -> PoolClosed:
        return PoolClosed(self._pool.name, detail="its 'with SyncPool(...)' block has ended")

    def _require_portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is None or self._stack is None:
            if self._ended:
                raise self._closed()
            raise RuntimeError("SyncPool is not running: use it as 'with SyncPool(...) as pool:'")
        return portal

    def _run(self, portal: BlockingPortal, fn: Callable[[], Awaitable[_T]]) -> _T:
        """``fn()`` in the loop, through ``portal``; PoolClosed if that portal's block has
        ended or ends meanwhile (anyio then says RuntimeError, or cancels the call)."""
        if self._portal is not portal:
            raise self._closed()
        try:
            return portal.call(fn)
        except (RuntimeError, concurrent.futures.CancelledError):
            if self._stack is None or self._portal is not portal:
                raise self._closed() from None
            raise

    def call(
        self,
        target: str | Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        session: str | int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Blocking :meth:`Pool.call` (``session``: a key, see the class docstring)."""
        portal = self._require_portal()
        return self._run(
            portal,
            functools.partial(
                self._pool.call,
                target,
                *args,
                timeout=timeout,
                idempotent=idempotent,
                session=session,
                **kwargs,
            ),
        )

    def map(
        self,
        target: str | Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        concurrency: int | None = None,
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = "auto",
    ) -> Generator[Any, None, None]:
        """Blocking :meth:`Pool.map`: a generator of results in input order."""
        portal = self._require_portal()
        results = self._pool.map(
            target, *iterables, concurrency=concurrency, timeout=timeout, chunksize=chunksize
        )
        return self._iterate(portal, results)

    def starmap(
        self,
        target: str | Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        /,
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = "auto",
    ) -> Generator[Any, None, None]:
        """Blocking :meth:`Pool.starmap`: each item of ``iterable`` is the tuple of arguments."""
        portal = self._require_portal()
        results = self._pool.starmap(
            target, iterable, concurrency=concurrency, timeout=timeout, chunksize=chunksize
        )
        return self._iterate(portal, results)

    def _iterate(self, portal: BlockingPortal, results: MapIterator) -> Generator[Any, None, None]:
        """Results of ``results`` one blocking step at a time. Left early (``break``,
        ``close()``, garbage collection), it withdraws the calls not run yet, unless the
        pool has closed since, which took care of them."""
        try:
            while True:
                try:
                    yield self._run(portal, results.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(PoolClosed):
                self._run(portal, results.aclose)

    def session(self, key: str | int, *, mode: AffinityMode | None = None) -> SyncSession:
        """Blocking :meth:`Pool.session`: a handle whose calls share one worker (see
        :class:`SyncSession`). The key and mode are checked here, as the async pool does."""
        return SyncSession(self, self._pool.session(key, mode=mode))

    def end_session(self, key: str | int) -> None:
        """Blocking :meth:`Pool.end_session`: end session ``key`` after its calls in hand."""
        portal = self._require_portal()
        self._run(portal, functools.partial(_end_session, self._pool, key))

    def statistics(self) -> PoolStatistics:
        return self._pool.statistics()

    def __repr__(self) -> str:
        return repr(self._pool).replace("<Pool", "<SyncPool", 1)


class SyncSession:
    """A session handle from :meth:`SyncPool.session`: its calls run on one worker, in order,
    and the target receives ``session=`` (docs/recovery.md, section 8).

    The blocking counterpart of :class:`~poolkit.PoolSession`, which it drives through the
    pool's loop thread: ``call`` blocks, ``close()`` (or leaving ``with``) ends the session so
    the worker drops its state at once, and ``worker_id``, ``rebinds`` and ``lost`` say where
    its state is. After close, ``call`` raises RuntimeError, as the async handle does; after
    the pool's ``with`` block, PoolClosed, as every SyncPool call does.
    """

    def __init__(self, pool: SyncPool, handle: PoolSession) -> None:
        self._sync = pool
        self._handle = handle

    @property
    def key(self) -> str | int:
        return self._handle.key

    @property
    def mode(self) -> AffinityMode:
        return self._handle.mode

    @property
    def closed(self) -> bool:
        return self._handle.closed

    @property
    def worker_id(self) -> str | None:
        """The worker holding this session's state now (None before its first call)."""
        return self._handle.worker_id

    @property
    def rebinds(self) -> int:
        """Times a ``hint`` session moved to another worker, losing its state each time."""
        return self._handle.rebinds

    @property
    def lost(self) -> str | None:
        """Why this session's state is gone (strict modes then raise SessionLost), or None."""
        return self._handle.lost

    def call(
        self,
        target: str | Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Blocking :meth:`PoolSession.call`: :meth:`SyncPool.call` within this session."""
        sync = self._sync
        portal = sync._require_portal()
        return sync._run(
            portal,
            functools.partial(
                self._handle.call, target, *args, timeout=timeout, idempotent=idempotent, **kwargs
            ),
        )

    def close(self) -> None:
        """End the session after its calls in hand; the worker drops its state. Idempotent,
        and harmless once the pool's ``with`` block has ended (closing the pool ended it)."""
        handle, sync = self._handle, self._sync
        if handle.closed:
            return
        portal = sync._portal
        if portal is None or sync._stack is None:  # never entered, or its block has ended
            handle.closed = True
            return
        with contextlib.suppress(PoolClosed):  # the block ended meanwhile
            sync._run(portal, handle.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._handle).replace("<PoolSession", "<SyncSession", 1)


async def _end_session(pool: Pool, key: str | int) -> None:
    """In the loop thread, as every change to the pool's state must be."""
    pool.end_session(key)
