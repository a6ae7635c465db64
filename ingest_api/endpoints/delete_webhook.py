"""DELETE /v1/webhooks/<id>: stop a webhook; its pending deliveries are not sent."""

from __future__ import annotations

import uuid

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from shared.queries import QUERIES

blp = Blueprint("delete_webhook", __name__, url_prefix="/v1", description="Delete a webhook")


@blp.route("/webhooks/<webhook_id>")
class DeleteWebhook(MethodView):
    @blp.response(204)
    def delete(self, webhook_id: str) -> None:
        """Delete a webhook of this tenant (its pending deliveries become ``failed``);
        any other id is a 404."""
        tenant = require_scope("send")
        try:
            wanted = uuid.UUID(webhook_id)
        except ValueError:
            refuse(404, "no such webhook")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            deleted = conn.execute(
                QUERIES["delete_webhook"], {"id": wanted, "tenant_id": tenant.id}
            ).fetchone()
        if deleted is None:
            refuse(404, "no such webhook")
