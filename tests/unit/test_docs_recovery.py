"""docs/recovery.md agrees with the code: its recovery table is ``poolkit.RECOVERY`` row for
row, and every ``PoolConfig`` field (nested policy fields included) is documented.

The table is found between the ``<!-- recovery-table:start -->`` and ``<!-- recovery-table:end -->``
markers; the configuration reference is the table whose header starts with ``| field | default |``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import poolkit
from poolkit import RECOVERY, Blame, FailureKind, Phase, PoolConfig, RetryRule
from poolkit import _errors as errors_module

DOCS = Path(__file__).resolve().parents[2] / "docs"
RECOVERY_DOC = DOCS / "recovery.md"
START, END = "<!-- recovery-table:start -->", "<!-- recovery-table:end -->"
COLUMNS = ["kind", "error", "what broke", "phases", "retry", "replace worker", "trips breakers", "blame"]
RETRY_WORDS = {"never": RetryRule.NEVER, "if safe": RetryRule.IF_SAFE}
YES_NO = {"yes": True, "no": False}
NO_PHASE = {"—", "any"}
BACKTICKED = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row, stripped (a row starts and ends with ``|``)."""
    assert line.startswith("|") and line.endswith("|"), f"not a table row: {line!r}"
    return [cell.strip() for cell in line[1:-1].split("|")]


def _recovery_rows() -> list[dict[str, str]]:
    """The recovery table's data rows, as {column: cell}."""
    text = RECOVERY_DOC.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "the table markers must appear once each"
    body = text.split(START, 1)[1].split(END, 1)[0]
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    assert _cells(lines[0]) == COLUMNS, f"unexpected header {lines[0]!r}"
    assert set(lines[1]) <= set("|-: "), f"expected the separator row, got {lines[1]!r}"
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), f"row has {len(cells)} cells, not {len(COLUMNS)}: {line!r}"
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _row_for(kind: FailureKind) -> dict[str, str]:
    rows = [row for row in _recovery_rows() if row["kind"] == f"`{kind.value}`"]
    assert len(rows) == 1, f"{kind.value}: {len(rows)} rows in the recovery table"
    return rows[0]


def _config_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every field of ``model`` as a dotted path; nested models contribute their own fields."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _config_paths(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


CONFIG_PATHS = sorted(_config_paths(PoolConfig))


def _config_reference() -> dict[str, str]:
    """The configuration reference table of docs/recovery.md: {field path: default cell}."""
    lines = RECOVERY_DOC.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| field | default |")]
    assert len(starts) == 1, "docs/recovery.md must have one '| field | default |' table"
    table: dict[str, str] = {}
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        field = cells[0].strip("`")
        assert field not in table, f"{field} is listed twice in the configuration reference"
        table[field] = cells[1]
    return table


def _value_at(config: PoolConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_recovery_table_lists_every_failure_kind_exactly_once() -> None:
    """The doc's table has one row per FailureKind, and no row for anything else."""
    kinds = [row["kind"] for row in _recovery_rows()]
    assert len(kinds) == len(set(kinds)), f"duplicate rows: {sorted(kinds)}"
    assert set(kinds) == {f"`{kind.value}`" for kind in FailureKind}
    assert set(RECOVERY) == set(FailureKind), "RECOVERY itself must cover every kind"


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda kind: kind.value)
def test_recovery_table_row_matches_RECOVERY(kind: FailureKind) -> None:
    """Retry rule, worker replacement, breaker accounting and blame in the doc's row are
    exactly what ``poolkit.RECOVERY`` says for that kind."""
    row, recovery = _row_for(kind), RECOVERY[kind]
    assert RETRY_WORDS.get(row["retry"]) is recovery.retry, f"retry: doc {row['retry']!r}"
    assert YES_NO.get(row["replace worker"]) is recovery.replace_worker, "replace worker"
    assert YES_NO.get(row["trips breakers"]) is recovery.trips_breaker, "trips breakers"
    assert row["blame"] in {blame.value for blame in Blame}, f"unknown blame {row['blame']!r}"
    assert Blame(row["blame"]) is recovery.blame, "blame"


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda kind: kind.value)
def test_recovery_table_names_the_error_class_of_each_kind(kind: FailureKind) -> None:
    """The first class named in a row's error column exists and carries that row's kind."""
    names = BACKTICKED.findall(_row_for(kind)["error"])
    assert names, f"{kind.value}: the error column names no class"
    cls = getattr(poolkit, names[0], None) or getattr(errors_module, names[0], None)
    assert isinstance(cls, type) and issubclass(cls, poolkit.PoolError), f"{names[0]} is not a PoolError"
    assert cls.kind is kind


@pytest.mark.parametrize("kind", list(FailureKind), ids=lambda kind: kind.value)
def test_recovery_table_phases_are_real_phases(kind: FailureKind) -> None:
    """The phases column lists Phase names (or says the error has no phase, or any phase)."""
    cell = _row_for(kind)["phases"]
    if cell in NO_PHASE:
        return
    phases = [part.strip() for part in cell.split(",")]
    assert all(name in Phase.__members__ for name in phases), f"{kind.value}: {cell!r}"
    assert len(phases) == len(set(phases))


@pytest.mark.parametrize("path", CONFIG_PATHS)
def test_every_config_field_is_documented(path: str) -> None:
    """Each PoolConfig field, nested ones as ``retry.max_attempts``, appears in backticks in
    docs/recovery.md or another page under docs/."""
    needle = f"`{path}`"
    pages = sorted(DOCS.glob("**/*.md"))
    assert any(needle in page.read_text(encoding="utf-8") for page in pages), f"{needle} is undocumented"


def test_config_reference_lists_every_field_once() -> None:
    """The configuration reference table of docs/recovery.md has one row per PoolConfig field."""
    assert sorted(_config_reference()) == CONFIG_PATHS


@pytest.mark.parametrize("path", CONFIG_PATHS)
def test_config_reference_default_matches_the_model(path: str) -> None:
    """Where the reference gives a default as a Python literal, it is the model's default
    (defaults computed at runtime, such as ``sys.executable``, are described instead)."""
    cell = _config_reference().get(path)
    assert cell is not None, f"{path} is missing from the configuration reference"
    literals = BACKTICKED.findall(cell)
    if not literals:
        pytest.fail(f"{path}: the default column has no backticked value: {cell!r}")
    try:
        documented = ast.literal_eval(literals[0])
    except (ValueError, SyntaxError):
        return  # an expression such as min(os.cpu_count(), 8): described, not a literal
    assert documented == _value_at(PoolConfig(), path), f"{path}: doc says {literals[0]}"
