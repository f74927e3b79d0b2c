"""docs/telemetry.md agrees with the code: its events, spans, attributes and metrics tables
list exactly what the pool and the worker runtime produce.

Three sources are compared with the tables (read by ``catalog._docs``):

* the classes themselves: every ``Event`` subclass in ``poolkit._events`` with its dataclass
  fields, and the log sink's table of loggers, levels and messages;
* the source of the sinks and the worker runtime, read as syntax trees: every span name, span
  event and attribute key they can produce, including branches no small scenario reaches, and
  which event constructors in the pool sit behind the ``Telemetry.calls`` test;
* a small recorded scenario on the bridge layer (an ok call, a failing call, an idempotent call
  retried after its worker crashed, a session call) with OpenTelemetry's in-memory span exporter
  and metric reader: the span kinds, and which span, span event or metric carries each key.

The suite-wide check that every documented event is emitted somewhere is tests/catalog.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import poolkit
from _util import scaled
from catalog._docs import between, names, table
from poolkit import FailureKind, Pool, PoolState, RemoteError
from poolkit import _events as events_module
from poolkit import _protocol as proto
from poolkit import _telemetry as telemetry_module
from poolkit._events import ON_DEMAND_EVENTS, Event
from poolkit.testing import BridgeLauncher, FaultInjector
from poolkit.testing import targets as T
from poolkit.worker import _runtime as runtime_module
from unit._targets import new_gate, wait_for

SRC = Path(poolkit.__file__).resolve().parent
DOCS = Path(__file__).resolve().parents[2] / "docs"
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
LOGGERS = {f"poolkit.{family}" for family in ("pool", "worker", "session", "call")}
INSTRUMENTS = {"counter", "up_down_counter", "histogram", "gauge", "observable_gauge"}
INSTRUMENTS |= {"observable_counter", "observable_up_down_counter"}
ATTRIBUTE_KEY = re.compile(r"(poolkit|error)(\.[a-z0-9_]+)+")

EVENT_CLASSES: dict[str, type[Event]] = {
    name: cls
    for name, cls in inspect.getmembers(events_module, inspect.isclass)
    if issubclass(cls, Event) and cls is not Event and cls.__module__ == events_module.__name__
}


def _row(table_name: str, column: str, name: str) -> dict[str, str]:
    rows = [row for row in table(table_name) if names(row[column])[:1] == [name]]
    assert len(rows) == 1, f"{name}: {len(rows)} rows in the {table_name} table"
    return rows[0]


def _fields(cls: type[Event]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("pool", "at")]


# --------------------------------------------------------------------------- events
def test_events_table_lists_every_event_class_once() -> None:
    """One row per Event subclass of poolkit._events, and no row naming anything else."""
    documented = [names(row["event"])[0] for row in table("events")]
    assert len(documented) == len(set(documented)), f"duplicate rows: {sorted(documented)}"
    assert set(documented) == set(EVENT_CLASSES)
    assert all(getattr(poolkit, name) is cls for name, cls in EVENT_CLASSES.items()), "exported from poolkit"


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_event_row_lists_the_dataclass_fields(name: str) -> None:
    """The fields column names the event's dataclass fields (besides ``pool`` and ``at``), in
    declaration order."""
    assert names(_row("events", "event", name)["fields"]) == _fields(EVENT_CLASSES[name])


def _sample(cls: type[Event], **values: Any) -> Event:
    """An instance with every field None but ``values``: enough for a level function."""
    filled: dict[str, Any] = dict.fromkeys(_fields(cls))
    return cls(pool="p", at=0.0, **{**filled, **values})


# The inputs that decide the level of the events whose level depends on the event.
LEVEL_SAMPLES: dict[type[Event], list[dict[str, Any]]] = {
    poolkit.PoolStateChanged: [{"to_state": state} for state in PoolState],
    poolkit.WorkerExited: [{"failure": None}] + [{"failure": kind} for kind in FailureKind],
    poolkit.BreakerStateChanged: [{"to_state": state} for state in ("closed", "open", "half_open")],
}


def _levels(cls: type[Event], level: int | Callable[[Event], int]) -> set[int]:
    if not callable(level):
        return {level}
    assert cls in LEVEL_SAMPLES, f"{cls.__name__}'s log level depends on the event: add it to LEVEL_SAMPLES"
    return {level(_sample(cls, **values)) for values in LEVEL_SAMPLES[cls]}


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_event_row_gives_the_log_sinks_logger_level_and_message(name: str) -> None:
    """The log column is the log sink's entry: logger ``poolkit.<family>``, every level the
    entry can have, its message; call events say they need ``telemetry.log_calls``."""
    cls, cell = EVENT_CLASSES[name], _row("events", "event", name)["log level / logger"]
    family, message, level = telemetry_module._LOG_TABLE[cls]
    assert [n for n in names(cell) if n in LOGGERS] == [f"poolkit.{family}"]
    assert re.findall(r'"([^"]+)"', cell) == [message]
    documented = {LEVELS[word] for word in re.findall(r"\b[A-Z]+\b", cell) if word in LEVELS}
    assert documented == _levels(cls, level)
    assert ("`telemetry.log_calls`" in cell) is (family == "call")


def test_log_table_covers_every_event() -> None:
    """Every event has a log entry: the events table's log column has something to describe."""
    assert set(telemetry_module._LOG_TABLE) == set(EVENT_CLASSES.values())


def test_on_demand_events_are_documented_as_such() -> None:
    """The "on demand" events of the table and of the family list are ON_DEMAND_EVENTS."""
    expected = {cls.__name__ for cls in ON_DEMAND_EVENTS}
    marked = {names(row["event"])[0] for row in table("events") if "on demand" in row["when emitted"]}
    assert marked == expected
    assert set(names(between("on-demand"))) == expected


def _event_constructions(tree: ast.Module) -> Iterator[tuple[str, bool, int]]:
    """(event class, built behind a ``.calls`` test?, line) for each event constructor call.

    Behind means: in the body (not the ``else``) of an ``if`` whose condition reads an
    attribute named ``calls`` (``self._tel.calls``, ``tel.calls``), or nested in one, or in a
    method of the module that is only ever called from behind one (``self._emit_failed``)."""
    built: list[tuple[str, bool, int, str]] = []  # (event, gated here, line, enclosing function)
    calls: dict[str, list[tuple[bool, str]]] = {}  # method -> [(gated here, calling function)]

    def visit(node: ast.AST, gated: bool, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.If):
            tests_calls = any(isinstance(n, ast.Attribute) and n.attr == "calls" for n in ast.walk(node.test))
            visit(node.test, gated, function)
            for statement in node.body:
                visit(statement, gated or tests_calls, function)
            for statement in node.orelse:
                visit(statement, gated, function)
            return
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in EVENT_CLASSES:
                built.append((node.func.id, gated, node.lineno, function))
            elif isinstance(node.func, ast.Attribute):
                calls.setdefault(node.func.attr, []).append((gated, function))
        for child in ast.iter_child_nodes(node):
            visit(child, gated, function)

    def only_called_gated(function: str, seen: frozenset[str]) -> bool:
        sites = calls.get(function)
        if not sites or function in seen:
            return False
        return all(gated or only_called_gated(caller, seen | {function}) for gated, caller in sites)

    visit(tree, False, "")
    for name, gated, line, function in built:
        yield name, gated or only_called_gated(function, frozenset()), line


def test_exactly_the_on_demand_events_are_built_behind_the_calls_flag() -> None:
    """In the pool's source, every on-demand event is constructed only behind the
    ``Telemetry.calls`` test, and every lifecycle event unconditionally: what the doc's
    "two families" and "no cost when unused" sections say."""
    built: dict[str, list[tuple[bool, str]]] = {}
    for path in sorted(SRC.glob("*.py")):
        if path.name == "_events.py":
            continue
        for name, gated, line in _event_constructions(ast.parse(path.read_text(encoding="utf-8"))):
            built.setdefault(name, []).append((gated, f"{path.name}:{line}"))
    assert set(built) == set(EVENT_CLASSES), f"never constructed: {sorted(set(EVENT_CLASSES) - set(built))}"
    on_demand = {cls.__name__ for cls in ON_DEMAND_EVENTS}
    wrong = [
        f"{name} at {where} ({'behind' if gated else 'not behind'} the calls flag)"
        for name, sites in built.items()
        for gated, where in sites
        if gated is not (name in on_demand)
    ]
    assert not wrong, wrong


@pytest.mark.anyio
async def test_an_unobserved_pool_builds_no_on_demand_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no subscriber, no tracing or metrics and no ``log_calls``, calls, a failing call
    and a session build no event at all; one subscriber turns the on-demand ones on."""
    built: list[Event] = []
    emit = telemetry_module.Telemetry.emit

    def recording_emit(self: telemetry_module.Telemetry, event: Event) -> None:
        built.append(event)
        emit(self, event)

    monkeypatch.setattr(telemetry_module.Telemetry, "emit", recording_emit)

    async def scenario(pool: Pool) -> None:
        assert await pool.call(T.echo, 1) == 1
        with pytest.raises(RemoteError):
            await pool.call(T.fail)
        async with pool.session("s") as session:
            assert await session.call(T.remember, 1) == [1]

    policy = {"traces": False, "metrics": False, "log_calls": False}
    with anyio.fail_after(scaled(10)):
        async with Pool(min_workers=1, launcher=BridgeLauncher(), telemetry=policy) as pool:
            built.clear()
            await scenario(pool)
            unobserved = list(built)
            built.clear()
            unsubscribe = pool.subscribe(lambda event: None)
            await scenario(pool)
            unsubscribe()
    # Nothing per call is a lifecycle event: an unobserved pool's calls build no event at all.
    assert [type(e).__name__ for e in unobserved] == []
    observed = {type(e) for e in built}
    assert {poolkit.CallQueued, poolkit.CallCompleted, poolkit.CallFailed, poolkit.SessionBound} <= observed


# --------------------------------------------------------------------------- source: spans, keys
def _tree(module: Any) -> ast.Module:
    return ast.parse(Path(module.__file__).read_text(encoding="utf-8"))


def _first_str_arg(node: ast.Call) -> str | None:
    if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _calls_named(tree: ast.Module, *methods: str) -> list[str]:
    """The string first arguments of every call to ``<something>.method(...)``."""
    return [
        arg
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
        if (arg := _first_str_arg(node)) is not None
    ]


def _attribute_keys(tree: ast.Module) -> set[str]:
    """Every attribute key a module can put on a span, span event or data point: first
    arguments of ``set_attribute``, string keys of dict literals and of subscript
    assignments that look like ``poolkit.*`` / ``error.*`` attribute names."""
    keys = set(_calls_named(tree, "set_attribute"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys.update(
                k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            keys.add(node.slice.value)
    return {key for key in keys if ATTRIBUTE_KEY.fullmatch(key)}


# The modules that make spans: the pool's trace sink (poolkit.call) and the worker runtime.
SPAN_MODULES = {"poolkit.call": telemetry_module, "poolkit.worker.run": runtime_module}


def test_spans_table_lists_the_spans_and_span_events_the_code_makes() -> None:
    """Span names and span events in the table are those the trace sink and the worker runtime
    start and add, each span's events listed on its own row."""
    documented = {names(row["span"])[0]: row for row in table("spans")}
    assert set(documented) == set(SPAN_MODULES)
    for span, module in SPAN_MODULES.items():
        tree = _tree(module)
        assert set(_calls_named(tree, "start_span", "start_as_current_span")) == {span}
        assert set(names(documented[span]["span events"])) == set(_calls_named(tree, "add_event")), span


def test_attributes_table_lists_every_key_in_the_source() -> None:
    """The attributes table has one row per key the sinks and the worker runtime can produce,
    and no other."""
    documented = [names(row["attribute"])[0] for row in table("attributes")]
    assert len(documented) == len(set(documented)), f"duplicate rows: {sorted(documented)}"
    in_source = _attribute_keys(_tree(telemetry_module)) | _attribute_keys(_tree(runtime_module))
    assert set(documented) == in_source


def test_span_and_metric_rows_name_only_documented_attributes() -> None:
    """Every attribute a span or metric row lists has its own row in the attributes table."""
    keys = {names(row["attribute"])[0] for row in table("attributes")}
    for row in table("spans"):
        assert set(names(row["attributes"])) <= keys, row["span"]
    for row in table("metrics"):
        assert set(names(row["attributes"])) <= keys, row["metric"]


# --------------------------------------------------------------------------- recorded scenario
@dataclasses.dataclass(frozen=True)
class Instrument:
    kind: str  # counter, histogram, observable_gauge, ...
    name: str
    unit: str


class _RecordingMeter:
    """A real SDK meter that notes every instrument created on it."""

    def __init__(self, meter: Any, created: list[Instrument]) -> None:
        self._meter = meter
        self._created = created

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._meter, attr)
        if not attr.startswith("create_"):
            return method

        def create(name: str, *args: Any, **kwargs: Any) -> Any:
            self._created.append(Instrument(attr.removeprefix("create_"), name, kwargs.get("unit", "")))
            return method(name, *args, **kwargs)

        return create


class _RecordingMeterProvider:
    """Stands in for an SDK MeterProvider (it counts as one: it is not the API's no-op)."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.created: list[Instrument] = []

    def get_meter(self, name: str, version: str | None = None, *args: Any, **kwargs: Any) -> Any:
        return _RecordingMeter(self.provider.get_meter(name, version, *args, **kwargs), self.created)


@dataclasses.dataclass
class Recording:
    spans: list[ReadableSpan]
    instruments: list[Instrument]
    points: list[tuple[str, frozenset[str]]]  # (metric, attribute keys of one data point)

    def carried(self) -> set[tuple[str, str]]:
        """(attribute key, the span, span event or metric that carried it)."""
        pairs = {(key, name) for name, keys in self.points for key in keys}
        for span in self.spans:
            pairs |= {(key, span.name) for key in span.attributes or {}}
            for event in span.events:
                pairs |= {(key, event.name) for key in event.attributes or {}}
        return pairs


async def _scenario(tracer_provider: TracerProvider, meter_provider: _RecordingMeterProvider) -> list[Any]:
    """An ok call, a failing call, an idempotent call whose worker crashes under it (retried
    on the replacement) and a session call, on one bridge worker; metrics collected while the
    pool runs (the gauges report live pools only)."""
    pool = Pool(
        min_workers=1,
        launcher=BridgeLauncher(),
        rng=random.Random(0),
        retry={"backoff_initial": 0.0},
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    async with pool:
        assert await pool.call(T.echo, 1) == 1
        with pytest.raises(RemoteError):
            await pool.call(T.fail)
        gate = new_gate("docs")
        result: list[Any] = []

        async def retried() -> None:
            result.append(await pool.call(wait_for, "docs", "done", idempotent=True))

        async with anyio.create_task_group() as tg:
            tg.start_soon(retried)
            await gate.entered.wait()
            (worker,) = pool.statistics().workers
            await FaultInjector(pool).crash(worker.id)
            gate.release.set()
        assert result == ["done"]
        async with pool.session("docs") as session:
            assert await session.call(T.remember, 1) == [1]
        data = meter_provider.reader.get_metrics_data()
    assert data is not None
    return [
        (metric.name, frozenset(point.attributes or {}))
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]


@pytest.fixture(scope="module")
def recording() -> Iterator[Recording]:
    """The scenario, recorded once for the module's checks (names do not depend on the
    backend; it runs on asyncio)."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = _RecordingMeterProvider()

    async def run() -> list[Any]:
        with anyio.fail_after(scaled(20)):
            return await _scenario(tracer_provider, meter_provider)

    points = anyio.run(run, backend="asyncio")
    yield Recording(list(spans.get_finished_spans()), list(meter_provider.created), points)
    tracer_provider.shutdown()
    meter_provider.provider.shutdown()


def test_the_scenario_produced_what_the_checks_need(recording: Recording) -> None:
    """Guard for the checks below: one span per call, a retry and a failure among them, and
    data points of the call, retry and worker-failure metrics."""
    assert [s.name for s in recording.spans] == ["poolkit.call"] * 4
    events = {event.name for span in recording.spans for event in span.events}
    assert {"poolkit.dispatched", "poolkit.retry"} <= events
    outcomes = [(s.attributes or {}).get("poolkit.call.outcome") for s in recording.spans]
    assert outcomes == ["ok", "application", "ok", "ok"]
    metrics = {name for name, _ in recording.points}
    assert {
        "poolkit.calls",
        "poolkit.call.retries",
        "poolkit.worker.failures",
        "poolkit.worker.count",
    } <= metrics


def test_metrics_table_lists_every_instrument_with_its_type_and_unit(recording: Recording) -> None:
    """One row per instrument the metrics sink creates, with the instrument type and unit it
    is created with, and no other row."""
    documented = {names(row["metric"])[0]: row for row in table("metrics")}
    assert len(documented) == len(table("metrics")), "duplicate rows"
    created = {i.name: i for i in recording.instruments}
    assert len(created) == len(recording.instruments), "an instrument created twice"
    assert set(documented) == set(created)
    for name, instrument in created.items():
        row = documented[name]
        assert instrument.kind in INSTRUMENTS, instrument
        assert row["instrument"] == instrument.kind.replace("_", " "), name
        assert names(row["unit"]) == [instrument.unit], name


def test_metric_data_points_carry_only_the_documented_attributes(recording: Recording) -> None:
    """Each data point's attribute keys are among those its metric's row lists."""
    rows = {names(row["metric"])[0]: set(names(row["attributes"])) for row in table("metrics")}
    for name, keys in recording.points:
        assert name in rows, f"{name} is not in the metrics table"
        assert keys <= rows[name], f"{name}: {sorted(keys - rows[name])} undocumented"


def test_spans_carry_only_the_documented_kind_attributes_and_events(recording: Recording) -> None:
    """A recorded span's kind, attributes and span events are those of its row."""
    for span in recording.spans:
        row = _row("spans", "span", span.name)
        assert row["kind"] == span.kind.name
        assert set(span.attributes or {}) <= set(names(row["attributes"]))
        assert {event.name for event in span.events} <= set(names(row["span events"]))


def _carriers_documented(pairs: set[tuple[str, str]]) -> list[str]:
    metrics = {names(row["metric"])[0] for row in table("metrics")}
    on = {names(row["attribute"])[0]: row["on"] for row in table("attributes")}
    missing = []
    for key, carrier in sorted(pairs):
        cell = on.get(key)
        if cell is None:
            missing.append(f"{key} (on {carrier}) has no row")
        elif carrier not in names(cell) and not (carrier in metrics and "every metric" in cell):
            missing.append(f"{key}: its row does not say it is on {carrier}")
    return missing


def test_every_recorded_attribute_is_documented_on_what_carried_it(recording: Recording) -> None:
    """Every key on a recorded span, span event or data point has a row whose "on" column
    names that span, span event or metric."""
    assert _carriers_documented(recording.carried()) == []


def test_worker_span_continues_the_pools_trace_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a process with an SDK, the runtime's ``poolkit.worker.run`` span has the kind, the
    remote parent (the pool's span from the CALL's trace block) and the attributes the docs
    give, error included."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    block = proto.TRACE.pack(0, trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"), 1)
    manager = runtime_module._worker_span(block)
    assert manager is not None
    with manager as span:
        span.set_attribute("poolkit.call.target", "math:sqrt")
        runtime_module._span_error(span, {"type": "builtins.ValueError", "message": "math domain error"})
    provider.shutdown()
    (finished,) = exporter.get_finished_spans()
    row = _row("spans", "span", "poolkit.worker.run")
    assert finished.name == "poolkit.worker.run" and row["kind"] == finished.kind.name == "SERVER"
    assert finished.parent is not None and finished.parent.is_remote
    assert (finished.parent.trace_id, finished.parent.span_id) == (trace_id, span_id)
    assert finished.context is not None and finished.context.trace_id == trace_id
    assert set(finished.attributes or {}) == set(names(row["attributes"]))
    assert _carriers_documented({(key, finished.name) for key in finished.attributes or {}}) == []


@pytest.mark.anyio
async def test_the_testing_example_of_the_docs_passes() -> None:
    """The test shown in "Testing with telemetry" runs and passes as written."""
    text = (DOCS / "telemetry.md").read_text(encoding="utf-8")
    (source,) = [
        block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "async def test_" in block
    ]
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/telemetry.md", "exec"), namespace)
    (test,) = [value for name, value in namespace.items() if name.startswith("test_")]
    try:
        await test()
    finally:
        # The example uses structlog.testing.capture_logs, which leaves structlog "configured":
        # later tests in this process would log through structlog's printing defaults.
        structlog.reset_defaults()


# --------------------------------------------------------------------------- protocol.md
def test_protocol_doc_lists_the_runtimes_features() -> None:
    """READY's ``features`` row in docs/protocol.md names every feature the runtime announces."""
    spec = (DOCS / "protocol.md").read_text(encoding="utf-8")
    (row,) = [line for line in spec.splitlines() if line.startswith("| `features` |")]
    assert set(runtime_module.FEATURES) <= set(re.findall(r'`"([a-z_]+)"`', row))


def test_protocol_doc_header_extension_example_is_what_the_reference_encodes() -> None:
    """The hex dumps of docs/protocol.md 9.4 (a CALL with FLAG_TRACE | FLAG_TIMING and its timed
    RESULT) are byte for byte what poolkit._protocol produces, and decode back."""
    block = proto.TRACE.pack(
        0, bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), bytes.fromhex("00f067aa0ba902b7"), 1
    )
    payload = proto.encode_payload(["math:add", [1, 2], {}], proto.Codec.JSON)
    flags = proto.FLAG_TRACE | proto.FLAG_TIMING
    call = proto.encode_frame(proto.FrameKind.CALL, 1, block + payload, proto.Codec.JSON, flags)
    timing = proto.TIMING.pack(1_500_000, 1_200_000)
    result = proto.encode_frame(proto.FrameKind.RESULT, 1, timing + b"3", proto.Codec.JSON, proto.FLAG_TIMING)
    spec = (DOCS / "protocol.md").read_text(encoding="utf-8")
    h = proto.HEADER_SIZE
    for dump in (call[:h], block, payload, result[:h], timing):
        assert dump.hex(" ") in spec
    assert proto.traceparent(block) in spec
    (frame,) = proto.FrameDecoder().feed(call)
    assert proto.split_trace(frame.payload) == (block, payload)
    (frame,) = proto.FrameDecoder().feed(result)
    assert proto.split_timing(frame.payload) == (1_500_000, 1_200_000, b"3")
