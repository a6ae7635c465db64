"""POST /v1/mails: accept one mail, durably, or refuse it."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ingest_api.accept import IngestTransaction
from ingest_api.auth import require_scope
from ingest_api.errors import refuse
from ingest_api.ingest import handle_ingest
from ingest_api.new_mail import field_errors, new_mail
from ingest_api.schemas.mail import AcceptedSchema, SendMailSchema

blp = Blueprint("send_mail", __name__, url_prefix="/v1", description="Send a mail")


@blp.route("/mails")
class SendMail(MethodView):
    @blp.arguments(SendMailSchema())
    @blp.response(202, AcceptedSchema)
    def post(self, data: dict[str, Any]) -> Response:
        """Accept a mail: answered 202 only once it is committed to the database.

        With ``send_at`` the mail is ``scheduled``; with ``expires_at`` or
        ``ttl_seconds`` it becomes ``expired`` instead of being sent late.
        """
        tenant = require_scope("send")
        try:
            mail = new_mail(data, tenant)
        except ValidationError as exc:
            refuse(422, "the sender is not allowed", errors=field_errors(exc))

        def create(tx: IngestTransaction) -> None:
            tx.add_mails([mail])
            tx.respond(202, {"id": str(mail.id), "status": mail.status.value})

        return handle_ingest(tenant, create)
