"""Campaigns (templates with a key), CDP workflows (event name -> campaign) and the CDP
events received for them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from shared.queries import QUERIES
from shared.store import Conflict, Conn, NotFound, StoreError

# (owner: the ingest_api helper)

# ----- campaigns -----


@dataclass(frozen=True)
class CampaignTemplates:
    """A campaign's Liquid templates and defaults (``sender`` is the API's ``from``)."""

    key: str
    sender: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None
    headers: dict[str, str]
    tags: list[str]

    def fields(self) -> dict[str, Any]:
        """The templates under the API's field names, as the renderer reads them."""
        return {
            "from": self.sender,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "reply_to": self.reply_to,
            "headers": self.headers,
        }


@dataclass(frozen=True)
class Campaign(CampaignTemplates):
    created_at: datetime
    updated_at: datetime


def _campaign_params(tenant_id: uuid.UUID, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of insert_campaign / update_campaign from a loaded campaign body."""
    return {
        "tenant_id": tenant_id,
        "key": key,
        "sender": data["from"],
        "subject": data["subject"],
        "text": data["text"],
        "html": data["html"],
        "reply_to": data["reply_to"],
        "headers": Jsonb(data["headers"]),
        "tags": list(data["tags"]),
    }


def create_campaign(conn: Conn, tenant_id: uuid.UUID, data: Mapping[str, Any]) -> Campaign:
    """A new campaign from a loaded body (API field names); Conflict if the key is taken."""
    with conn.cursor(row_factory=class_row(Campaign)) as cursor:
        created = cursor.execute(
            QUERIES["insert_campaign"], _campaign_params(tenant_id, data["key"], data)
        ).fetchone()
    if created is None:
        raise Conflict(data["key"])
    return created


def list_campaigns(conn: Conn, tenant_id: uuid.UUID) -> list[Campaign]:
    """The tenant's campaigns, by key."""
    with conn.cursor(row_factory=class_row(Campaign)) as cursor:
        return cursor.execute(
            QUERIES["list_campaigns_for_tenant"], {"tenant_id": tenant_id}
        ).fetchall()


def get_campaign(conn: Conn, tenant_id: uuid.UUID, key: str) -> Campaign:
    """The tenant's campaign *key*; NotFound for any other (another tenant's too)."""
    with conn.cursor(row_factory=class_row(Campaign)) as cursor:
        found = cursor.execute(
            QUERIES["get_campaign_for_tenant"], {"tenant_id": tenant_id, "key": key}
        ).fetchone()
    if found is None:
        raise NotFound(key)
    return found


def update_campaign(
    conn: Conn, tenant_id: uuid.UUID, key: str, data: Mapping[str, Any]
) -> Campaign:
    """Replace every field of the tenant's campaign *key*; NotFound if it has none.
    Mails already accepted keep the content they were rendered with."""
    with conn.cursor(row_factory=class_row(Campaign)) as cursor:
        updated = cursor.execute(
            QUERIES["update_campaign"], _campaign_params(tenant_id, key, data)
        ).fetchone()
    if updated is None:
        raise NotFound(key)
    return updated


@dataclass(frozen=True)
class WorkflowUse:
    id: uuid.UUID
    event: str


class CampaignInUse(Conflict):
    """Workflows still use the campaign (``users``; empty if they were just removed)."""

    def __init__(self, key: str, users: Sequence[WorkflowUse]) -> None:
        super().__init__(key)
        self.users = list(users)


def delete_campaign(conn: Conn, tenant_id: uuid.UUID, key: str) -> None:
    """Delete the tenant's campaign *key*: NotFound, or CampaignInUse while workflows use it."""
    params = {"tenant_id": tenant_id, "key": key}
    try:
        with conn.transaction():  # a savepoint in the caller's: the read below still runs
            deleted = conn.execute(QUERIES["delete_campaign"], params).fetchone()
    except psycopg.errors.ForeignKeyViolation:
        with conn.cursor(row_factory=class_row(WorkflowUse)) as cursor:
            raise CampaignInUse(
                key, cursor.execute(QUERIES["find_campaign_workflows"], params).fetchall()
            ) from None
    if deleted is None:
        raise NotFound(key)


# ----- workflows -----


@dataclass(frozen=True)
class Workflow:
    id: uuid.UUID
    event: str
    property_filters: dict[str, Any]
    campaign: str  # its key
    created_at: datetime


class NoSuchCampaign(StoreError):
    """A workflow names a campaign the tenant does not have."""


def create_workflow(
    conn: Conn, tenant_id: uuid.UUID, *, event: str, property_filters: dict[str, Any], campaign: str
) -> Workflow:
    """A rule: *event* (with *property_filters*) triggers *campaign*; NoSuchCampaign if the
    tenant has no campaign by that key."""
    with conn.cursor(row_factory=class_row(Workflow)) as cursor:
        created = cursor.execute(
            QUERIES["insert_workflow"],
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "event": event,
                "property_filters": Jsonb(property_filters),
                "campaign": campaign,
            },
        ).fetchone()
    if created is None:
        raise NoSuchCampaign(campaign)
    return created


def list_workflows(conn: Conn, tenant_id: uuid.UUID) -> list[Workflow]:
    """The tenant's workflows, oldest first."""
    with conn.cursor(row_factory=class_row(Workflow)) as cursor:
        return cursor.execute(
            QUERIES["list_workflows_for_tenant"], {"tenant_id": tenant_id}
        ).fetchall()


def delete_workflow(conn: Conn, tenant_id: uuid.UUID, workflow_id: uuid.UUID) -> None:
    """Delete the tenant's workflow; NotFound for any other id. Events received are kept."""
    if (
        conn.execute(
            QUERIES["delete_workflow"], {"id": workflow_id, "tenant_id": tenant_id}
        ).fetchone()
        is None
    ):
        raise NotFound(str(workflow_id))


# ----- CDP events -----


def claim_cdp_event(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    event_id: uuid.UUID,
    message_id: str,
    event_name: str | None,
    payload: dict[str, Any],
) -> dict[str, Any] | None:
    """Store the event (None), or the answer its *message_id* got before (a redelivery).

    The first statement of the event's ingest transaction: it waits for a concurrent
    delivery of the same messageId to commit or roll back.
    """
    ids = {"tenant_id": tenant_id, "message_id": message_id}
    claimed = conn.execute(
        QUERIES["claim_cdp_event"],
        {**ids, "id": event_id, "event_name": event_name, "payload": Jsonb(payload)},
    ).fetchone()
    if claimed is not None:
        return None
    with conn.cursor(row_factory=dict_row) as cursor:
        stored = cursor.execute(QUERIES["find_cdp_event_response"], ids).fetchone()
    assert stored is not None  # the claim failed on this very row
    response: dict[str, Any] = stored["response"]
    return response


@dataclass(frozen=True)
class WorkflowMatch(CampaignTemplates):
    """A workflow an event triggers, with its campaign's templates."""

    workflow_id: uuid.UUID


def match_workflows(
    conn: Conn, tenant_id: uuid.UUID, event_name: str, properties: dict[str, Any]
) -> list[WorkflowMatch]:
    """The workflows an event triggers: by name, and property filters contained in its
    *properties* (jsonb containment), oldest first."""
    with conn.cursor(row_factory=class_row(WorkflowMatch)) as cursor:
        return cursor.execute(
            QUERIES["match_workflows"],
            {"tenant_id": tenant_id, "event_name": event_name, "properties": Jsonb(properties)},
        ).fetchall()


def record_cdp_event_result(
    conn: Conn, event_id: uuid.UUID, mail_ids: Sequence[uuid.UUID], response: dict[str, Any]
) -> None:
    """The mails an event created and its answer, in the transaction that created them."""
    conn.execute(
        QUERIES["record_cdp_event_result"],
        {"id": event_id, "mail_ids": list(mail_ids), "response": Jsonb(response)},
    )


@dataclass(frozen=True)
class CdpEventRecord:
    id: uuid.UUID
    message_id: str
    event: str | None
    payload: dict[str, Any]
    mail_ids: list[uuid.UUID]
    response: dict[str, Any]
    received_at: datetime


def list_cdp_events(
    conn: Conn, tenant_id: uuid.UUID, *, message_id: str | None, limit: int
) -> list[CdpEventRecord]:
    """The tenant's received events, newest first (only *message_id*'s if given)."""
    with conn.cursor(row_factory=class_row(CdpEventRecord)) as cursor:
        return cursor.execute(
            QUERIES["list_cdp_events_for_tenant"],
            {"tenant_id": tenant_id, "message_id": message_id, "limit": limit},
        ).fetchall()
