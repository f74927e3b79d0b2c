"""Unit-test fixtures: every test starts and ends with the in-memory targets' shared state
(gates, run counters) reset, so no test sees another's leftovers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from unit._targets import reset


@pytest.fixture(autouse=True)
def _reset_targets() -> Iterator[None]:
    reset()
    yield
    reset()
