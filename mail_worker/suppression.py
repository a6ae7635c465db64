"""The suppression list in the send step: who is not sent to, who bounced, and the
one-click unsubscribe link of campaign mails.

Before SMTP, :func:`screen` drops the envelope recipients the tenant suppresses
(one query per tenant of a batch). Unsubscribes are skipped for a transactional mail whose request
says ``bypass_unsubscribes``; hard bounces and manual entries never are. After
SMTP, the send step (:mod:`mail_worker.deliver`) adds every recipient refused with
a 5xx, in the transaction that records the outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mail_worker.compose import envelope_recipients
from shared import unsubscribe_tokens
from shared.store import Conn, suppressions
from shared.store.mails import PickedMail
from shared.streams import Stream
from shared.unsubscribe_tokens import UnsubscribeSecretMissing

BYPASSABLE_REASONS = frozenset({"unsubscribe"})


@dataclass(frozen=True)
class Screened:
    """The envelope recipients still to send to, and those suppressed (with why)."""

    recipients: list[str]
    suppressed: list[dict[str, str]]


def bypasses_unsubscribes(mail: PickedMail) -> bool:
    """Only a transactional mail may ask to reach addresses that unsubscribed."""
    return mail.stream is Stream.TRANSACTIONAL and mail.request.get("bypass_unsubscribes") is True


def screen(conn: Conn, picked: Sequence[PickedMail]) -> dict[uuid.UUID, Screened]:
    """Split each mail's envelope recipients by its tenant's suppression list: one query
    per tenant of the batch."""
    by_tenant: dict[uuid.UUID, set[str]] = {}
    for mail in picked:
        emails = by_tenant.setdefault(mail.tenant_id, set())
        emails.update(r.lower() for r in envelope_recipients(mail.request))
    reasons = {
        tenant_id: suppressions.suppression_reasons(conn, tenant_id, emails)
        for tenant_id, emails in by_tenant.items()
    }
    return {mail.id: _split(mail, reasons[mail.tenant_id]) for mail in picked}


def _split(mail: PickedMail, reasons: dict[str, str]) -> Screened:
    recipients = envelope_recipients(mail.request)
    if bypasses_unsubscribes(mail):
        reasons = {email: r for email, r in reasons.items() if r not in BYPASSABLE_REASONS}
    keep = [r for r in recipients if r.lower() not in reasons]
    suppressed = [{"email": r, "reason": reasons[r.lower()]} for r in recipients if r not in keep]
    return Screened(keep, suppressed)


def hard_bounces(refused: dict[str, str]) -> dict[str, str]:
    """The refused recipients whose reply was permanent (5xx), lower-cased."""
    return {email.lower(): reply for email, reply in refused.items() if reply.startswith("5")}


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
    if mail.stream is not Stream.CAMPAIGN:
        return None
    if links is None or not links.secret:
        raise UnsubscribeSecretMissing()
    first: dict[str, Any] = mail.request["to"][0]
    return links.url(mail, str(first["email"]))
