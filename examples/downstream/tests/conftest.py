"""Fixtures for downstream_demo's tests.

poolkit's plugin (installed with poolkit) provides the ``poolkit_*`` fixtures; anyio's pytest
plugin runs ``@pytest.mark.anyio`` tests on the backend this ``anyio_backend`` fixture names.
"""

from __future__ import annotations

import pytest


# Every anyio test runs on asyncio and on trio (module scope, like anyio's own default fixture).
@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend
