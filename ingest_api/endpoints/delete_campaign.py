"""DELETE /v1/campaigns/<key>: remove a campaign no workflow uses."""

from __future__ import annotations

import psycopg
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from shared.queries import QUERIES

blp = Blueprint("delete_campaign", __name__, url_prefix="/v1", description="Delete a campaign")


@blp.route("/campaigns/<key>")
class DeleteCampaign(MethodView):
    @blp.response(204)
    @blp.alt_response(409, description="workflows still use the campaign", **PROBLEM)
    def delete(self, key: str) -> None:
        """Delete a campaign; 409 naming the workflows that still use it.

        Mails already accepted from it are not affected.
        """
        tenant = require_scope("send")
        params = {"tenant_id": tenant.id, "key": key}
        with current_app.extensions["mailroom.pool"].connection() as conn:
            try:
                with conn.transaction():
                    deleted = conn.execute(QUERIES["delete_campaign"], params).fetchone()
            except psycopg.errors.ForeignKeyViolation:
                users = conn.execute(QUERIES["find_campaign_workflows"], params).fetchall()
                names = ", ".join(f"{row['id']} ({row['event']})" for row in users)
                refuse(
                    409,
                    f"campaign {key!r} is used by workflows {names or '(just removed: retry)'};"
                    " delete them first",
                )
        if deleted is None:
            refuse(404, f"no campaign with key {key!r}")
