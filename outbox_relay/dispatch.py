"""One relay round: claim due outbox rows, publish them, record what was published.

The claim (``FOR UPDATE SKIP LOCKED``) and the record of the publish share one
transaction, so rows stay locked against other relays while they are published
and a relay killed before COMMIT leaves them due again at once. The worst case
of a crash is a second publish of the same mail, which the worker's
compare-and-set turns into a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from outbox_relay.publish import Publisher, PublishError, SendMailMessage
from shared.queries import QUERIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundResult:
    claimed: int
    published: int
    error: PublishError | None = None


def dispatch_round(
    conn: psycopg.Connection, publisher: Publisher, *, batch_size: int, visibility_timeout: float
) -> RoundResult:
    published_ids: list[int] = []
    error: PublishError | None = None
    with conn.transaction():
        rows = conn.execute(QUERIES["claim_due_outbox"], {"batch_size": batch_size}).fetchall()
        for outbox_id, mail_id, queue, dispatch_count in rows:
            try:
                task_id = publisher.publish(SendMailMessage(mail_id, queue))
            except PublishError as exc:
                error = exc  # the rest stay due; what was published is still recorded
                break
            published_ids.append(outbox_id)
            log.debug(
                "published",
                extra={"mail_id": str(mail_id), "task_id": task_id, "dispatch": dispatch_count + 1},
            )
        if published_ids:
            conn.execute(
                QUERIES["record_published"],
                {"outbox_ids": published_ids, "visibility_timeout": visibility_timeout},
            )
    return RoundResult(claimed=len(rows), published=len(published_ids), error=error)
