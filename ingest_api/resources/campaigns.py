"""/v1/campaigns: stored templates under a key of the tenant's choosing; their trigger
(one mail per recipient) and preview (render for one recipient, store nothing).

A trigger renders and validates every recipient's mail before anything is stored:
a template that cannot render for a recipient's data (a missing variable, say), or a
rendered mail that ``POST /v1/mails`` would refuse, makes the whole trigger a 422
naming the recipient (``recipients.<index>.<field>``) and nothing is stored.
Otherwise all mails are accepted in one transaction, answered 202 after its COMMIT.
Each mail stores its rendered content, so changing the campaign later (PUT) never
changes mail already accepted.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api import db
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.ingest import answer_after_commit, ingest_transaction
from ingest_api.new_mails import (
    REQUEST_LEVEL_FIELDS,
    Recipient,
    campaign_mail,
    check_fixed_addresses,
    field_errors,
    rendered_fields,
    template_context,
)
from ingest_api.openapi import PROBLEM
from ingest_api.render import BudgetExhausted, RenderBudget
from ingest_api.schemas.campaign import (
    CampaignFieldsSchema,
    CampaignListSchema,
    CampaignSchema,
    NewCampaignSchema,
    PreviewResultSchema,
    PreviewSchema,
    TriggerResultSchema,
    TriggerSchema,
)
from ingest_api.schemas.fields import unstorable
from shared.store import Conflict, NotFound
from shared.store import campaigns as store
from shared.store.campaigns import Campaign, CampaignInUse
from shared.store.mails import NewMail
from shared.store.tenants import Tenant

blp = Blueprint("campaigns", __name__, url_prefix="/v1", description="Campaigns")

TRIGGER_RENDER_SECONDS = 5.0  # for all recipients of one trigger together
TRIGGER_MAX_RENDERED_CHARS = 20_000_000  # likewise
PREVIEW_RENDER_SECONDS = 2.0
PREVIEW_MAX_RENDERED_CHARS = 5_000_000


def _campaign_or_404(tenant: Tenant, key: str) -> Campaign:
    """The tenant's campaign *key*; any other tenant's campaign is a 404 too."""
    with db.connection() as conn:
        try:
            return store.get_campaign(conn, tenant.id, key)
        except NotFound:
            refuse(404, f"no campaign with key {key!r}")


def _check_fixed_addresses(data: dict[str, Any], tenant: Tenant) -> None:
    try:
        check_fixed_addresses(data, tenant)
    except ValidationError as exc:
        refuse(422, "the campaign's addresses are not allowed", errors=field_errors(exc))


@blp.route("/campaigns")
class Campaigns(MethodView):
    @blp.arguments(NewCampaignSchema())
    @blp.response(201, CampaignSchema)
    @blp.alt_response(409, description="the tenant has a campaign with this key", **PROBLEM)
    def post(self, data: dict[str, Any]) -> Campaign:
        """Create a campaign: Liquid templates for from, subject, text and/or html.

        Templates are checked for syntax now (422 naming the field); a ``from``
        without template syntax must use one of the tenant's sender domains.
        An existing key is a 409 (``PUT /v1/campaigns/<key>`` changes it).
        """
        tenant = require_scope("send")
        _check_fixed_addresses(data, tenant)
        with db.connection() as conn:
            try:
                return store.create_campaign(conn, tenant.id, data)
            except Conflict:
                refuse(
                    409,
                    f"a campaign with key {data['key']!r} exists; PUT /v1/campaigns/{data['key']}"
                    " replaces it",
                )

    @blp.response(200, CampaignListSchema)
    def get(self) -> dict[str, Any]:
        """All campaigns of this tenant, ordered by key."""
        tenant = require_scope("read")
        with db.connection() as conn:
            return {"campaigns": store.list_campaigns(conn, tenant.id)}


@blp.route("/campaigns/<key>")
class CampaignByKey(MethodView):
    @blp.response(200, CampaignSchema)
    def get(self, key: str) -> Campaign:
        """A campaign of this tenant; any other key is a 404."""
        return _campaign_or_404(require_scope("read"), key)

    @blp.arguments(CampaignFieldsSchema())
    @blp.response(200, CampaignSchema)
    def put(self, data: dict[str, Any], key: str) -> Campaign:
        """Replace every field of an existing campaign (404 if the tenant has none by that key)."""
        tenant = require_scope("send")
        with db.transaction() as conn:  # a refusal below rolls it back
            try:
                updated = store.update_campaign(conn, tenant.id, key, data)
            except NotFound:
                refuse(404, f"no campaign with key {key!r}")
            _check_fixed_addresses(data, tenant)
        return updated

    @blp.response(204)
    @blp.alt_response(409, description="workflows still use the campaign", **PROBLEM)
    def delete(self, key: str) -> None:
        """Delete a campaign; 409 naming the workflows that still use it.

        Mails already accepted from it are not affected.
        """
        tenant = require_scope("send")
        try:
            with db.connection() as conn:
                store.delete_campaign(conn, tenant.id, key)
        except NotFound:
            refuse(404, f"no campaign with key {key!r}")
        except CampaignInUse as exc:
            names = ", ".join(f"{use.id} ({use.event})" for use in exc.users)
            refuse(
                409,
                f"campaign {key!r} is used by workflows {names or '(just removed: retry)'};"
                " delete them first",
            )


def _trigger_mails(
    campaign: Campaign, data: dict[str, Any], tenant: Tenant
) -> list[tuple[str, NewMail]]:
    """Every recipient's mail, or a 422 naming each failure; nothing is stored either way."""
    options = {
        name: data[name] for name in REQUEST_LEVEL_FIELDS if data.get(name) not in (None, {})
    }
    budget = RenderBudget(TRIGGER_RENDER_SECONDS, TRIGGER_MAX_RENDERED_CHARS)
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
        mails = _trigger_mails(_campaign_or_404(tenant, key), data, tenant)
        with ingest_transaction(tenant) as tx:  # BEGIN; COMMIT when the block ends
            if tx.replay is None:
                tx.add_mails([mail for _, mail in mails])
                accepted = [
                    {"id": str(mail.id), "email": email, "status": mail.status.value}
                    for email, mail in mails
                ]
                tx.respond(202, {"campaign": key, "mails": accepted, "accepted": len(accepted)})
        return answer_after_commit(tx)


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
        campaign = _campaign_or_404(tenant, key)
        item = data["recipient"]
        recipient = Recipient(item["email"], item["name"], item["data"])
        budget = RenderBudget(PREVIEW_RENDER_SECONDS, PREVIEW_MAX_RENDERED_CHARS)
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
