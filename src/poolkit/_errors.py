"""The poolkit error hierarchy, and the one place raw failures become typed errors.

Every error carries structured fields (worker id, pid, phase, exit code or signal, whether a
retry is safe) and builds its message from them, so a log line and an ``except`` clause see
the same facts. Naming follows trio: *Closed* means your code closed it; *Broken*/*Failed*
means something outside broke it.

Phases say how far a call got, which decides whether it may be retried:

* ``QUEUED``: never left the parent. Always safe to retry.
* ``SENT``: written to a worker that had not started it (it was behind another call in the
  worker's pipeline). Safe to retry.
* ``RUNNING``: the worker may have started it. Retry only if the caller said idempotent.
* ``RETURNING``: it ran; the failure was in bringing the result back. Same as RUNNING.
"""

from __future__ import annotations

import enum
import signal as _signal

__all__ = [
    "CallCancelled",
    "CallError",
    "CallTimeout",
    "FailureKind",
    "PayloadTooLarge",
    "Phase",
    "PoolClosed",
    "PoolError",
    "PoolFailed",
    "ProtocolError",
    "QueueFull",
    "RemoteError",
    "SerializationError",
    "WorkerCrashed",
    "WorkerStartupError",
]


class Phase(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    RUNNING = "running"
    RETURNING = "returning"

    @property
    def may_have_run(self) -> bool:
        return self in (Phase.RUNNING, Phase.RETURNING)


class FailureKind(enum.Enum):
    """What broke. The recovery table (issue 4) keys on this."""

    TIMEOUT = "timeout"
    CRASHED = "crashed"
    PROTOCOL = "protocol"
    SERIALIZATION = "serialization"
    APPLICATION = "application"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    STARTUP = "startup"
    QUEUE_FULL = "queue_full"
    POOL_CLOSED = "pool_closed"
    POOL_FAILED = "pool_failed"
    CANCELLED = "cancelled"


class PoolError(Exception):
    """Base of every error poolkit raises on purpose."""

    kind: FailureKind


class PoolClosed(PoolError):
    """The pool was closed (by your code) before or while this call was handled."""

    kind = FailureKind.POOL_CLOSED

    def __init__(self, pool: str, *, phase: Phase = Phase.QUEUED, detail: str = "") -> None:
        self.pool = pool
        self.phase = phase
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"pool {pool!r} is closed (call {phase.value}){extra}")


class QueueFull(PoolError):
    """The pool's queue was at capacity and the pool is configured to reject."""

    kind = FailureKind.QUEUE_FULL

    def __init__(self, pool: str, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        super().__init__(f"pool {pool!r}: queue full ({capacity} calls waiting); call rejected")


class WorkerStartupError(PoolError):
    """A worker could not start: it failed to load its target, or never completed its handshake.

    ``remote_traceback`` holds the child's own traceback when the child reported one.
    """

    kind = FailureKind.STARTUP

    def __init__(
        self,
        worker_id: str,
        *,
        pid: int | None,
        reason: str,
        remote_type: str | None = None,
        remote_traceback: str | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        self.worker_id = worker_id
        self.pid = pid
        self.reason = reason
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        parts = [f"worker {worker_id} (pid {pid}) failed to start: {reason}"]
        if exit_code is not None:
            parts.append(_describe_exit(exit_code))
        msg = "; ".join(parts)
        if remote_traceback:
            msg += "\n\nTraceback in the worker:\n" + remote_traceback.rstrip()
        elif stderr_tail:
            msg += "\n\nLast stderr lines of the worker:\n" + stderr_tail.rstrip()
        super().__init__(msg)


class PoolFailed(PoolError):
    """The pool gave up: workers kept failing to start past the restart budget.

    ``cause`` is the last startup error; new calls fail fast with this error instead of
    waiting on a pool that cannot serve them.
    """

    kind = FailureKind.POOL_FAILED

    def __init__(self, pool: str, failures: int, cause: BaseException | None) -> None:
        self.pool = pool
        self.failures = failures
        self.cause = cause
        msg = f"pool {pool!r} has failed after {failures} consecutive worker startup failures"
        if cause is not None:
            msg += f"; last: {cause}"
        super().__init__(msg)


class CallError(PoolError):
    """A single call failed. Carries where it was and whether retrying it is safe."""

    def __init__(
        self,
        message: str,
        *,
        phase: Phase,
        worker_id: str | None = None,
        pid: int | None = None,
        target: str | None = None,
    ) -> None:
        self.phase = phase
        self.worker_id = worker_id
        self.pid = pid
        self.target = target
        where = f" on worker {worker_id} (pid {pid})" if worker_id is not None else ""
        what = f"call to {target}" if target else "call"
        super().__init__(f"{what} failed{where} [{phase.value}]: {message}")

    @property
    def retry_safe(self) -> bool:
        """True when the call certainly did not run, so retrying cannot run it twice."""
        return not self.phase.may_have_run


class CallTimeout(CallError, TimeoutError):
    """The call's deadline (queue wait plus run time) passed. A running call's worker was killed."""

    kind = FailureKind.TIMEOUT

    def __init__(self, timeout: float, **kw: object) -> None:
        self.timeout = timeout
        super().__init__(f"deadline of {timeout:g}s exceeded", **kw)  # type: ignore[arg-type]


class CallCancelled(CallError):
    """Internal marker for a call ended by cancellation; callers see their own cancellation."""

    kind = FailureKind.CANCELLED


class WorkerCrashed(CallError):
    """The worker process died while it held this call.

    ``exit_code`` is the process's exit status (None if killed by a signal); ``signal`` the
    signal number that killed it (None for an ordinary exit).
    """

    kind = FailureKind.CRASHED

    def __init__(
        self,
        *,
        exit_code: int | None,
        signal: int | None,
        stderr_tail: str = "",
        **kw: object,
    ) -> None:
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail
        if signal is not None:
            how = _describe_exit(-signal)
        else:
            how = _describe_exit(exit_code) if exit_code is not None else "exit status unknown"
        msg = f"worker process died ({how})"
        if stderr_tail:
            msg += "; last stderr: " + stderr_tail.strip().splitlines()[-1][:300]
        super().__init__(msg, **kw)  # type: ignore[arg-type]


class SerializationError(CallError):
    """The arguments or the result could not be encoded or decoded.

    ``side`` says where: "parent" (encoding the call or decoding the result in the caller)
    or "worker" (decoding the call or encoding the result in the worker).
    """

    kind = FailureKind.SERIALIZATION

    def __init__(self, message: str, *, side: str, remote_traceback: str | None = None, **kw: object) -> None:
        self.side = side
        self.remote_traceback = remote_traceback
        super().__init__(f"serialization failed in the {side}: {message}", **kw)  # type: ignore[arg-type]


class PayloadTooLarge(CallError, ValueError):
    """A frame would exceed the configured ``max_frame_size``. Nothing was sent."""

    kind = FailureKind.PAYLOAD_TOO_LARGE

    def __init__(self, size: int, limit: int, *, what: str = "call payload", **kw: object) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{what} of {size} bytes exceeds max_frame_size={limit} bytes",
            **kw,  # type: ignore[arg-type]
        )


class ProtocolError(CallError):
    """The worker sent bytes that are not valid protocol (corrupt, unexpected or out of order)."""

    kind = FailureKind.PROTOCOL


class RemoteError(CallError):
    """The target raised. ``remote_type`` is the exception's qualified name in the worker,
    ``remote_message`` its message and ``remote_traceback`` the worker's formatted traceback."""

    kind = FailureKind.APPLICATION

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str, **kw: object) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(f"{remote_type}: {remote_message}", **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        base = super().__str__()
        if self.remote_traceback:
            return f"{base}\n\nTraceback in the worker:\n{self.remote_traceback.rstrip()}"
        return base


def _describe_exit(code: int) -> str:
    """Describe a returncode the way subprocess reports it: negative means a signal."""
    if code < 0:
        try:
            name = _signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"
