"""How admin commands print: aligned text tables by default, one JSON document with --json."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import click


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, timedelta | Decimal):
        return value.total_seconds() if isinstance(value, timedelta) else float(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    return value


def echo_json(document: Mapping[str, Any]) -> None:
    click.echo(json.dumps(to_jsonable(document), sort_keys=False))


def cell(value: Any, limit: int | None = 60) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value) or "-"
    text = str(value)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def echo_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, wide: Collection[str] = ()
) -> None:
    """Rows as aligned columns, headed by the column names; *wide* columns are never cut."""
    cells = [
        [cell(row.get(column), None if column in wide else 60) for column in columns]
        for row in rows
    ]
    widths = [
        max([len(column)] + [len(line[index]) for line in cells])
        for index, column in enumerate(columns)
    ]
    click.echo(_line([column.upper() for column in columns], widths))
    for line in cells:
        click.echo(_line(line, widths))


def _line(texts: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(text.ljust(width) for text, width in zip(texts, widths, strict=True)).rstrip()
