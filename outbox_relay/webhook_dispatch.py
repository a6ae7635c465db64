"""The webhook round: claim due webhook deliveries, publish them, lease them.

The same pattern as :mod:`outbox_relay.dispatch`, over ``webhook_deliveries``
(their own outbox, filled by a trigger in the transaction that records each
mail event): the claim (``FOR UPDATE SKIP LOCKED``) and the lease share one
transaction, so a relay killed before COMMIT leaves the rows due at once, and a
published row becomes due again after the visibility timeout (doubling with each
publish no worker attempted) unless a worker records an outcome first. The
worker's compare-and-set allows one attempt per publish, so a duplicate message
sends nothing.

Retries after a failed attempt are the worker's: it makes the row due again after
a backoff. The relay only gives up on a delivery whose webhook was deleted (after
the event's transaction had read it), or one past the retry window whose last
publish no worker attempted (nobody consumes the webhook queue).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg

from outbox_relay.publish import Publisher, PublishError, TaskMessage
from shared.config import Settings
from shared.queries import QUERIES

log = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 3600.0


@dataclass(frozen=True)
class WebhookPolicy:
    batch_size: int
    visibility_timeout: float
    retry_hours: float = 24.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            batch_size=settings.relay_batch_size,
            visibility_timeout=settings.relay_visibility_timeout,
            retry_hours=settings.webhook_retry_hours,
        )


@dataclass(frozen=True)
class WebhookRoundResult:
    claimed: int
    published: int
    abandoned: int = 0
    publish_seconds: float = 0.0
    error: PublishError | None = None


def webhook_round(
    conn: psycopg.Connection, publisher: Publisher, policy: WebhookPolicy
) -> WebhookRoundResult:
    with conn.transaction():
        rows = conn.execute(
            QUERIES["claim_due_webhook_deliveries"],
            {
                "batch_size": policy.batch_size,
                "retry_seconds": policy.retry_hours * 3600,
                "window": f"{policy.retry_hours:g} hours",
            },
        ).fetchall()
        abandoned = [(row[0], row[1]) for row in rows if row[1]]
        to_publish = [row[0] for row in rows if not row[1]]
        if abandoned:
            conn.execute(
                QUERIES["abandon_webhook_deliveries"],
                {
                    "ids": [row_id for row_id, _ in abandoned],
                    "reasons": [reason for _, reason in abandoned],
                },
            )
            for row_id, reason in abandoned:
                log.warning(
                    "webhook delivery given up",
                    extra={"delivery_id": str(row_id), "reason": reason},
                )
        started = time.perf_counter()
        try:
            publisher.publish([TaskMessage.deliver_webhook(row_id) for row_id in to_publish])
        except PublishError as exc:
            # Nothing is leased: the rows stay due. Abandoned rows still commit.
            return WebhookRoundResult(len(rows), 0, len(abandoned), error=exc)
        elapsed = time.perf_counter() - started
        if to_publish:
            conn.execute(
                QUERIES["lease_webhook_deliveries"],
                {
                    "ids": to_publish,
                    "visibility_timeout": policy.visibility_timeout,
                    "max_lease": MAX_LEASE_SECONDS,
                },
            )
    return WebhookRoundResult(len(rows), len(to_publish), len(abandoned), elapsed)
