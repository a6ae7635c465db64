"""GET /v1/webhooks: the tenant's webhooks, oldest first, without their secrets."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.schemas.webhook import WebhookListSchema
from shared.queries import QUERIES

blp = Blueprint("list_webhooks", __name__, url_prefix="/v1", description="List webhooks")


@blp.route("/webhooks")
class ListWebhooks(MethodView):
    @blp.response(200, WebhookListSchema)
    def get(self) -> dict[str, Any]:
        """All webhooks of this tenant, oldest first; secrets are never shown again."""
        tenant = require_scope("read")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_webhooks_for_tenant"], {"tenant_id": tenant.id}
            ).fetchall()
        return {"webhooks": rows}
