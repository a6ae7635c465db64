"""The suppression list in the send step: who is not sent to, who bounced, and the
one-click unsubscribe link of campaign mails.

Before SMTP, :func:`screen` drops the envelope recipients the tenant suppresses
(one query). Unsubscribes are skipped for a transactional mail whose request
says ``bypass_unsubscribes``; hard bounces and manual entries never are. After
SMTP, :func:`record_hard_bounces` adds every recipient refused with a 5xx, in
the transaction that records the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import DictRow

from mail_worker.compose import envelope_recipients
from mail_worker.pickup import PickedMail
from shared import unsubscribe_tokens
from shared.db import DictPool
from shared.queries import QUERIES
from shared.unsubscribe_tokens import UnsubscribeSecretMissing

TRANSACTIONAL_STREAM, CAMPAIGN_STREAM = "transactional", "campaign"
BYPASSABLE_REASONS = frozenset({"unsubscribe"})


@dataclass(frozen=True)
class Screened:
    """The envelope recipients still to send to, and those suppressed (with why)."""

    recipients: list[str]
    suppressed: list[dict[str, str]]


def bypasses_unsubscribes(mail: PickedMail) -> bool:
    """Only a transactional mail may ask to reach addresses that unsubscribed."""
    return mail.stream == TRANSACTIONAL_STREAM and mail.request.get("bypass_unsubscribes") is True


def screen(pool: DictPool, mail: PickedMail) -> Screened:
    """Split the mail's envelope recipients by the tenant's suppression list."""
    recipients = envelope_recipients(mail.request)
    with pool.connection() as conn:
        rows = conn.execute(
            QUERIES["find_suppressions"],
            {"tenant_id": mail.tenant_id, "emails": sorted({r.lower() for r in recipients})},
        ).fetchall()
    reasons = {row["email"]: row["reason"] for row in rows}
    if bypasses_unsubscribes(mail):
        reasons = {email: r for email, r in reasons.items() if r not in BYPASSABLE_REASONS}
    keep = [r for r in recipients if r.lower() not in reasons]
    suppressed = [{"email": r, "reason": reasons[r.lower()]} for r in recipients if r not in keep]
    return Screened(keep, suppressed)


def hard_bounces(refused: dict[str, str]) -> dict[str, str]:
    """The refused recipients whose reply was permanent (5xx), lower-cased."""
    return {email.lower(): reply for email, reply in refused.items() if reply.startswith("5")}


def record_hard_bounces(
    conn: psycopg.Connection[DictRow], mail: PickedMail, refused: dict[str, str]
) -> None:
    """Suppress every recipient refused with a 5xx (call inside the outcome's transaction)."""
    bounces = hard_bounces(refused)
    if not bounces:
        return
    conn.execute(
        QUERIES["add_hard_bounces"],
        {
            "tenant_id": mail.tenant_id,
            "mail_id": mail.id,
            "emails": list(bounces),
            "replies": list(bounces.values()),
        },
    )


@dataclass(frozen=True)
class UnsubscribeLinks:
    """Where one-click unsubscribe links point (the API's public URL) and their key."""

    public_url: str
    secret: str

    def url(self, mail: PickedMail, email: str) -> str:
        token = unsubscribe_tokens.sign(self.secret, mail.tenant_id, mail.id, email)
        return f"{self.public_url.rstrip('/')}/v1/unsubscribe/{token}"


def list_unsubscribe_url(links: UnsubscribeLinks | None, mail: PickedMail) -> str | None:
    """The RFC 8058 link of a campaign mail (for its first ``to``); None for other mail.

    Raises UnsubscribeSecretMissing for a campaign mail when no secret is configured:
    a campaign mail is never sent without a working unsubscribe link.
    """
    if mail.stream != CAMPAIGN_STREAM:
        return None
    if links is None or not links.secret:
        raise UnsubscribeSecretMissing()
    first: dict[str, Any] = mail.request["to"][0]
    return links.url(mail, str(first["email"]))
