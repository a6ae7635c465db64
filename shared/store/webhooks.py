"""Status webhooks: registrations (API) and their deliveries (enqueued by a trigger on
mail_events, claimed by the relay, posted by the worker)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, scalar_row

from shared.queries import QUERIES
from shared.store import Conflict, Conn, NotFound

# ----- registrations (owner: the ingest_api helper) -----


@dataclass(frozen=True)
class Webhook:
    """A tenant's webhook, as listings show it (never its secret)."""

    id: uuid.UUID
    url: str
    events: list[str]
    created_at: datetime


@dataclass(frozen=True)
class CreatedWebhook(Webhook):
    secret: str  # shown once, in the answer that created it


class TooManyWebhooks(Conflict):
    """The tenant has the most webhooks it may have."""


def create_webhook(
    conn: Conn, tenant_id: uuid.UUID, *, url: str, events: Sequence[str], max_webhooks: int
) -> CreatedWebhook:
    """A new webhook with a fresh signing secret; TooManyWebhooks at *max_webhooks*."""
    with conn.cursor(row_factory=class_row(CreatedWebhook)) as cursor:
        created = cursor.execute(
            QUERIES["insert_webhook"],
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "url": url,
                "events": list(events),
                "secret": secrets.token_hex(32),
                "max_webhooks": max_webhooks,
            },
        ).fetchone()
    if created is None:
        raise TooManyWebhooks(url)
    return created


def list_webhooks(conn: Conn, tenant_id: uuid.UUID) -> list[Webhook]:
    """The tenant's webhooks, oldest first."""
    with conn.cursor(row_factory=class_row(Webhook)) as cursor:
        return cursor.execute(
            QUERIES["list_webhooks_for_tenant"], {"tenant_id": tenant_id}
        ).fetchall()


def delete_webhook(conn: Conn, tenant_id: uuid.UUID, webhook_id: uuid.UUID) -> None:
    """Soft-delete the tenant's webhook (its pending deliveries fail instead of being
    sent); NotFound for any other id."""
    deleted = conn.execute(
        QUERIES["delete_webhook"], {"id": webhook_id, "tenant_id": tenant_id}
    ).fetchone()
    if deleted is None:
        raise NotFound(str(webhook_id))


# ----- claiming deliveries (owner: the outbox_relay helper) -----


@dataclass(frozen=True)
class ClaimedDelivery:
    """A due pending delivery, locked until the round's COMMIT; abandon_reason says why
    the relay gives up on it instead of publishing it."""

    id: uuid.UUID
    abandon_reason: str | None


def claim_due_webhook_deliveries(
    conn: Conn, *, batch_size: int, retry_hours: float
) -> list[ClaimedDelivery]:
    """The relay's claim: due pending deliveries, oldest first, ``FOR UPDATE SKIP LOCKED``."""
    params = {
        "batch_size": batch_size,
        "retry_seconds": retry_hours * 3600,
        "window": f"{retry_hours:g} hours",
    }
    with conn.cursor(row_factory=class_row(ClaimedDelivery)) as cursor:
        return cursor.execute(QUERIES["claim_due_webhook_deliveries"], params).fetchall()


def abandon_webhook_deliveries(conn: Conn, abandoned: list[tuple[uuid.UUID, str]]) -> None:
    """Deliveries (id, reason) the relay gives up on become 'failed' with their reasons."""
    conn.execute(
        QUERIES["abandon_webhook_deliveries"],
        {
            "ids": [delivery_id for delivery_id, _ in abandoned],
            "reasons": [reason for _, reason in abandoned],
        },
    )


def lease_webhook_deliveries(
    conn: Conn, delivery_ids: list[uuid.UUID], *, visibility_timeout: float, max_lease: float
) -> None:
    """Published: due again only if no worker attempts them in time."""
    conn.execute(
        QUERIES["lease_webhook_deliveries"],
        {"ids": delivery_ids, "visibility_timeout": visibility_timeout, "max_lease": max_lease},
    )


# ----- posting deliveries (owner: the mail_worker helper) -----


@dataclass(frozen=True)
class WebhookAttempt:
    """One attempt a worker holds at a delivery: what to POST, where, signed with what."""

    id: uuid.UUID
    attempts: int  # counting this one: it is the attempt's number
    payload: dict[str, Any]
    url: str
    secret: str


def begin_webhook_attempt(
    conn: Conn, delivery_id: uuid.UUID, lease_seconds: float
) -> WebhookAttempt | None:
    """The worker's compare-and-set: at most one attempt per publish, only while the
    delivery is pending and its webhook exists; leased for *lease_seconds*. None: skip it.
    Run it in a transaction."""
    # Waits for a relay still committing this delivery's publish (else the
    # compare-and-set would read the row before that commit and skip it).
    conn.execute(QUERIES["lock_webhook_delivery"], {"id": delivery_id})
    with conn.cursor(row_factory=class_row(WebhookAttempt)) as cursor:
        return cursor.execute(
            QUERIES["begin_webhook_attempt"], {"id": delivery_id, "lease": lease_seconds}
        ).fetchone()


def record_webhook_delivered(
    conn: Conn, delivery_id: uuid.UUID, attempt: int, status_code: int | None
) -> None:
    """A 2xx answer to *attempt*: the delivery is 'delivered'."""
    conn.execute(
        QUERIES["record_webhook_delivered"],
        {"id": delivery_id, "attempt": attempt, "status_code": status_code},
    )


def record_webhook_failure(
    conn: Conn,
    delivery_id: uuid.UUID,
    attempt: int,
    *,
    status_code: int | None,
    error: str | None,
    delay_seconds: float,
    retry_seconds: float,
) -> str | None:
    """*attempt* failed: the delivery is due again after *delay_seconds*, or 'failed' if
    the event is older than *retry_seconds*. Its status after that ('pending' or
    'failed'); None if the attempt is stale (the webhook deleted, or a newer attempt)."""
    with conn.cursor(row_factory=scalar_row) as cursor:
        status: str | None = cursor.execute(
            QUERIES["record_webhook_failure"],
            {
                "id": delivery_id,
                "attempt": attempt,
                "status_code": status_code,
                "error": error,
                "delay": delay_seconds,
                "retry_seconds": retry_seconds,
            },
        ).fetchone()
    return status
