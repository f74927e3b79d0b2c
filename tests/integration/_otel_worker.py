"""Targets and a handler for the telemetry tests, importable by worker processes (tests/ is
on their PYTHONPATH) and by the in-process layers alike.

* :class:`OtelHandler`: its ``setup()`` configures an OpenTelemetry SDK inside the worker
  process (a global ``TracerProvider`` exporting to an ``InMemorySpanExporter``), so the
  runtime runs each traced call in a ``poolkit.worker.run`` span; :meth:`OtelHandler.finished_spans`
  hands the worker's finished spans back to the test as plain dicts. Use it only with real
  worker processes: in the test process it would replace the global provider of the test run.
* :func:`current_trace`: what ``poolkit.worker.trace_context()`` says inside the call, as a dict.
* :func:`shout` / :func:`c_level_write`: output written by Python code, or straight to fd 1
  (as C code or a child process would), for the worker-output tests.

OpenTelemetry is imported lazily, so a worker that only runs :func:`current_trace` or
:func:`shout` never loads it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import poolkit.worker

__all__ = ["OtelHandler", "c_level_write", "current_trace", "shout"]


def current_trace() -> dict[str, Any] | None:
    """``poolkit.worker.trace_context()`` of the running call, as plain values (or None)."""
    ctx = poolkit.worker.trace_context()
    if ctx is None:
        return None
    return {
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "sampled": ctx.sampled,
        "traceparent": ctx.traceparent,
    }


def shout(*lines: str, stream: str = "stdout") -> int:
    """Print each of ``lines`` with ``print`` to sys.stdout or sys.stderr; returns how many."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    for line in lines:
        print(line, file=out)
    return len(lines)


def c_level_write(text: str) -> int:
    """Write ``text`` (a whole line) to fd 1 directly, below Python's sys.stdout."""
    return os.write(1, text.encode() + b"\n")


def _hex(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


class OtelHandler:
    """A handler that brings its own OpenTelemetry SDK into the worker (see module docstring)."""

    def __init__(self) -> None:
        self.exporter: Any = None
        self.provider: Any = None

    def setup(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(self.provider)

    def teardown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    def traced(self, value: Any) -> dict[str, Any]:
        """Returns ``value`` with the trace context the call ran in."""
        return {"value": value, "trace": current_trace(), "pid": os.getpid()}

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def finished_spans(self) -> list[dict[str, Any]]:
        """The spans this worker has finished so far, oldest first, as plain dicts."""
        spans = []
        for span in self.exporter.get_finished_spans():
            ctx = span.get_span_context()
            parent = span.parent
            spans.append(
                {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace_id": _hex(ctx.trace_id, 32),
                    "span_id": _hex(ctx.span_id, 16),
                    "parent_span_id": _hex(parent.span_id, 16) if parent is not None else None,
                    "parent_is_remote": parent.is_remote if parent is not None else None,
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                }
            )
        return spans
