"""docs/telemetry.md as data, for the tests that hold it to the code, and the suite-wide event
catalog's file format.

The page's tables sit between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers
(``events``, ``spans``, ``attributes``, ``metrics``); :func:`table` returns one as a list of
``{column: cell}`` rows. Cells keep their markdown: names are in backticks (:func:`names`).

The catalog: when ``POOLKIT_EVENT_CATALOG_DIR`` is set, tests/conftest.py records the class of
every event any pool emits during a pytest run and writes it, at the end of that run, to one
``events-<pid>-<random>.json`` file in that directory (one per process that saw events: xdist
workers write their own). ``tests/catalog`` then compares the union with the events table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = [
    "CATALOG_ENV",
    "CATALOG_GLOB",
    "TELEMETRY_DOC",
    "between",
    "catalog_file_name",
    "names",
    "read_catalog",
    "table",
]

TELEMETRY_DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
CATALOG_ENV = "POOLKIT_EVENT_CATALOG_DIR"
CATALOG_GLOB = "events-*.json"
_BACKTICKED = re.compile(r"`([^`]+)`")


def between(name: str, text: str | None = None) -> str:
    """The text between the ``<!-- name:start -->`` and ``<!-- name:end -->`` markers."""
    text = TELEMETRY_DOC.read_text(encoding="utf-8") if text is None else text
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"docs/telemetry.md: markers {start} / {end}"
    return text.split(start, 1)[1].split(end, 1)[0]


def _cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), f"not a table row: {line!r}"
    return [cell.strip() for cell in line[1:-1].split("|")]


def table(name: str) -> list[dict[str, str]]:
    """The rows of the table between the ``name`` markers, as ``{header: cell}``."""
    lines = [line.strip() for line in between(name).strip().splitlines() if line.strip()]
    assert len(lines) >= 2, f"the {name} table is empty"
    header = _cells(lines[0])
    assert set(lines[1]) <= set("|-: "), f"{name}: expected the separator row, got {lines[1]!r}"
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        assert len(cells) == len(header), f"{name}: {len(cells)} cells, not {len(header)}: {line!r}"
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def names(cell: str) -> list[str]:
    """The backticked names of a cell, in order."""
    return _BACKTICKED.findall(cell)


def catalog_file_name(pid: int, token: str) -> str:
    return f"events-{pid}-{token}.json"


def read_catalog(directory: Path) -> tuple[list[Path], Counter[str], list[dict[str, Any]]]:
    """Every catalog file in ``directory``: (files, emitted "module:qualname" -> count, records)."""
    files = sorted(directory.glob(CATALOG_GLOB))
    emitted: Counter[str] = Counter()
    records = []
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        records.append(record)
        emitted.update({str(name): int(n) for name, n in record["events"].items()})
    return files, emitted, records
