"""The pytest plugin (entry point ``poolkit``): fixtures prefixed ``poolkit_``.

* ``poolkit_layer``: the layer a test runs on. A test that asks for it runs once per
  selected layer: all three by default, narrowed by ``--poolkit-layers=bridge,subprocess``
  on the command line and by ``@pytest.mark.poolkit_layers("mock", "bridge")`` on the test.
* ``poolkit_isolation``: a unique tag and name for the test; at teardown it kills every
  process carrying the tag and fails the test if anything leaked.
* ``poolkit_pool_factory``: ``async with poolkit_pool_factory(min_workers=2) as pool:`` an
  isolated pool on the test's layer. ``poolkit_pool``: one started with defaults.
* ``poolkit_timeout_factor``: ``POOLKIT_TIMEOUT_FACTOR`` as a float.

Tests on the subprocess layer are put in the ``xdist_group("poolkit-subprocess")`` so that,
with ``--dist loadgroup``, they do not oversubscribe a small machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .._pool import Pool
from ._isolation import Isolation, LeakCheck, kill_tagged, unique_name
from ._layers import LAYERS, Layer, PoolFactory, pool_for
from ._wait import ensure_pool_ready, timeout_factor

# Isolation and PoolFactory are defined where importing them loads no pytest (``_isolation``,
# ``_layers``): a script using the harness outside pytest gets them from ``poolkit.testing``
# without this module. Re-exported here for code that imported them from the plugin.
__all__ = ["Isolation", "PoolFactory"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("poolkit")
    group.addoption(
        "--poolkit-layers",
        default=",".join(layer.value for layer in LAYERS),
        help="comma-separated layers for tests using poolkit_layer: mock, bridge, subprocess (default: all)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "poolkit_layers(*layers): run this test only on these poolkit layers (mock, bridge, subprocess)",
    )
    # We put subprocess-layer tests in an xdist group; register the marker so projects that
    # run with --strict-markers but without pytest-xdist still collect them.
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist groups tests by this name")
    _selected_layers(config)  # a bad --poolkit-layers is a usage error at startup, not mid-collection


_VALID = ", ".join(layer.value for layer in LAYERS)


def _selected_layers(config: pytest.Config) -> list[Layer]:
    raw = str(config.getoption("--poolkit-layers"))
    try:
        return [Layer(part.strip()) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise pytest.UsageError(
            f"--poolkit-layers: expected {_VALID} (comma-separated), got {raw!r}"
        ) from None


def _marker_layers(metafunc: pytest.Metafunc, marker: pytest.Mark) -> set[Layer]:
    """The layers a ``poolkit_layers`` marker names. A bad name fails collection of that test
    with a message naming the valid layers (not an enum traceback from inside pluggy)."""
    wanted: set[Layer] = set()
    unknown: list[str] = []
    for arg in marker.args:
        try:
            wanted.add(Layer(arg))
        except ValueError:
            unknown.append(repr(arg))
    if unknown:
        raise pytest.Collector.CollectError(
            f"{metafunc.definition.nodeid}: @pytest.mark.poolkit_layers got unknown layer(s) "
            f"{', '.join(unknown)}; valid layers: {_VALID}"
        )
    return wanted


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "poolkit_layer" not in metafunc.fixturenames:
        return
    layers = _selected_layers(metafunc.config)
    marker = metafunc.definition.get_closest_marker("poolkit_layers")
    if marker is not None:
        wanted = _marker_layers(metafunc, marker)
        layers = [layer for layer in layers if layer in wanted]
    params = [
        pytest.param(layer, id=layer.value, marks=[pytest.mark.xdist_group("poolkit-subprocess")])
        if layer.has_processes
        else pytest.param(layer, id=layer.value)
        for layer in layers
    ]
    metafunc.parametrize("poolkit_layer", params)


@pytest.fixture
def poolkit_timeout_factor() -> float:
    """``POOLKIT_TIMEOUT_FACTOR`` as a float (default 1.0)."""
    return timeout_factor()


@pytest.fixture
def poolkit_isolation(request: pytest.FixtureRequest) -> Iterator[Isolation]:
    """Tag this test's processes; at teardown kill them and fail on leaks (processes, threads,
    pipes/sockets, poolkit temp files)."""
    name = unique_name(request.node.name)
    isolation = Isolation(tag=name, name=name, leak_check=LeakCheck(name))
    isolation.leak_check.start()
    yield isolation
    isolation.killed = kill_tagged(isolation.tag)
    leaks = isolation.leak_check.leaks()
    if isolation.killed:
        leaks.insert(0, f"killed {len(isolation.killed)} worker process(es) left running: {isolation.killed}")
    if leaks:
        pytest.fail("poolkit leak check failed:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def poolkit_pool_factory(poolkit_layer: Layer, poolkit_isolation: Isolation) -> PoolFactory:
    """``async with poolkit_pool_factory(**config_fields) as pool:``: an isolated, started pool
    on this test's layer (waits until its workers are ready)."""

    @contextlib.asynccontextmanager
    async def factory(*args: Any, **kwargs: Any) -> AsyncIterator[Pool]:
        kwargs.setdefault("min_workers", 2)
        pool = pool_for(poolkit_layer, *args, tag=poolkit_isolation.tag, **kwargs)
        async with pool:
            await ensure_pool_ready(pool)
            yield pool

    return factory


@pytest.fixture
async def poolkit_pool(poolkit_pool_factory: PoolFactory) -> AsyncIterator[Pool]:
    """A started pool with two workers on this test's layer."""
    async with poolkit_pool_factory() as pool:
        yield pool
