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
    "CircuitOpen",
    "FailureKind",
    "PayloadTooLarge",
    "Phase",
    "PoolClosed",
    "PoolError",
    "PoolFailed",
    "ProtocolError",
    "QueueFull",
    "QueueTimeout",
    "RemoteError",
    "SerializationError",
    "SessionError",
    "SessionLost",
    "SessionUnavailable",
    "WorkerCrashed",
    "WorkerMemoryExceeded",
    "WorkerStartupError",
    "WorkerUnresponsive",
    "crash_cause",
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
    """What broke. The recovery table (``poolkit._recovery.RECOVERY``) keys on this."""

    TIMEOUT = "timeout"  # the call's deadline passed while it was with a worker
    QUEUE_TIMEOUT = "queue_timeout"  # the deadline passed before any worker took the call
    CRASHED = "crashed"  # the worker process died (exit code or signal)
    UNRESPONSIVE = "unresponsive"  # the worker stopped answering heartbeats
    PROTOCOL = "protocol"  # corrupt or unexpected bytes from the worker
    SERIALIZATION = "serialization"  # arguments or result could not be encoded/decoded
    APPLICATION = "application"  # the target raised
    RESOURCE_EXHAUSTED = "resource_exhausted"  # the worker went over its memory limit
    PAYLOAD_TOO_LARGE = "payload_too_large"
    STARTUP = "startup"  # a worker could not start
    QUEUE_FULL = "queue_full"
    POOL_CLOSED = "pool_closed"
    POOL_FAILED = "pool_failed"
    CIRCUIT_OPEN = "circuit_open"  # a circuit breaker is failing calls fast
    SESSION_UNAVAILABLE = "session_unavailable"  # the session's worker is busy, or no room for it
    SESSION_LOST = "session_lost"  # the session's worker is gone, and its state with it
    CANCELLED = "cancelled"


class PoolError(Exception):
    """Base of every error poolkit raises on purpose."""

    kind: FailureKind


class PoolClosed(PoolError):
    """The pool was closed (by your code) before or while this call was handled, or was
    never started (``state="not started"`` in the message)."""

    kind = FailureKind.POOL_CLOSED

    def __init__(
        self, pool: str, *, phase: Phase = Phase.QUEUED, detail: str = "", state: str = "closed"
    ) -> None:
        self.pool = pool
        self.phase = phase
        self.detail = detail
        extra = f": {detail}" if detail else ""
        super().__init__(f"pool {pool!r} is {state} (call {phase.value}){extra}")


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
    """The pool gave up: workers kept failing to start, or kept dying past the restart budget.

    ``cause`` is the last failure; new calls fail fast with this error instead of waiting on
    a pool that cannot serve them. ``reason`` says which limit was hit.
    """

    kind = FailureKind.POOL_FAILED

    def __init__(
        self, pool: str, failures: int, cause: BaseException | None, *, reason: str | None = None
    ) -> None:
        self.pool = pool
        self.failures = failures
        self.cause = cause
        self.reason = reason or f"{failures} consecutive worker startup failures"
        msg = f"pool {pool!r} has failed after {self.reason}"
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


class QueueTimeout(CallTimeout):
    """The deadline passed before any worker took the call: it never left the parent.

    A subclass of :class:`CallTimeout` (``except CallTimeout`` catches both); its own kind
    says the pool was saturated rather than the call slow.
    """

    kind = FailureKind.QUEUE_TIMEOUT

    def __init__(self, timeout: float, **kw: object) -> None:
        kw.setdefault("phase", Phase.QUEUED)
        super().__init__(timeout, **kw)


class CallCancelled(CallError):
    """Internal marker for a call ended by cancellation; callers see their own cancellation."""

    kind = FailureKind.CANCELLED


class WorkerCrashed(CallError):
    """The worker process died while it held this call.

    ``exit_code`` is the process's exit status (None if killed by a signal); ``signal`` the
    signal number that killed it (None for an ordinary exit); ``cause`` names it (see
    :func:`crash_cause`: ``segfault``, ``abort``, ``killed`` -- often the OOM killer --, ...).
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
        self.cause = crash_cause(exit_code, signal)
        if signal is not None:
            how = _describe_exit(-signal)
        else:
            how = _describe_exit(exit_code) if exit_code is not None else "exit status unknown"
        hint = _CAUSE_HINTS.get(self.cause)
        if hint and "SIGKILL" in how:  # "killed by SIGKILL": do not say SIGKILL twice
            hint = hint.removeprefix("SIGKILL, ")
        msg = f"worker process died ({how}{': ' + hint if hint else ''})"
        if stderr_tail:
            msg += "; last stderr: " + stderr_tail.strip().splitlines()[-1][:300]
        super().__init__(msg, **kw)  # type: ignore[arg-type]


_CAUSE_HINTS = {
    "segfault": "a segmentation fault, usually in native code",
    "abort": "aborted, usually a failed assertion in native code",
    "killed": "SIGKILL, from the kernel's out-of-memory killer or a kill -9",
}


_SIGNAL_CAUSES: dict[int, str] = {
    int(_signal.SIGSEGV): "segfault",
    int(_signal.SIGBUS): "segfault",
    int(_signal.SIGABRT): "abort",
    int(_signal.SIGKILL): "killed",
    int(_signal.SIGTERM): "terminated",
}


def crash_cause(exit_code: int | None, signal: int | None) -> str:
    """Name how a process died, from its exit code or signal: ``segfault``, ``abort``,
    ``killed`` (SIGKILL: the kernel's OOM killer, or someone), ``terminated`` (SIGTERM),
    ``signal`` (another signal), ``exit`` (a non-zero exit), ``clean`` (exit 0), ``unknown``.

    Shell-style codes (128 + signal: 139, 134, 137) count as the signal, because wrappers
    and containers report a signal death that way."""
    if signal is None and exit_code is not None and exit_code > 128 and exit_code - 128 < 65:
        signal = exit_code - 128
    if signal is not None:
        return _SIGNAL_CAUSES.get(signal, "signal")
    if exit_code is None:
        return "unknown"
    return "clean" if exit_code == 0 else "exit"


class WorkerUnresponsive(CallError):
    """The worker stopped answering heartbeats (frozen, stuck in C code holding the GIL, or
    cut off), so the pool killed it. ``silent_for`` is how long nothing was heard from it."""

    kind = FailureKind.UNRESPONSIVE

    def __init__(self, *, silent_for: float, interval: float, **kw: object) -> None:
        self.silent_for = silent_for
        self.interval = interval
        super().__init__(
            f"worker unresponsive: no heartbeat reply for {silent_for:.3g}s "
            f"(heartbeat_interval={interval:g}s); it was killed",
            **kw,  # type: ignore[arg-type]
        )


class WorkerMemoryExceeded(CallError):
    """The worker's resident memory (measured in the worker process) went over
    ``recycle.memory_limit`` while this call held it, so the pool killed it."""

    kind = FailureKind.RESOURCE_EXHAUSTED

    def __init__(self, *, rss: int, limit: int, **kw: object) -> None:
        self.rss = rss
        self.limit = limit
        super().__init__(
            f"worker memory {rss / 2**20:.1f} MiB exceeded memory_limit {limit / 2**20:.1f} MiB; it was killed",
            **kw,  # type: ignore[arg-type]
        )


class CircuitOpen(CallError):
    """A circuit breaker is open: recent calls (to this target, or to the whole pool) kept
    crashing workers, so this call fails fast instead of crashing another one.

    ``scope`` is the target name, or ``"pool"``; ``retry_after`` the seconds until the breaker
    lets a trial call through. The call never left the parent (phase QUEUED).
    """

    kind = FailureKind.CIRCUIT_OPEN

    def __init__(self, scope: str, *, retry_after: float, failures: int, **kw: object) -> None:
        self.scope = scope
        self.retry_after = retry_after
        self.failures = failures
        kw.setdefault("phase", Phase.QUEUED)
        super().__init__(
            f"circuit breaker for {scope} is open after {failures} failures; "
            f"trial call allowed in {max(retry_after, 0):.3g}s",
            **kw,  # type: ignore[arg-type]
        )


class SessionError(CallError):
    """Base of the session affinity errors; ``key`` is the session's key."""

    def __init__(self, message: str, *, key: object, **kw: object) -> None:
        self.key = key
        super().__init__(f"session {key!r}: {message}", **kw)  # type: ignore[arg-type]


class SessionUnavailable(SessionError):
    """A session call could not be served now: its worker is busy (mode
    ``strict_fail_fast``), or no worker has room for another session (``reason="limit"``).
    The call never left the parent."""

    kind = FailureKind.SESSION_UNAVAILABLE

    def __init__(self, message: str, *, key: object, reason: str, **kw: object) -> None:
        self.reason = reason
        kw.setdefault("phase", Phase.QUEUED)
        super().__init__(message, key=key, **kw)


#: What happened to a session's worker, by ``SessionLost.reason``.
_SESSION_LOST_CAUSES = {
    "crashed": "The worker process died",
    "unresponsive": "The pool killed the worker: it stopped answering heartbeats",
    "protocol": "The pool killed the worker: it sent invalid frames",
    "resource_exhausted": "The pool killed the worker: it went over recycle.memory_limit",
    "recycled": "The pool recycled the worker (a recycle limit or recycle_all()), and "
    "recycle.session_drain_timeout passed",
    "stopped": "The pool stopped the worker to end a call on it that timed out or was cancelled",
}


def _session_lost_advice(reason: str, key: object) -> str:
    """The tail of every SessionLost message: what happened, and what the caller can do."""
    if reason == "expired":
        return (
            f"This handle stays lost: open a new session with pool.session({key!r}), which starts "
            "with empty state"
        )
    cause = _SESSION_LOST_CAUSES.get(reason, f"The worker is gone ({reason})")
    return (
        f"{cause}. This session's calls raise SessionLost until it is ended: end it with "
        f"pool.end_session({key!r}) (or close its handle) and start a new session, which starts "
        "with empty state"
    )


class SessionLost(SessionError):
    """The session's worker is gone (it crashed, was recycled or stopped, or the session
    expired), and the per-session state it held is gone with it. Strict affinity modes raise
    this rather than run the call on a worker that does not have the state; end the session
    (or let it expire) and start a new one.

    ``reason`` says why (``crashed``, ``unresponsive``, ``protocol``, ``resource_exhausted``,
    ``recycled``, ``stopped``, ``expired``); the message adds what happened and what to do.
    """

    kind = FailureKind.SESSION_LOST

    def __init__(self, message: str, *, key: object, reason: str, **kw: object) -> None:
        self.reason = reason
        kw.setdefault("phase", Phase.QUEUED)
        super().__init__(f"{message}. {_session_lost_advice(reason, key)}", key=key, **kw)


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
