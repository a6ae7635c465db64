"""POST /v1/webhooks: a URL that receives the tenant's mail outcomes, signed."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.webhook import CreatedWebhookSchema, NewWebhookSchema
from shared.config import Settings
from shared.queries import QUERIES
from shared.webhook_urls import AddressRefused, HostUnresolvable, parse, resolve_allowed

blp = Blueprint("create_webhook", __name__, url_prefix="/v1", description="Create a webhook")

MAX_WEBHOOKS = 20


@blp.route("/webhooks")
class CreateWebhook(MethodView):
    @blp.arguments(NewWebhookSchema())
    @blp.response(201, CreatedWebhookSchema)
    @blp.alt_response(409, description="the tenant has the most webhooks it may have", **PROBLEM)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """POST each of the ``events`` of this tenant's mails to ``url``, signed with the
        ``secret`` in the answer (shown only here); at most 20 webhooks per tenant."""
        tenant = require_scope("send")
        _check_reachable(data["url"])
        events = sorted(set(data["events"]))
        with current_app.extensions["mailroom.pool"].connection() as conn:
            row = conn.execute(
                QUERIES["insert_webhook"],
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant.id,
                    "url": data["url"],
                    "events": events,
                    "secret": secrets.token_hex(32),
                    "max_webhooks": MAX_WEBHOOKS,
                },
            ).fetchone()
        if row is None:
            refuse(409, f"a tenant may have at most {MAX_WEBHOOKS} webhooks; delete one first")
        created: dict[str, Any] = row
        return created


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
