"""The send step: pick the mail up, build it, hand it to SMTP, record the outcome.

Between the SMTP server's acceptance and our COMMIT of ``sent`` lies the only
window in which a crash can cause a second send; the deterministic Message-ID
lets downstream systems recognise it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from psycopg.types.json import Jsonb

from mail_worker.compose import compose, envelope_recipients, needs_smtputf8
from mail_worker.pickup import pick_up
from mail_worker.smtp import SmtpClient, SmtpFailure
from shared.db import DictPool
from shared.jsonlog import mail_context
from shared.queries import QUERIES
from shared.states import MailStatus

log = logging.getLogger(__name__)


def _finish(
    pool: DictPool,
    mail_id: uuid.UUID,
    status: MailStatus,
    detail: dict[str, Any],
    error: str | None,
) -> None:
    with pool.connection() as conn:
        conn.execute(
            QUERIES["finish_sending"],
            {
                "mail_id": mail_id,
                "status": status.value,
                "last_error": error,
                "detail": Jsonb(detail),
            },
        )


def deliver(
    pool: DictPool, smtp: SmtpClient, mail_id: str, *, message_id_domain: str, worker: str
) -> str:
    """Send one mail if this delivery wins the pickup; return what happened."""
    with mail_context(mail_id):
        mail = pick_up(pool, uuid.UUID(mail_id), worker)
        if mail is None:
            log.info("duplicate delivery ignored: the mail was already picked up")
            return "duplicate"
        message = compose(mail.id, mail.request, message_id_domain)
        try:
            reply = smtp.send(
                mail.request["from"]["email"],
                envelope_recipients(mail.request),
                message.as_bytes(),
                smtputf8=needs_smtputf8(mail.request),
            )
        except SmtpFailure as exc:
            log.warning("send failed", extra={"error": str(exc)})
            _finish(pool, mail.id, MailStatus.FAILED, {"error": str(exc)}, str(exc))
            return MailStatus.FAILED.value
        detail = {"smtp_reply": f"{reply.code} {reply.text}", "refused": reply.refused}
        _finish(pool, mail.id, MailStatus.SENT, detail, None)
        log.info("sent", extra={"smtp_reply": detail["smtp_reply"]})
        return MailStatus.SENT.value


def record_canary(pool: DictPool, canary_id: str, worker: str) -> None:
    with pool.connection() as conn:
        conn.execute(
            QUERIES["record_canary_received"], {"id": uuid.UUID(canary_id), "worker": worker}
        )
