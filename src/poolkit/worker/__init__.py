"""The poolkit worker process, started by a pool as ``python -m poolkit.worker '<json spec>'``.

It speaks the framed protocol of :mod:`poolkit._protocol` over its stdin/stdout and imports
only the standard library, so a worker starts fast and never loads the parent's dependencies.
``Session`` is the per-session state object passed to calls as ``session=``; its ``on_close``
registers cleanup for when the parent ends the session (or the worker exits).
``trace_context()`` is the caller's trace context while a traced call runs (docs/telemetry.md).
"""

from __future__ import annotations

from ._runtime import Session, TraceContext, main, trace_context

__all__ = ["Session", "TraceContext", "main", "trace_context"]
