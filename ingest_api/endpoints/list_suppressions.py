"""GET /v1/suppressions: a tenant's suppression list, by address, with a cursor."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.schemas.suppression import SuppressionListArgsSchema, SuppressionPageSchema
from ingest_api.suppressions import decode_cursor, encode_cursor
from shared.queries import QUERIES

blp = Blueprint(
    "list_suppressions", __name__, url_prefix="/v1", description="List suppressed addresses"
)


@blp.route("/suppressions")
class ListSuppressions(MethodView):
    @blp.arguments(SuppressionListArgsSchema(), location="query")
    @blp.response(200, SuppressionPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Suppressed addresses in order, optionally by ``reason``; follow ``next_cursor``."""
        tenant = require_scope("read")
        limit = args["limit"]
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_suppressions"],
                {
                    "tenant_id": tenant.id,
                    "reason": args.get("reason"),
                    "after": decode_cursor(args["cursor"]) if args.get("cursor") else None,
                    "limit": limit + 1,
                },
            ).fetchall()
        page, more = rows[:limit], len(rows) > limit
        return {
            "suppressions": page,
            "next_cursor": encode_cursor(page[-1]["email"]) if more else None,
        }
