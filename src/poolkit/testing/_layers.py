"""The three layers a pool can be tested on, and building an isolated pool for each.

* ``mock``: scripted workers, no protocol, no processes (:mod:`poolkit.testing._mock`);
* ``bridge``: the real protocol and codecs over in-memory streams, against an in-process fake
  worker runtime (:mod:`poolkit.testing._bridge`);
* ``subprocess``: real worker processes.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from typing import Any

from .._config import PoolConfig, WorkerSpec
from .._pool import Pool
from ._bridge import BridgeLauncher
from ._isolation import TAG_ENV, unique_name
from ._mock import MockScript

__all__ = ["LAYERS", "Layer", "PoolFactory", "pool_for"]


class Layer(enum.Enum):
    MOCK = "mock"
    BRIDGE = "bridge"
    SUBPROCESS = "subprocess"

    @property
    def has_processes(self) -> bool:
        return self is Layer.SUBPROCESS


LAYERS: tuple[Layer, ...] = tuple(Layer)

#: What the ``poolkit_pool_factory`` fixture returns: ``async with factory(**config_fields) as
#: pool:`` gives an isolated, started pool. Defined here, not in the pytest plugin, so that
#: annotating with it outside pytest does not import pytest.
PoolFactory = Callable[..., contextlib.AbstractAsyncContextManager[Pool]]


def pool_for(
    layer: Layer | str,
    config: PoolConfig | None = None,
    /,
    *,
    tag: str | None = None,
    script: MockScript | None = None,
    launcher: BridgeLauncher | None = None,
    **overrides: Any,
) -> Pool:
    """A new (not yet started) pool on ``layer`` with a unique name.

    ``tag`` is put in every worker process's environment (``POOLKIT_TEST_TAG``) so teardown
    can find and kill exactly this test's processes. ``script`` drives mock workers;
    ``launcher`` replaces the bridge layer's launcher (to inject faults on its streams).
    Keyword arguments are :class:`~poolkit.PoolConfig` fields.
    """
    layer = Layer(layer)
    # exclude_unset: fields the caller left alone keep deriving their defaults (a full dump
    # would mark them all as set: pipeline_limit keys on pipeline_depth being set).
    fields: dict[str, Any] = config.model_dump(exclude_unset=True) if config is not None else {}
    fields.update(overrides)
    fields.setdefault("name", unique_name(f"{layer.value}"))
    if tag is not None:
        worker = fields.get("worker") or {}
        if isinstance(worker, WorkerSpec):
            worker = worker.model_dump(exclude_unset=True)
        worker = dict(worker)
        worker["env"] = {**worker.get("env", {}), TAG_ENV: tag}
        fields["worker"] = worker
    cfg = PoolConfig.model_validate(fields)
    if layer is Layer.MOCK:
        return Pool(cfg, worker_factory=(script or MockScript()).factory())
    if layer is Layer.BRIDGE:
        return Pool(cfg, launcher=launcher or BridgeLauncher())
    return Pool(cfg)
