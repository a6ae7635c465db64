"""POST /v1/campaigns/<key>/trigger: one mail per recipient, all or nothing.

Every recipient's mail is rendered and validated here, before anything is
stored: a template that cannot render for a recipient's data (a missing
variable, say), or a rendered mail that ``POST /v1/mails`` would refuse, makes
the whole trigger a 422 naming the recipient (``recipients.<index>.<field>``)
and nothing is stored. Otherwise all mails are accepted in one transaction,
answered 202 after its COMMIT. Each mail stores its rendered content, so
changing the campaign later never changes mail already accepted.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api.accept import IngestTransaction, NewMail
from ingest_api.auth import Tenant, require_scope
from ingest_api.campaign_mail import (
    REQUEST_LEVEL_FIELDS,
    Recipient,
    campaign_mail,
    rendered_fields,
    template_context,
)
from ingest_api.campaign_store import campaign_or_404
from ingest_api.errors import refuse
from ingest_api.ingest import handle_ingest
from ingest_api.new_mail import field_errors
from ingest_api.render import BudgetExhausted, RenderBudget
from ingest_api.schemas.campaign import TriggerResultSchema, TriggerSchema
from ingest_api.schemas.fields import unstorable

blp = Blueprint("trigger_campaign", __name__, url_prefix="/v1", description="Trigger a campaign")

RENDER_SECONDS = 5.0  # for all recipients of one trigger together
MAX_RENDERED_CHARS = 20_000_000  # likewise


def _mails(
    campaign: dict[str, Any], data: dict[str, Any], tenant: Tenant
) -> list[tuple[str, NewMail]]:
    """Every recipient's mail, or a 422 naming each failure; nothing is stored either way."""
    options = {
        name: data[name] for name in REQUEST_LEVEL_FIELDS if data.get(name) not in (None, {})
    }
    budget = RenderBudget(RENDER_SECONDS, MAX_RENDERED_CHARS)
    mails: list[tuple[str, NewMail]] = []
    errors: dict[str, Any] = {}
    for index, item in enumerate(data["recipients"]):
        recipient = Recipient(item["email"], item["name"], item["data"])
        try:
            rendered = rendered_fields(
                campaign, recipient, template_context(data["data"], recipient), budget
            )
            mail = campaign_mail(campaign, rendered, tenant, source="campaign", options=options)
        except BudgetExhausted as exc:
            refuse(
                422,
                f"nothing was accepted: {exc.message}",
                errors={**errors, f"recipients.{index}.{exc.field}": [exc.message]},
            )
        except ValidationError as exc:
            for field, messages in field_errors(exc).items():
                name = field if field in REQUEST_LEVEL_FIELDS else f"recipients.{index}.{field}"
                errors[name] = messages
        else:
            mails.append((item["email"], mail))
    if errors:
        refuse(
            422,
            f"nothing was accepted: {len(data['recipients']) - len(mails)} of"
            f" {len(data['recipients'])} recipients failed",
            errors=errors,
        )
    return mails


@blp.route("/campaigns/<key>/trigger")
class TriggerCampaign(MethodView):
    @blp.arguments(TriggerSchema())
    @blp.response(202, TriggerResultSchema)
    def post(self, data: dict[str, Any], key: str) -> Response:
        """Render the campaign for each recipient (their ``data`` over the top-level
        ``data``, plus ``recipient.email`` and ``recipient.name``) and accept one mail each,
        all in one transaction; any failing recipient makes it a 422 and stores nothing.
        """
        tenant = require_scope("send")
        for name in ("data", "recipients"):
            problem = unstorable(data[name])
            if problem is not None:
                refuse(422, f"{name} {problem}", errors={name: [problem]})
        campaign = campaign_or_404(tenant.id, key)
        mails = _mails(campaign, data, tenant)

        def create(tx: IngestTransaction) -> None:
            tx.add_mails([mail for _, mail in mails])
            accepted = [
                {"id": str(mail.id), "email": email, "status": mail.status.value}
                for email, mail in mails
            ]
            tx.respond(202, {"campaign": key, "mails": accepted, "accepted": len(accepted)})

        return handle_ingest(tenant, create)
