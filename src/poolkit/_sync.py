"""A blocking facade over :class:`~poolkit.Pool` for code that is not async.

The pool runs in an event loop on a private thread (an anyio blocking portal); each method
is a blocking call into that loop. The workers are spawned from the portal's thread, which
lives exactly as long as the ``with`` block, so the workers' parent-death signal fires if
the whole process dies and not before.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Literal, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._config import PoolConfig
from ._pool import Pool, PoolStatistics
from ._transport import Launcher

__all__ = ["SyncPool"]


class SyncPool:
    """``with SyncPool(config) as pool: pool.call("math:factorial", 10)``.

    Same arguments as :class:`Pool`, plus ``backend`` ("asyncio" or "trio") for the private
    event loop. Methods may be called from any thread.
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
        self._pool = Pool(config, launcher=launcher, **overrides)
        self._backend = backend
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

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
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.__exit__(exc_type, exc, tb)
        finally:
            self._portal = None

    def _require_portal(self) -> BlockingPortal:
        if self._portal is None or self._stack is None:
            raise RuntimeError("SyncPool is not running: use it as 'with SyncPool(...) as pool:'")
        return self._portal

    def call(
        self, target: str | Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Blocking :meth:`Pool.call`."""
        return self._require_portal().call(
            functools.partial(self._pool.call, target, *args, timeout=timeout, **kwargs)
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
        try:
            while True:
                try:
                    yield portal.call(results.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if self._portal is not None:
                portal.call(results.aclose)

    def statistics(self) -> PoolStatistics:
        return self._pool.statistics()

    def __repr__(self) -> str:
        return repr(self._pool).replace("<Pool", "<SyncPool", 1)
