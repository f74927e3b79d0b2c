"""One admitted call: its encoded request, where it is, and how it ended.

A call ends exactly once (DESIGN.md rule 7): :meth:`Call.succeed`, :meth:`Call.fail` and
:meth:`Call.abandon` are the only ways out, and each refuses to run on a call that has
already ended. Everything that can end a call goes through them, so "ended twice" is an
assertion failure in poolkit, never a silent double delivery.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import CallError, Phase

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Call", "CallStatus"]

_seq = itertools.count(1)


class CallStatus(enum.Enum):
    WAITING = "waiting"  # in line for room in the pool's queue (max_queue): not admitted yet
    QUEUED = "queued"  # in the pool's queue
    SENT = "sent"  # written to a worker (in its in-flight table)
    DONE = "done"  # ended with a result or an error; the caller has been woken
    ABANDONED = "abandoned"  # the caller gave up (cancelled / timed out); any late reply is dropped


class Call:
    __slots__ = (
        "_event",
        "_loop",
        "_waiter",
        "admitted_at",
        "attempt",
        "avoid",
        "call_id",
        "codec",
        "context",
        "cost",
        "cpu_ns",
        "deadline",
        "error",
        "ext",
        "idempotent",
        "payload",
        "queued_at",
        "result",
        "result_codec",
        "run_ns",
        "seq",
        "session",
        "status",
        "target_name",
        "timeout",
        "trace",
        "trials",
        "worker",
    )

    # The caller's context, taken when the call joins the line for room in the queue: the
    # pool queues it from another task, in this context (its span's parent, its log context).
    context: contextvars.Context

    def __init__(
        self,
        target_name: str,
        payload: bytes,
        codec: int,
        *,
        timeout: float | None,
        deadline: float | None,
        idempotent: bool = False,
        session: Any = None,
        event: Callable[[], Any] = anyio.Event,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.seq = next(_seq)  # pool-wide identity (call_id is per worker)
        self.admitted_at = 0.0
        self.target_name = target_name
        self.payload = payload
        self.codec = codec
        self.timeout = timeout
        self.deadline = deadline
        # How the caller waits (:meth:`wait`). On asyncio (``loop`` given) the call is its own
        # event: a bare loop future, made when the caller first waits. No event object per
        # call: while thousands of calls are in hand, each object is one more for the garbage
        # collector to scan (docs/performance.md item 18). Elsewhere, an ``event()``
        # (the pool passes its loop's native Event: poolkit._native).
        self._loop = loop
        self._waiter: asyncio.Future[bool] | None = None
        self._event = event() if loop is None else None
        self.status = CallStatus.QUEUED
        self.worker: Worker | None = None
        self.call_id = 0
        self.result: bytes | None = None
        self.result_codec = codec
        self.error: CallError | BaseException | None = None
        self.attempt = 1  # 1 for the first try; retries count up
        self.idempotent = idempotent  # the caller says running it twice is harmless
        self.avoid: Worker | None = None  # a retry prefers any worker but this one
        self.session = session  # the pool's binding record, for session calls
        self.trials: tuple[Any, ...] = ()  # half-open circuit breakers this call is the trial of
        # telemetry (set only when the pool's call events are observed)
        self.ext = 0  # header extensions to send with it (protocol FLAG_TRACE | FLAG_TIMING)
        self.trace: bytes | None = None  # the trace block of its span (FLAG_TRACE)
        self.queued_at = 0.0  # when this attempt entered the queue (anyio clock)
        self.cost = 0.0  # expected run time when sent (its target's estimate; the adaptive window)
        self.run_ns: int | None = None  # worker-reported timings of the last attempt (FLAG_TIMING)
        self.cpu_ns: int | None = None

    @property
    def ended(self) -> bool:
        return self.status is CallStatus.DONE or self.status is CallStatus.ABANDONED

    @property
    def phase(self) -> Phase:
        """How far the call got, judged from the parent's side."""
        if self.status is CallStatus.QUEUED or self.worker is None:
            return Phase.QUEUED
        return Phase.RUNNING if self.worker.head() is self else Phase.SENT

    def wait(self) -> Awaitable[object]:
        """What the caller awaits until the call is done (:meth:`succeed` or :meth:`fail`),
        under its own deadline. One waiter at a time: the pool's caller. A waiter that was
        cancelled leaves a cancelled future behind; the next wait makes a new one."""
        loop = self._loop
        if loop is None:
            assert self._event is not None
            return self._event.wait()  # type: ignore[no-any-return]
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = loop.create_future()
            if self.status is CallStatus.DONE:
                waiter.set_result(True)
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(True)
        elif self._event is not None:
            self._event.set()

    def succeed(self, payload: bytes, codec: int) -> None:
        status = self.status  # (not self.ended: a property call, on every call)
        assert status is not CallStatus.DONE and status is not CallStatus.ABANDONED, (
            f"call {self.call_id} ended twice"
        )
        self.status = CallStatus.DONE
        self.result = payload
        self.result_codec = codec
        waiter = self._waiter  # _wake(), inline: this runs once per call
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(True)
        elif self._event is not None:
            self._event.set()

    def fail(self, error: BaseException) -> None:
        status = self.status  # (not self.ended: a property call, on every call)
        assert status is not CallStatus.DONE and status is not CallStatus.ABANDONED, (
            f"call {self.call_id} ended twice"
        )
        self.status = CallStatus.DONE
        self.error = error
        self._wake()

    def retry(self) -> None:
        """Make a failed call ready to be queued again (the pool decided to retry it)."""
        assert self.status is CallStatus.DONE and self.error is not None
        self.avoid = self.worker
        self.worker = None
        self.status = CallStatus.QUEUED
        self.error = None
        self.call_id = 0
        self.attempt += 1
        self.run_ns = self.cpu_ns = None
        self._waiter = None
        if self._event is not None:
            self._event = type(self._event)()

    def abandon(self) -> None:
        """The caller is gone. Only the caller's own task calls this."""
        self.status = CallStatus.ABANDONED

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.target_name} {self.status.value}>"


def describe_target(target: Any) -> str:
    """A readable name for a target, used in errors and logs (never sent on the wire)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if module and qualname:
        return f"{module}:{qualname}"
    return repr(target)
