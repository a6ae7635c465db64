"""Read-only views of mails for operators: a filtered list and one mail with its history."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox_relay.admin.filters import MailFilter
from shared.queries import QUERIES


def list_mails(
    conn: psycopg.Connection, mail_filter: MailFilter, limit: int
) -> list[dict[str, Any]]:
    """Newest first, across tenants."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(QUERIES["admin_list_mails"], {**mail_filter.params(), "limit": limit})
        return cursor.fetchall()


def mail_detail(conn: psycopg.Connection, mail_id: uuid.UUID) -> dict[str, Any] | None:
    """The mail, its outbox row if it has one, and its whole event history, oldest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        mail = cursor.execute(QUERIES["admin_get_mail"], {"mail_id": mail_id}).fetchone()
        if mail is None:
            return None
        events = cursor.execute(QUERIES["list_mail_events"], {"mail_id": mail_id}).fetchall()
    queue = mail.pop("outbox_queue")
    available_at = mail.pop("outbox_available_at")
    dispatch_count = mail.pop("outbox_dispatch_count")
    outbox = (
        None
        if queue is None
        else {"queue": queue, "available_at": available_at, "dispatch_count": dispatch_count}
    )
    return {**mail, "outbox": outbox, "events": events}
