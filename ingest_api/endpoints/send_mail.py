"""POST /v1/mails: accept one mail, durably, or refuse it."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from ingest_api.accept import accept_mail
from ingest_api.auth import current_tenant
from ingest_api.errors import refuse
from ingest_api.schemas.mail import AcceptedSchema, SendMailSchema
from shared.jsonlog import mail_context, request_id_var

blp = Blueprint("send_mail", __name__, url_prefix="/v1", description="Send a mail")
log = logging.getLogger(__name__)


def _strip_domains(mailbox: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if mailbox is None else {"name": mailbox["name"], "email": mailbox["email"]}


def _stored_request(data: dict[str, Any]) -> dict[str, Any]:
    """The validated request as the worker will read it."""
    return {
        "from": _strip_domains(data["sender"]),
        "to": [_strip_domains(m) for m in data["to"]],
        "cc": [_strip_domains(m) for m in data["cc"]],
        "bcc": [_strip_domains(m) for m in data["bcc"]],
        "reply_to": _strip_domains(data["reply_to"]),
        "subject": data["subject"],
        "text": data["text"],
        "html": data["html"],
        "headers": data["headers"],
    }


@blp.route("/mails")
class SendMail(MethodView):
    @blp.arguments(SendMailSchema())
    @blp.response(202, AcceptedSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Accept a mail: answered 202 only once it is committed to the database."""
        tenant = current_tenant()
        sender_domain = data["sender"]["domain"]
        if sender_domain not in tenant.sender_domains:
            refuse(
                422,
                "the sender's domain is not one of this tenant's sender domains",
                errors={"from": [f"{sender_domain} is not a sender domain of this tenant"]},
            )
        mail_id = accept_mail(
            current_app.extensions["mailroom.pool"],
            tenant_id=tenant.id,
            request=_stored_request(data),
            request_id=request_id_var.get() or "",
        )
        current_app.extensions["mailroom.wakeup"].poke()
        with mail_context(str(mail_id)):
            log.info("mail accepted", extra={"tenant": tenant.name})
        return {"id": mail_id, "status": "accepted"}
