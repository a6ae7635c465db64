"""What a CDP event triggers: the matching workflows' campaigns, rendered for its user.

A workflow matches a ``track`` event by name and by ``property_filters`` (each
must equal the event's top-level property; jsonb containment in SQL, filters
being scalars). The recipient is ``context.traits.email``, else
``properties.email``; templates see the traits with the event's properties
over them (the event is more specific than the profile), plus ``recipient``.

A rule that cannot produce a mail for this event (a variable its template
needs is missing, the rendered mail is invalid, there is no email) does not
fail the event: the event is stored anyway, the other rules' mails are
created, and the failure is reported in the answer, which is stored with the
event. The CDP would otherwise retry, or drop, an event that can never succeed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from marshmallow import ValidationError
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from ingest_api.accept import NewMail
from ingest_api.auth import Tenant
from ingest_api.campaign_mail import Recipient, campaign_mail, rendered_fields, template_context
from ingest_api.new_mail import field_errors
from ingest_api.render import BudgetExhausted, RenderBudget
from ingest_api.schemas.cdp_event import TRACK
from shared.queries import QUERIES

log = logging.getLogger(__name__)

RENDER_SECONDS = 2.0  # for all rules one event triggers
MAX_RENDERED_CHARS = 5_000_000
NO_EMAIL = "the event has no context.traits.email or properties.email"


@dataclass
class Outcome:
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


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(*candidates: Any) -> str | None:
    return next((c for c in candidates if isinstance(c, str) and c), None)


def event_recipient(event: Mapping[str, Any]) -> tuple[Recipient | None, dict[str, Any]]:
    """The recipient (None without an email) and the template data of an event."""
    properties = _object(event.get("properties"))
    traits = _object(_object(event.get("context")).get("traits"))
    data = {**traits, **properties}
    email = _text(traits.get("email"), properties.get("email"))
    if email is None:
        return None, data
    return Recipient(email, _text(traits.get("name"), properties.get("name")), {}), data


def run_workflows(
    conn: psycopg.Connection[DictRow], tenant: Tenant, event: Mapping[str, Any]
) -> Outcome:
    """Render the mails of every workflow *event* matches (in the caller's transaction)."""
    outcome = Outcome()
    if event["type"] != TRACK:
        outcome.ignored = "only track events trigger workflows"
        return outcome
    rules = conn.execute(
        QUERIES["match_workflows"],
        {
            "tenant_id": tenant.id,
            "event_name": event["event"],
            "properties": Jsonb(_object(event.get("properties"))),
        },
    ).fetchall()
    if not rules:
        outcome.ignored = "no workflow matches this event"
        return outcome
    recipient, data = event_recipient(event)
    budget = RenderBudget(RENDER_SECONDS, MAX_RENDERED_CHARS)
    for rule in rules:
        _run_rule(
            rule, recipient, data, tenant,
            message_id=event["message_id"], budget=budget, outcome=outcome,
        )  # fmt: skip
    return outcome


def _run_rule(
    rule: Mapping[str, Any],
    recipient: Recipient | None,
    data: dict[str, Any],
    tenant: Tenant,
    *,
    message_id: str,
    budget: RenderBudget,
    outcome: Outcome,
) -> None:
    identity = {"workflow_id": str(rule["workflow_id"]), "campaign": rule["key"]}
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
