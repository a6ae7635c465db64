"""POST /v1/mails/<id>/cancel: stop a mail whose sending has not begun."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from psycopg.types.json import Jsonb

from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.openapi import PROBLEM
from ingest_api.schemas.mail import CancelledSchema
from shared.jsonlog import request_id_var
from shared.queries import QUERIES
from shared.states import MailStatus, statuses_that_may_become

blp = Blueprint("cancel_mail", __name__, url_prefix="/v1", description="Cancel a mail")


def _mail_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        refuse(404, "no such mail")


@blp.route("/mails/<mail_id>/cancel")
class CancelMail(MethodView):
    @blp.response(200, CancelledSchema)
    @blp.alt_response(409, description="the mail is being sent or was sent", **PROBLEM)
    def post(self, mail_id: str) -> dict[str, Any]:
        """Cancel while ``scheduled``, ``accepted``, ``queued`` or ``retrying``; 409 after."""
        tenant = require_scope("send")
        wanted = _mail_id(mail_id)
        params = {"mail_id": wanted, "tenant_id": tenant.id}
        with current_app.extensions["mailroom.pool"].connection() as conn, conn.transaction():
            # The outbox row first, as the relay and the worker lock them: no deadlock.
            conn.execute(QUERIES["lock_mail_outbox_row"], params)
            cancelled = conn.execute(
                QUERIES["cancel_mail"],
                {
                    **params,
                    "from_statuses": statuses_that_may_become(MailStatus.CANCELLED),
                    "detail": Jsonb({"request_id": request_id_var.get()}),
                },
            ).fetchone()
            if cancelled is None:
                current = conn.execute(QUERIES["get_mail_for_tenant"], params).fetchone()
        if cancelled is not None:
            return {"id": wanted, "status": MailStatus.CANCELLED.value}
        if current is None:
            refuse(404, "no such mail")
        refuse(
            409,
            f"the mail is {current['status']}; only a mail whose sending has not begun can be"
            " cancelled",
        )
