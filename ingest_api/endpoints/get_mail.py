"""GET /v1/mails/<id>: a mail's status and its whole history."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.schemas.mail import MailStatusSchema
from shared.queries import QUERIES

blp = Blueprint("get_mail", __name__, url_prefix="/v1", description="Read a mail's status")


@blp.route("/mails/<mail_id>")
class GetMail(MethodView):
    @blp.response(200, MailStatusSchema)
    def get(self, mail_id: str) -> dict[str, Any]:
        """A mail of this tenant, with its events; any other id is a 404."""
        tenant = require_scope("read")
        try:
            wanted = uuid.UUID(mail_id)
        except ValueError:
            refuse(404, "no such mail")
        with current_app.extensions["mailroom.pool"].connection() as conn:
            mail = conn.execute(
                QUERIES["get_mail_for_tenant"], {"mail_id": wanted, "tenant_id": tenant.id}
            ).fetchone()
            if mail is None:
                refuse(404, "no such mail")
            events = conn.execute(QUERIES["list_mail_events"], {"mail_id": wanted}).fetchall()
        return {**mail, "events": events}
