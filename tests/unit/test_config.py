"""PoolConfig and WorkerSpec: invalid configuration fails where it is written, naming the field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from poolkit import Pool, PoolConfig, WorkerSpec
from poolkit.testing._bridge import BridgeLauncher


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        pytest.param({"min_workers": 0}, "min_workers", id="min_workers=0"),
        pytest.param({"min_workers": 2, "max_workers": 1}, "max_workers", id="max<min"),
        pytest.param({"max_workers": 0}, "max_workers", id="max_workers=0"),
        pytest.param({"bogus_field": 1}, "bogus_field", id="unknown-field"),
        pytest.param({"pipeline_depth": 0}, "pipeline_depth", id="pipeline_depth=0"),
        pytest.param({"pipeline_depth": 65}, "pipeline_depth", id="pipeline_depth=65"),
        pytest.param(
            {"pipeline_depth": 4, "max_pipeline_depth": 3}, "max_pipeline_depth", id="max_depth<depth"
        ),
        pytest.param({"max_pipeline_depth": 0}, "max_pipeline_depth", id="max_pipeline_depth=0"),
        pytest.param({"pipeline_budget": 0}, "pipeline_budget", id="pipeline_budget=0"),
        pytest.param({"max_queue": -1}, "max_queue", id="max_queue<0"),
        pytest.param({"queue_policy": "drop"}, "queue_policy", id="queue_policy"),
        pytest.param({"default_timeout": 0}, "default_timeout", id="default_timeout=0"),
        pytest.param({"startup_timeout": -1}, "startup_timeout", id="startup_timeout<0"),
        pytest.param({"max_frame_size": 1023}, "max_frame_size", id="max_frame_size<1024"),
        pytest.param({"max_startup_failures": 0}, "max_startup_failures", id="max_startup_failures=0"),
        pytest.param({"kill_grace": -0.5}, "kill_grace", id="kill_grace<0"),
        # Infinite or NaN durations that bound a wait on close or start: a hang by accident.
        pytest.param({"kill_grace": math.inf}, "kill_grace", id="kill_grace=inf"),
        pytest.param({"drain_timeout": math.inf}, "drain_timeout", id="drain_timeout=inf"),
        pytest.param({"drain_timeout": math.nan}, "drain_timeout", id="drain_timeout=nan"),
        pytest.param({"startup_timeout": math.inf}, "startup_timeout", id="startup_timeout=inf"),
        pytest.param({"heartbeat_interval": math.inf}, "heartbeat_interval", id="heartbeat=inf"),
        # Faster heartbeats burn CPU and kill healthy workers as unresponsive.
        pytest.param({"heartbeat_interval": 0.001}, "heartbeat_interval", id="heartbeat<0.05"),
        pytest.param({"default_timeout": math.nan}, "default_timeout", id="default_timeout=nan"),
        pytest.param({"worker": {"handler": "no_colon"}}, "handler", id="handler-without-colon"),
        pytest.param({"worker": {"handler": "pkg.mod:1bad"}}, "handler", id="handler-bad-attr"),
        pytest.param({"worker": {"preload": ["not a module"]}}, "preload", id="preload"),
        pytest.param({"worker": {"command": []}}, "command", id="empty-command"),
        pytest.param({"worker": {"codec": "msgpack"}}, "codec", id="codec"),
        pytest.param({"worker": {"surprise": True}}, "surprise", id="unknown-worker-field"),
    ],
)
def test_invalid_config_names_the_field(fields: dict[str, Any], field_name: str) -> None:
    """Each invalid field raises pydantic's ValidationError whose text names that field, both
    from PoolConfig(...) and from Pool(...) keyword arguments."""
    with pytest.raises(pydantic.ValidationError) as info:
        PoolConfig(**fields)
    assert field_name in str(info.value)
    with pytest.raises(pydantic.ValidationError) as info:
        Pool(launcher=BridgeLauncher(), **fields)
    assert field_name in str(info.value)


def test_validation_error_locates_the_field() -> None:
    """The error's location points at the field (nested for worker fields)."""
    with pytest.raises(pydantic.ValidationError) as info:
        PoolConfig(min_workers=0)
    assert [e["loc"] for e in info.value.errors()] == [("min_workers",)]
    with pytest.raises(pydantic.ValidationError) as info:
        PoolConfig(worker={"codec": "xml"})  # type: ignore[arg-type]
    assert [e["loc"][:2] for e in info.value.errors()] == [("worker", "codec")]


def test_valid_config_and_derived_values() -> None:
    """Valid fields are kept; worker_limit defaults to min_workers; nested dicts become WorkerSpec."""
    config = PoolConfig(min_workers=2, worker={"handler": "pkg.mod:Handler", "preload": ["json"]})  # type: ignore[arg-type]
    assert config.worker_limit == 2
    assert isinstance(config.worker, WorkerSpec)
    assert config.worker.handler == "pkg.mod:Handler"
    assert config.worker.preload == ("json",)
    assert config.worker.codec == "pickle"
    assert PoolConfig(min_workers=1, max_workers=4).worker_limit == 4
    default = PoolConfig()
    assert 1 <= default.min_workers <= 8
    assert default.queue_policy == "wait"


def test_config_is_frozen() -> None:
    """A config cannot change after construction, so a running pool never sees it change."""
    config = PoolConfig(min_workers=1)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.min_workers = 3
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.worker.codec = "json"
    assert config.min_workers == 1


def test_pool_overrides_revalidate_the_config() -> None:
    """Pool(config, **overrides) validates the merged fields: an override can be invalid on its own
    or against the config's other fields."""
    base = PoolConfig(min_workers=2)
    with pytest.raises(pydantic.ValidationError, match="max_workers"):
        Pool(base, max_workers=1, launcher=BridgeLauncher())
    with pytest.raises(pydantic.ValidationError, match="nonsense"):
        Pool(base, nonsense=True, launcher=BridgeLauncher())
    pool = Pool(base, max_workers=3, launcher=BridgeLauncher())
    assert (pool.config.min_workers, pool.config.worker_limit) == (2, 3)


def test_overrides_keep_the_defaults_derived_from_unset_fields() -> None:
    """Pool(config, name=...) must not turn every field of ``config`` into an explicitly set
    one: the pipeline limit (32 unless pipeline_depth was set) dropped to 2 that way."""
    config = PoolConfig(min_workers=2)
    assert (
        Pool(config, launcher=BridgeLauncher(), name="x").config.pipeline_limit == config.pipeline_limit == 32
    )
    deep = PoolConfig(min_workers=2, pipeline_depth=3)
    assert Pool(deep, launcher=BridgeLauncher(), name="y").config.pipeline_limit == 3
    assert Pool(config, launcher=BridgeLauncher(), pipeline_depth=4).config.pipeline_limit == 4


@pytest.mark.parametrize("config", [{"min_workers": 2}, 2], ids=["dict", "int"])
def test_config_of_the_wrong_type_is_a_type_error(config: Any) -> None:
    """Pool(...) takes a PoolConfig or keywords; anything else says so (it failed with
    "'dict' object has no attribute 'name'")."""
    with pytest.raises(TypeError, match="config must be a PoolConfig, not"):
        Pool(config)


@pytest.mark.parametrize(
    ("fields", "loc", "error_type"),
    [
        # int fields take only int: not a numeric string, not a bool (an int subclass), not an
        # integral float.
        pytest.param({"min_workers": "2"}, ("min_workers",), "int_type", id="int-from-str"),
        pytest.param({"min_workers": True}, ("min_workers",), "int_type", id="int-from-bool"),
        pytest.param({"min_workers": 2.0}, ("min_workers",), "int_type", id="int-from-float"),
        pytest.param({"max_workers": "4"}, ("max_workers",), "int_type", id="optional-int-from-str"),
        pytest.param({"max_queue": False}, ("max_queue",), "int_type", id="int-from-false"),
        pytest.param(
            {"retry": {"max_attempts": "3"}}, ("retry", "max_attempts"), "int_type", id="nested-int"
        ),
        pytest.param(
            {"recycle": {"max_memory": 1e9}}, ("recycle", "max_memory"), "int_type", id="bytes-from-float"
        ),
        # float fields take int or float: not a string, not a bool.
        pytest.param({"startup_timeout": "1"}, ("startup_timeout",), "float_type", id="float-from-str"),
        pytest.param({"startup_timeout": True}, ("startup_timeout",), "float_type", id="float-from-bool"),
        pytest.param(
            {"default_timeout": "1.5"}, ("default_timeout",), "float_type", id="optional-float-from-str"
        ),
        pytest.param(
            {"heartbeat_interval": True}, ("heartbeat_interval",), "float_type", id="optional-float-from-bool"
        ),
        pytest.param({"sessions": {"ttl": "60"}}, ("sessions", "ttl"), "float_type", id="nested-float"),
        # bool fields take only bool.
        pytest.param({"breaker": {"enabled": 1}}, ("breaker", "enabled"), "bool_type", id="bool-from-int"),
        pytest.param(
            {"breaker": {"enabled": "yes"}}, ("breaker", "enabled"), "bool_type", id="bool-from-str"
        ),
        pytest.param(
            {"telemetry": {"log_calls": 0}}, ("telemetry", "log_calls"), "bool_type", id="bool-from-0"
        ),
        pytest.param(
            {"worker": {"import_main": "false"}}, ("worker", "import_main"), "bool_type", id="worker-bool"
        ),
        # str fields take only str (lax mode decodes bytes).
        pytest.param({"name": b"pool"}, ("name",), "string_type", id="str-from-bytes"),
        pytest.param(
            {"worker": {"preload": [b"json"]}}, ("worker", "preload", 0), "string_type", id="tuple-item"
        ),
        pytest.param({"worker": {"env": {"K": b"v"}}}, ("worker", "env", "K"), "string_type", id="env-value"),
        # Literal fields never coerced; kept here so that stays true.
        pytest.param({"queue_policy": b"wait"}, ("queue_policy",), "literal_error", id="literal-from-bytes"),
    ],
)
def test_values_are_not_coerced_from_other_types(
    fields: dict[str, Any], loc: tuple[str | int, ...], error_type: str
) -> None:
    """A value of the wrong type is refused, not converted: ``min_workers="2"`` is an
    environment variable read and never parsed, ``min_workers=True`` a flag passed where a
    count belongs. The ValidationError locates the field, from PoolConfig(...), from
    Pool(**fields) and as an override of an existing config."""
    attempts: list[Callable[[], object]] = [
        lambda: PoolConfig(**fields),
        lambda: Pool(launcher=BridgeLauncher(), **fields),
        lambda: Pool(PoolConfig(min_workers=1), launcher=BridgeLauncher(), **fields),
    ]
    for attempt in attempts:
        with pytest.raises(pydantic.ValidationError) as info:
            attempt()
        assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(loc, error_type)]
        assert str(loc[-1]) in str(info.value)


def test_strict_fields_still_accept_their_own_types() -> None:
    """Strict scalars refuse other types only: an int is a fine number of seconds (kept as a
    float), sequences may be lists or tuples, nested policies may be dicts or models, and a
    config survives the dump-and-revalidate of Pool(config, **overrides)."""
    config = PoolConfig(
        min_workers=2,
        startup_timeout=5,
        default_timeout=3,
        heartbeat_interval=1,
        worker={"preload": ["json"], "command": ["python3", "-m", "w"], "import_main": False},  # type: ignore[arg-type]
        retry={"max_attempts": 2, "backoff_max": 1},  # type: ignore[arg-type]
        breaker={"enabled": False},  # type: ignore[arg-type]
        recycle={"max_memory": 2**30, "max_lifetime": 60},  # type: ignore[arg-type]
    )
    assert config.startup_timeout == 5.0 and isinstance(config.startup_timeout, float)
    assert isinstance(config.default_timeout, float) and isinstance(config.heartbeat_interval, float)
    assert config.worker.preload == ("json",)
    assert config.worker.command == ("python3", "-m", "w")
    assert config.worker.import_main is False
    assert (config.retry.max_attempts, config.retry.backoff_max) == (2, 1.0)
    assert config.breaker.enabled is False
    assert config.recycle.max_memory == 2**30
    assert WorkerSpec(preload=("json", "os"), command=("w",)).preload == ("json", "os")
    pool = Pool(config, launcher=BridgeLauncher(), name="strict", max_workers=3, kill_grace=2)
    assert pool.config.worker == config.worker
    assert (pool.config.max_workers, pool.config.kill_grace) == (3, 2.0)
    assert pool.config.retry == config.retry
