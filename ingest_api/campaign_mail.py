"""From a stored campaign, one recipient and their data to a validated mail.

Used by the trigger, the preview and CDP events, so a campaign mail is rendered
and checked the same way whatever started it: the rendered fields go through
``SendMailSchema`` (every limit and header-injection rule of ``POST /v1/mails``)
and :func:`~ingest_api.new_mail.new_mail` (the sender-domain rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from typing import Any

from marshmallow import ValidationError

from ingest_api.accept import NewMail
from ingest_api.auth import Tenant
from ingest_api.new_mail import check_sender, field_errors, new_mail
from ingest_api.render import BudgetExhausted, RenderBudget, RenderError, render_campaign
from ingest_api.schemas.fields import Mailbox
from ingest_api.schemas.mail import SendMailSchema

CAMPAIGN_STREAM = "campaign"
# Options given once per request (trigger) rather than per recipient.
REQUEST_LEVEL_FIELDS = frozenset({"send_at", "expires_at", "ttl_seconds", "tags", "metadata"})

_mail_schema = SendMailSchema()


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mailbox_object(self) -> dict[str, Any]:
        """The recipient as the ``to`` of a mail: an object, so that the name is taken
        exactly as given and any address (a non-ASCII local part too) is allowed."""
        return {"email": self.email, "name": self.name}

    @property
    def mailbox(self) -> str:
        """``Name <address>`` for display (the preview), quoted so that it parses back
        to the same name and address; only for a recipient already validated."""
        if not self.name:
            return self.email
        username, _at, domain = self.email.rpartition("@")
        return str(Address(display_name=self.name, username=username, domain=domain))


def template_context(data: Mapping[str, Any], recipient: Recipient) -> dict[str, Any]:
    """The variables a template sees: *data*, then the recipient's data over it, and
    ``recipient`` (``email``, ``name``), which no data key can replace."""
    return {
        **data,
        **recipient.data,
        "recipient": {"email": recipient.email, "name": recipient.name},
    }


def rendered_fields(
    campaign: Mapping[str, Any], recipient: Recipient, context: Mapping[str, Any],
    budget: RenderBudget,
) -> dict[str, Any]:  # fmt: skip
    """The campaign rendered for one recipient, shaped like a ``POST /v1/mails`` body.

    Raises ValidationError naming the template that failed; BudgetExhausted
    (a RenderError) when the request's rendering budget is spent.
    """
    try:
        rendered = render_campaign(campaign, context, budget)
    except BudgetExhausted:
        raise
    except RenderError as exc:
        raise ValidationError({exc.field: [exc.message]}) from None
    body: dict[str, Any] = {
        "from": rendered["from"],
        "to": [recipient.mailbox_object],
        "subject": rendered["subject"],
        "headers": rendered["headers"],
    }
    for optional in ("text", "html", "reply_to"):
        if optional in rendered:
            body[optional] = rendered[optional]
    return body


def _recipient_errors(error: ValidationError) -> dict[str, Any]:
    """SendMailSchema's ``to`` is the recipient's ``email`` and ``name`` here."""
    errors: dict[str, Any] = {}
    for key, value in field_errors(error).items():
        if key != "to":
            errors[key] = value
            continue
        # {"0": {"email": [...]}} or {"0": {"name": [...]}} from the object form of the
        # only mailbox of "to", or a list of messages about the whole list.
        only = value.get(0, value) if isinstance(value, dict) else value
        if isinstance(only, dict):
            errors.update(only)
        else:
            errors["email"] = only
    return errors


def campaign_mail(
    campaign: Mapping[str, Any],
    rendered: Mapping[str, Any],
    tenant: Tenant,
    *,
    source: str,
    options: Mapping[str, Any] | None = None,
) -> NewMail:
    """Validate a rendered mail (:func:`rendered_fields`) and build it (stream "campaign").

    *options* are further ``POST /v1/mails`` fields (send_at, tags, metadata, ...);
    the campaign's tags come first. Raises ValidationError with field errors,
    ``email`` naming the recipient's address.
    """
    extra = dict(options or {})
    extra["tags"] = list(dict.fromkeys([*campaign.get("tags", []), *extra.get("tags", [])]))
    try:
        return new_mail(
            _mail_schema.load({**rendered, **extra, "stream": CAMPAIGN_STREAM}),
            tenant,
            source=source,
            campaign_key=campaign["key"],
            stream=CAMPAIGN_STREAM,
        )
    except ValidationError as exc:
        raise ValidationError(_recipient_errors(exc)) from None


def check_fixed_addresses(campaign: Mapping[str, Any], tenant: Tenant) -> None:
    """At create/update time: a ``from`` or ``reply_to`` without template syntax can be
    checked now (address syntax, sender domain) instead of failing every trigger."""
    errors: dict[str, list[str]] = {}
    for name in ("from", "reply_to"):
        value = campaign.get(name)
        if value is None or "{" in value:
            continue
        try:
            mailbox = Mailbox().deserialize(value)
            if name == "from":
                check_sender({"sender": mailbox}, tenant)
        except ValidationError as exc:
            messages = exc.messages
            errors[name] = messages["from"] if isinstance(messages, dict) else list(messages)
    if errors:
        raise ValidationError(errors)
