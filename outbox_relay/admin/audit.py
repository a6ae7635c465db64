"""Who did what, when: one admin_actions row per state-changing command."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.queries import QUERIES


def record_admin_action(
    conn: psycopg.Connection,
    action: str,
    actor: str,
    arguments: dict[str, Any],
    result: dict[str, Any],
) -> None:
    """Written in the transaction of the change it describes, or after a batched one."""
    conn.execute(
        QUERIES["record_admin_action"],
        {
            "action": action,
            "actor": actor,
            "arguments": Jsonb(arguments, dumps=_dumps),
            "result": Jsonb(result, dumps=_dumps),
        },
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
