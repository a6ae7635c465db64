"""Pauses: an operator holds a stream, a tenant, or both in the outbox.

They live in the database (relay_pauses) and the claim query skips matching
rows, so every relay honours a pause on its next poll and a restarted relay
cannot forget one. Paused mails keep their outbox rows; nothing is dropped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox_relay.admin.audit import record_admin_action
from shared.queries import QUERIES


@dataclass(frozen=True)
class PauseScope:
    """A stream, a tenant or both; None means any."""

    stream: str | None
    tenant_id: uuid.UUID | None
    tenant_name: str | None = None

    def params(self) -> dict[str, Any]:
        return {"stream": self.stream, "tenant_id": self.tenant_id}

    def describe(self) -> str:
        stream = f"stream {self.stream}" if self.stream else "every stream"
        tenant = f"tenant {self.tenant_name}" if self.tenant_name else "every tenant"
        return f"{stream}, {tenant}"

    def audit_arguments(self) -> dict[str, Any]:
        return {"stream": self.stream, "tenant": self.tenant_name}


def pause(conn: psycopg.Connection, scope: PauseScope, actor: str, reason: str | None) -> bool:
    """True when this call paused the scope, False when it was paused already."""
    with conn.transaction():
        row = conn.execute(
            QUERIES["insert_relay_pause"], {**scope.params(), "actor": actor, "reason": reason}
        ).fetchone()
        if row is not None:
            arguments = {**scope.audit_arguments(), "reason": reason}
            record_admin_action(conn, "pause", actor, arguments, {"paused": True})
    return row is not None


def resume(conn: psycopg.Connection, scope: PauseScope, actor: str) -> dict[str, Any] | None:
    """The lifted pause (who paused, why, since when), or None when the scope was not paused."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        lifted = cursor.execute(QUERIES["delete_relay_pause"], scope.params()).fetchone()
        if lifted is not None:
            record_admin_action(conn, "resume", actor, scope.audit_arguments(), lifted)
    return lifted


def list_pauses(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(QUERIES["list_relay_pauses"]).fetchall()
