"""Fixtures shared by all tests.

* ``anyio_backend``: every ``@pytest.mark.anyio`` test runs on asyncio and on trio.
* Worker processes started by tests get tests/ on PYTHONPATH, so a worker can import test
  helper modules (``integration._targets``) exactly as the tests do. Put anything a worker must
  import or unpickle in such a helper module, never in a ``test_*.py`` file.
* The event catalog: with ``POOLKIT_EVENT_CATALOG_DIR`` set (``nox -s tests`` sets it), every
  event any pool emits in this process is recorded by class, and written at the end of the run
  to a file of its own in that directory; ``tests/catalog`` then checks the union against
  docs/telemetry.md (tests/catalog/_docs.py describes the files).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import secrets
from pathlib import Path

import pytest

from _util import TESTS_DIR
from catalog._docs import CATALOG_ENV, catalog_file_name
from poolkit._events import Event
from poolkit._telemetry import Telemetry

# pytester runs inner pytest sessions: how the harness plugin is tested as a user would run it.
pytest_plugins = ["pytester"]


def _put_tests_dir_on_pythonpath() -> None:
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(TESTS_DIR) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *entries])


@dataclasses.dataclass
class _Catalog:
    directory: Path
    emitted: collections.Counter[type[Event]]
    patch: pytest.MonkeyPatch


_CATALOG = pytest.StashKey[_Catalog]()


def _record_emitted_events(config: pytest.Config) -> None:
    """Wrap ``Telemetry.emit``, the one call every event of every pool goes through, to count
    each event's class. It only observes: what a pool builds, and for whom, is unchanged."""
    directory = os.environ.get(CATALOG_ENV)
    if not directory:
        return
    emitted: collections.Counter[type[Event]] = collections.Counter()
    emit = Telemetry.emit

    def recording_emit(self: Telemetry, event: Event) -> None:
        emitted[type(event)] += 1
        emit(self, event)

    patch = pytest.MonkeyPatch()
    patch.setattr(Telemetry, "emit", recording_emit)
    config.stash[_CATALOG] = _Catalog(Path(directory), emitted, patch)


def pytest_configure(config: pytest.Config) -> None:
    _put_tests_dir_on_pythonpath()
    _record_emitted_events(config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    catalog = session.config.stash.get(_CATALOG, None)
    if catalog is None or not catalog.emitted:  # xdist's controller, the catalog check itself
        return
    record = {
        "pid": os.getpid(),
        "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "args": [str(arg) for arg in session.config.args],
        "tests": session.testscollected,
        "exitstatus": int(exitstatus),
        "events": dict(sorted((f"{k.__module__}:{k.__qualname__}", n) for k, n in catalog.emitted.items())),
    }
    catalog.directory.mkdir(parents=True, exist_ok=True)
    path = catalog.directory / catalog_file_name(os.getpid(), secrets.token_hex(4))
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    partial.replace(path)  # whole or absent: never a half-written file under the final name


def pytest_unconfigure(config: pytest.Config) -> None:
    catalog = config.stash.get(_CATALOG, None)
    if catalog is not None:
        catalog.patch.undo()
        del config.stash[_CATALOG]


# Module scope, like anyio's own default fixture: module-scoped async fixtures may then depend on
# it. Tests of a module run on asyncio first, then on trio.
@pytest.fixture(
    scope="module",
    params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")],
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend
