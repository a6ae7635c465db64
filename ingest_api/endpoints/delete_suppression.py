"""DELETE /v1/suppressions/<email>: mail to the address is sent again."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.suppressions import email_from_path
from shared.queries import QUERIES

blp = Blueprint(
    "delete_suppression", __name__, url_prefix="/v1", description="Remove a suppressed address"
)


@blp.route("/suppressions/<email>")
class DeleteSuppression(MethodView):
    @blp.response(204)
    def delete(self, email: str) -> None:
        """Remove the entry, whatever its reason; 404 if the address is not suppressed."""
        tenant = require_scope("send")
        params = {"tenant_id": tenant.id, "email": email_from_path(email)}
        with current_app.extensions["mailroom.pool"].connection() as conn:
            deleted = conn.execute(QUERIES["delete_suppression"], params).fetchone()
        if deleted is None:
            refuse(404, "this address is not suppressed")
