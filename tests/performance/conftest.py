"""tests/performance: the benchmark regression gate and the load SLA tests (README.md here).

* Every test here that uses pytest-benchmark's ``benchmark`` fixture carries the ``benchmark``
  marker (added if missing), so ``-m benchmark`` selects the gate and ``-m load`` the SLA tests.
* Nothing here runs under xdist: timing with another test process on a 2-core machine measures
  the neighbour. Under an xdist worker these tests are skipped, saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    under_xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    for item in items:
        if HERE not in item.path.parents:
            continue
        if "benchmark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("benchmark") is None:
            item.add_marker(pytest.mark.benchmark)
        if under_xdist:
            item.add_marker(
                pytest.mark.skip(reason="tests/performance runs without xdist (nox -s perf, or serially)")
            )
