"""Telemetry across the process boundary, with real worker processes (one per pool).

The parent's "poolkit.call" span travels to the worker in the CALL frame: a worker that has
its own OpenTelemetry SDK (configured by a handler's ``setup()``, see ``_otel_worker``) runs the
call in a "poolkit.worker.run" span whose parent is that span, and ``trace_context()`` returns
its ids. The worker's timings come back in the reply; a worker that does not announce them
(the standalone JSON example worker) gets none asked. What a worker prints arrives as
WorkerOutput events and as log entries tagged with its id and pid.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TypeVar

import anyio
import pytest
import structlog
import structlog.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from _util import TESTS_DIR, scaled
from integration import _otel_worker
from poolkit import (
    CallCompleted,
    CallQueued,
    Event,
    Pool,
    PoolConfig,
    RemoteError,
    WorkerOutput,
    WorkerSpec,
)
from poolkit.testing import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.xdist_group("processes")]

E = TypeVar("E", bound=Event)

HANDLER = "integration._otel_worker:OtelHandler"

# A program using a pool with logging left as a library user finds it: nothing configured.
# Its worker (bridge layer, in-process) crashes once with a breaker threshold of 1.
UNCONFIGURED_PROGRAM = """
import anyio
from poolkit import Pool, WorkerCrashed
from poolkit.testing import BridgeLauncher
from unit._targets import add, crash_segv

async def main() -> None:
    config = {"min_workers": 1, "breaker": {"failure_threshold": 1}, "heartbeat_interval": None}
    async with Pool(launcher=BridgeLauncher(), **config) as pool:
        assert await pool.call(add, 1, 1) == 2
        try:
            await pool.call(crash_segv)
        except WorkerCrashed:
            pass
        print("done")

anyio.run(main)
"""
JSON_WORKER = TESTS_DIR.parent / "examples" / "json_worker.py"


class Recorder:
    """Every event the pool emits from now on, in order."""

    def __init__(self, pool: Pool) -> None:
        self.events: list[Event] = []
        pool.subscribe(self.events.append)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """The parent's SDK tracer provider (the test's own, never the global one)."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog entries captured while the test runs; structlog's defaults restored after."""
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.reset_defaults()


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    assert not structlog.is_configured()
    yield
    structlog.reset_defaults()


def call_span(exporter: InMemorySpanExporter, target: str) -> ReadableSpan:
    """The one parent-side "poolkit.call" span of ``target``."""
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "poolkit.call" and s.attributes and s.attributes.get("poolkit.call.target") == target
    ]
    return span


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of ``span`` as W3C hex strings."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


# --------------------------------------------------------------------------- traces
async def test_worker_span_is_a_child_of_the_pools_call_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A worker with its own SDK runs a traced call in a "poolkit.worker.run" span (kind
    SERVER) in the caller's trace whose parent is the pool's "poolkit.call" span, itself a
    child of the caller's span; trace_context() in the worker returns the call span's ids."""
    tracer = provider.get_tracer("test")
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1, worker={"handler": HANDLER}, tracer_provider=provider) as pool:
            with tracer.start_as_current_span("caller") as caller:
                result = await pool.call("traced", 42)
            worker_spans = await pool.call("finished_spans")
            (worker,) = pool.workers()
    span = call_span(exporter, "traced")
    trace_id, span_id = ids(span)
    assert f"{caller.get_span_context().trace_id:032x}" == trace_id
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id

    (run,) = [s for s in worker_spans if s["attributes"].get("poolkit.call.target") == "traced"]
    assert run["name"] == "poolkit.worker.run" and run["kind"] == "SERVER"
    assert run["trace_id"] == trace_id
    assert run["parent_span_id"] == span_id and run["parent_is_remote"] is True
    assert run["span_id"] != span_id
    assert run["attributes"]["poolkit.worker.pid"] == worker.pid == result["pid"]
    assert run["status"] == "UNSET"

    assert result["value"] == 42
    assert result["trace"] == {
        "trace_id": trace_id,
        "span_id": span_id,
        "sampled": True,
        "traceparent": f"00-{trace_id}-{span_id}-01",
    }
    assert span.kind is SpanKind.CLIENT


async def test_worker_span_of_a_failing_call_records_the_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A call that raises in the worker: the worker's span ends with status ERROR and the
    remote exception type, the pool's span with status ERROR and error.type "application"."""
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1, worker={"handler": HANDLER}, tracer_provider=provider) as pool:
            with pytest.raises(RemoteError):
                await pool.call("fail", "nope")
            worker_spans = await pool.call("finished_spans")
    span = call_span(exporter, "fail")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "application"
    (run,) = [s for s in worker_spans if s["attributes"].get("poolkit.call.target") == "fail"]
    assert run["parent_span_id"] == ids(span)[1]
    assert run["status"] == "ERROR"
    assert run["attributes"]["error.type"].endswith("ValueError")


async def test_real_worker_reports_timings(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A real worker announces "trace_context" and "timings"; its calls come back with
    run_time and cpu_time (within the caller's duration), also set on the call's span."""
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1, tracer_provider=provider) as pool:
            rec = Recorder(pool)
            assert await pool.call(_otel_worker.shout) == 0
    (done,) = rec.of(CallCompleted)
    assert done.run_time is not None and done.cpu_time is not None
    assert 0 < done.run_time <= done.duration and done.cpu_time >= 0
    span = call_span(exporter, "integration._otel_worker:shout")
    assert span.attributes is not None
    assert span.attributes["poolkit.worker.run_time"] == done.run_time


async def test_worker_that_announces_no_timings_gets_none_asked(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The standalone JSON worker announces no telemetry features: it is sent plain CALL
    frames (which it would not understand otherwise), its calls have no run_time or cpu_time,
    and the call span still ends, without worker timings."""
    spec = WorkerSpec(command=(sys.executable, str(JSON_WORKER)), codec="json")
    config = PoolConfig(min_workers=1, worker=spec)
    with anyio.fail_after(scaled(30)):
        async with Pool(config, tracer_provider=provider) as pool:
            rec = Recorder(pool)
            (worker,) = pool.workers()
            assert worker.extensions == 0
            assert await pool.call("math:add", 1, 2) == 3
    (done,) = rec.of(CallCompleted)
    assert (done.run_time, done.cpu_time) == (None, None)
    span = call_span(exporter, "math:add")
    assert span.attributes is not None and span.attributes["poolkit.call.outcome"] == "ok"
    assert "poolkit.worker.run_time" not in span.attributes


# --------------------------------------------------------------------------- worker output
async def test_worker_output_arrives_as_events_tagged_with_worker_and_call(
    captured: list[MutableMapping[str, Any]],
) -> None:
    """print() to stdout or stderr in a worker arrives as WorkerOutput events carrying the
    worker's id and pid and the number of the call that printed; output written below Python
    (fd 1) arrives on the stderr stream without a call. Each line is also an INFO "worker
    output" log entry bound with the worker id and pid (and call_id when known)."""
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1) as pool:
            rec = Recorder(pool)
            (worker,) = pool.workers()
            assert await pool.call(_otel_worker.shout, "hello", "world") == 2
            assert await pool.call(_otel_worker.shout, "oops", stream="stderr") == 1
            await pool.call(_otel_worker.c_level_write, "from C")
            await wait_until(
                lambda: any(e.line == "from C" for e in rec.of(WorkerOutput)),
                pool=pool,
                describe="the fd-level line",
            )
    first, second, _ = (e.call for e in rec.of(CallQueued))
    lines = [(e.stream, e.line, e.call) for e in rec.of(WorkerOutput)]
    assert lines == [
        ("stdout", "hello", first),
        ("stdout", "world", first),
        ("stderr", "oops", second),
        ("stderr", "from C", None),
    ]
    assert {(e.worker_id, e.pid) for e in rec.of(WorkerOutput)} == {(worker.id, worker.pid)}

    entries = [e for e in captured if e["event"] == "worker output"]
    assert [(e["stream"], e["line"], e.get("call_id")) for e in entries] == lines
    assert all(
        (e["worker_id"], e["pid"], e["pool"], e["log_level"]) == (worker.id, worker.pid, pool.name, "info")
        for e in entries
    )


async def test_worker_output_is_logged_on_the_poolkit_worker_logger(
    unconfigured_structlog: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Without structlog configured, worker output goes to the stdlib logger "poolkit.worker"
    at INFO (silent by default), as a record carrying worker_id, pid and call_id."""
    caplog.set_level(logging.INFO, logger="poolkit.worker")
    with anyio.fail_after(scaled(30)):
        async with Pool(min_workers=1) as pool:
            rec = Recorder(pool)
            (worker,) = pool.workers()
            assert await pool.call(_otel_worker.shout, "to the log") == 1
    (queued,) = rec.of(CallQueued)
    (record,) = [r for r in caplog.records if r.__dict__.get("line") == "to the log"]
    assert (record.name, record.levelno, record.getMessage()) == (
        "poolkit.worker",
        logging.INFO,
        "worker output",
    )
    fields = record.__dict__
    assert (fields["worker_id"], fields["pid"], fields["call_id"]) == (worker.id, worker.pid, queued.call)


# --------------------------------------------------------------------------- default logging
async def test_a_program_that_configures_no_logging_sees_only_warnings() -> None:
    """A program that configures neither structlog nor logging sees nothing of a pool's
    INFO/DEBUG life (started, worker ready, a worker crash, closed) on stderr; a circuit
    breaker opening is a warning and does reach stderr (Python's last-resort handler), with
    its fields in the message."""
    with anyio.fail_after(scaled(60)):
        done = await anyio.run_process(
            [sys.executable, "-W", "error", "-c", UNCONFIGURED_PROGRAM], check=False
        )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert done.stdout.decode() == "done\n"
    lines = stderr.splitlines()
    # The last-resort handler prints the message only, so the fields are in it (poolkit._log).
    assert lines and all(line.startswith("circuit breaker changed: pool='pool1' scope=") for line in lines), (
        stderr
    )
    assert any("to_state='open'" in line for line in lines), stderr
