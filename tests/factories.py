"""Mails written the way the API writes them, for tests that start further down the pipe."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared.store.mails import NewMail, accept_mails


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
    tags: tuple[str, ...] = (),
    **overrides: Any,
) -> uuid.UUID:
    """One mail through the API's own ingest statement; *overrides* change the request."""
    mail = NewMail(
        stored_request(**overrides),
        stream=stream,
        send_at=send_at,
        expires_at=expires_at,
        tags=tags,
    )
    accept_mails(conn, tenant_id, [mail], request_id="test")
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


@contextmanager
def state_machine_off(conn: psycopg.Connection) -> Iterator[None]:
    """Lift the database's transition guard for one transaction (test set-up only).

    The guard is a trigger (migration 0010); disabling it is DDL, so it holds only
    inside this transaction and only on the test's own database.
    """
    with conn.transaction():
        conn.execute("ALTER TABLE mails DISABLE TRIGGER mails_transitions")
        yield
        conn.execute("ALTER TABLE mails ENABLE TRIGGER mails_transitions")


def put_in_state(
    conn: psycopg.Connection, mail_id: uuid.UUID, status: str, *, age: str | None = None
) -> None:
    """Move a mail straight to *status* the way the pipeline leaves it there (test set-up only).

    Final and in-hand statuses lose the outbox row; queued and retrying keep it,
    leased into the future. *age* (an interval like ``'3 hours'``) backdates the mail.
    """
    with state_machine_off(conn):
        conn.execute(
            "UPDATE mails SET status = %s, updated_at = now(),"
            " last_error = CASE WHEN %s IN ('failed', 'dead') THEN 'test: ' || %s END"
            " WHERE id = %s",
            (status, status, status, mail_id),
        )
        if status in ("queued", "retrying"):
            conn.execute(
                "UPDATE outbox SET dispatch_count = 1, available_at = now() + interval '1 hour'"
                " WHERE mail_id = %s",
                (mail_id,),
            )
        elif status not in ("accepted", "scheduled"):
            conn.execute("DELETE FROM outbox WHERE mail_id = %s", (mail_id,))
        if status != "accepted":
            conn.execute(
                "INSERT INTO mail_events (mail_id, kind) VALUES (%s, %s)", (mail_id, status)
            )
        if age is not None:
            conn.execute(
                "UPDATE mails SET created_at = now() - %s::interval,"
                " updated_at = now() - %s::interval WHERE id = %s",
                (age, age, mail_id),
            )
            conn.execute(
                "UPDATE outbox SET created_at = now() - %s::interval WHERE mail_id = %s",
                (age, mail_id),
            )


ALL_STATUSES = (
    "scheduled",
    "accepted",
    "queued",
    "sending",
    "sent",
    "retrying",
    "failed",
    "dead",
    "expired",
    "cancelled",
    "suppressed",
    "discarded",
)


def one_mail_in_every_state(
    conn: psycopg.Connection, tenant_id: uuid.UUID, *, age: str | None = None
) -> dict[str, uuid.UUID]:
    """A mail per status, for commands that must treat each state right."""
    mails: dict[str, uuid.UUID] = {}
    for status in ALL_STATUSES:
        send_at = datetime.now(UTC) + timedelta(days=1) if status == "scheduled" else None
        mail_id = insert_mail(conn, tenant_id, send_at=send_at, subject=f"in state {status}")
        put_in_state(conn, mail_id, status, age=age)
        mails[status] = mail_id
    return mails
