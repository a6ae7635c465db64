"""GET /v1/cdp/events: the CDP events the tenant received, with what each created."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.schemas.cdp_event import CdpEventListArgsSchema, CdpEventListSchema
from shared.queries import QUERIES

blp = Blueprint("list_cdp_events", __name__, url_prefix="/v1", description="List CDP events")


@blp.route("/cdp/events")
class ListCdpEvents(MethodView):
    @blp.arguments(CdpEventListArgsSchema(), location="query")
    @blp.response(200, CdpEventListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The latest events of this tenant, newest first, each with the answer it got
        (mails created, workflows that failed and why); ``message_id`` finds one."""
        tenant = require_scope("read")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_cdp_events_for_tenant"],
                {
                    "tenant_id": tenant.id,
                    "message_id": args.get("message_id"),
                    "limit": args["limit"],
                },
            ).fetchall()
        return {"events": rows}
