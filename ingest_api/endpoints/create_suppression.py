"""POST /v1/suppressions: suppress an address by hand."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from psycopg.types.json import Jsonb

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.suppression import NewSuppressionSchema, SuppressionSchema
from shared.queries import QUERIES

blp = Blueprint("create_suppression", __name__, url_prefix="/v1", description="Suppress an address")


@blp.route("/suppressions")
class CreateSuppression(MethodView):
    @blp.arguments(NewSuppressionSchema())
    @blp.response(201, SuppressionSchema)
    @blp.alt_response(
        200, schema=SuppressionSchema, description="the address was already suppressed"
    )
    @blp.alt_response(
        409, description="the entry changed while it was being added; retry", **PROBLEM
    )
    def post(self, data: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Add a ``manual`` entry (201); an address already suppressed keeps its entry (200)."""
        tenant = require_scope("send")
        params = {
            "tenant_id": tenant.id,
            "email": data["email"]["email"].lower(),
            "detail": Jsonb({"note": data["note"]} if data["note"] else {}),
        }
        with current_app.extensions["mailroom.pool"].connection() as conn:
            created = conn.execute(QUERIES["add_manual_suppression"], params).fetchone()
            if created is not None:
                return created, 201
            existing = conn.execute(QUERIES["get_suppression"], params).fetchone()
        if existing is None:  # deleted between the two statements
            refuse(409, "the entry changed while it was being added; retry")
        return existing, 200
