"""PUT /v1/campaigns/<key>: replace a campaign's templates.

Mails already accepted keep the content they were rendered with: a mail
stores its rendered from, subject, text and html, never the template.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api.auth import require_scope
from ingest_api.campaign_mail import check_fixed_addresses
from ingest_api.campaign_store import campaign_params
from ingest_api.errors import refuse
from ingest_api.new_mail import field_errors
from ingest_api.schemas.campaign import CampaignFieldsSchema, CampaignSchema
from shared.queries import QUERIES

blp = Blueprint("update_campaign", __name__, url_prefix="/v1", description="Change a campaign")


@blp.route("/campaigns/<key>")
class UpdateCampaign(MethodView):
    @blp.arguments(CampaignFieldsSchema())
    @blp.response(200, CampaignSchema)
    def put(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        """Replace every field of an existing campaign (404 if the tenant has none by that key)."""
        tenant = require_scope("send")
        pool = current_app.extensions["mailroom.pool"]
        with pool.connection() as conn, conn.transaction():  # a refusal below rolls it back
            row = conn.execute(
                QUERIES["update_campaign"], campaign_params(tenant.id, key, data)
            ).fetchone()
            if row is None:
                refuse(404, f"no campaign with key {key!r}")
            try:
                check_fixed_addresses(data, tenant)
            except ValidationError as exc:
                refuse(422, "the campaign's addresses are not allowed", errors=field_errors(exc))
        updated: dict[str, Any] = row
        return updated
