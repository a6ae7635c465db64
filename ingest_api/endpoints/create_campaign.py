"""POST /v1/campaigns: store a campaign's templates under a key of the tenant's choosing."""

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
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.campaign import CampaignSchema, NewCampaignSchema
from shared.queries import QUERIES

blp = Blueprint("create_campaign", __name__, url_prefix="/v1", description="Create a campaign")


@blp.route("/campaigns")
class CreateCampaign(MethodView):
    @blp.arguments(NewCampaignSchema())
    @blp.response(201, CampaignSchema)
    @blp.alt_response(409, description="the tenant has a campaign with this key", **PROBLEM)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a campaign: Liquid templates for from, subject, text and/or html.

        Templates are checked for syntax now (422 naming the field); a ``from``
        without template syntax must use one of the tenant's sender domains.
        An existing key is a 409 (``PUT /v1/campaigns/<key>`` changes it).
        """
        tenant = require_scope("send")
        try:
            check_fixed_addresses(data, tenant)
        except ValidationError as exc:
            refuse(422, "the campaign's addresses are not allowed", errors=field_errors(exc))
        with current_app.extensions["mailroom.pool"].connection() as conn:
            row = conn.execute(
                QUERIES["insert_campaign"], campaign_params(tenant.id, data["key"], data)
            ).fetchone()
        if row is None:
            refuse(
                409,
                f"a campaign with key {data['key']!r} exists; PUT /v1/campaigns/{data['key']}"
                " replaces it",
            )
        created: dict[str, Any] = row
        return created
