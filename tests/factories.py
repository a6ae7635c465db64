"""Mails written the way the API writes them, for tests that start further down the pipe."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.queries import QUERIES


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
    }
    request.update(overrides)
    return request


def insert_mail(conn: psycopg.Connection, tenant_id: uuid.UUID, **overrides: Any) -> uuid.UUID:
    mail_id = uuid.uuid4()
    conn.execute(
        QUERIES["accept_mail"],
        {
            "mail_id": mail_id,
            "tenant_id": tenant_id,
            "stream": "transactional",
            "request": Jsonb(stored_request(**overrides)),
            "queue": "transactional",
            "event_detail": Jsonb({}),
        },
    )
    return mail_id


def status_of(conn: psycopg.Connection, mail_id: uuid.UUID) -> str:
    row = conn.execute("SELECT status FROM mails WHERE id = %s", (mail_id,)).fetchone()
    assert row is not None
    return str(row[0])


def event_kinds(conn: psycopg.Connection, mail_id: uuid.UUID) -> list[str]:
    rows = conn.execute(
        "SELECT kind FROM mail_events WHERE mail_id = %s ORDER BY id", (mail_id,)
    ).fetchall()
    return [row[0] for row in rows]
