"""Named SQL blocks from ``shared/sql/*.sql``, loaded once.

Writing SQL in files keeps it readable, reviewable and greppable by name; code
refers to a query as ``QUERIES["claim_due_outbox"]``.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

_BLOCK_START = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_blocks(text: str) -> dict[str, str]:
    """Split a file into ``{name: sql}`` at each ``-- name:`` line."""
    starts = list(_BLOCK_START.finditer(text))
    blocks: dict[str, str] = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        body = "\n".join(
            line for line in text[match.end() : end].splitlines() if not line.startswith("--")
        ).strip()
        name = match.group(1)
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = body.rstrip(";")
    return blocks


def _load_all() -> dict[str, str]:
    queries: dict[str, str] = {}
    for entry in sorted(resources.files("shared").joinpath("sql").iterdir(), key=str):
        if entry.name.endswith(".sql"):
            queries.update(parse_named_blocks(entry.read_text(encoding="utf-8")))
    return queries


QUERIES: Final[dict[str, str]] = _load_all()
