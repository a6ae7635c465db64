"""GET /v1/campaigns: the tenant's campaigns, by key."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.schemas.campaign import CampaignListSchema
from shared.queries import QUERIES

blp = Blueprint("list_campaigns", __name__, url_prefix="/v1", description="List campaigns")


@blp.route("/campaigns")
class ListCampaigns(MethodView):
    @blp.response(200, CampaignListSchema)
    def get(self) -> dict[str, Any]:
        """All campaigns of this tenant, ordered by key."""
        tenant = require_scope("read")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            rows = conn.execute(
                QUERIES["list_campaigns_for_tenant"], {"tenant_id": tenant.id}
            ).fetchall()
        return {"campaigns": rows}
