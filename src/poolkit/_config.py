"""Pool configuration: immutable pydantic models validated at construction.

Why pydantic: invalid configuration must fail where it is written, naming the field
(``PoolConfig(min_workers=0)`` says ``min_workers``), not as a hang or an obscure error at
the first call. Models are frozen so a running pool can never see its config change.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._protocol import DEFAULT_MAX_FRAME_SIZE

__all__ = ["PoolConfig", "WorkerSpec"]

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
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    handler: str | None = None
    preload: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None
    python: str = Field(default_factory=lambda: sys.executable)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    codec: Literal["pickle", "json"] = "pickle"
    import_main: bool = Field(
        default=True,
        description="let workers resolve callables defined in the parent's __main__ (as spawn does)",
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
        return self


class PoolConfig(BaseModel):
    """Everything a :class:`~poolkit.Pool` needs. All durations are in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, description="shown in errors, logs and repr")
    min_workers: int = Field(default_factory=_default_workers, ge=1)
    max_workers: int | None = Field(default=None, ge=1, description="default: min_workers")
    worker: WorkerSpec = Field(default_factory=WorkerSpec)

    max_queue: int = Field(default=10_000, ge=0, description="calls waiting for a worker")
    queue_policy: Literal["wait", "reject"] = Field(
        default="wait", description="when the queue is full: wait for room, or raise QueueFull"
    )
    default_timeout: float | None = Field(default=None, gt=0, description="per-call deadline")
    pipeline_depth: int = Field(
        default=2,
        ge=1,
        le=64,
        description="calls sent to one worker before earlier ones return; >1 hides round trips",
    )

    startup_timeout: float = Field(default=60.0, gt=0)
    kill_grace: float = Field(default=1.0, ge=0, description="SIGTERM to SIGKILL")
    drain_timeout: float = Field(default=30.0, ge=0, description="closing waits this long for calls")
    max_frame_size: int = Field(default=DEFAULT_MAX_FRAME_SIZE, ge=1024)
    max_startup_failures: int = Field(
        default=3, ge=1, description="consecutive startup failures before the pool fails"
    )

    @model_validator(mode="after")
    def _check(self) -> PoolConfig:
        if self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) must be >= min_workers ({self.min_workers})")
        return self

    @property
    def worker_limit(self) -> int:
        return self.max_workers if self.max_workers is not None else self.min_workers
