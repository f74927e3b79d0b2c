"""One admitted call: its encoded request, where it is, and how it ended.

A call ends exactly once (DESIGN.md rule 7): :meth:`Call.succeed`, :meth:`Call.fail` and
:meth:`Call.abandon` are the only ways out, and each refuses to run on a call that has
already ended. Everything that can end a call goes through them, so "ended twice" is an
assertion failure in poolkit, never a silent double delivery.
"""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import CallError, Phase

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Call", "CallStatus"]

_seq = itertools.count(1)


class CallStatus(enum.Enum):
    QUEUED = "queued"  # in the pool's queue
    SENT = "sent"  # written to a worker (in its in-flight table)
    DONE = "done"  # ended with a result or an error; the caller has been woken
    ABANDONED = "abandoned"  # the caller gave up (cancelled / timed out); any late reply is dropped


class Call:
    __slots__ = (
        "admitted_at",
        "call_id",
        "codec",
        "deadline",
        "error",
        "event",
        "payload",
        "result",
        "result_codec",
        "seq",
        "status",
        "target_name",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        target_name: str,
        payload: bytes,
        codec: int,
        *,
        timeout: float | None,
        deadline: float | None,
    ) -> None:
        self.seq = next(_seq)  # pool-wide identity (call_id is per worker)
        self.admitted_at = 0.0
        self.target_name = target_name
        self.payload = payload
        self.codec = codec
        self.timeout = timeout
        self.deadline = deadline
        self.event = anyio.Event()
        self.status = CallStatus.QUEUED
        self.worker: Worker | None = None
        self.call_id = 0
        self.result: bytes | None = None
        self.result_codec = codec
        self.error: CallError | BaseException | None = None

    @property
    def ended(self) -> bool:
        return self.status is CallStatus.DONE or self.status is CallStatus.ABANDONED

    @property
    def phase(self) -> Phase:
        """How far the call got, judged from the parent's side."""
        if self.status is CallStatus.QUEUED or self.worker is None:
            return Phase.QUEUED
        return Phase.RUNNING if self.worker.head() is self else Phase.SENT

    def succeed(self, payload: bytes, codec: int) -> None:
        assert not self.ended, f"call {self.call_id} ended twice"
        self.status = CallStatus.DONE
        self.result = payload
        self.result_codec = codec
        self.event.set()

    def fail(self, error: BaseException) -> None:
        assert not self.ended, f"call {self.call_id} ended twice"
        self.status = CallStatus.DONE
        self.error = error
        self.event.set()

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
