"""One relay round: claim due rows, give up on what must be given up, publish the
rest, lease what was published. The same round serves the mail outbox and the status
webhook deliveries (their own outbox, filled by a trigger on mail_events); what
differs is a small strategy, :class:`MailOutbox` or :class:`WebhookDeliveries`.

- The claim: ``shared.store.outbox.claim_due_outbox`` (SQL ``claim_due_outbox``) and
  ``shared.store.webhooks.claim_due_webhook_deliveries``, ``FOR UPDATE SKIP LOCKED``.
- The publish step: :func:`run_round` calls ``Publisher.publish`` (outbox_relay.publish).

The claim and the lease share one transaction, so rows stay locked against other
relays while they are published and a relay killed before COMMIT leaves them due
again at once. The worst case of a crash is a second publish of the same row, which
the worker's compare-and-set turns into a no-op.

A published row is leased, not deleted: it becomes due again after the visibility
timeout (doubling with each publish) unless a worker picks it up first. So a message
the broker accepted and then lost is published again (a mail gets a ``redispatched``
event). Scheduled mails wait with ``available_at = send_at``; mails past
``expires_at`` become ``expired`` here, and rows out of dispatch attempts or age
become ``dead``, instead of being published. A webhook delivery is given up on when
its webhook was deleted, or when it is past the retry window and no worker attempted
its last publish (nobody consumes the webhook queue); retries after a failed attempt
are the worker's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from outbox_relay.publish import Publisher, PublishError, TaskMessage
from shared.config import Settings
from shared.store import Conn
from shared.store import mails as mails_store
from shared.store import outbox as outbox_store
from shared.store import webhooks as webhook_store
from shared.store.outbox import ClaimedOutboxRow
from shared.store.webhooks import ClaimedDelivery
from shared.streams import PUBLISH_ORDER

log = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 3600.0

Row = TypeVar("Row")


@dataclass(frozen=True)
class Triage(Generic[Row]):
    """What the give-up step left to publish, and how many rows it gave up on, by outcome."""

    to_publish: list[Row]
    given_up: Mapping[str, int]


class DueRows(Protocol[Row]):
    """The differences between the two outboxes a round works through."""

    def claim(self, conn: Conn) -> list[Row]: ...

    def give_up(self, conn: Conn, claimed: list[Row]) -> Triage[Row]: ...

    def messages(self, rows: list[Row]) -> list[TaskMessage]: ...

    def lease(self, conn: Conn, published: list[Row]) -> None: ...

    def redispatches(self, published: list[Row]) -> int: ...


@dataclass(frozen=True)
class RoundResult:
    claimed: int
    published: int
    redispatched: int = 0  # published again after a lease ran out (mail only)
    given_up: Mapping[str, int] = field(default_factory=dict)
    publish_seconds: float = 0.0
    error: PublishError | None = None

    @property
    def expired(self) -> int:
        return self.given_up.get("expired", 0)

    @property
    def dead(self) -> int:
        return self.given_up.get("dead", 0)

    @property
    def abandoned(self) -> int:
        return self.given_up.get("abandoned", 0)


def run_round(conn: Conn, publisher: Publisher, due_rows: DueRows[Row]) -> RoundResult:
    """Claim → give up → publish → lease, in one transaction."""
    with conn.transaction():
        claimed = due_rows.claim(conn)
        triage = due_rows.give_up(conn, claimed)
        started = time.perf_counter()
        try:
            publisher.publish(due_rows.messages(triage.to_publish))
        except PublishError as exc:
            # Nothing is leased: the rows stay due. What was given up on still commits.
            return RoundResult(len(claimed), 0, given_up=triage.given_up, error=exc)
        elapsed = time.perf_counter() - started
        if triage.to_publish:
            due_rows.lease(conn, triage.to_publish)
    return RoundResult(
        len(claimed),
        len(triage.to_publish),
        due_rows.redispatches(triage.to_publish),
        triage.given_up,
        elapsed,
    )


# ----- mail: the outbox -----


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int
    visibility_timeout: float
    max_dispatches: int = 8
    max_age: float = 86400.0
    send_batch_size: int = 10  # mails per send_mails message

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            batch_size=settings.relay_batch_size,
            visibility_timeout=settings.relay_visibility_timeout,
            max_dispatches=settings.relay_max_dispatches,
            max_age=settings.relay_max_age,
            send_batch_size=settings.send_batch_size,
        )


@dataclass(frozen=True)
class MailOutbox:
    policy: DispatchPolicy

    def claim(self, conn: Conn) -> list[ClaimedOutboxRow]:
        """Fill the batch queue by queue, transactional first: a campaign burst waits."""
        rows: list[ClaimedOutboxRow] = []
        pauses = outbox_store.load_pauses(conn)
        for stream in PUBLISH_ORDER:
            wanted = self.policy.batch_size - len(rows)
            if wanted <= 0:
                break
            rows += outbox_store.claim_due_outbox(
                conn,
                stream.queue,
                batch_size=wanted,
                max_dispatches=self.policy.max_dispatches,
                max_age=self.policy.max_age,
                pauses=pauses,
            )
        return rows

    def give_up(self, conn: Conn, claimed: list[ClaimedOutboxRow]) -> Triage[ClaimedOutboxRow]:
        expired = [row.mail_id for row in claimed if row.expired]
        dead = [
            (row.mail_id, row.dead_reason) for row in claimed if not row.expired and row.dead_reason
        ]
        if expired:
            mails_store.expire_mails(conn, expired, by="relay")
        if dead:
            outbox_store.bury_mails(conn, dead)
            for mail_id, reason in dead:
                log.error("mail is dead", extra={"mail_id": str(mail_id), "reason": reason})
        to_publish = [row for row in claimed if not row.expired and not row.dead_reason]
        return Triage(to_publish, {"expired": len(expired), "dead": len(dead)})

    def messages(self, rows: list[ClaimedOutboxRow]) -> list[TaskMessage]:
        """A round's mails of each queue, in claim order, in messages of up to
        send_batch_size: one pickup statement and one SMTP connection per message."""
        by_queue: dict[str, list[uuid.UUID]] = {}
        for row in rows:
            by_queue.setdefault(row.queue, []).append(row.mail_id)
        size = self.policy.send_batch_size
        return [
            TaskMessage.send_mails(ids[start : start + size], queue)
            for queue, ids in by_queue.items()
            for start in range(0, len(ids), size)
        ]

    def lease(self, conn: Conn, published: list[ClaimedOutboxRow]) -> None:
        outbox_store.record_published(
            conn,
            [row.id for row in published],
            visibility_timeout=self.policy.visibility_timeout,
            max_lease=MAX_LEASE_SECONDS,
        )

    def redispatches(self, published: list[ClaimedOutboxRow]) -> int:
        return sum(1 for row in published if row.dispatch_count > 0)


def dispatch_round(conn: Conn, publisher: Publisher, policy: DispatchPolicy) -> RoundResult:
    """A round over the mail outbox."""
    return run_round(conn, publisher, MailOutbox(policy))


# ----- status webhooks: webhook_deliveries -----


@dataclass(frozen=True)
class WebhookDispatchPolicy:
    """How the relay publishes webhook deliveries (the worker's WebhookPostPolicy posts them)."""

    batch_size: int
    visibility_timeout: float
    retry_hours: float = 24.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookDispatchPolicy:
        return cls(
            batch_size=settings.relay_batch_size,
            visibility_timeout=settings.relay_visibility_timeout,
            retry_hours=settings.webhook_retry_hours,
        )


@dataclass(frozen=True)
class WebhookDeliveries:
    policy: WebhookDispatchPolicy

    def claim(self, conn: Conn) -> list[ClaimedDelivery]:
        return webhook_store.claim_due_webhook_deliveries(
            conn, batch_size=self.policy.batch_size, retry_hours=self.policy.retry_hours
        )

    def give_up(self, conn: Conn, claimed: list[ClaimedDelivery]) -> Triage[ClaimedDelivery]:
        abandoned: list[tuple[uuid.UUID, str]] = [
            (row.id, row.abandon_reason) for row in claimed if row.abandon_reason
        ]
        if abandoned:
            webhook_store.abandon_webhook_deliveries(conn, abandoned)
            for delivery_id, reason in abandoned:
                log.warning(
                    "webhook delivery given up",
                    extra={"delivery_id": str(delivery_id), "reason": reason},
                )
        to_publish = [row for row in claimed if not row.abandon_reason]
        return Triage(to_publish, {"abandoned": len(abandoned)})

    def messages(self, rows: list[ClaimedDelivery]) -> list[TaskMessage]:
        return [TaskMessage.deliver_webhook(row.id) for row in rows]

    def lease(self, conn: Conn, published: list[ClaimedDelivery]) -> None:
        webhook_store.lease_webhook_deliveries(
            conn,
            [row.id for row in published],
            visibility_timeout=self.policy.visibility_timeout,
            max_lease=MAX_LEASE_SECONDS,
        )

    def redispatches(self, published: list[ClaimedDelivery]) -> int:
        return 0  # not counted for webhook deliveries


def webhook_round(conn: Conn, publisher: Publisher, policy: WebhookDispatchPolicy) -> RoundResult:
    """A round over the status webhook deliveries."""
    return run_round(conn, publisher, WebhookDeliveries(policy))
