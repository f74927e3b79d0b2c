"""PoolConfig and WorkerSpec: invalid configuration fails where it is written, naming the field."""

from __future__ import annotations

import math
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
