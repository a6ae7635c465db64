"""Mails written the way the API writes them, for tests that start further down the pipe."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from ingest_api.accept import IngestTransaction, NewMail


def stored_request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "from": {"name": "Alice", "email": "alice@example.com"},
        "to": [{"name": "Bob", "email": "bob@example.org"}],
        "cc": [],
        "bcc": [],
        "reply_to": None,
        "subject": "Hello",
        "text": "Hi Bob",
        "html": "<p>Hi Bob</p>",
        "headers": {},
        "attachments": [],
    }
    request.update(overrides)
    return request


def insert_mail(
    conn: psycopg.Connection,
    tenant_id: uuid.UUID,
    *,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    stream: str = "transactional",
    **overrides: Any,
) -> uuid.UUID:
    """One mail through the API's own ingest statement."""
    mail = NewMail(
        stored_request(**overrides), stream=stream, send_at=send_at, expires_at=expires_at
    )
    IngestTransaction(conn, tenant_id, "test", None).add_mails([mail])  # type: ignore[arg-type]
    return mail.id


def status_of(conn: psycopg.Connection, mail_id: uuid.UUID) -> str:
    row = conn.execute("SELECT status FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None
    return str(row[0])


def event_kinds(conn: psycopg.Connection, mail_id: uuid.UUID) -> list[str]:
    rows = conn.execute(
        "SELECT kind FROM mail_events WHERE mail_id = %s ORDER BY id", (mail_id,)
    ).fetchall()
    return [row[0] for row in rows]
