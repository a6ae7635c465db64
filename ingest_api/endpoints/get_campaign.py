"""GET /v1/campaigns/<key>: one campaign's templates."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.campaign_store import campaign_or_404
from ingest_api.schemas.campaign import CampaignSchema

blp = Blueprint("get_campaign", __name__, url_prefix="/v1", description="Read a campaign")


@blp.route("/campaigns/<key>")
class GetCampaign(MethodView):
    @blp.response(200, CampaignSchema)
    def get(self, key: str) -> dict[str, Any]:
        """A campaign of this tenant; any other key is a 404."""
        return campaign_or_404(require_scope("read").id, key)
