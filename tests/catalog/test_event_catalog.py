"""The suite-wide event catalog: every event documented in docs/telemetry.md is emitted by some
scenario of the test suite, and every event a pool emitted there is documented.

``nox -s tests`` runs the unit and the integration suites with ``POOLKIT_EVENT_CATALOG_DIR``
set to a fresh directory (tests/conftest.py records every emitted event there, one file per
test process), then this test on its own. Run by hand without the variable it skips; with the
variable set it reads whatever the earlier runs left there, so run it after them, alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catalog._docs import CATALOG_ENV, CATALOG_GLOB, names, read_catalog, table

HERE = Path(__file__).resolve().parent


def test_every_documented_event_is_emitted_and_every_emitted_event_is_documented(
    request: pytest.FixtureRequest,
) -> None:
    """The events table of docs/telemetry.md and the events the suite's pools emitted are the
    same set: nothing documented that no scenario produces, nothing produced undocumented."""
    value = os.environ.get(CATALOG_ENV)
    if not value:
        pytest.skip(f"{CATALOG_ENV} is not set: `nox -s tests` runs this after recording the suite's events")
    others = [item.nodeid for item in request.session.items if HERE not in Path(item.path).parents]
    if others:
        pytest.skip(
            f"collected with {len(others)} other tests, whose events are not recorded yet: "
            "run tests/catalog on its own, after the runs that record"
        )
    directory = Path(value)
    files, emitted, records = read_catalog(directory)
    assert files, (
        f"{CATALOG_ENV}={directory} holds no {CATALOG_GLOB} files: no test run recorded its events "
        "(were the unit and integration runs made with the variable set?)"
    )
    assert emitted, f"the {len(files)} catalog files in {directory} record no event at all: {records}"
    documented = {names(row["event"])[0] for row in table("events")}
    poolkit_events = {key.split(":", 1)[1]: key for key in emitted if key.startswith("poolkit.")}
    never = sorted(documented - set(poolkit_events))
    undocumented = sorted(poolkit_events[name] for name in set(poolkit_events) - documented)
    problems = []
    if never:
        problems.append(f"documented in docs/telemetry.md but never emitted by the suite: {', '.join(never)}")
    if undocumented:
        problems.append(
            f"emitted but missing from docs/telemetry.md's events table: {', '.join(undocumented)}"
        )
    assert not problems, "\n".join([*problems, f"({len(files)} catalog files in {directory})"])
