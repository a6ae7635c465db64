"""POST /v1/campaigns/<key>/preview: render for one recipient, store nothing."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api.auth import require_scope
from ingest_api.campaign_mail import (
    Recipient,
    campaign_mail,
    rendered_fields,
    template_context,
)
from ingest_api.campaign_store import campaign_or_404
from ingest_api.errors import refuse
from ingest_api.new_mail import field_errors
from ingest_api.render import BudgetExhausted, RenderBudget
from ingest_api.schemas.campaign import PreviewResultSchema, PreviewSchema
from ingest_api.schemas.fields import unstorable

blp = Blueprint("preview_campaign", __name__, url_prefix="/v1", description="Preview a campaign")

RENDER_SECONDS = 2.0
MAX_RENDERED_CHARS = 5_000_000


@blp.route("/campaigns/<key>/preview")
class PreviewCampaign(MethodView):
    @blp.arguments(PreviewSchema())
    @blp.response(200, PreviewResultSchema)
    def post(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        """The mail a trigger would accept for this recipient and data, or the 422 it
        would answer; nothing is stored and nothing is sent."""
        tenant = require_scope("read")
        problem = unstorable(data)
        if problem is not None:
            refuse(422, f"the data {problem}", errors={"data": [problem]})
        campaign = campaign_or_404(tenant.id, key)
        item = data["recipient"]
        recipient = Recipient(item["email"], item["name"], item["data"])
        budget = RenderBudget(RENDER_SECONDS, MAX_RENDERED_CHARS)
        try:
            rendered = rendered_fields(
                campaign, recipient, template_context(data["data"], recipient), budget
            )
            campaign_mail(campaign, rendered, tenant, source="campaign")
        except BudgetExhausted as exc:
            refuse(422, exc.message, errors={exc.field: [exc.message]})
        except ValidationError as exc:
            refuse(422, "the campaign cannot be sent with this data", errors=field_errors(exc))
        return {"text": None, "html": None, "reply_to": None, **rendered, "to": recipient.mailbox}
