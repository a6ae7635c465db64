"""GET /v1/suppressions/<email>: whether (and why) an address is suppressed."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.schemas.suppression import SuppressionSchema
from ingest_api.suppressions import email_from_path
from shared.queries import QUERIES

blp = Blueprint(
    "get_suppression", __name__, url_prefix="/v1", description="Read a suppressed address"
)


@blp.route("/suppressions/<email>")
class GetSuppression(MethodView):
    @blp.response(200, SuppressionSchema)
    def get(self, email: str) -> dict[str, Any]:
        """The entry for an address (any case); 404 if it is not suppressed."""
        tenant = require_scope("read")
        params = {"tenant_id": tenant.id, "email": email_from_path(email)}
        with current_app.extensions["mailroom.pool"].connection() as conn:
            row = conn.execute(QUERIES["get_suppression"], params).fetchone()
        if row is None:
            refuse(404, "this address is not suppressed")
        found: dict[str, Any] = row
        return found
