"""From a validated request (SendMailSchema's output) to a mail ready to store.

Used by every source of mail (single, batch, campaign trigger, CDP event), so
the sender-domain rule and the stored shape are the same for all of them.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from ingest_api.accept import NewMail
from ingest_api.auth import Tenant


def _mailbox(mailbox: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if mailbox is None else {"name": mailbox["name"], "email": mailbox["email"]}


def stored_request(data: dict[str, Any]) -> dict[str, Any]:
    """The request as the worker will read it (without the scheduling fields)."""
    return {
        "from": _mailbox(data["sender"]),
        "to": [_mailbox(m) for m in data["to"]],
        "cc": [_mailbox(m) for m in data["cc"]],
        "bcc": [_mailbox(m) for m in data["bcc"]],
        "reply_to": _mailbox(data["reply_to"]),
        "subject": data["subject"],
        "text": data["text"],
        "html": data["html"],
        "headers": data["headers"],
        "attachments": data["attachments"],
        # Honoured by the worker for stream "transactional" only (mail_worker.suppression).
        "bypass_unsubscribes": data.get("bypass_unsubscribes", False),
    }


def field_errors(error: ValidationError) -> dict[str, Any]:
    """marshmallow's messages as ``{field: [...]}``."""
    messages = error.messages
    return messages if isinstance(messages, dict) else {"_schema": messages}


def check_sender(data: dict[str, Any], tenant: Tenant) -> None:
    """No open relay: ``from`` must use one of the tenant's sender domains."""
    domain = data["sender"]["domain"]
    if domain not in tenant.sender_domains:
        raise ValidationError({"from": [f"{domain} is not a sender domain of this tenant"]})


def new_mail(
    data: dict[str, Any],
    tenant: Tenant,
    *,
    source: str = "api",
    campaign_key: str | None = None,
    stream: str | None = None,
) -> NewMail:
    """Check the sender and build the mail; raises ValidationError naming the field."""
    check_sender(data, tenant)
    return NewMail(
        request=stored_request(data),
        stream=stream or data["stream"],
        source=source,
        send_at=data["send_at"],
        expires_at=data["expires_at"],
        tags=tuple(data["tags"]),
        metadata=data["metadata"],
        campaign_key=campaign_key,
    )
