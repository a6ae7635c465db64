"""/v1/webhooks: URLs that receive the tenant's mail outcomes, signed."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api import db
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.webhook import CreatedWebhookSchema, NewWebhookSchema, WebhookListSchema
from shared.config import Settings
from shared.store import NotFound
from shared.store import webhooks as store
from shared.store.webhooks import CreatedWebhook, TooManyWebhooks
from shared.webhook_urls import AddressRefused, HostUnresolvable, parse, resolve_allowed

blp = Blueprint("webhooks", __name__, url_prefix="/v1", description="Status webhooks")

MAX_WEBHOOKS = 20


def _check_reachable(url: str) -> None:
    """Refuse a URL whose host is, or resolves to, an address webhooks may not reach
    (server-side request forgery), or does not resolve at all; the worker checks
    again before each delivery, since DNS answers change."""
    settings: Settings = current_app.config["MAILROOM_SETTINGS"]
    target = parse(url)  # already normalised by the schema
    try:
        resolve_allowed(target.host, target.port, settings.webhook_allow_networks)
    except (AddressRefused, HostUnresolvable) as exc:
        refuse(422, "the webhook URL cannot be called", errors={"url": [str(exc)]})


@blp.route("/webhooks")
class Webhooks(MethodView):
    @blp.arguments(NewWebhookSchema())
    @blp.response(201, CreatedWebhookSchema)
    @blp.alt_response(409, description="the tenant has the most webhooks it may have", **PROBLEM)
    def post(self, data: dict[str, Any]) -> CreatedWebhook:
        """POST each of the ``events`` of this tenant's mails to ``url``, signed with the
        ``secret`` in the answer (shown only here); at most 20 webhooks per tenant."""
        tenant = require_scope("send")
        _check_reachable(data["url"])
        with db.connection() as conn:
            try:
                return store.create_webhook(
                    conn,
                    tenant.id,
                    url=data["url"],
                    events=sorted(set(data["events"])),
                    max_webhooks=MAX_WEBHOOKS,
                )
            except TooManyWebhooks:
                refuse(409, f"a tenant may have at most {MAX_WEBHOOKS} webhooks; delete one first")

    @blp.response(200, WebhookListSchema)
    def get(self) -> dict[str, Any]:
        """All webhooks of this tenant, oldest first; secrets are never shown again."""
        tenant = require_scope("read")
        with db.connection() as conn:
            return {"webhooks": store.list_webhooks(conn, tenant.id)}


@blp.route("/webhooks/<webhook_id>")
class WebhookById(MethodView):
    @blp.response(204)
    def delete(self, webhook_id: str) -> None:
        """Delete a webhook of this tenant (its pending deliveries become ``failed``);
        any other id is a 404."""
        tenant = require_scope("send")
        try:
            wanted = uuid.UUID(webhook_id)
        except ValueError:
            refuse(404, "no such webhook")
        with db.connection() as conn:
            try:
                store.delete_webhook(conn, tenant.id, wanted)
            except NotFound:
                refuse(404, "no such webhook")
