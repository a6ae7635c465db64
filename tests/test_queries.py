from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.queries import QUERIES, parse_named_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_blocks_are_split_by_name() -> None:
    text = "-- name: one\n-- first\nSELECT 1;\n\n-- name: two\n-- second\nSELECT 2;\n"
    assert parse_named_blocks(text) == {"one": "SELECT 1", "two": "SELECT 2"}


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_named_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_every_query_the_code_names_exists_and_every_query_is_used() -> None:
    used: set[str] = set()
    for package in ("shared", "ingest_api", "outbox_relay", "mail_worker"):
        for path in (ROOT / package).rglob("*.py"):
            used |= set(re.findall(r'QUERIES\["([a-z_0-9]+)"\]', path.read_text()))
    assert used - QUERIES.keys() == set()
    assert QUERIES.keys() - used == set()
