"""Fixtures shared by all tests.

* ``anyio_backend``: every ``@pytest.mark.anyio`` test runs on asyncio and on trio.
* Worker processes started by tests get tests/ on PYTHONPATH, so a worker can import test
  helper modules (``integration._targets``) exactly as the tests do. Put anything a worker must
  import or unpickle in such a helper module, never in a ``test_*.py`` file.
"""

from __future__ import annotations

import os

import pytest

from _util import TESTS_DIR

# pytester runs inner pytest sessions: how the harness plugin is tested as a user would run it.
pytest_plugins = ["pytester"]


def _put_tests_dir_on_pythonpath() -> None:
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(TESTS_DIR) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *entries])


def pytest_configure(config: pytest.Config) -> None:
    _put_tests_dir_on_pythonpath()


# Module scope, like anyio's own default fixture: module-scoped async fixtures may then depend on
# it. Tests of a module run on asyncio first, then on trio.
@pytest.fixture(
    scope="module",
    params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")],
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend
