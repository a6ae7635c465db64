"""Every source of mail becomes a :class:`~shared.store.mails.NewMail` here.

A ``POST /v1/mails`` body (single or batch item), a campaign rendered for one
recipient (trigger, preview) and a CDP event's workflows all go through
:func:`new_mail`, so the sender-domain rule and the stored shape are the same for
all of them; a campaign's rendered fields also go through ``SendMailSchema`` (every
limit and header-injection rule of ``POST /v1/mails``). Nothing here touches the
database or answers HTTP: errors are marshmallow ValidationErrors naming the field.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from typing import Any

from marshmallow import ValidationError

from ingest_api.render import BudgetExhausted, RenderBudget, RenderError, render_campaign
from ingest_api.schemas.cdp_event import TRACK
from ingest_api.schemas.fields import Mailbox
from ingest_api.schemas.mail import SendMailSchema
from shared.store.campaigns import CampaignTemplates, WorkflowMatch
from shared.store.mails import NewMail
from shared.store.tenants import Tenant
from shared.streams import Stream

log = logging.getLogger(__name__)

# ----- a POST /v1/mails body -----


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
    stream: Stream | None = None,
) -> NewMail:
    """Check the sender and build the mail; raises ValidationError naming the field."""
    check_sender(data, tenant)
    return NewMail(
        request=stored_request(data),
        stream=stream or Stream(data["stream"]),
        source=source,
        send_at=data["send_at"],
        expires_at=data["expires_at"],
        tags=tuple(data["tags"]),
        metadata=data["metadata"],
        campaign_key=campaign_key,
    )


# ----- a campaign rendered for one recipient -----

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
    campaign: CampaignTemplates, recipient: Recipient, context: Mapping[str, Any],
    budget: RenderBudget,
) -> dict[str, Any]:  # fmt: skip
    """The campaign rendered for one recipient, shaped like a ``POST /v1/mails`` body.

    Raises ValidationError naming the template that failed; BudgetExhausted
    (a RenderError) when the request's rendering budget is spent.
    """
    try:
        rendered = render_campaign(campaign.fields(), context, budget)
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
    campaign: CampaignTemplates,
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
    extra["tags"] = list(dict.fromkeys([*campaign.tags, *extra.get("tags", [])]))
    try:
        return new_mail(
            _mail_schema.load({**rendered, **extra, "stream": Stream.CAMPAIGN.value}),
            tenant,
            source=source,
            campaign_key=campaign.key,
            stream=Stream.CAMPAIGN,
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


# ----- a CDP event's workflows -----
#
# A workflow matches a ``track`` event by name and by ``property_filters`` (each
# must equal the event's top-level property; jsonb containment in SQL, filters
# being scalars). The recipient is ``context.traits.email``, else
# ``properties.email``; templates see the traits with the event's properties
# over them (the event is more specific than the profile), plus ``recipient``.
#
# A rule that cannot produce a mail for this event (a variable its template
# needs is missing, the rendered mail is invalid, there is no email) does not
# fail the event: the event is stored anyway, the other rules' mails are
# created, and the failure is reported in the answer, which is stored with the
# event. The CDP would otherwise retry, or drop, an event that can never succeed.

CDP_RENDER_SECONDS = 2.0  # for all rules one event triggers
CDP_MAX_RENDERED_CHARS = 5_000_000
NO_EMAIL = "the event has no context.traits.email or properties.email"


@dataclass
class WorkflowMails:
    """The mails an event creates and the answer (stored with the event)."""

    mails: list[NewMail] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    ignored: str | None = None

    def body(self, event_id: uuid.UUID, message_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": str(event_id),
            "message_id": message_id,
            "mails": self.created,
            "failed": self.failed,
            "accepted": len(self.created),
        }
        if self.ignored is not None:
            body["ignored"] = self.ignored
        return body


def event_object(value: Any) -> dict[str, Any]:
    """An event's member that should be an object (``properties``, ``context``), or {}."""
    return value if isinstance(value, dict) else {}


def triggers_workflows(event: Mapping[str, Any]) -> bool:
    """Only ``track`` events trigger workflows (the others are stored, nothing more)."""
    return bool(event["type"] == TRACK)


def _text(*candidates: Any) -> str | None:
    return next((c for c in candidates if isinstance(c, str) and c), None)


def event_recipient(event: Mapping[str, Any]) -> tuple[Recipient | None, dict[str, Any]]:
    """The recipient (None without an email) and the template data of an event."""
    properties = event_object(event.get("properties"))
    traits = event_object(event_object(event.get("context")).get("traits"))
    data = {**traits, **properties}
    email = _text(traits.get("email"), properties.get("email"))
    if email is None:
        return None, data
    return Recipient(email, _text(traits.get("name"), properties.get("name")), {}), data


def workflow_mails(
    event: Mapping[str, Any], matches: Sequence[WorkflowMatch], tenant: Tenant
) -> WorkflowMails:
    """Render the mails of the workflows *event* matched (:func:`triggers_workflows`
    first: *matches* of another event type are not looked at)."""
    outcome = WorkflowMails()
    if not triggers_workflows(event):
        outcome.ignored = "only track events trigger workflows"
        return outcome
    if not matches:
        outcome.ignored = "no workflow matches this event"
        return outcome
    recipient, data = event_recipient(event)
    budget = RenderBudget(CDP_RENDER_SECONDS, CDP_MAX_RENDERED_CHARS)
    for rule in matches:
        _run_rule(
            rule, recipient, data, tenant,
            message_id=event["message_id"], budget=budget, outcome=outcome,
        )  # fmt: skip
    return outcome


def _run_rule(
    rule: WorkflowMatch,
    recipient: Recipient | None,
    data: dict[str, Any],
    tenant: Tenant,
    *,
    message_id: str,
    budget: RenderBudget,
    outcome: WorkflowMails,
) -> None:
    identity = {"workflow_id": str(rule.workflow_id), "campaign": rule.key}
    errors: dict[str, Any]
    try:
        if recipient is None:
            raise ValidationError({"email": [NO_EMAIL]})
        rendered = rendered_fields(rule, recipient, template_context(data, recipient), budget)
        mail = campaign_mail(
            rule,
            rendered,
            tenant,
            source="cdp",
            options={"metadata": {"cdp_message_id": message_id, **identity}},
        )
    except BudgetExhausted as exc:
        errors = {exc.field: [exc.message]}
    except ValidationError as exc:
        errors = field_errors(exc)
    else:
        outcome.mails.append(mail)
        outcome.created.append(
            {"id": str(mail.id), "email": recipient.email, "status": mail.status.value, **identity}
        )
        return
    log.info("workflow failed for a CDP event", extra={**identity, "errors": errors})
    outcome.failed.append({**identity, "errors": errors})
