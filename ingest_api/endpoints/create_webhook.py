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
from ingest_api.schemas.webhook import CreatedWebhookSchema, NewWebhookSchema
from shared.queries import QUERIES

blp = Blueprint("create_webhook", __name__, url_prefix="/v1", description="Create a webhook")

MAX_WEBHOOKS = 20


@blp.route("/webhooks")
class CreateWebhook(MethodView):
    @blp.arguments(NewWebhookSchema())
    @blp.response(201, CreatedWebhookSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """POST each of the ``events`` of this tenant's mails to ``url``, signed with the
        ``secret`` in the answer (shown only here); at most 20 webhooks per tenant."""
        tenant = require_scope("send")
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
