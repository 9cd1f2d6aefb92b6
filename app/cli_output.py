"""How ``hubctl`` shows the admin API's answers: a table for a person at a terminal, JSON for
scripts (standard output not a terminal, or ``--json``), as kubectl-style tools do."""

from __future__ import annotations

import json
from typing import Any

MAX_CELL = 60


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    # One line per row: a value holding a newline or a control character must not break it.
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned columns under upper-case headers, columns in first-seen order."""
    if not rows:
        return "(none)"
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(w) for column, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def render(document: Any) -> str:
    """A readable form of an API answer: a list of records as a table; an object holding one
    list of records (a page) as that table and its other fields below; any other object as
    ``key: value`` lines."""
    if isinstance(document, list) and all(isinstance(row, dict) for row in document):
        return table(document)
    if isinstance(document, dict):
        lists = [key for key, value in document.items()
                 if isinstance(value, list) and all(isinstance(row, dict) for row in value)]
        if len(lists) == 1:
            rest = {k: v for k, v in document.items() if k != lists[0]}
            tail = "\n".join(f"{key}: {_cell(value)}" for key, value in rest.items())
            return table(document[lists[0]]) + (f"\n\n{tail}" if tail else "")
        width = max((len(key) for key in document), default=0)
        return "\n".join(f"{key.ljust(width)}  {_cell(value)}" for key, value in document.items())
    return _cell(document)


def show(document: Any, *, as_json: bool) -> str:
    return json.dumps(document, indent=2) if as_json else render(document)
