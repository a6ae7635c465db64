"""The suppression list: who must not get mail from a tenant, and why (hard bounce,
unsubscribe, manual)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, tuple_row
from psycopg.types.json import Jsonb

from shared.queries import QUERIES
from shared.store import Conflict, Conn, NotFound

# ----- the API and the unsubscribe link (owner: the ingest_api helper) -----


@dataclass(frozen=True)
class Suppression:
    """One entry of a tenant's list."""

    email: str  # lower-cased
    reason: str  # hard_bounce, unsubscribe or manual
    detail: dict[str, Any]
    mail_id: uuid.UUID | None
    created_at: datetime


def add_manual_suppression(
    conn: Conn, tenant_id: uuid.UUID, email: str, note: str | None
) -> tuple[Suppression, bool]:
    """Suppress *email* by hand: the new entry and True, or the existing one (any reason,
    left as it is) and False. Conflict if that entry was removed in between: retry."""
    params = {
        "tenant_id": tenant_id,
        "email": email,
        "detail": Jsonb({"note": note} if note else {}),
    }
    with conn.cursor(row_factory=class_row(Suppression)) as cursor:
        created = cursor.execute(QUERIES["add_manual_suppression"], params).fetchone()
        if created is not None:
            return created, True
        existing = cursor.execute(QUERIES["get_suppression"], params).fetchone()
    if existing is None:  # deleted between the two statements
        raise Conflict(email)
    return existing, False


def get_suppression(conn: Conn, tenant_id: uuid.UUID, email: str) -> Suppression:
    """The tenant's entry for *email* (lower-cased); NotFound if it is not suppressed."""
    with conn.cursor(row_factory=class_row(Suppression)) as cursor:
        found = cursor.execute(
            QUERIES["get_suppression"], {"tenant_id": tenant_id, "email": email}
        ).fetchone()
    if found is None:
        raise NotFound(email)
    return found


def list_suppressions(
    conn: Conn, tenant_id: uuid.UUID, *, reason: str | None, after: str | None, limit: int
) -> list[Suppression]:
    """Up to *limit* entries by email after the email *after*, only *reason*'s if given."""
    with conn.cursor(row_factory=class_row(Suppression)) as cursor:
        return cursor.execute(
            QUERIES["list_suppressions"],
            {"tenant_id": tenant_id, "reason": reason, "after": after, "limit": limit},
        ).fetchall()


def delete_suppression(conn: Conn, tenant_id: uuid.UUID, email: str) -> None:
    """Remove the entry, whatever its reason (mail to the address is sent again); NotFound."""
    deleted = conn.execute(
        QUERIES["delete_suppression"], {"tenant_id": tenant_id, "email": email}
    ).fetchone()
    if deleted is None:
        raise NotFound(email)


def record_unsubscribe(
    conn: Conn, tenant_id: uuid.UUID, mail_id: uuid.UUID, email: str, *, request_id: str
) -> None:
    """A one-click unsubscribe from mail *mail_id*: *email* joins the list (an existing
    entry stays as it is) and the mail gets its 'unsubscribed' event, once. Idempotent;
    run it in a transaction."""
    params = {"tenant_id": tenant_id, "mail_id": mail_id}
    conn.execute(
        QUERIES["add_unsubscribe"],
        {**params, "email": email.lower(), "detail": Jsonb({"via": "list-unsubscribe"})},
    )
    conn.execute(
        QUERIES["record_unsubscribed_event"],
        {**params, "detail": Jsonb({"email": email, "request_id": request_id})},
    )


# ----- the send step's screen and hard bounces (owner: the mail_worker helper) -----


def suppression_reasons(conn: Conn, tenant_id: uuid.UUID, emails: Iterable[str]) -> dict[str, str]:
    """Which of *emails* (lower-cased) the tenant suppresses: ``{email: reason}``, one query."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        rows = cursor.execute(
            QUERIES["find_suppressions"], {"tenant_id": tenant_id, "emails": sorted(set(emails))}
        ).fetchall()
    return {email: reason for email, reason in rows}


def add_hard_bounces(
    conn: Conn, tenant_id: uuid.UUID, mail_id: uuid.UUID, replies: Mapping[str, str]
) -> None:
    """Suppress for good each recipient of *replies* (lower-cased email: its 5xx reply),
    over any other reason; call it in the transaction that records the mail's outcome."""
    if not replies:
        return
    conn.execute(
        QUERIES["add_hard_bounces"],
        {
            "tenant_id": tenant_id,
            "mail_id": mail_id,
            "emails": list(replies),
            "replies": list(replies.values()),
        },
    )
