"""Pool configuration: immutable pydantic models validated at construction.

Why pydantic: invalid configuration must fail where it is written, naming the field
(``PoolConfig(min_workers=0)`` says ``min_workers``), not as a hang or an obscure error at
the first call. Models are frozen so a running pool can never see its config change.

Scalar fields are strict (``StrictInt``, ``StrictFloat``, ``StrictBool``, ``StrictStr``):
pydantic's lax mode would turn ``"2"`` into ``2``, ``True`` into ``1`` and ``2.0`` into
``2``, so a value read from an environment variable and never converted, or a flag passed
where a count belongs, would pass unnoticed. Ints only take ``int`` (not ``bool``), floats
take ``int`` or ``float`` (not ``bool`` or ``str``), bools only ``bool``, strings only
``str``. Containers stay lax (a list is a fine ``preload``) and nested policies still take
dicts, so the models are not strict as a whole (``ConfigDict(strict=True)`` would refuse both).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from ._protocol import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "BreakerPolicy",
    "PoolConfig",
    "RecyclePolicy",
    "RestartPolicy",
    "RetryPolicy",
    "SessionPolicy",
    "TelemetryPolicy",
    "WorkerSpec",
]

AffinityMode = Literal["hint", "strict_queue", "strict_fail_fast"]

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MODULE = re.compile(r"^[A-Za-z_][\w.]*$")


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class WorkerSpec(BaseModel):
    """How to start one worker process.

    * ``handler``: ``"pkg.mod:Class"``. The worker instantiates it at startup (calling its
      ``setup()`` if present, ``teardown()`` at exit). A call whose target is a plain name
      (``pool.call("predict", x)``) runs that method of the handler. A failure to import or
      construct it is a startup failure, reported with the worker's traceback.
    * ``preload``: modules imported at startup (warm imports; a failure is a startup failure).
    * ``command``: run this instead of ``python -m poolkit.worker`` (a worker in another
      language, speaking docs/protocol.md). ``handler`` and ``preload`` are then passed to it
      in the same JSON spec argument and it may ignore them.
    * ``codec``: payload encoding of calls and results: "pickle" (any picklable Python value,
      targets may be callables) or "json" (language-neutral; targets must be strings).
    * ``import_main``: functions defined in your script pickle as ``__main__.name``; with this
      on (the default) a worker loads your script, under the name ``__mp_main__`` so its
      ``if __name__ == "__main__":`` block does not run, the first time it needs one.
    * ``start_method``: ``"exec"`` (default) starts each worker as a fresh
      ``python -m poolkit.worker``; ``"zygote"`` forks each from a template process that has
      already imported the runtime, ``preload`` and the handler's module, so a replacement
      starts in milliseconds (docs/architecture.md, "Start methods"). Not with ``command``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: StrictStr | None = None
    preload: tuple[StrictStr, ...] = ()
    command: tuple[StrictStr, ...] | None = None
    python: StrictStr = Field(default_factory=lambda: sys.executable)
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cwd: StrictStr | None = None
    codec: Literal["pickle", "json"] = "pickle"
    import_main: StrictBool = Field(
        default=True,
        description="let workers resolve callables defined in the parent's __main__ (as spawn does)",
    )
    start_method: Literal["exec", "zygote"] = Field(
        default="exec",
        description="exec: a fresh interpreter per worker; zygote: fork each from a warm template process",
    )

    @model_validator(mode="after")
    def _check(self) -> WorkerSpec:
        if self.handler is not None and not _TARGET.match(self.handler):
            raise ValueError(f"handler must look like 'package.module:Class', got {self.handler!r}")
        for mod in self.preload:
            if not _MODULE.match(mod):
                raise ValueError(f"preload entries must be module names, got {mod!r}")
        if self.command is not None and not self.command:
            raise ValueError("command, when given, must not be empty")
        if self.command is not None and self.start_method == "zygote":
            raise ValueError(
                "start_method='zygote' forks the Python worker runtime; it cannot run command= "
                "(a non-Python worker): use start_method='exec'"
            )
        return self


class RetryPolicy(BaseModel):
    """Retrying a failed call on another worker (see docs/recovery.md for which failures).

    A call that may have started running is retried only if the caller passed
    ``idempotent=True``; one that never reached a worker may always be. Attempt ``n`` (the
    first retry is attempt 2) waits ``uniform(0, min(backoff_max, backoff_initial *
    backoff_multiplier ** (n - 2)))`` ("full jitter": retries of many callers spread out
    instead of arriving together), and never past the call's deadline.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: StrictInt = Field(
        default=3, ge=1, description="attempts in all, the first included; 1: never retry"
    )
    backoff_initial: StrictFloat = Field(default=0.05, ge=0)
    backoff_max: StrictFloat = Field(default=2.0, ge=0)
    backoff_multiplier: StrictFloat = Field(default=2.0, ge=1)
    jitter: Literal["full", "none"] = "full"


class BreakerPolicy(BaseModel):
    """Circuit breakers, one for the pool and one per target: after ``failure_threshold``
    failures in a row (a worker crashing, hanging or failing to start) the breaker opens and
    calls fail fast with CircuitOpen; after ``reset_timeout`` it lets one trial call through
    (half-open): a success closes it, a failure opens it again for twice as long (up to
    ``max_reset_timeout``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: StrictBool = True
    failure_threshold: StrictInt = Field(default=5, ge=1)
    reset_timeout: StrictFloat = Field(default=5.0, gt=0)
    max_reset_timeout: StrictFloat = Field(default=60.0, gt=0)


class RestartPolicy(BaseModel):
    """Replacing workers that died. The first replacement starts at once; each further one
    in a row (no worker served a call in between) waits a jittered, doubling backoff. More
    than ``max_restarts`` replacements within ``window`` seconds fail the pool (PoolFailed)
    instead of crash-looping forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backoff_initial: StrictFloat = Field(default=0.1, ge=0)
    backoff_max: StrictFloat = Field(default=5.0, ge=0)
    max_restarts: StrictInt = Field(default=30, ge=1)
    window: StrictFloat = Field(default=60.0, gt=0)


class RecyclePolicy(BaseModel):
    """When to replace a healthy worker. Every limit is off by default, and each is
    per worker. Jitter (a fraction) lowers each worker's own limit by a random part of it,
    so workers started together do not recycle together.

    Memory is the worker process's resident set size, measured in the worker and reported
    with its heartbeat replies (so it needs heartbeats on): over ``max_memory`` the worker
    finishes its calls and is replaced; over ``memory_limit`` it is killed at once and its
    running call fails with WorkerMemoryExceeded (retried if idempotent).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_calls: StrictInt | None = Field(default=None, ge=1)
    max_lifetime: StrictFloat | None = Field(default=None, gt=0, description="seconds")
    max_memory: StrictInt | None = Field(default=None, ge=1, description="bytes of RSS: recycle gracefully")
    memory_limit: StrictInt | None = Field(default=None, ge=1, description="bytes of RSS: kill now")
    jitter: StrictFloat = Field(default=0.1, ge=0, lt=1)
    session_drain_timeout: StrictFloat = Field(
        default=30.0, ge=0, description="a recycled worker keeps serving its sessions this long"
    )


class SessionPolicy(BaseModel):
    """Session affinity. ``mode``: ``hint`` (prefer the session's worker; if it is busy or
    gone, use another and count the session's state as lost), ``strict_queue`` (wait for the
    session's worker), ``strict_fail_fast`` (raise SessionUnavailable when it is busy). In
    strict modes a session whose worker is gone raises SessionLost. Sessions idle for
    ``ttl`` seconds expire and their worker drops their state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: AffinityMode = "hint"
    ttl: StrictFloat | None = Field(default=600.0, gt=0)
    max_sessions: StrictInt = Field(default=100_000, ge=1, description="live sessions in the pool")
    max_per_worker: StrictInt = Field(default=10_000, ge=1, description="live sessions bound to one worker")


class TelemetryPolicy(BaseModel):
    """What the pool reports besides its in-process subscribers (docs/telemetry.md).

    ``traces`` / ``metrics``: record OpenTelemetry spans / metrics when an SDK is configured
    (the provider passed to ``Pool(tracer_provider=..., meter_provider=...)``, else the global
    one), decided when the pool starts. ``log_calls``: log every call event at DEBUG through
    structlog (lifecycle events are always logged). Off or unconfigured, a call costs
    nothing beyond one flag test."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    traces: StrictBool = True
    metrics: StrictBool = True
    log_calls: StrictBool = False


# Depth 32 takes the parent's CPU per trivial call from ~44 us (depth 2) to ~21 us: fewer
# reads, writes and wake-ups per call (docs/performance.md). Deeper gains little.
_DEFAULT_MAX_PIPELINE_DEPTH = 32


class PoolConfig(BaseModel):
    """Everything a :class:`~poolkit.Pool` needs. All durations are in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr | None = Field(default=None, description="shown in errors, logs and repr")
    min_workers: StrictInt = Field(default_factory=_default_workers, ge=1)
    max_workers: StrictInt | None = Field(default=None, ge=1, description="default: min_workers")
    worker: WorkerSpec = Field(default_factory=WorkerSpec)

    max_queue: StrictInt = Field(default=10_000, ge=0, description="calls waiting for a worker")
    queue_policy: Literal["wait", "reject"] = Field(
        default="wait", description="when the queue is full: wait for room, or raise QueueFull"
    )
    default_timeout: StrictFloat | None = Field(default=None, gt=0, description="per-call deadline")
    pipeline_depth: StrictInt = Field(
        default=2,
        ge=1,
        le=64,
        description="calls sent to one worker before earlier ones return; >1 hides round trips",
    )
    max_pipeline_depth: StrictInt | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="a worker serving fast calls may hold up to this many (adaptive window, "
        "docs/architecture.md); default 32, or pipeline_depth when that is set explicitly",
    )
    pipeline_budget: StrictFloat = Field(
        default=0.001,
        gt=0,
        description="beyond pipeline_depth, a worker takes more calls only while the work it "
        "holds is expected (from each target's measured run time) to take less than this",
    )

    # Durations that bound a wait in closing or starting must be finite: an infinite one is
    # a hang the caller asked for by accident (math.inf passes a `> 0` check).
    startup_timeout: StrictFloat = Field(default=60.0, gt=0, allow_inf_nan=False)
    kill_grace: StrictFloat = Field(default=1.0, ge=0, allow_inf_nan=False, description="SIGTERM to SIGKILL")
    drain_timeout: StrictFloat = Field(
        default=30.0, ge=0, allow_inf_nan=False, description="closing waits this long for calls"
    )
    max_frame_size: StrictInt = Field(default=DEFAULT_MAX_FRAME_SIZE, ge=1024)
    max_startup_failures: StrictInt = Field(
        default=3, ge=1, description="consecutive startup failures before the pool fails"
    )
    heartbeat_interval: StrictFloat | None = Field(
        default=5.0,
        ge=0.05,
        allow_inf_nan=False,
        description="PING each worker this often; None turns heartbeats (and memory checks) off. "
        "At least 0.05 s: faster costs the parent and every worker CPU for nothing, and a "
        "worker's heartbeat thread (which wakes every interval/4) could not answer in time on "
        "a loaded machine, so healthy workers would be killed as unresponsive",
    )
    heartbeat_misses: StrictInt = Field(
        default=2,
        ge=2,
        description="intervals of silence after which a worker is unresponsive (>= 2: a worker "
        "busy with a call answers from its heartbeat thread within about half an interval)",
    )
    idle_timeout: StrictFloat = Field(
        default=60.0, gt=0, description="workers above min_workers idle this long are retired"
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    recycle: RecyclePolicy = Field(default_factory=RecyclePolicy)
    sessions: SessionPolicy = Field(default_factory=SessionPolicy)
    telemetry: TelemetryPolicy = Field(default_factory=TelemetryPolicy)

    @model_validator(mode="after")
    def _check(self) -> PoolConfig:
        if self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) must be >= min_workers ({self.min_workers})")
        if self.max_pipeline_depth is not None and self.max_pipeline_depth < self.pipeline_depth:
            raise ValueError(
                f"max_pipeline_depth ({self.max_pipeline_depth}) must be >= pipeline_depth ({self.pipeline_depth})"
            )
        memory = self.recycle.max_memory is not None or self.recycle.memory_limit is not None
        if memory and self.heartbeat_interval is None:
            raise ValueError(
                "recycle.max_memory / recycle.memory_limit need heartbeats "
                "(workers report their memory in heartbeat replies): set heartbeat_interval"
            )
        return self

    @property
    def pipeline_limit(self) -> int:
        """The most calls one worker may hold: ``max_pipeline_depth``; unset, 32 with the
        default ``pipeline_depth`` and an explicit ``pipeline_depth`` itself (who sets a depth
        of 1 for fairness must not find 32 calls queued in a worker)."""
        if self.max_pipeline_depth is not None:
            return self.max_pipeline_depth
        if "pipeline_depth" in self.model_fields_set:
            return self.pipeline_depth  # a depth asked for is kept, unless a maximum is given too
        return max(_DEFAULT_MAX_PIPELINE_DEPTH, self.pipeline_depth)

    @property
    def worker_limit(self) -> int:
        return self.max_workers if self.max_workers is not None else self.min_workers
