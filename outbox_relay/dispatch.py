"""One relay round: claim due outbox rows, publish them, record what was published.

The claim (``FOR UPDATE SKIP LOCKED``) and the record of the publish share one
transaction, so rows stay locked against other relays while they are published
and a relay killed before COMMIT leaves them due again at once. The worst case
of a crash is a second publish of the same mail, which the worker's
compare-and-set turns into a no-op.

A published row is leased, not deleted: it becomes due again after the
visibility timeout (doubling with each dispatch) unless a worker picks the mail
up first, which deletes the row. So a message the broker accepted and then lost
is published again, with a ``redispatched`` event. Scheduled mails wait with
``available_at = send_at``; mails past ``expires_at`` become ``expired`` here,
and rows out of dispatch attempts or age become ``dead``, instead of being
published.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox_relay.publish import Publisher, PublishError, TaskMessage
from shared.config import Settings
from shared.queries import QUERIES
from shared.queues import QUEUE_PRIORITY
from shared.states import MailStatus, statuses_that_may_become

log = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 3600.0


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int
    visibility_timeout: float
    max_dispatches: int = 8
    max_age: float = 86400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            batch_size=settings.relay_batch_size,
            visibility_timeout=settings.relay_visibility_timeout,
            max_dispatches=settings.relay_max_dispatches,
            max_age=settings.relay_max_age,
        )


@dataclass(frozen=True)
class RoundResult:
    claimed: int
    published: int
    redispatched: int = 0
    expired: int = 0
    dead: int = 0
    publish_seconds: float = 0.0
    error: PublishError | None = None


@dataclass(frozen=True)
class Pauses:
    """What operators hold in the outbox (relay_pauses), as the claim's parameters."""

    everything: bool = False
    streams: tuple[str, ...] = ()
    tenants: tuple[uuid.UUID, ...] = ()
    pairs: tuple[str, ...] = ()  # "stream/tenant id"

    @classmethod
    def load(cls, conn: psycopg.Connection) -> Pauses:
        scopes = conn.execute(QUERIES["paused_scopes"]).fetchall()
        return cls(
            everything=any(stream is None and tenant is None for stream, tenant in scopes),
            streams=tuple(stream for stream, tenant in scopes if tenant is None and stream),
            tenants=tuple(tenant for stream, tenant in scopes if stream is None and tenant),
            pairs=tuple(f"{stream}/{tenant}" for stream, tenant in scopes if stream and tenant),
        )

    def params(self) -> dict[str, Any]:
        return {
            "pause_all": self.everything,
            "paused_streams": list(self.streams),
            "paused_tenants": list(self.tenants),
            "paused_pairs": list(self.pairs),
        }


def _claim(conn: psycopg.Connection, policy: DispatchPolicy) -> list[tuple[Any, ...]]:
    """Fill the batch queue by queue, transactional first: a campaign burst waits."""
    rows: list[tuple[Any, ...]] = []
    pauses = Pauses.load(conn).params()  # every round: a pause holds from the next poll on
    for queue in QUEUE_PRIORITY:
        wanted = policy.batch_size - len(rows)
        if wanted <= 0:
            break
        params = {
            "queue": queue,
            "batch_size": wanted,
            "max_dispatches": policy.max_dispatches,
            "max_age": policy.max_age,
            **pauses,
        }
        rows += conn.execute(QUERIES["claim_due_outbox"], params).fetchall()
    return rows


def _expire(conn: psycopg.Connection, mail_ids: list[Any]) -> None:
    conn.execute(
        QUERIES["expire_mails"],
        {
            "mail_ids": mail_ids,
            "from_statuses": statuses_that_may_become(MailStatus.EXPIRED),
            "by": "relay",
        },
    )


def _bury(conn: psycopg.Connection, dead: list[tuple[Any, str]]) -> None:
    conn.execute(
        QUERIES["bury_mails"],
        {
            "mail_ids": [mail_id for mail_id, _ in dead],
            "reasons": [reason for _, reason in dead],
            "from_statuses": statuses_that_may_become(MailStatus.DEAD),
        },
    )
    for mail_id, reason in dead:
        log.error("mail is dead", extra={"mail_id": str(mail_id), "reason": reason})


def dispatch_round(
    conn: psycopg.Connection, publisher: Publisher, policy: DispatchPolicy
) -> RoundResult:
    with conn.transaction():
        rows = _claim(conn, policy)
        expired = [row[1] for row in rows if row[4]]
        dead = [(row[1], row[5]) for row in rows if not row[4] and row[5]]
        to_publish = [row for row in rows if not row[4] and not row[5]]
        if expired:
            _expire(conn, expired)
        if dead:
            _bury(conn, dead)
        started = time.perf_counter()
        try:
            publisher.publish([TaskMessage.send_mail(row[1], row[2]) for row in to_publish])
        except PublishError as exc:
            # Nothing is recorded as published; expiries and deaths still commit.
            return RoundResult(len(rows), 0, 0, len(expired), len(dead), error=exc)
        elapsed = time.perf_counter() - started
        if to_publish:
            conn.execute(
                QUERIES["record_published"],
                {
                    "outbox_ids": [row[0] for row in to_publish],
                    "visibility_timeout": policy.visibility_timeout,
                    "max_lease": MAX_LEASE_SECONDS,
                },
            )
    redispatched = sum(1 for row in to_publish if row[3] > 0)
    return RoundResult(len(rows), len(to_publish), redispatched, len(expired), len(dead), elapsed)
